"""An HTTP client for Ed-Fi ODS/APIs: URL discovery, bearer tokens, retries, readable errors.

:class:`EdFiClient` reads the root (discovery) payload once to find the data, OAuth, metadata,
dependencies and change-query URLs of the deployment (5.x/6.x year-specific and instance
segments, 7.x tenant/context routes, explicit overrides), then sends requests with one shared
bearer token (:mod:`edfi_core.auth`). Transient failures (429 honouring ``Retry-After``, 500, 502,
503, 504, timeouts, refused or dropped connections) are retried with jittered exponential backoff;
a 401 renews the token once. Every request goes through one HTTP layer (:mod:`edfi_core.transport`).
Errors name the method, URL, status and the server's own message (``{"message": ...}`` bodies
before 7.2, problem details after) and never a secret.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from edfi_core.auth import TRANSIENT_ERRORS, AuthError, TokenManager
from edfi_core.token_cache import TokenCache
from edfi_core.transport import HttpLayer, Reply, TransportError, origin_of

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
TRANSIENT_EXCEPTIONS = TRANSIENT_ERRORS  # refused, reset, timed out, dropped mid-body
USER_AGENT = "edfi-singer/0.1"


# -- errors -----------------------------------------------------------------------------------------
class EdFiHTTPError(RuntimeError):
    """A request that failed for good: names the method, URL, status and the server's message."""

    def __init__(self, method: str, url: str, status: int | None, message: str, *, tries: int = 1,
                 response: Reply | None = None) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.server_message = message
        self.tries = tries
        self.response = response
        what = f"HTTP {status}" if status is not None else "no response"
        text = f"{method} {url} failed: {what}"
        if message:
            text += f": {message}"
        if tries > 1:
            text += f" (after {tries} tries)"
        super().__init__(text)


class OriginError(EdFiHTTPError):
    """A request that would have sent credentials to an origin they do not belong to (never sent)."""

    def __init__(self, method: str, url: str, message: str) -> None:
        super().__init__(method, url, None, message)
        RuntimeError.__init__(self, f"{method} {url} refused: {message}")


def server_message(resp: Reply | None, limit: int = 500) -> str:
    """The server's own explanation of an error response, whatever its format."""
    if resp is None:
        return ""
    body = resp.content or b""
    if not body:
        return resp.reason or ""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = re.sub(r"<[^>]+>", " ", body.decode("utf-8", "replace"))
        return re.sub(r"\s+", " ", text).strip()[:limit]
    if isinstance(data, dict):
        parts: list[str] = []
        for key in ("detail", "message", "error", "error_description"):
            if data.get(key):
                parts.append(str(data[key]))
        if not parts and data.get("title"):
            parts.append(str(data["title"]))
        if data.get("type"):
            parts.append(f"[{data['type']}]")
        for key in ("validationErrors", "modelState"):
            if isinstance(data.get(key), dict):
                for path, msgs in data[key].items():
                    parts.append(f"{path}: {'; '.join(map(str, msgs if isinstance(msgs, list) else [msgs]))}")
        if isinstance(data.get("errors"), list):
            parts.extend(str(e) for e in data["errors"])
        if parts:
            return " ".join(parts)[:limit]
    return str(data)[:limit]


def _retry_after(resp: Reply) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# -- statistics --------------------------------------------------------------------------------------
@dataclass
class ClientStats:
    """Counters for progress reports and benchmarks (thread-safe through ``add``)."""

    requests: int = 0
    retries: int = 0
    auth_renewals: int = 0
    token_fetches: int = 0
    bytes_received: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    retry_reasons: dict[str, int] = field(default_factory=dict)
    #: URL path (no query) -> HTTP status -> [requests, seconds]: the per-endpoint request metrics
    by_endpoint: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_response(self, status: int, size: int, url: str | None = None, seconds: float = 0.0) -> None:
        with self._lock:
            self.requests += 1
            self.bytes_received += size
            self.by_status[status] = self.by_status.get(status, 0) + 1
            if url is not None:
                path = urllib.parse.urlsplit(url).path.rstrip("/") or "/"
                entry = self.by_endpoint.setdefault(path, {}).setdefault(status, [0, 0.0])
                entry[0] += 1
                entry[1] += seconds

    def endpoint_times(self, path: str) -> dict[int, tuple[int, float]]:
        """Requests answered for one URL path (no query, no trailing slash), by status: (count, seconds)."""
        with self._lock:
            return {status: (int(n), secs) for status, (n, secs) in self.by_endpoint.get(path, {}).items()}

    def count_failure(self) -> None:
        with self._lock:
            self.requests += 1

    def count_retry(self, reason: str) -> bool:
        """Count one retry; True the first time of its kind (logged as a warning once, then summed in progress
        lines: :func:`retry_summary`)."""
        with self._lock:
            self.retries += 1
            first = reason not in self.retry_reasons
            self.retry_reasons[reason] = self.retry_reasons.get(reason, 0) + 1
            return first

    def count_auth_renewal(self) -> None:
        with self._lock:
            self.auth_renewals += 1

    def count_token_fetch(self) -> None:
        with self._lock:
            self.token_fetches += 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests, "retries": self.retries, "auth_renewals": self.auth_renewals,
                "token_fetches": self.token_fetches, "bytes_received": self.bytes_received,
                "by_status": dict(self.by_status), "retry_reasons": dict(self.retry_reasons),
            }


