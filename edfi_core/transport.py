"""The one HTTP layer of both plugins: every request (token, discovery, pages, writes) goes through it.

It is built on ``urllib3`` directly (``PoolManager``, ``ProxyManager`` per proxy), not on ``requests``:
``requests`` spends about a millisecond of CPU preparing, sending and reading each request, and with a dozen
threads sharing the GIL that, not the API, caps throughput; ``urllib3`` reads a response in one piece. What
the layer does, in one place:

* **Environment**, read once when the layer is made: ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` (and
  their lower-case forms; user and password of a proxy URL go in ``Proxy-Authorization``), ``NO_PROXY``
  (hosts, domain suffixes, ``host:port``, CIDR ranges, ``*``), and the CA bundle: the ``ca_bundle`` setting,
  else ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``, ``SSL_CERT_FILE``, else ``certifi``'s.
* **verify_ssl false** turns certificate verification off for every request, whatever the environment says
  (a CA bundle variable never turns it back on), with one warning.
* **Timeouts**: ``connect_timeout`` for the TCP (and TLS) connection, and ``request_timeout`` as the deadline
  of the whole try (connection, request, response headers and body). A server that drips a byte at a time
  cannot hold a try past it: a watchdog thread shuts the socket of a try whose deadline has passed.
* **Connections** are pooled per origin and kept alive (``max_workers`` + 4 per origin); :meth:`HttpLayer.close`
  closes every one of them, and a layer that is garbage-collected or still open at exit is closed then, so that
  no ``ResourceWarning: unclosed socket`` is ever shown.

One try is :meth:`HttpLayer.send`; the retry rules (429 honouring ``Retry-After``, 500, 502, 503, 504,
timeouts and dropped connections with jittered exponential backoff, a 401 renewing the token once, a
kept-alive connection the server had closed re-sent at once) are :meth:`edfi_core.session.EdFiClient.request`.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import socket
import ssl
import threading
import time
import urllib.parse
import warnings
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
import urllib3
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import InsecureRequestWarning, ProtocolError

if TYPE_CHECKING:  # pragma: no cover
    from edfi_core.session import EdFiClient

logger = logging.getLogger(__name__)

#: what a kept-alive connection the server has closed looks like (the request is sent again at once)
STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class Reply:
    """The parts of a response the plugins read (``requests.Response``-compatible where it matters)."""

    __slots__ = ("content", "headers", "reason", "status_code")

    def __init__(self, status: int, reason: str, headers: Any, content: bytes) -> None:
        self.status_code = status
        self.reason = reason
        self.headers = headers  # case-insensitive .get()
        self.content = content

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return orjson.loads(self.content)


class TransportError(OSError):
    """One try got no complete response: ``reason`` says why (a class name such as ``RemoteDisconnected``, or
    the deadline that passed); ``stale`` when it went out on a kept-alive connection the server had closed."""

    def __init__(self, reason: str, *, stale: bool = False, cause: BaseException | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stale = stale
        self.cause = cause


# -- the deadline of a try -------------------------------------------------------------------------------------
class _Try:
    __slots__ = ("conn", "deadline", "expired")

    def __init__(self, conn: Any, deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self.expired = False


class _Watchdog:
    """Shuts the socket of a try whose deadline has passed (one daemon thread, woken 5 times a second while
    tries are in flight): the blocked read returns, and the try fails with the deadline as its reason."""

    TICK = 0.2

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._tries: set[_Try] = set()
        self._thread: threading.Thread | None = None

    def arm(self, conn: Any, deadline: float) -> _Try:
        entry = _Try(conn, deadline)
        with self._cond:
            self._tries.add(entry)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="edfi-http-deadlines", daemon=True)
                self._thread.start()
            elif len(self._tries) == 1:
                self._cond.notify()
        return entry

    def disarm(self, entry: _Try) -> None:
        with self._cond:
            self._tries.discard(entry)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._tries:
                    self._cond.wait()
                    continue
                self._cond.wait(self.TICK)
                now = time.monotonic()
                late = [t for t in self._tries if t.deadline <= now]
            for entry in late:
                sock = getattr(entry.conn, "sock", None)
                if sock is None:
                    continue  # still connecting (bounded by connect_timeout): next tick
                entry.expired = True
                try:
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, under any TLS layer
                except OSError:
                    pass
                self.disarm(entry)


_WATCHDOG = _Watchdog()
_local = threading.local()  # the deadline of this thread's try, and its entry


class _DeadlineMixin:
    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:  # connect (TLS), send, read all
        _local.reused = getattr(conn, "sock", None) is not None
        entry = _WATCHDOG.arm(conn, getattr(_local, "deadline", None) or time.monotonic() + 3600)
        _local.entry = entry
        try:
            return super()._make_request(conn, *args, **kwargs)  # type: ignore[misc]
        finally:
            _WATCHDOG.disarm(entry)


class _HTTPPool(_DeadlineMixin, HTTPConnectionPool):
    pass


class _HTTPSPool(_DeadlineMixin, HTTPSConnectionPool):
    pass


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


# -- the environment -------------------------------------------------------------------------------------------
def env_ca_bundle() -> str | None:
    """The CA bundle the environment names (what ``requests`` and OpenSSL read), if any."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(name)
        if value:
            return value
    return None


