"""URL layout of an ODS/API per version and deployment mode, and the root (discovery) payload."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edfi_sandbox.config import BUILD, DATA_STANDARD, INFORMATIONAL, SandboxConfig


@dataclass(frozen=True)
class Route:
    area: str  # root, oauth, token_info, metadata_list, metadata_doc, dependencies, data, changes, admin
    rest: str = ""  # what follows the area prefix: "/ed-fi/students/abc", "resources", "snapshots"


class Layout:
    """Where everything lives for one configuration.

    * 5.x/6.x: ``/data/v3[/{instance}][/{year}]/ed-fi/...``, ``/metadata/data/v3[/{instance}][/{year}]/...``,
      ``/changeQueries/v1[/{instance}][/{year}]/...``, oauth at ``[/{instance}]/oauth/token``.
    * 7.x: everything under ``[/{tenant}][/{context}]``.
    """

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        segs = []
        if not config.is_v7:
            if config.api_mode == "instance-year":
                segs = [str(config.instance), str(config.school_year)]
            elif config.api_mode == "year":
                segs = [str(config.school_year)]
        self.segment = "".join(f"/{s}" for s in segs)  # 5.x/6.x year / instance-year segment
        root = []
        if config.is_v7:
            root = [s for s in (config.tenant, config.context) if s]
        self.root = "".join(f"/{s}" for s in root)  # 7.x tenant/context root
        self.oauth_prefix = f"/{config.instance}" if config.api_mode == "instance-year" else ""
        seg = re.escape(self.segment)
        self._patterns: list[tuple[re.Pattern[str], str]] = [
            (re.compile(rf"^{re.escape(self.oauth_prefix)}/oauth/token/?$"), "oauth"),
            # token introspection: at the root, and beside the instance's token endpoint
            (re.compile(rf"^(?:{re.escape(self.oauth_prefix)})?/oauth/token_info/?$"), "token_info"),
            (re.compile(rf"^/metadata(?:{seg})?/?$"), "metadata_list"),
            (re.compile(rf"^/metadata/data/v3{seg}/dependencies/?$"), "dependencies"),
            (re.compile(rf"^/metadata/data/v3{seg}/(resources|descriptors)/swagger\.json$"), "metadata_doc"),
            (re.compile(rf"^/metadata/changeQueries/v1{seg}/swagger\.json$"), "metadata_changes"),
            # edfi_sandbox/composites.py: /composites/v1[/{instance}][/{year}]/ed-fi/enrollment/...
            (re.compile(rf"^/metadata/composites/v1{seg}/ed-fi/enrollment/swagger\.json$"), "metadata_composites"),
            (re.compile(rf"^/composites/v1{seg}(/.+)$"), "composites"),
            (re.compile(rf"^/data/v3{seg}(/.+)$"), "data"),
            (re.compile(rf"^/changeQueries/v1{seg}/(availableChangeVersions|snapshots)/?$"), "changes"),
            (re.compile(r"^/?$"), "root"),
        ]
        # ASP.NET Core routing matches literal route segments case-insensitively
        # (docs/sandbox-fidelity-api.md): ``/changeQueries/v1/AvailableChangeVersions``, ``/Data/V3/...``
        self._patterns = [(re.compile(p.pattern, re.IGNORECASE), area) for p, area in self._patterns]

    def match(self, path: str) -> Route | None:
        if path.startswith("/_sandbox/"):
            return Route("admin", path[len("/_sandbox/"):])
        if self.root:
            if path in ("", "/"):
                return Route("root")
            low, root = path.lower(), self.root.lower()
            if not (low == root or low.startswith(root + "/")):
                return None
            path = path[len(self.root):]
        for pattern, area in self._patterns:
            m = pattern.match(path)
            if m:
                return Route(area, m.group(1) if m.groups() else "")
        return None

    # -- absolute URLs -------------------------------------------------------------------------
    def urls(self, base: str) -> dict[str, str]:
        r = base.rstrip("/") + self.root
        s = self.segment
        v = self.config.api_version
        urls = {
            "dependencies": f"{r}/metadata/data/v3{s}/dependencies",
            "openApiMetadata": f"{r}/metadata{s}" if v < "7" else f"{r}/metadata/",
            "oauth": f"{r}{self.oauth_prefix}/oauth/token",
            "dataManagementApi": f"{r}/data/v3{s}" if v < "7" else f"{r}/data/v3/",
            "xsdMetadata": f"{r}/metadata{s}/xsd" if v < "7" else f"{r}/metadata/xsd",
        }
        if v >= "6":
            urls["changeQueries"] = f"{r}/changeQueries/v1{s}" if v < "7" else f"{r}/changeQueries/v1/"
            if self.config.composites:
                urls["composites"] = f"{r}/composites/v1{s}" if v < "7" else f"{r}/composites/v1/"
        if v >= "7.3":
            urls["oauthTokenIntrospection"] = f"{r}/oauth/token_info"
        return urls

    def data_url(self, base: str) -> str:
        return f"{base.rstrip('/')}{self.root}/data/v3{self.segment}"

    def oauth_url(self, base: str) -> str:
        return self.urls(base)["oauth"]

    def composites_url(self, base: str) -> str:
        return f"{base.rstrip('/')}{self.root}/composites/v1{self.segment}"

    def metadata_doc_url(self, base: str, name: str) -> str:
        return f"{base.rstrip('/')}{self.root}/metadata/data/v3{self.segment}/{name}/swagger.json"


API_MODE_NAMES = {"sandbox": "Sandbox", "year": "Year Specific", "instance-year": "Instance Year Specific"}


def root_payload(config: SandboxConfig, layout: Layout, base: str) -> dict:
    """``GET /``: the discovery payload, shaped per version (WIRE.md section 1)."""
    v = config.api_version
    payload: dict = {
        "version": v,
        "informationalVersion": INFORMATIONAL[v],
        "suite": "3",
        "build": BUILD[v],
    }
    if v < "7":
        payload["apiMode"] = API_MODE_NAMES[config.api_mode]
    if v >= "7.3":
        payload["applicationName"] = "Ed-Fi Alliance ODS/API"
    ds = DATA_STANDARD[v]
    payload["dataModels"] = [
        {"name": "Ed-Fi", "version": ds, "informationalVersion": f"The Ed-Fi Data Model {ds[:3]}"}
    ]
    payload["urls"] = layout.urls(base)
    return payload