def retry_summary(stats: Mapping[str, Any]) -> str:
    """``12 retries (429: 9, 503: 3)`` from :meth:`ClientStats.as_dict` (``0 retries`` without any)."""
    total = int(stats.get("retries") or 0)
    reasons = stats.get("retry_reasons") or {}
    text = f"{total:,} retr{'y' if total == 1 else 'ies'}"
    if reasons:
        parts = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        text += " (" + ", ".join(f"{_short_reason(k)}: {v:,}" for k, v in parts) + ")"
    return text


def _short_reason(reason: str) -> str:
    if reason.startswith("HTTP "):
        return reason[5:]
    head, _, tail = reason.partition(": ")
    if tail and head.endswith(("Error", "error")):  # "ConnectionRefusedError: [Errno 111] Connection refused"
        return re.sub(r"^\[Errno -?\d+\]\s*", "", tail)
    return reason


# -- URLs and versions -------------------------------------------------------------------------------
def parse_version(text: str | None) -> tuple[int, int]:
    m = re.match(r"^\s*v?(\d+)(?:\.(\d+))?", str(text or ""))
    if not m:
        return (0, 0)
    return int(m.group(1)), int(m.group(2) or 0)


@dataclass
class ApiUrls:
    root: str
    data: str  # .../data/v3[/{instance}][/{year}] (no trailing slash)
    oauth: str
    metadata: str  # the OpenAPI metadata listing
    dependencies: str
    change_queries: str | None  # .../changeQueries/v1[/{year}] (no trailing slash)
    token_info: str | None = None


@dataclass
class ApiInfo:
    """What the root payload says about the API."""

    root: dict[str, Any]
    urls: ApiUrls

    @property
    def version_text(self) -> str:
        return str(self.root.get("version") or "")

    @property
    def version(self) -> tuple[int, int]:
        return parse_version(self.version_text)

    @property
    def informational_version(self) -> str:
        return str(self.root.get("informationalVersion") or self.version_text)

    @property
    def is_dms(self) -> bool:
        """The Ed-Fi Data Management Service (API v8; pre-release builds called themselves 1.x/2.x), known by its
        discovery document rather than its version: the data API is ``.../data`` (the ODS/API's is
        ``.../data/v3``) and the token introspection URL is ``tokenInfo`` (DiscoveryEndpointModule.cs). DMS
        v8.0.0 accepts ``Use-Snapshot`` and ignores it, which no answer shows (docs/dms.md)."""
        name = str(self.root.get("applicationName") or "").lower()
        if "data management service" in name or (1, 0) <= self.version < (3, 0):
            return True
        urls = self.root.get("urls") or {}
        data = str(urls.get("dataManagementApi") or "").rstrip("/")
        return bool(data) and data.endswith("/data") and "tokenInfo" in urls

    @property
    def data_models(self) -> list[dict[str, Any]]:
        return list(self.root.get("dataModels") or [])

    @property
    def data_standard(self) -> str:
        for model in self.data_models:
            if str(model.get("name", "")).lower() == "ed-fi":
                return str(model.get("version") or "")
        return ""

    @property
    def api_mode(self) -> str:
        return str(self.root.get("apiMode") or "")

    # what the version supports (WIRE.md sections 3 and 4)
    @property
    def deletes_have_keys(self) -> bool:
        return self.is_dms or self.version >= (6, 0)

    @property
    def has_key_changes(self) -> bool:
        return self.is_dms or self.version >= (6, 0)

    @property
    def person_key_updates(self) -> bool:
        """6.x: a PUT may change a student's, staff's or parent's unique id (a column beside its USI key); the
        API cascades it and reports it in /keyChanges (docs/change-queries.md). 7.x refuses it."""
        return not self.is_dms and (6, 0) <= self.version < (7, 0)

    @property
    def has_partitions(self) -> bool:
        """What the version says (ODS/API 7.3+); the tap asks the OpenAPI documents first (a ``/partitions`` path),
        and a DMS only has cursor paging when its documents show it (it came after v8.0.0)."""
        return not self.is_dms and self.version >= (7, 3)

    @property
    def snapshot_style(self) -> str | None:
        """``"use-snapshot"`` (7.x header), ``"identifier"`` (5.2-6.x) or None."""
        if self.is_dms:
            return None
        if self.version >= (7, 0):
            return "use-snapshot"
        if self.version >= (5, 2):
            return "identifier"
        return None

    @property
    def min_limit(self) -> int:
        """The smallest ``limit`` the server takes (0 from 7.0: a count without items)."""
        return 0 if (self.is_dms or self.version >= (7, 0)) else 1


