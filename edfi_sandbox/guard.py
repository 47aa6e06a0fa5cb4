"""Connection limits of the sandbox's HTTP server: request headers must arrive within a deadline and stay small.

uvicorn bounds only idle keep-alive connections (``timeout_keep_alive``, armed after a response): a client that
connects and never finishes its request headers holds its connection (and a file descriptor) forever. The
protocol here arms a timer when a connection opens and when a request begins, and disarms it when the headers are
complete; when it fires the server answers 408 and closes, as Kestrel does on ``RequestHeadersTimeout``. Headers
larger than ``max_header_bytes`` get 431 (Kestrel: ``MaxRequestHeadersTotalSize``, 32 KB). Request bodies are
bounded by the application (:class:`edfi_sandbox.app.SandboxApp`: a size limit and a read deadline).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # uvicorn[standard]: httptools

TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
TOO_LARGE_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a deadline and a size limit for request headers."""

    header_timeout: float = 10.0
    max_header_bytes: int = 32 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0

    @classmethod
    def configured(cls, header_timeout: float, max_header_bytes: int) -> type[GuardedProtocol]:
        return type("GuardedProtocol", (cls,), {"header_timeout": header_timeout,
                                                "max_header_bytes": max_header_bytes})

    # -- the timer --------------------------------------------------------------------------------------
    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _refuse(self, answer: bytes) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        self._refuse(TIMEOUT_408)

    # -- uvicorn's callbacks ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        timer = self._header_timer
        super().data_received(data)
        if timer is not None and self._header_timer is timer:  # the same request's headers are still coming
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse(TOO_LARGE_431)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # the next request of a keep-alive connection

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