def _default_ca_bundle() -> str | None:
    try:
        import certifi
    except ImportError:  # pragma: no cover - requests depends on it
        return None
    return certifi.where()


def proxy_for(url: str) -> str | None:
    """The proxy the environment sets for ``url`` (None: direct, also when ``NO_PROXY`` names its host)."""
    from requests.utils import get_environ_proxies  # the same rules as requests and pip (CIDR, ports, *)

    proxies = get_environ_proxies(url)
    scheme = urllib.parse.urlsplit(url).scheme
    return proxies.get(scheme) or proxies.get("all") or None


def origin_of(url: str) -> str:
    """``scheme://host:port`` of a URL (default ports made explicit, host lower-case)."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}"


def _reason(exc: BaseException) -> tuple[str, BaseException]:
    """A short name for a failed try (``RemoteDisconnected``, ``ReadTimeoutError`` ...) and the innermost error."""
    inner: BaseException = exc
    seen = 0
    while seen < 5:
        seen += 1
        nxt = None
        if isinstance(inner, ProtocolError) and len(inner.args) > 1 and isinstance(inner.args[1], BaseException):
            nxt = inner.args[1]
        elif isinstance(inner, urllib3.exceptions.MaxRetryError) and inner.reason is not None:
            nxt = inner.reason
        elif isinstance(inner, urllib3.exceptions.ProxyError) and len(inner.args) > 1 \
                and isinstance(inner.args[1], BaseException):
            nxt = inner.args[1]
        if nxt is None:
            break
        inner = nxt
    name = type(inner).__name__
    if isinstance(inner, urllib3.exceptions.SSLError | ssl.SSLError | ssl.CertificateError):
        return f"{name}: {inner}", inner
    if isinstance(inner, urllib3.exceptions.NewConnectionError):
        return f"{name}: {inner}", inner
    return name, inner


class HttpLayer:
    """Connections, proxies, TLS and deadlines for every request of one client (thread-safe).

    ``verify``: verify TLS certificates (``verify_ssl``); ``ca_bundle``: a CA file (else the environment's,
    else certifi's); ``connect_timeout``; ``timeout``: the deadline of one try (``request_timeout``).
    """

    def __init__(self, *, verify: bool = True, ca_bundle: str | None = None, connect_timeout: float = 10.0,
                 timeout: float = 60.0, pool_size: int = 12, user_agent: str = "edfi-singer") -> None:
        self.verify = bool(verify)
        self.connect_timeout = float(connect_timeout)
        self.timeout = float(timeout)
        self.user_agent = user_agent
        self._timeout = urllib3.Timeout(connect=self.connect_timeout, read=self.timeout)
        kw: dict[str, Any] = {"maxsize": max(1, int(pool_size)), "block": False}
        if self.verify:
            self.ca_bundle = ca_bundle or env_ca_bundle() or _default_ca_bundle()
            kw.update(cert_reqs="CERT_REQUIRED", ca_certs=self.ca_bundle)
        else:
            self.ca_bundle = None
            kw.update(cert_reqs="CERT_NONE", assert_hostname=False)
            warnings.filterwarnings("ignore", category=InsecureRequestWarning)  # said once, below
        self._pool_kw = kw
        self._lock = threading.Lock()
        self._managers: dict[str | None, urllib3.PoolManager] = {}  # proxy URL (None: direct) -> manager
        self._routes: dict[str, urllib3.PoolManager] = {}  # origin -> its manager
        self._warned_insecure = False
        # close every pooled connection when the layer is collected or the interpreter exits
        self._finalizer = weakref.finalize(self, HttpLayer._clear, self._managers)

    def __repr__(self) -> str:
        return f"HttpLayer(verify={self.verify}, ca_bundle={self.ca_bundle!r})"

    # -- routing ------------------------------------------------------------------------------------------------
    def _manager(self, url: str) -> urllib3.PoolManager:
        origin = origin_of(url)
        manager = self._routes.get(origin)
        if manager is not None:
            return manager
        with self._lock:
            manager = self._routes.get(origin)
            if manager is None:
                proxy = proxy_for(url)
                manager = self._managers.get(proxy)
                if manager is None:
                    manager = self._make_manager(proxy)
                    self._managers[proxy] = manager
                self._routes[origin] = manager
                if proxy:
                    logger.info("requests to %s go through the proxy %s", origin, _redact(proxy))
                if origin.startswith("https:") and not self.verify and not self._warned_insecure:
                    self._warned_insecure = True
                    logger.warning("verify_ssl is false: the TLS certificate of %s (and of every other host) is not "
                                   "verified, so anyone on the network path can read and change the traffic, "
                                   "credentials included", origin)
        return manager

    def _make_manager(self, proxy: str | None) -> urllib3.PoolManager:
        manager: urllib3.PoolManager
        if proxy:
            parsed = urllib3.util.parse_url(proxy)
            headers = None
            if parsed.auth:
                user, _, password = parsed.auth.partition(":")
                basic = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
                headers = {"Proxy-Authorization": "Basic " + base64.b64encode(basic.encode()).decode()}
            manager = urllib3.ProxyManager(proxy, num_pools=8, proxy_headers=headers, **self._pool_kw)
        else:
            manager = urllib3.PoolManager(num_pools=8, **self._pool_kw)
        manager.pool_classes_by_scheme = _POOLS  # type: ignore[assignment]
        return manager

    # -- one try ----------------------------------------------------------------------------------------------
    def send(self, method: str, url: str, *, body: bytes | None = None,
             headers: Mapping[str, str] | None = None) -> Reply:
        """One try: the complete response, or :class:`TransportError` (no complete response within the deadline,
        refused, reset, dropped mid-body, TLS failure)."""
        manager = self._manager(url)
        hdrs = {"User-Agent": self.user_agent, "Accept": "application/json", **(headers or {})}
        _local.deadline = time.monotonic() + self.timeout
        _local.entry = None
        _local.reused = False
        try:
            resp = manager.urlopen(method, url, body=body, headers=hdrs, retries=False, redirect=False,
                                   timeout=self._timeout, preload_content=True, assert_same_host=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            entry: _Try | None = _local.entry
            reason, inner = _reason(exc)
            if isinstance(inner, urllib3.exceptions.ConnectTimeoutError):
                raise TransportError(f"no connection within {self.connect_timeout:g} s (connect_timeout)",
                                     cause=exc) from exc
            if (entry is not None and entry.expired) or isinstance(inner, urllib3.exceptions.ReadTimeoutError
                                                                   | TimeoutError):
                # a read that waited request_timeout for a byte is past the deadline too
                raise TransportError(
                    f"no complete response within {self.timeout:g} s (request_timeout)", cause=exc) from exc
            stale = bool(_local.reused) and isinstance(inner, STALE)
            raise TransportError(reason, stale=stale, cause=exc) from exc
        return Reply(resp.status, resp.reason or "", resp.headers, resp.data)

    # -- closing ---------------------------------------------------------------------------------------------
    @staticmethod
    def _clear(managers: dict[str | None, urllib3.PoolManager]) -> None:
        for manager in list(managers.values()):
            manager.clear()

    def close(self) -> None:
        """Close every pooled connection (the layer stays usable: a later request opens new ones)."""
        with self._lock:
            self._clear(self._managers)
            self._managers.clear()
            self._routes.clear()


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password or parts.username:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, "***@" + netloc, parts.path, parts.query, parts.fragment))
    return url


class Transport:
    """Kept for callers that hold one: requests through the client's one HTTP layer and retry rules."""

    def __init__(self, client: EdFiClient) -> None:
        self.client = client

    def request(self, method: str, url: str, *, data: bytes | None = None,
                params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None) -> Reply:
        """Send with the client's retry rules; the final response (any non-transient status)."""
        return self.client.request(method, url, data=data, params=params, headers=headers)

    def close(self) -> None:
        self.client.http.close()


__all__ = ["HttpLayer", "Reply", "Transport", "TransportError", "env_ca_bundle", "origin_of", "proxy_for"]
