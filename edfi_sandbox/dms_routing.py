"""URL layout and discovery payload of the Ed-Fi Data Management Service (DMS, API 8.x).

Everything here is from the DMS source (docs/dms.md "Discovery and routes" cites each file):

* data at ``{prefix}/data/{projectNamespace}/{endpointName}[/...]`` (CoreEndpointModule), ``/deletes`` and
  ``/keyChanges`` beside each collection (TrackedChangesEndpointModule);
* ``{prefix}`` is ``/{tenant}`` when MultiTenancy is on, then one segment per route qualifier
  (AppSettings:RouteQualifierSegments, e.g. ``/255901/2024``): FixedRoutePattern;
* ``{prefix}/oauth/token`` (also ``/oauth/token`` when multi-tenant), ``{prefix}/oauth/token_info``,
  ``{prefix}/changeQueries/v1/availableChangeVersions``;
* ``/metadata``, ``/metadata/dependencies``, ``/metadata/specifications[/...]`` at the server root only
  (MetadataEndpointModule maps them without the prefix, though the discovery document names them under it);
* the discovery document at ``/`` (placeholders for the prefix's segments) and at every leading part of the
  prefix (DiscoveryEndpointModule).
"""

from __future__ import annotations

import re

from edfi_sandbox.config import BUILD, DATA_STANDARD, INFORMATIONAL, SandboxConfig
from edfi_sandbox.routing import Route

#: the route qualifier names the sandbox gives AppSettings:RouteQualifierSegments for N values (placeholders in
#: the discovery document at "/")
QUALIFIER_NAMES = ("districtId", "schoolYear", "qualifier3", "qualifier4")


class DmsLayout:
    """Where everything lives on a DMS of one configuration (same interface as :class:`routing.Layout`)."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.segment = ""  # no 5.x/6.x year segment
        values = [config.tenant] if config.tenant else []
        values += list(config.route_qualifiers)
        self.values = values
        self.names = (["tenant"] if config.tenant else []) + list(QUALIFIER_NAMES[: len(config.route_qualifiers)])
        self.root = "".join(f"/{v}" for v in values)  # the route prefix
        root = re.escape(self.root)
        tenantless = "" if not config.tenant else "|"  # multi-tenant: /oauth/token at the server root too
        patterns = [
            (rf"^(?:{root}{tenantless})/oauth/token/?$", "oauth"),
            (rf"^{root}/oauth/token_info/?$", "token_info"),
            (r"^/metadata/?$", "dms_metadata"),
            (r"^/metadata/dependencies/?$", "dependencies"),
            (r"^/metadata/specifications/?$", "metadata_list"),
            (r"^/metadata/specifications/(resources|descriptors|discovery)-spec\.json$", "metadata_doc"),
            (r"^/metadata/changequeries/v1/swagger\.json$", "metadata_changes"),
            (rf"^{root}/data(/.+)$", "data"),
            (rf"^{root}/changeQueries/v1/(availableChangeVersions)/?$", "changes"),
        ]
        # ASP.NET Core matches literal route segments case-insensitively
        self._patterns = [(re.compile(p, re.IGNORECASE), area) for p, area in patterns]
        # discovery at "/" and at each leading part of the prefix
        self._roots = {"/" + "/".join(values[:i]).lower() if i else "/" for i in range(len(values) + 1)}

    def match(self, path: str) -> Route | None:
        if path.startswith("/_sandbox/"):
            return Route("admin", path[len("/_sandbox/"):])
        low = path.lower().rstrip("/") or "/"
        if low in self._roots:
            return Route("root", path.rstrip("/"))
        for pattern, area in self._patterns:
            m = pattern.match(path)
            if m:
                return Route(area, m.group(1) if m.groups() else "")
        return None

    def prefix_for(self, path: str) -> str:
        """The discovery document's route prefix for a request to ``path``: the values the path carries, then
        ``{name}`` placeholders for the rest (DiscoveryEndpointModule.BuildRouteQualifierPrefix)."""
        given = [s for s in path.strip("/").split("/") if s]
        out = [given[i] if i < len(given) else f"{{{name}}}" for i, name in enumerate(self.names)]
        return "".join(f"/{s}" for s in out)

    # -- absolute URLs -------------------------------------------------------------------------
    def urls(self, base: str, prefix: str | None = None) -> dict[str, str]:
        """The discovery document's ``urls``, in DMS's order (DiscoveryEndpointModule.BuildDiscoveryResponse)."""
        r = base.rstrip("/") + (self.root if prefix is None else prefix)
        return {
            "dependencies": f"{r}/metadata/dependencies",
            "openApiMetadata": f"{r}/metadata/specifications",
            "oauth": f"{r}/oauth/token",
            "tokenInfo": f"{r}/oauth/token_info",
            "dataManagementApi": f"{r}/data",
            "changeQueries": f"{r}/changeQueries/v1/",
            "xsdMetadata": f"{r}/metadata/xsd",
        }

    def data_url(self, base: str) -> str:
        return f"{base.rstrip('/')}{self.root}/data"

    def oauth_url(self, base: str) -> str:
        return f"{base.rstrip('/')}{self.root}/oauth/token"

    def metadata_doc_url(self, base: str, name: str) -> str:
        return f"{base.rstrip('/')}/metadata/specifications/{name}-spec.json"

    def change_queries_url(self, base: str) -> str:
        return f"{base.rstrip('/')}{self.root}/changeQueries/v1"


def dms_root_payload(config: SandboxConfig, layout: DmsLayout, base: str, path: str = "/") -> dict:
    """``GET /``: the DMS discovery document (version, applicationName, informationalVersion, dataModels, urls)."""
    v = config.api_version
    ds = DATA_STANDARD[v]
    return {
        "version": BUILD[v],
        "applicationName": "Ed-Fi API",
        "informationalVersion": INFORMATIONAL[v],
        "dataModels": [{"name": "Ed-Fi", "version": ds, "informationalVersion": f"The Ed-Fi Data Standard v{ds}"}],
        "urls": layout.urls(base, layout.prefix_for(path)),
    }


def metadata_index(base: str) -> dict[str, str]:
    """``GET /metadata`` (MetadataEndpointModule.GetMetadata)."""
    b = base.rstrip("/") + "/metadata"
    return {"dependencies": f"{b}/dependencies", "specifications": f"{b}/specifications", "xsdMetadata": f"{b}/xsd"}


def specifications_listing(base: str) -> list[dict[str, str]]:
    """``GET /metadata/specifications`` (MetadataEndpointModule.GetSections): Resources, Descriptors, Discovery,
    then Change-Queries."""
    b = base.rstrip("/")
    return [
        {"name": "Resources", "endpointUri": f"{b}/metadata/specifications/resources-spec.json", "prefix": ""},
        {"name": "Descriptors", "endpointUri": f"{b}/metadata/specifications/descriptors-spec.json", "prefix": ""},
        {"name": "Discovery", "endpointUri": f"{b}/metadata/specifications/discovery-spec.json", "prefix": "Other"},
        {"name": "Change-Queries", "endpointUri": f"{b}/metadata/changequeries/v1/swagger.json", "prefix": "Other"},
    ]
