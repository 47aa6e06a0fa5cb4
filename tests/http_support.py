"""Small loopback HTTP servers for the tests of the HTTP layer (bound to 127.0.0.1 only, bounded in time).

* :class:`ForwardProxy`: a logging forward proxy (``HTTP_PROXY``): absolute-form requests and ``CONNECT``.
* :class:`ReverseProxy`: a front for a sandbox: optionally TLS-terminating (a private CA's certificate), with
  a ``Host`` it rewrites, ``X-Forwarded-Proto``, a body rewrite, responses dripped a byte at a time, or 401
  for requests without credentials; it logs every request it sees (method, path, whether it had credentials).
* :class:`HungPort`: accepts connections and never answers.
* :func:`private_ca`: a CA and a server certificate for 127.0.0.1/localhost, made with the ``openssl`` CLI.
"""

from __future__ import annotations

import http.client
import http.server
import select
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
       "transfer-encoding", "upgrade", "content-length"}
LIMIT = 300.0  # no connection or drip of these servers lives longer than this (seconds)


@dataclass
class Seen:
    method: str
    url: str  # absolute for a forward proxy, the path for a front
    authorized: bool  # an Authorization header (Basic or Bearer) was sent


def _forward(method: str, host: str, port: int, target: str, headers: dict[str, str], body: bytes | None
             ) -> tuple[int, str, list[tuple[str, str]], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.reason, resp.getheaders(), resp.read()
    finally:
        conn.close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, handler: type, tls: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.tls = tls

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(30)
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            request.close()  # e.g. a client that does not trust the certificate
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()  # the server closes the plain socket it accepted, whose descriptor this one took

    def handle_error(self, request: Any, client_address: Any) -> None:  # a client that went away
        pass


class _Base:
    def __init__(self, handler: type, tls: ssl.SSLContext | None = None) -> None:
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self.server = _Server(handler, tls)
        self.server.owner = self  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()

    def log(self, method: str, url: str, headers: Any) -> None:
        with self._lock:
            self.seen.append(Seen(method, url, bool(headers.get("Authorization"))))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60

    def log_message(self, *args: Any) -> None:
        pass

    @property
    def owner(self) -> Any:
        return self.server.owner  # type: ignore[attr-defined]

    def _body(self) -> bytes | None:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _reply(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes,
               drip: float = 0.0) -> None:
        if not drip:
            self.send_response(status, reason)
            for key, value in headers:
                if key.lower() not in HOP:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        # the whole response, status line and headers included, a byte at a time (until done, the client leaves,
        # or LIMIT)
        lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers if k.lower() not in HOP]
        raw = ("\r\n".join([*lines, f"Content-Length: {len(data)}", "Connection: close"]) + "\r\n\r\n").encode()
        raw += data
        started = time.monotonic()
        self.close_connection = True
        try:
            for i in range(len(raw)):
                if time.monotonic() - started > LIMIT:
                    break
                self.wfile.write(raw[i:i + 1])
                self.wfile.flush()
                time.sleep(drip)
        except OSError:
            return


# -- a forward proxy ---------------------------------------------------------------------------------------
class ForwardProxy(_Base):
    """``HTTP_PROXY=proxy.url``: logs and forwards absolute-form requests, tunnels ``CONNECT``."""

    def __init__(self) -> None:
        super().__init__(_ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class _ProxyHandler(_Handler):
    def _proxy(self) -> None:
        body = self._body()
        self.owner.log(self.command, self.path, self.headers)
        parts = urllib.parse.urlsplit(self.path)
        if parts.scheme != "http" or not parts.hostname:
            self._reply(400, "Bad Request", [], b"absolute http URL expected")
            return
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        status, reason, resp_headers, data = _forward(self.command, parts.hostname, parts.port or 80, target,
                                                      headers, body)
        self._reply(status, reason, resp_headers, data)

    do_GET = do_POST = do_PUT = do_DELETE = _proxy

    def do_CONNECT(self) -> None:
        self.owner.log("CONNECT", self.path, self.headers)
        host, _, port = self.path.rpartition(":")
        upstream = socket.create_connection((host, int(port)), timeout=30)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        started = time.monotonic()
        sockets = [self.connection, upstream]
        try:
            while time.monotonic() - started < LIMIT:
                readable, _, _ = select.select(sockets, [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is self.connection else self.connection).sendall(data)
        except OSError:
            return
        finally:
            upstream.close()
            self.close_connection = True


# -- a front for a sandbox ----------------------------------------------------------------------------------
class ReverseProxy(_Base):
    """A front for ``upstream`` (``http://127.0.0.1:port``).

    ``tls``: serve https with this context; ``host``: the ``Host`` the upstream sees (the sandbox builds its URLs
    from it); ``forwarded_proto``: sent as ``X-Forwarded-Proto`` (uvicorn trusts it from loopback);
    ``rewrite(method, path, body)``: the response body the client gets; ``drip(method, path)``: seconds between
    the bytes of that response (0: all at once); ``require_auth``: 401 to a request without credentials.
    """

    def __init__(self, upstream: str, *, tls: ssl.SSLContext | None = None, host: str | None = None,
                 forwarded_proto: str | None = None, rewrite: Callable[[str, str, bytes], bytes] | None = None,
                 drip: Callable[[str, str], float] | None = None, require_auth: bool = False) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.host = host
        self.forwarded_proto = forwarded_proto
        self.rewrite = rewrite
        self.drip = drip
        self.require_auth = require_auth
        self.scheme = "https" if tls is not None else "http"
        super().__init__(_FrontHandler, tls)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


class _FrontHandler(_Handler):
    def _front(self) -> None:
        owner: ReverseProxy = self.owner
        body = self._body()
        owner.log(self.command, self.path, self.headers)
        if owner.require_auth and not self.headers.get("Authorization"):
            self._reply(401, "Unauthorized", [("Content-Type", "application/json")],
                        b'{"message": "Authorization has been denied for this request."}')
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        if owner.host:
            headers["Host"] = owner.host
        if owner.forwarded_proto:
            headers["X-Forwarded-Proto"] = owner.forwarded_proto
        status, reason, resp_headers, data = _forward(self.command, *owner.upstream, self.path, headers, body)
        if owner.rewrite is not None:
            data = owner.rewrite(self.command, self.path, data)
        drip = owner.drip(self.command, self.path) if owner.drip is not None else 0.0
        self._reply(status, reason, resp_headers, data, drip=drip)

    do_GET = do_POST = do_PUT = do_DELETE = _front


# -- a port that never answers --------------------------------------------------------------------------------
class HungPort:
    """Accepts TCP connections (the kernel does, from its backlog) and never reads or answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HungPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# -- a private CA -----------------------------------------------------------------------------------------------
@dataclass
class PrivateCA:
    ca: Path  # the CA certificate (what a client trusts)
    cert: Path  # the server certificate (127.0.0.1, localhost), signed by the CA
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


def private_ca(directory: Path, name: str = "ca") -> PrivateCA:
    """A fresh CA and a server certificate for 127.0.0.1 and localhost (``openssl`` CLI)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / f"{name}.key", directory / f"{name}.pem"
    key, csr, crt = directory / f"{name}-server.key", directory / f"{name}-server.csr", directory / f"{name}-server.pem"
    ext = directory / f"{name}-server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_crt), "-days", "2",
        "-subj", f"/CN=edfi-singer test CA {name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(crt), "-days", "2", "-extfile", str(ext))
    return PrivateCA(ca_crt, crt, key)


__all__ = ["ForwardProxy", "HungPort", "PrivateCA", "ReverseProxy", "Seen", "private_ca"]
