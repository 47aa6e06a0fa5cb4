"""Settings of one sandbox API: version, routing, credentials, limits."""

from __future__ import annotations

from dataclasses import dataclass, field

#: ODS/API versions, then the Ed-Fi Data Management Service (DMS): "8.0" is the v8.0.0 tag, "8.1" the features
#: merged on its main branch after v8.0.0 (cursor paging and /partitions); docs/dms.md
API_VERSIONS = ("5.3", "6.1", "7.1", "7.3", "8.0", "8.1")
ODS_VERSIONS = ("5.3", "6.1", "7.1", "7.3")
DMS_VERSIONS = ("8.0", "8.1")
DEFAULT_CLIENT_ID = "sandbox-client"
DEFAULT_CLIENT_SECRET = "sandbox-secret"

#: Data standard served by default with each API version (the built-in model is a DS 5 subset;
#: the version only changes what the root payload says about it).
#: DMS: the root's "version" is the assembly's Major.Minor.Build and "informationalVersion" its
#: InformationalVersion (Frontend.AspNetCore/Content/VersionProvider.cs, src/dms/Directory.Build.props: 8.0.0 at
#: v8.0.0 and still on main; "8.1.0" is the sandbox's label for main's features). DMS serves Data Standard 5.2.0 by
#: default (Tests.E2E/Features/General/DiscoveryAPI.feature); it has no "build" or "suite".
DATA_STANDARD = {"5.3": "3.3.1-b", "6.1": "4.0.0", "7.1": "5.0.0", "7.3": "5.0.0", "8.0": "5.2.0", "8.1": "5.2.0"}
BUILD = {"5.3": "5.3.1146.0", "6.1": "6.1.901.0", "7.1": "7.1.1294.0", "7.3": "7.3.10437.0", "8.0": "8.0.0",
         "8.1": "8.1.0"}
INFORMATIONAL = {"5.3": "5.3", "6.1": "6.1", "7.1": "7.1", "7.3": "7.3.2", "8.0": "8.0.0", "8.1": "8.1.0"}


@dataclass
class SandboxConfig:
    api_version: str = "7.3"
    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    # seconds, like BearerTokenTimeoutMinutes=30 (DMS: IdentitySettings:TokenExpirationMinutes=30)
    token_ttl: int = 1800
    max_tokens_per_client: int = 15  # BearerTokenPerClientLimit, ODS/API 7.3 only (ApiSettings.cs); DMS has none
    # 5.x/6.x ApiMode routing: "sandbox" (no segment), "year" (/{year}), "instance-year"
    api_mode: str = "sandbox"
    school_year: int | None = None
    instance: str | None = None
    # 7.x routing: /{tenant}/{context}; DMS: /{tenant} (MultiTenancy) then the route qualifiers' values
    tenant: str | None = None
    context: str | None = None
    # DMS only: the values of AppSettings:RouteQualifierSegments, in order (e.g. ("255901", "2024"))
    route_qualifiers: tuple[str, ...] = ()
    extra_clients: dict[str, str] = field(default_factory=dict)
    # scoped clients (authorization): "ID:SECRET:CLAIMSET[:EDORG,...][:NAMESPACE]" strings or ClientSpecs;
    # the default client above keeps the Ed-Fi Sandbox claim set (sees and writes everything)
    clients: tuple = ()
    # resources (paths like "/ed-fi/staffs") the client is not authorized for: 403 on every request
    forbidden: frozenset[str] = frozenset()
    # API profiles: name -> resource path -> the properties its readable content type includes
    profiles: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # the token the /_sandbox/* admin endpoints require (header X-Sandbox-Admin-Token); None: a random one
    admin_token: str | None = None
    # server limits (Kestrel's defaults, which the ODS/API does not change, where there is one)
    header_timeout: float = 10.0  # seconds for a request's headers (Kestrel RequestHeadersTimeout: 30 s)
    body_timeout: float = 30.0  # seconds for a request's body, in total
    max_body_bytes: int = 30_000_000  # 413 above (Kestrel MaxRequestBodySize)
    max_header_bytes: int = 32 * 1024  # 431 above (Kestrel MaxRequestHeadersTotalSize)
    # DMS only: AppSettings:MaximumPageSize (the default and the maximum of limit and pageSize) and
    # AppSettings:DefaultPartitionCount (docs/CONFIGURATION.md)
    maximum_page_size: int = 500
    default_partition_count: int = 10

    def __post_init__(self) -> None:
        if self.api_version not in API_VERSIONS:
            raise ValueError(f"api_version must be one of {', '.join(API_VERSIONS)}, not {self.api_version!r}")
        if self.api_mode not in ("sandbox", "year", "instance-year"):
            raise ValueError("api_mode must be sandbox, year or instance-year")
        if (self.is_v7 or self.is_dms) and self.api_mode != "sandbox":
            raise ValueError("api_mode applies to 5.3 and 6.1; use tenant/context on 7.x, "
                             "tenant/route_qualifiers on 8.x")
        if not (self.is_v7 or self.is_dms) and (self.tenant or self.context):
            raise ValueError("tenant and context routing exist on 7.x only (tenant on 8.x)")
        if self.is_dms and self.context:
            raise ValueError("8.x (DMS) has no context segment: use route_qualifiers")
        if self.route_qualifiers and not self.is_dms:
            raise ValueError("route_qualifiers exist on 8.x (DMS) only")
        self.route_qualifiers = tuple(str(q) for q in self.route_qualifiers)
        if self.api_mode in ("year", "instance-year") and not self.school_year:
            raise ValueError("year-specific routing needs school_year")
        if self.api_mode == "instance-year" and not self.instance:
            raise ValueError("instance-year-specific routing needs instance")
        from edfi_sandbox.authorization import ClientSpec

        self.clients = tuple(c if isinstance(c, ClientSpec) else ClientSpec.parse(c) for c in self.clients)

    @property
    def is_v7(self) -> bool:
        """An ODS/API 7.x (never a DMS: 8.x has its own routes, see :attr:`is_dms`)."""
        return self.api_version.startswith("7")

    @property
    def is_dms(self) -> bool:
        """The Ed-Fi Data Management Service (8.x): DMS routes, auth and reads (edfi_sandbox/dms_*.py)."""
        return self.api_version in DMS_VERSIONS

    @property
    def problem_details(self) -> bool:
        """Error bodies are RFC 7807 problem details from 7.2 on (and on DMS)."""
        return self.api_version >= "7.2"

    @property
    def has_key_changes(self) -> bool:
        return self.api_version >= "6"

    @property
    def has_partitions(self) -> bool:
        """Cursor paging and /partitions: ODS/API 7.3, DMS after v8.0.0 (docs/CURSOR-PAGING.md is on main only)."""
        return self.api_version in ("7.3", "8.1")

    @property
    def has_token_limit(self) -> bool:
        """The live-tokens-per-client limit and its 429 (ODS/API 7.3; DMS has none)."""
        return self.api_version == "7.3"

    @property
    def has_snapshots(self) -> bool:
        """Snapshots exist (DMS v1 ignores Use-Snapshot: change-queries.md "Snapshot support is deferred")."""
        return not self.is_dms

    @property
    def person_retry(self) -> bool:
        """Person resources listed twice in dependencies (DS 4.0 and later, ODS/API 6+)."""
        return self.api_version >= "6"