_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
_YEAR_SEGMENT = re.compile(r"/(\d{4})(?=/|$)")


def resolve_urls(
    base_url: str,
    root: Mapping[str, Any],
    *,
    school_year: int | str | None = None,
    instance: str | None = None,
    tenant: str | None = None,
    context: str | None = None,
    overrides: Mapping[str, str | None] | None = None,
) -> ApiUrls:
    """The URLs of one deployment, from the root payload's ``urls`` and the routing settings.

    * 5.x/6.x year-specific roots bake the current calendar year into their URLs: ``school_year``
      replaces it; instance-year-specific roots carry an ``{instance}`` placeholder.
    * 7.x roots of multi-tenant or context-routed deployments may show ``{tenantIdentifier}`` or
      context placeholders (``{schoolYearFromRoute}``): ``tenant`` and ``context`` (or
      ``school_year``) fill them. A ``base_url`` that already includes them needs nothing.
    * 5.x roots have no ``changeQueries`` URL: it is derived from the data URL.
    * ``overrides`` (``data``, ``oauth``, ``metadata``, ``dependencies``, ``change_queries``)
      win over everything.
    """
    base = base_url.rstrip("/")
    urls: dict[str, str] = {k: str(v) for k, v in (root.get("urls") or {}).items() if v}
    year = str(school_year) if school_year else None

    def fill(url: str) -> str:
        def sub(m: re.Match[str]) -> str:
            name = m.group(1).lower()
            if "tenant" in name and tenant:
                return tenant
            if name == "instance" and instance:
                return instance
            if ("year" in name or "context" in name) and (context or year):
                return str(context or year)
            return m.group(0)

        url = _PLACEHOLDER.sub(sub, url)
        mode = str(root.get("apiMode") or "").lower()
        if year and "year" in mode and url.startswith(base):
            url = base + _YEAR_SEGMENT.sub(f"/{year}", url[len(base):])
        return url

    if not urls:
        logger.warning("the root payload at %s lists no urls; assuming the standard layout", base)
        urls = {
            "dataManagementApi": f"{base}/data/v3",
            "oauth": f"{base}/oauth/token",
            "openApiMetadata": f"{base}/metadata",
            "dependencies": f"{base}/metadata/data/v3/dependencies",
            "changeQueries": f"{base}/changeQueries/v1",
        }
    resolved = {k: fill(v) for k, v in urls.items()}
    data = resolved.get("dataManagementApi", f"{base}/data/v3").rstrip("/")
    change_queries = resolved.get("changeQueries")
    if not change_queries and "/data/v3" in data:
        change_queries = data.replace("/data/v3", "/changeQueries/v1", 1)
    result = ApiUrls(
        root=base,
        data=data,
        oauth=resolved.get("oauth", f"{base}/oauth/token"),
        metadata=resolved.get("openApiMetadata", f"{base}/metadata"),
        dependencies=resolved.get("dependencies", f"{base}/metadata/data/v3/dependencies"),
        change_queries=change_queries.rstrip("/") if change_queries else None,
        token_info=resolved.get("oauthTokenIntrospection") or resolved.get("tokenInfo"),  # tokenInfo: DMS
    )
    for key, value in (overrides or {}).items():
        if value:
            setattr(result, key, value.rstrip("/") if key in ("data", "change_queries") else value)
    for name in ("data", "oauth", "metadata", "change_queries"):
        value = getattr(result, name)
        if value and _PLACEHOLDER.search(value):
            raise ValueError(
                f"the {name} URL {value} still has a route placeholder: set tenant, context, school_year "
                "or instance, or give a base_url that includes them"
            )
    return result


