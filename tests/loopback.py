"""A guard for tests that run peer tools: every connection and name lookup that is not loopback is refused."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def is_loopback(host: Any) -> bool:
    name = host.decode() if isinstance(host, bytes) else host
    return name is None or name in LOOPBACK or str(name).startswith("127.")


@contextlib.contextmanager
def loopback_guard(who: str = "something") -> Iterator[list[Any]]:
    """Refuse (and record, in the list yielded) every non-loopback connection or lookup; no proxies. Fails on
    exit if anything was refused and is still recorded (a test that provokes refusals clears the list)."""
    refused: list[Any] = []
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address[0]):
            refused.append(address[0])
            raise OSError(f"peer-test guard: refused non-loopback connection to {address!r}")

    def guarded_connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        return connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return connect_ex(self, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_loopback(host):
            refused.append(host)
            raise OSError(f"peer-test guard: refused name lookup of {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            mp.delenv(var, raising=False)
        mp.setenv("NO_PROXY", "127.0.0.1,localhost,::1")
        mp.setattr(socket.socket, "connect", guarded_connect)
        mp.setattr(socket.socket, "connect_ex", guarded_connect_ex)
        mp.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
        yield refused
    assert refused == [], f"{who} tried to reach non-loopback addresses: {refused}"
