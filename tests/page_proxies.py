"""Small loopback HTTP proxies for hostile-server tests: they forward to a sandbox and spoil some answers.

:class:`OddPageProxy` answers a share of the data pages (successful GETs whose body is a JSON array) with
a 200 that is not what the sandbox said: an empty body, a JSON object, half the page, a ``Total-Count``
cut to 60 %, no ``Total-Count`` at all, HTML, or JSON cut in the middle. The ``Host`` header is passed on,
so every URL the sandbox writes (root payload, ``Location``) points back at the proxy. It binds 127.0.0.1
only; each connection is served by its own daemon thread and the server stops when the test ends.
"""

from __future__ import annotations

import http.client
import http.server
import random
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

import orjson

ODD_KINDS = ("empty", "object", "half", "count60", "strip_count", "html", "truncated")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate"}


def spoil(kind: str, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]] | None:
    """The spoiled (body, headers) of a JSON array page, or None when ``kind`` changes nothing here."""
    headers = dict(headers)
    count_key = next((k for k in headers if k.lower() == "total-count"), None)
    if kind == "empty":
        return b"", headers
    if kind == "object":
        return b'{"value":' + body + b"}", headers
    if kind == "half":
        items = orjson.loads(body)
        if len(items) < 2:
            return None
        return orjson.dumps(items[: len(items) // 2]), headers
    if kind == "count60":
        if count_key is None or int(headers[count_key]) == 0:
            return None
        headers[count_key] = str(int(int(headers[count_key]) * 0.6))
        return body, headers
    if kind == "strip_count":
        if count_key is None:
            return None
        del headers[count_key]
        return body, headers
    if kind == "html":
        for key in [k for k in headers if k.lower() == "content-type"]:
            del headers[key]
        headers["Content-Type"] = "text/html"
        return b"<html><body><h1>Service temporarily unavailable</h1></body></html>", headers
    if kind == "truncated":
        if len(body) < 4:
            return None
        return body[: len(body) // 2], headers
    raise ValueError(f"unknown kind {kind!r}")


class OddPageProxy:
    """Forward to ``upstream`` (``http://127.0.0.1:port``); spoil ``share`` of the data pages with ``kinds``.

    ``match(path)`` chooses which data pages may be spoiled (default: every collection GET under ``/data/``).
    ``injected`` counts what was done, by kind; ``pages`` counts the data pages seen.
    """

    def __init__(self, upstream: str, kinds: Iterable[str], share: float, seed: int = 0,
                 match: Callable[[str], bool] | None = None) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        assert parsed.hostname in ("127.0.0.1", "localhost"), "loopback only"
        self.upstream = (parsed.hostname, parsed.port or 80)
        self.kinds = tuple(kinds)
        for kind in self.kinds:
            assert kind in ODD_KINDS, kind
        self.share = share
        self.match = match or (lambda path: "/data/" in path)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.injected: dict[str, int] = {}
        self.pages = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn = getattr(self, "_upstream", None)
                if conn is None:
                    conn = self._upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    content = resp.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    self._upstream = None
                    self.send_error(502)
                    return
                out_headers = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}
                if (self.command == "GET" and resp.status == 200 and content.lstrip()[:1] == b"["
                        and proxy.match(urllib.parse.urlsplit(self.path).path)):
                    spoiled = proxy._maybe_spoil(content, out_headers)
                    if spoiled is not None:
                        content, out_headers = spoiled
                self.send_response(resp.status, resp.reason)
                for key, value in out_headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

            def finish(self) -> None:
                conn = getattr(self, "_upstream", None)
                if conn is not None:
                    conn.close()
                super().finish()

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    def _maybe_spoil(self, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]] | None:
        with self._lock:
            self.pages += 1
            if not self.kinds or self._rng.random() >= self.share:
                return None
            kind = self._rng.choice(self.kinds)
        spoiled = spoil(kind, body, headers)
        if spoiled is not None:
            with self._lock:
                self.injected[kind] = self.injected.get(kind, 0) + 1
        return spoiled

    def set(self, kinds: Iterable[str] | None = None, share: float | None = None) -> None:
        with self._lock:
            if kinds is not None:
                self.kinds = tuple(kinds)
            if share is not None:
                self.share = share

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OddPageProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="odd-page-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> OddPageProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["ODD_KINDS", "OddPageProxy", "spoil"]
