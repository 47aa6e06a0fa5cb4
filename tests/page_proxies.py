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
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall per answer

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
                if (self.command == "GET" and resp.status == 200 and content.lstrip()[:1] in proxy.bodies
                        and proxy.match(urllib.parse.urlsplit(self.path).path)):
                    spoiled = proxy._maybe_spoil(content, out_headers, self.path)
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

    #: the first bytes of the bodies that may be spoiled (JSON arrays: data pages)
    bodies: tuple[bytes, ...] = (b"[",)

    def _maybe_spoil(self, body: bytes, headers: dict[str, str], target: str) -> tuple[bytes, dict[str, str]] | None:
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


#: what a :class:`ScriptedPageProxy` script is given (the request's path, its query, how many times this very
#: request was answered before, the sandbox's body and headers) and returns (a body and headers, or None)
Script = Callable[[str, dict[str, str], int, bytes, dict[str, str]], "tuple[bytes, dict[str, str]] | None"]


class ScriptedPageProxy(OddPageProxy):
    """An :class:`OddPageProxy` whose spoiling is decided by ``script``, not by chance: every successful JSON
    answer under ``/data/`` (pages and ``/partitions``) is passed to it with the request that asked for it and the
    number of earlier answers to the same request (path and query), so a test replays exactly the answers it
    means, whatever order concurrent requests arrive in. ``answers`` counts the answers, ``spoiled`` those the
    script changed."""

    bodies = (b"[", b"{")

    def __init__(self, upstream: str, script: Script | None = None) -> None:
        super().__init__(upstream, kinds=(), share=0.0)
        self.script = script
        self._seen: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        self.answers = 0
        self.spoiled = 0

    def replay(self, script: Script | None) -> None:
        """Start over with ``script`` (occurrences counted from 0 again)."""
        with self._lock:
            self.script = script
            self._seen = {}
            self.answers = self.spoiled = 0

    def _maybe_spoil(self, body: bytes, headers: dict[str, str], target: str) -> tuple[bytes, dict[str, str]] | None:
        parts = urllib.parse.urlsplit(target)
        query = dict(urllib.parse.parse_qsl(parts.query))
        key = (parts.path, tuple(sorted(query.items())))
        with self._lock:
            script = self.script
            occurrence = self._seen.get(key, 0)
            self._seen[key] = occurrence + 1
            self.answers += 1
        out = script(parts.path, query, occurrence, body, headers) if script is not None else None
        if out is not None:
            with self._lock:
                self.spoiled += 1
        return out


__all__ = ["ODD_KINDS", "OddPageProxy", "Script", "ScriptedPageProxy", "spoil"]