# -- the client --------------------------------------------------------------------------------------
class EdFiClient:
    """Requests to one Ed-Fi API, shared by every thread of a run.

    Every request goes through one :class:`~edfi_core.transport.HttpLayer` (proxies, CA bundle, ``verify``,
    ``connect_timeout``, ``timeout`` as the deadline of one try) and :meth:`request`'s retry rules. Credentials
    (the token request's client id and secret, bearer tokens) go only to the origin of ``base_url``, of an
    explicit URL override, or of ``allowed_origins``; with an https ``base_url``, ``http://`` URLs of the same
    host in the root payload or the metadata listing are used as https (see :meth:`secure_url`).
    """

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        max_workers: int = 8,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        max_tries: int = 8,
        backoff_factor: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 300.0,
        school_year: int | str | None = None,
        instance: str | None = None,
        tenant: str | None = None,
        context: str | None = None,
        url_overrides: Mapping[str, str | None] | None = None,
        scope: str | None = None,
        verify: bool = True,
        ca_bundle: str | None = None,
        allowed_origins: Iterable[str] | None = None,
        user_agent: str = USER_AGENT,
        token_cache: TokenCache | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_cache = token_cache
        self.max_tries = max(1, int(max_tries))
        self.timeout = (connect_timeout, timeout)
        self.backoff_factor = backoff_factor
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.routing: dict[str, Any] = {"school_year": school_year, "instance": instance, "tenant": tenant,
                                        "context": context}
        self.url_overrides = dict(url_overrides or {})
        self.stats = ClientStats()
        self.http = HttpLayer(verify=verify, ca_bundle=ca_bundle, connect_timeout=connect_timeout, timeout=timeout,
                              pool_size=max(4, max_workers + 4), user_agent=user_agent)
        self.origins = self._trusted_origins(allowed_origins)
        self._upgraded: set[str] = set()
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._info: ApiInfo | None = None
        self._tokens: TokenManager | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EdFiClient({self.base_url!r})"

    # -- origins --------------------------------------------------------------------------------
    def _trusted_origins(self, allowed: Iterable[str] | None) -> set[str]:
        origins = {origin_of(self.base_url)}
        origins |= {origin_of(v) for v in self.url_overrides.values() if v}
        for entry in allowed or ():
            parts = urllib.parse.urlsplit(str(entry).strip())
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
                raise ValueError(f"allowed_origins: {entry!r} is not an origin: write it as https://host or "
                                 "https://host:port")
            origins.add(origin_of(str(entry).strip()))
        return origins

    def secure_url(self, url: str, what: str = "the root payload") -> str:
        """``url`` as it may be used: with an https ``base_url``, an ``http://`` URL of the same host (what an
        API behind a TLS-terminating load balancer advertises) becomes the https URL of ``base_url``'s origin."""
        base = urllib.parse.urlsplit(self.base_url)
        parts = urllib.parse.urlsplit(url)
        if base.scheme.lower() != "https" or parts.scheme.lower() != "http":
            return url
        if (parts.hostname or "").lower() != (base.hostname or "").lower():
            return url  # another host: refused when credentials would go there (check_origin)
        secure = urllib.parse.urlunsplit(("https", base.netloc, parts.path, parts.query, parts.fragment))
        key = origin_of(url)
        if key not in self._upgraded:
            self._upgraded.add(key)
            logger.warning("%s lists http:// URLs (%s) although base_url is https: they are used as %s, so that no "
                           "credential or data goes in cleartext", what, key, origin_of(secure))
        return secure

    def check_origin(self, url: str, method: str = "GET") -> None:
        """Raise :class:`OriginError` unless credentials may be sent to ``url``."""
        origin = origin_of(url)
        if origin in self.origins:
            return
        raise OriginError(
            method, url,
            f"credentials (client id and secret, bearer tokens) are only sent to the origin of base_url "
            f"({origin_of(self.base_url)}), of an explicit URL setting, or of allowed_origins, and {origin} is "
            f"none of them (it was named by the API). If that origin is the API's own, add it to allowed_origins")

    # -- discovery ------------------------------------------------------------------------------
    @property
    def info(self) -> ApiInfo:
        if self._info is None:
            with self._lock:
                if self._info is None:
                    self._info = self._discover()
        return self._info

    @property
    def urls(self) -> ApiUrls:
        return self.info.urls

    def _discover(self) -> ApiInfo:
        resp = self.request("GET", self.base_url + "/", auth=False)
        if not resp.ok:
            message = server_message(resp)
            if resp.status_code in (404, 405):
                message = (f"is base_url the API root? it answered {resp.status_code} ({message}): base_url is the "
                           "URL whose GET shows the API's version and urls (e.g. https://host/v7.3/api), not the "
                           "data URL (.../data/v3)")
            raise EdFiHTTPError("GET", self.base_url + "/", resp.status_code, message, response=resp)
        try:
            root = orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise EdFiHTTPError("GET", self.base_url + "/", resp.status_code,
                                "the API root did not answer with JSON: is base_url the API root?") from exc
        if not isinstance(root, dict) or "version" not in root:
            raise EdFiHTTPError("GET", self.base_url + "/", resp.status_code,
                                "not an Ed-Fi root payload (no version): is base_url the API root?")
        urls = resolve_urls(self.base_url, root, overrides=self.url_overrides, **self.routing)
        overridden = {k for k, v in self.url_overrides.items() if v}
        for name in ("data", "oauth", "metadata", "dependencies", "change_queries", "token_info"):
            value = getattr(urls, name)
            if value and name not in overridden:
                setattr(urls, name, self.secure_url(value))
        info = ApiInfo(root, urls)
        logger.info("Ed-Fi API %s (%s), data standard %s, data at %s", info.informational_version,
                    info.root.get("build", "?"), info.data_standard or "?", urls.data)
        return info

    @property
    def tokens(self) -> TokenManager:
        if self._tokens is None:
            with self._lock:
                if self._tokens is None:
                    oauth = self.urls.oauth
                    self.check_origin(oauth, "POST")  # the client secret goes there
                    self._tokens = TokenManager(
                        oauth, self._client_id, self._client_secret, http=self.http,
                        scope=self._scope, timeout=self.timeout, max_tries=min(self.max_tries, 6),
                        on_refresh=self.stats.count_token_fetch, cache=self.token_cache,
                    )
        return self._tokens

    def data_url(self, path: str) -> str:
        """``/ed-fi/students`` -> the full URL under the data management API."""
        return self.urls.data + "/" + path.lstrip("/")

    # -- requests -------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> Reply:
        """Send with retries; returns the final response (any non-transient status).

        429 (honouring ``Retry-After``), 500, 502, 503, 504, timeouts and dropped connections are tried again
        with jittered exponential backoff up to ``max_tries``; a 401 renews the token once (not a try); a
        request that went out on a kept-alive connection the server had closed is sent again at once by the
        HTTP layer (not a try). Raises :class:`EdFiHTTPError` when the tries run out, :class:`OriginError` before
        anything is sent when ``auth`` and ``url`` is not a trusted origin, :class:`AuthError` when no token can
        be had.
        """
        body = orjson.dumps(json) if json is not None else data
        if isinstance(body, str):
            body = body.encode()
        hdrs = dict(headers or {})
        if json is not None:
            hdrs.setdefault("Content-Type", "application/json")
        full = _full_url(url, params)
        if auth:
            self.check_origin(full, method)
        stats = self.stats
        tries = self.max_tries
        renewed = False
        attempt = 0
        delay_n = 0
        last: Reply | None = None
        reason = ""
        cause: BaseException | None = None
        while True:
            attempt += 1
            token = None
            send_headers = hdrs
            if auth:
                token, bearer = self.tokens.auth_header()
                send_headers = {**hdrs, **bearer}
            retry_after: float | None = None
            sent = time.monotonic()
            try:
                reply = self.http.send(method, full, body=body, headers=send_headers)
            except TransportError as exc:  # (a stale kept-alive connection was already retried by the layer)
                stats.count_failure()
                reason, last, cause = exc.reason, None, exc
                if not exc.retriable:
                    raise EdFiHTTPError(method, full, None, reason, tries=attempt) from exc
            else:
                stats.count_response(reply.status_code, len(reply.content), full, time.monotonic() - sent)
                if reply.status_code == 401 and auth and not renewed:
                    # expired or revoked: renew once (one fetch however many threads saw the 401)
                    self.tokens.invalidate(token)
                    stats.count_auth_renewal()
                    renewed = True
                    attempt -= 1  # a renewal is not a try
                    continue
                if reply.status_code not in RETRY_STATUSES:
                    return reply
                last, reason, cause = reply, f"HTTP {reply.status_code}", None
                retry_after = _retry_after(reply)
            if attempt >= tries:
                status = last.status_code if last is not None else None
                message = server_message(last) if last is not None else reason
                raise EdFiHTTPError(method, full, status, message, tries=attempt, response=last) from cause
            wait = self._wait(delay_n, retry_after)
            delay_n += 1
            # the first retry of each kind is a warning; the others are summed in the progress lines
            first = stats.count_retry(reason)
            logger.log(logging.WARNING if first else logging.DEBUG, "%s %s: %s; retry %d/%d in %.1fs%s", method,
                       full, reason, attempt, tries - 1, wait,
                       " (further retries are counted in the progress lines)" if first else "")
            time.sleep(wait)

    def _wait(self, n: int, retry_after: float | None) -> float:
        """Exponential backoff with "equal jitter" (never zero); a ``Retry-After`` from the server wins."""
        if retry_after is not None:
            return min(self.max_retry_after, retry_after) + random.uniform(0, 0.25)
        delay = min(self.backoff_max, self.backoff_factor * (2**n))
        return delay / 2 + random.uniform(0, delay / 2)

    def pin_environment(self) -> None:
        """Kept for callers: the HTTP layer reads proxies and the CA bundle from the environment once, when the
        client is made, for every request of both plugins."""

    def get(self, url: str, **kwargs: Any) -> Reply:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Reply:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> Reply:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Reply:
        return self.request("DELETE", url, **kwargs)

    def get_json(self, url: str, *, params: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None, auth: bool = True) -> Any:
        """GET and parse JSON; any non-2xx answer raises :class:`EdFiHTTPError`."""
        resp = self.request("GET", url, params=params, headers=headers, auth=auth)
        check(resp, "GET", url, params)
        try:
            return orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise EdFiHTTPError("GET", _full_url(url, params), resp.status_code,
                                "the response is not JSON") from exc

    # -- change queries -------------------------------------------------------------------------
    def available_change_versions(self, headers: Mapping[str, str] | None = None) -> tuple[int, int]:
        """(oldestChangeVersion, newestChangeVersion); year-specific routes included."""
        if not self.urls.change_queries:
            raise EdFiHTTPError("GET", self.base_url, None, "this API publishes no change queries URL")
        body = self.get_json(self.urls.change_queries + "/availableChangeVersions", headers=headers)
        try:
            # camelCase on most versions; 5.x serializes PascalCase (NewestChangeVersion)
            values = {str(k).lower(): v for k, v in body.items()}
            return int(values.get("oldestchangeversion") or 0), int(values["newestchangeversion"])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise EdFiHTTPError("GET", self.urls.change_queries + "/availableChangeVersions", 200,
                                f"unexpected body {str(body)[:200]}") from exc

    def snapshots(self) -> list[dict[str, Any]]:
        """The snapshots a 5.2-6.x server offers (``GET /changeQueries/v1/snapshots``)."""
        if not self.urls.change_queries:
            return []
        url = self.urls.change_queries + "/snapshots"
        resp = self.request("GET", url)
        if resp.status_code in (404, 405):
            return []
        check(resp, "GET", url)
        body = orjson.loads(resp.content or b"[]")
        return body if isinstance(body, list) else []

    def close(self) -> None:
        """Close every connection (the client stays usable: a later request opens new ones)."""
        self.http.close()


def _full_url(url: str, params: Mapping[str, Any] | None) -> str:
    if not params:
        return url
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    if not query:
        return url
    return f"{url}&{query}" if "?" in url else f"{url}?{query}"


def check(resp: Reply, method: str, url: str, params: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`EdFiHTTPError` unless ``resp`` is a success."""
    if not resp.ok:
        raise EdFiHTTPError(method, _full_url(url, params), resp.status_code, server_message(resp),
                            response=resp)


__all__ = [
    "ApiInfo",
    "ApiUrls",
    "AuthError",
    "ClientStats",
    "EdFiClient",
    "EdFiHTTPError",
    "OriginError",
    "check",
    "parse_version",
    "resolve_urls",
    "retry_summary",
    "server_message",
]
