"""Hostile intermediaries for the target tests: a forwarding HTTP proxy on 127.0.0.1 that spoils a share of writes.

:class:`FaultProxy` listens on a free loopback port and forwards every request to an upstream server (a sandbox),
keeping the ``Host`` header the client sent, so the sandbox's root payload points clients back at the proxy. A
share of the *writes* (POST, PUT, DELETE to the data management API) is spoiled, one way per request:

``html``
    not forwarded; answered ``200 text/html`` with a login page, as a proxy or a maintenance page does;
``hang``
    forwarded (the write lands), then no answer: the connection is held ``hang_seconds`` and closed;
``drop``
    forwarded (the write lands), then the connection is closed without a response;
``busy``
    not forwarded; answered ``503`` (``Retry-After: 0``), as an overloaded gateway does.

``only`` limits the spoiling to writes whose path contains one of the given strings (the query string
included); ``methods`` spoils other methods instead of the writes (``("GET",)``: lookups and reads).
Everything is bounded: at most ``max_faults`` spoiled requests, hangs of at most ``hang_seconds``, and the
server stops with :meth:`stop` (or the ``with`` block). It binds 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import http.server
import random
import socket
import threading
import time
from collections import Counter
from types import TracebackType
from typing import Any

LOGIN_PAGE = (b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><form method='post'>"
              b"<input name='user'><input name='password' type='password'></form></body></html>")
WRITES = ("POST", "PUT", "DELETE")


class FaultProxy:
    """A threaded forwarding proxy on loopback that answers a share of writes badly (see the module doc)."""

    def __init__(self, upstream: str, *, html: float = 0.0, hang: float = 0.0, drop: float = 0.0,
                 busy: float = 0.0, only: tuple[str, ...] = (), hang_seconds: float = 2.0,
                 max_faults: int = 100_000, seed: int = 7, methods: tuple[str, ...] = WRITES) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        assert host in ("127.0.0.1", "localhost"), "the proxy forwards to loopback only"
        self.upstream = (host, int(port.split("/")[0] or 80))
        self.shares = {"html": html, "hang": hang, "drop": drop, "busy": busy}
        self.only = only
        self.methods = methods
        self.spoiled: list[str] = []  # the method and path (with query) of every spoiled request
        self.hang_seconds = min(float(hang_seconds), 30.0)
        self.max_faults = max_faults
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.faults: Counter = Counter()  # mode -> requests spoiled
        self.forwarded: Counter = Counter()  # method -> requests forwarded
        self._stopping = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                mode = proxy._choose(self.command, self.path)
                if mode == "html":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(LOGIN_PAGE)))
                    self.end_headers()
                    self.wfile.write(LOGIN_PAGE)
                    return
                if mode == "busy":
                    page = b"<html><body>Service Unavailable</body></html>"
                    self.send_response(503)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                status, reason, headers, content = proxy._forward(self.command, self.path, dict(self.headers), body)
                if mode == "hang":
                    proxy._stopping.wait(proxy.hang_seconds)
                    self._abort()
                    return
                if mode == "drop":
                    self._abort()
                    return
                self.send_response(status, reason)
                for name, value in headers:
                    if name.lower() not in ("connection", "transfer-encoding", "keep-alive", "date", "server"):
                        self.send_header(name, value)
                self.end_headers()
                self.wfile.write(content)

            def _abort(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"fault-proxy-{self.port}",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, **shares: float) -> None:
        """Change the shares (``html=0, hang=0, drop=0, busy=0`` turns the faults off)."""
        with self.lock:
            self.shares.update(shares)

    def _choose(self, method: str, path: str) -> str | None:
        if method not in self.methods or "/data/" not in path:
            return None
        if self.only and not any(part in path for part in self.only):
            return None
        with self.lock:
            if sum(self.faults.values()) >= self.max_faults:
                return None
            roll = self.random.random()
            for mode, share in self.shares.items():
                if roll < share:
                    self.faults[mode] += 1
                    self.spoiled.append(f"{method} {path}")
                    return mode
                roll -= share
        return None

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes
                 ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            keep = {k: v for k, v in headers.items() if k.lower() not in ("connection", "keep-alive")}
            conn.request(method, path, body=body or None, headers=keep)
            resp = conn.getresponse()
            content = resp.read()
            with self.lock:
                self.forwarded[method] += 1
            return resp.status, resp.reason, resp.getheaders(), content
        finally:
            conn.close()

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def wait_until(predicate: Any, seconds: float = 10.0) -> bool:
    """Poll ``predicate`` until it is true or ``seconds`` passed (bounded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


__all__ = ["LOGIN_PAGE", "FaultProxy", "wait_until"]
