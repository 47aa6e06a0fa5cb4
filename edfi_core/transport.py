"""The one HTTP layer of both plugins: every request (token, discovery, counts, pages, writes) goes through it.

It is built on the standard library's ``http.client`` with one keep-alive connection per thread and origin: a
load is thousands of small requests and an extraction hundreds of 500-item pages, and either way the cost is
mostly the client's own. Measured on this project's machine, a small POST costs 134 µs of client CPU here,
428 µs through ``urllib3``'s ``PoolManager`` and about a millisecond through ``requests`` (which also reads a
page in 10 KB chunks); with a dozen threads sharing the GIL that, not the API, caps throughput. What the layer
does, in one place:

* **Environment**, read once per origin: ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` (and their lower-case
  forms; user and password of a proxy URL go in ``Proxy-Authorization``; https is tunnelled with ``CONNECT``),
  ``NO_PROXY`` (hosts, domain suffixes, ``host:port``, CIDR ranges, ``*``: the rules of ``requests``), and the
  CA bundle: the ``ca_bundle`` setting, else ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``, ``SSL_CERT_FILE``, else
  ``certifi``'s.
* **verify_ssl false** turns certificate verification off for every request, whatever the environment says
  (a CA bundle variable never turns it back on), with one warning.
* **Timeouts**: ``connect_timeout`` for the TCP (and TLS) connection, and ``request_timeout`` as the deadline
  of the whole try (connection, request, response headers and body). A server that drips a byte at a time
  cannot hold a try past it: a watchdog thread shuts the socket of a try whose deadline has passed.
* **Connections**: every connection opened is registered; :meth:`HttpLayer.close` closes all of them, whichever
  thread opened them, and a layer that is garbage-collected or still open at exit is closed then, so that no
  ``ResourceWarning: unclosed socket`` is ever shown.

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
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

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

    def __init__(self, reason: str, *, stale: bool = False, retriable: bool = True,
                 cause: BaseException | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stale = stale
        self.retriable = retriable  # False: trying again cannot help (an untrusted certificate)
        self.cause = cause


# -- the deadline of a try -------------------------------------------------------------------------------------
class _Try:
    __slots__ = ("conn", "deadline", "expired")

    def __init__(self, conn: Any, deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self.expired = False


class _Watchdog:
    """Shuts the socket of a try whose deadline has passed (one daemon thread that looks 5 times a second, and
    is never woken by a request: arming and disarming a try is a set operation under a lock): the blocked read
    returns, and the try fails with the deadline as its reason."""

    TICK = 0.2

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tries: set[_Try] = set()
        self._thread: threading.Thread | None = None

    def arm(self, conn: Any, deadline: float) -> _Try:
        entry = _Try(conn, deadline)
        with self._lock:
            self._tries.add(entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="edfi-http-deadlines", daemon=True)
                self._thread.start()
        return entry

    def disarm(self, entry: _Try) -> None:
        with self._lock:
            self._tries.discard(entry)

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK)
            now = time.monotonic()
            with self._lock:
                late = [t for t in self._tries if t.deadline <= now] if self._tries else []
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


def _reason(exc: BaseException) -> str:
    """A short name for a failed try (``RemoteDisconnected``, ``IncompleteRead`` ...), with the text of errors whose
    text is the point (certificates, refused connections, a proxy's answer)."""
    name = type(exc).__name__
    if isinstance(exc, ssl.SSLError | ssl.CertificateError | ConnectionRefusedError | socket.gaierror) or (
            type(exc) is OSError and str(exc)):
        return f"{name}: {exc}"
    return name


class _Route:
    """How requests to one origin go: directly, through a forward proxy (http), or tunnelled through one (https)."""

    __slots__ = ("connect_to", "forward", "proxy", "proxy_headers", "tunnel")

    def __init__(self, scheme: str, host: str, port: int, proxy: str | None) -> None:
        self.proxy = proxy
        self.proxy_headers: dict[str, str] = {}
        self.forward = False
        self.tunnel: tuple[str, int] | None = None
        self.connect_to = (scheme, host, port)
        if not proxy:
            return
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parts.scheme.lower() != "http":
            raise ValueError(f"the proxy {_redact(proxy)} is not an http:// proxy URL: only http:// proxies (which "
                             "tunnel https with CONNECT) are supported")
        if parts.username:
            basic = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self.proxy_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
        proxy_host, proxy_port = parts.hostname or "", parts.port or 80
        if scheme == "https":
            self.tunnel = (host, port)
            self.connect_to = ("https", proxy_host, proxy_port)  # TLS with the API inside a CONNECT tunnel
        else:
            self.forward = True  # absolute-form request targets
            self.connect_to = ("http", proxy_host, proxy_port)


class HttpLayer:
    """Connections, proxies, TLS and deadlines for every request of one client (thread-safe).

    Each thread keeps one keep-alive ``http.client`` connection per origin (``requests`` and ``urllib3`` cost
    three to eight times the CPU per request: measured in the README's Performance section); every connection
    opened is registered, so that :meth:`close` closes them all, whichever thread opened them.

    ``verify``: verify TLS certificates (``verify_ssl``); ``ca_bundle``: a CA file (else the environment's,
    else certifi's); ``connect_timeout``; ``timeout``: the deadline of one try (``request_timeout``).
    """

    def __init__(self, *, verify: bool = True, ca_bundle: str | None = None, connect_timeout: float = 10.0,
                 timeout: float = 60.0, pool_size: int = 12, user_agent: str = "edfi-singer") -> None:
        self.verify = bool(verify)
        self.connect_timeout = float(connect_timeout)
        self.timeout = float(timeout)
        self.user_agent = user_agent
        if self.verify:
            self.ca_bundle = ca_bundle or env_ca_bundle() or _default_ca_bundle()
            try:
                self._ssl = ssl.create_default_context(cafile=self.ca_bundle)
            except (OSError, ssl.SSLError) as exc:
                source = "the ca_bundle setting" if ca_bundle else "REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE or SSL_CERT_FILE"
                raise ValueError(f"the CA bundle {self.ca_bundle} ({source}) cannot be read as PEM certificates: "
                                 f"{exc}") from exc
        else:
            self.ca_bundle = None
            self._ssl = ssl.create_default_context()
            self._ssl.check_hostname = False
            self._ssl.verify_mode = ssl.CERT_NONE  # the user asked for it (verify_ssl false): said once, below
        self._lock = threading.Lock()
        self._local = threading.local()
        self._routes: dict[tuple[str, str], _Route] = {}
        self._open: set[http.client.HTTPConnection] = set()  # every connection with a socket, any thread's
        self._warned_insecure = False
        # close every connection when the layer is collected or the interpreter exits
        self._finalizer = weakref.finalize(self, HttpLayer._close_all, self._open, self._lock)

    def __repr__(self) -> str:
        return f"HttpLayer(verify={self.verify}, ca_bundle={self.ca_bundle!r})"

    # -- routing and connections ----------------------------------------------------------------------------
    def _route(self, scheme: str, netloc: str, url: str) -> _Route:
        key = (scheme, netloc)
        route = self._routes.get(key)
        if route is not None:
            return route
        with self._lock:
            route = self._routes.get(key)
            if route is None:
                parts = urllib.parse.urlsplit(url)
                if scheme not in ("http", "https") or not parts.hostname:
                    raise TransportError(f"not an http(s) URL: {url}")
                port = parts.port or (443 if scheme == "https" else 80)
                proxy = proxy_for(url)
                route = _Route(scheme, parts.hostname, port, proxy)
                self._routes[key] = route
                if proxy:
                    logger.info("requests to %s go through the proxy %s", origin_of(url), _redact(proxy))
                if scheme == "https" and not self.verify and not self._warned_insecure:
                    self._warned_insecure = True
                    logger.warning("verify_ssl is false: the TLS certificate of %s (and of every other host) is not "
                                   "verified, so anyone on the network path can read and change the traffic, "
                                   "credentials included", origin_of(url))
        return route

    def _connection(self, key: tuple[str, str], route: _Route) -> http.client.HTTPConnection:
        conns: dict[tuple[str, str], http.client.HTTPConnection] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(key)
        if conn is None:
            scheme, host, port = route.connect_to
            if scheme == "https":
                conn = http.client.HTTPSConnection(host, port, timeout=self.connect_timeout, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
            if route.tunnel is not None:
                conn.set_tunnel(*route.tunnel, headers=route.proxy_headers or None)
            conn._edfi_used = False  # type: ignore[attr-defined]
            conns[key] = conn
        return conn

    def _drop(self, key: tuple[str, str], conn: http.client.HTTPConnection) -> None:
        conns = getattr(self._local, "conns", None) or {}
        if conns.get(key) is conn:
            del conns[key]
        with self._lock:
            self._open.discard(conn)
        try:
            conn.close()
        except OSError:
            pass

    # -- one try ----------------------------------------------------------------------------------------------
    def send(self, method: str, url: str, *, body: bytes | None = None,
             headers: Mapping[str, str] | None = None) -> Reply:
        """One try: the complete response, or :class:`TransportError` (no connection within ``connect_timeout``,
        no complete response within the deadline, refused, reset, dropped mid-body, TLS failure). A request that
        went out on a kept-alive connection the server had closed meanwhile never arrived: it is sent again at
        once on a new connection, within the same try."""
        try:
            return self._send(method, url, body, headers)
        except TransportError as exc:
            if not exc.stale:
                raise
        return self._send(method, url, body, headers)

    def _send(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str] | None) -> Reply:
        scheme, netloc, path, query, _ = urllib.parse.urlsplit(url)
        scheme = scheme.lower()
        key = (scheme, netloc)
        route = self._route(scheme, netloc, url)
        target = (path or "/") + (f"?{query}" if query else "")
        hdrs = {"Accept": "application/json", "User-Agent": self.user_agent, **(headers or {})}
        if route.forward:
            target = f"{scheme}://{netloc}{target}"
            hdrs["Host"] = netloc
            hdrs.update(route.proxy_headers)
        conn = self._connection(key, route)
        reused = conn._edfi_used  # type: ignore[attr-defined]
        entry = _WATCHDOG.arm(conn, time.monotonic() + self.timeout)
        try:
            if conn.sock is None:
                try:
                    conn.connect()
                except TimeoutError as exc:
                    self._drop(key, conn)
                    raise TransportError(f"no connection within {self.connect_timeout:g} s (connect_timeout)",
                                         cause=exc) from exc
                with self._lock:
                    self._open.add(conn)
                sock = conn.sock
                assert sock is not None  # connect() opened it
                sock.settimeout(self.timeout)
                reused = False
            conn.request(method, target, body=body, headers=hdrs)
            raw = conn.getresponse()
            content = raw.read()
        except TransportError:
            raise
        except (http.client.HTTPException, OSError) as exc:
            self._drop(key, conn)
            if isinstance(exc, ssl.SSLCertVerificationError | ssl.CertificateError):
                raise TransportError(f"{_reason(exc)} (the server's certificate is not trusted: give its CA in "
                                     "ca_bundle or REQUESTS_CA_BUNDLE)", retriable=False, cause=exc) from exc
            if entry.expired or isinstance(exc, TimeoutError):  # a read that waited request_timeout is late too
                raise TransportError(f"no complete response within {self.timeout:g} s (request_timeout)",
                                     cause=exc) from exc
            raise TransportError(_reason(exc), stale=reused and isinstance(exc, STALE), cause=exc) from exc
        finally:
            _WATCHDOG.disarm(entry)
        conn._edfi_used = True  # type: ignore[attr-defined]
        if raw.will_close:
            self._drop(key, conn)
        return Reply(raw.status, raw.reason, raw.headers, content)

    # -- closing ---------------------------------------------------------------------------------------------
    @staticmethod
    def _close_all(conns: set[http.client.HTTPConnection], lock: threading.Lock) -> None:
        with lock:
            todo = list(conns)
            conns.clear()
        for conn in todo:
            try:
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        """Close every connection of every thread (the layer stays usable: a later request opens new ones)."""
        self._close_all(self._open, self._lock)


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
        self.client.close()


__all__ = ["HttpLayer", "Reply", "Transport", "TransportError", "env_ca_bundle", "origin_of", "proxy_for"]
