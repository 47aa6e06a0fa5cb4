"""The sandbox is a server users run (issue 10, point 10): admin endpoints need the admin token; request headers
and bodies have deadlines; bodies have a size limit and are read in linear time; out-of-range paging parameters
are a 400, not a 500; the CLI says where it listens only once it does, and fails plainly on a port in use."""

from __future__ import annotations

import base64
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from edfi_sandbox.server import free_port
from tests.conftest import REPO, load_basics


# -- admin token -------------------------------------------------------------------------------------------
def test_admin_endpoints_need_the_admin_token(make_sandbox: Any, api_for: Any) -> None:
    sb = make_sandbox("7.3")
    api = api_for(sb)
    base = sb.base_url + "/_sandbox/"
    for method, what in (("DELETE", "tokens"), ("GET", "stats"), ("PUT", "faults"), ("POST", "snapshots"),
                         ("DELETE", "snapshots")):
        for headers in ({}, {"X-Sandbox-Admin-Token": "guess"}, {"Authorization": f"Bearer {sb.token()}"}):
            resp = requests.request(method, base + what, json={"rate_503": 1}, headers=headers, timeout=10)
            assert resp.status_code == 401, (method, what, headers)
            assert "X-Sandbox-Admin-Token" in resp.json()["message"]
    # nothing happened: the client is still logged in, no fault, no snapshot
    assert api.get("/ed-fi/students").status_code == 200
    assert sb.faults.config.rate_503 == 0
    assert sb.store.snapshots == []
    # with the token the helper keeps, they work
    assert sb.admin("GET", "stats").json()["tokensIssued"] >= 1
    assert sb.admin("DELETE", "tokens").status_code == 204
    assert api.get("/ed-fi/students").status_code == 401


def _lines(stream: Any) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for raw in iter(stream.readline, b""):
            lines.put(raw.decode(errors="replace"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[str], text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r} within {timeout}s")


def test_cli_prints_url_and_admin_token_once_listening_and_fails_on_a_port_in_use() -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "edfi_sandbox.cli", "serve", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen([*cmd, "--seed", "5"], cwd=REPO, stderr=subprocess.PIPE)
    try:
        lines = _lines(proc.stderr)
        listening = _wait_for(lines, "listening on")
        assert f"http://127.0.0.1:{port}" in listening
        # it does listen once it says so
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).json()["version"] == "7.3"
        token = _wait_for(lines, "X-Sandbox-Admin-Token").rsplit(" ", 1)[-1].strip()
        assert requests.get(f"http://127.0.0.1:{port}/_sandbox/stats", timeout=5).status_code == 401
        stats = requests.get(f"http://127.0.0.1:{port}/_sandbox/stats", headers={"X-Sandbox-Admin-Token": token},
                             timeout=5)
        assert stats.status_code == 200
        # a second sandbox on the same port: a plain failure, before seeding, and no URL
        started = time.monotonic()
        second = subprocess.run([*cmd, "--seed", "200"], cwd=REPO, capture_output=True, timeout=60)
        err = second.stderr.decode()
        assert second.returncode == 2, err
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err
        assert "listening on" not in err and f"http://127.0.0.1:{port}" not in err
        assert time.monotonic() - started < 20
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- header and body deadlines -----------------------------------------------------------------------------
@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


def _connect(port: int, opened: list[socket.socket]) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    opened.append(s)
    return s


def _answer(s: socket.socket, deadline: float) -> bytes:
    """What the server sends before it closes the connection (b"" when it closes without answering)."""
    out = b""
    while True:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            raise AssertionError("the server kept the connection open past the deadline") from None
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def test_half_open_requests_are_closed_by_the_header_deadline(make_sandbox: Any, sockets: list) -> None:
    sb = make_sandbox("7.3", header_timeout=1.0)
    started = time.monotonic()
    silent = [_connect(sb.port, sockets) for _ in range(50)]
    partial = [_connect(sb.port, sockets) for _ in range(200)]
    for s in partial:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    # a keep-alive connection whose second request stalls in its headers
    keep = _connect(sb.port, sockets)
    keep.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    first = b""
    while b"\r\n\r\n" not in first:
        first += keep.recv(65536)
    head, _, body = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1])
    while len(body) < length:
        body += keep.recv(65536)
    keep.sendall(b"GET / HTTP/1.1\r\nHost: ")
    deadline = started + 1.0 + 8.0  # the deadline, and slack for a busy machine
    answers = [_answer(s, deadline) for s in [*silent, *partial, keep]]
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:40] for a in answers}
    # and the server serves as before
    assert requests.get(sb.api_root + "/", timeout=5).status_code == 200


def test_oversized_headers_get_431(make_sandbox: Any, sockets: list) -> None:
    sb = make_sandbox("7.3")
    s = _connect(sb.port, sockets)
    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Big: " + b"a" * 200_000)
    assert _answer(s, time.monotonic() + 10).startswith(b"HTTP/1.1 431")
    assert requests.get(sb.api_root + "/", headers={"X-Fine": "a" * 8000}, timeout=5).status_code == 200


def test_a_body_that_does_not_come_gets_408(make_sandbox: Any, sockets: list) -> None:
    sb = make_sandbox("7.3", body_timeout=1.0)
    s = _connect(sb.port, sockets)
    started = time.monotonic()
    s.sendall(b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded"
              b"\r\nContent-Length: 100\r\n\r\ngrant_type")
    assert _answer(s, started + 1.0 + 8.0).startswith(b"HTTP/1.1 408")


def test_body_limit_and_linear_reading(make_sandbox: Any, sockets: list) -> None:
    sb = make_sandbox("7.3", max_body_bytes=1_000_000)
    url = sb.base_url + "/_nowhere"
    # announced too large: 413 before the body is read
    s = _connect(sb.port, sockets)
    s.sendall(b"POST /_nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000000\r\n\r\n")
    assert _answer(s, time.monotonic() + 10).startswith(b"HTTP/1.1 413")

    def chunks(total: int, size: int = 65536) -> Iterator[bytes]:
        for _ in range(total // size):
            yield b"a" * size

    # chunked, growing past the limit while it is read
    resp = requests.post(url, data=chunks(3_000_000), timeout=30)
    assert resp.status_code == 413
    assert requests.post(url, data=b"a" * 999_000, timeout=30).status_code == 404  # under the limit: read
    # 80 MB read in linear time (it took 9.1 s built by repeated concatenation)
    big = make_sandbox("7.3", max_body_bytes=100_000_000)
    started = time.monotonic()
    resp = requests.post(big.base_url + "/_nowhere", data=chunks(80 * 2**20), timeout=60)
    took = time.monotonic() - started
    assert resp.status_code == 404
    assert took < 4.0, took


# -- paging parameters out of range ----------------------------------------------------------------------
def _token(low: int, high: int) -> str:
    return base64.urlsafe_b64encode(f"{low},{high}".encode()).decode().rstrip("=")


@pytest.mark.parametrize("version", ["5.3", "7.3"])
def test_out_of_range_paging_parameters_are_400(make_sandbox: Any, api_for: Any, version: str) -> None:
    sb = make_sandbox(version)
    api = api_for(sb)
    load_basics(api)
    huge = str(10**23)
    for params, name in (({"offset": huge}, "offset"), ({"offset": "1e23"}, "offset"), ({"limit": huge}, "limit"),
                         ({"offset": str(2**31)}, "offset"), ({"minChangeVersion": str(10**30)}, "minChangeVersion"),
                         ({"maxChangeVersion": "9" * 5000}, "maxChangeVersion")):
        resp = api.get("/ed-fi/students", params=params)
        assert resp.status_code == 400, (params, resp.text[:300])
        if name != "limit":
            assert f"is not valid for {name}." in resp.text
    assert api.get("/ed-fi/schools", params={"schoolId": huge}).status_code == 400
    if version == "5.3":
        assert api.get("/ed-fi/students/deletes", params={"offset": huge}).status_code == 400
    else:
        for token in (_token(10**23, 10**24), _token(1, 2**31), "QUFB" * 1500):
            resp = api.get("/ed-fi/students", params={"pageToken": token, "pageSize": 10})
            assert resp.status_code == 400, resp.text[:300]
            body = resp.json()
            assert body["detail"] == "The request construction was invalid."
            assert body["errors"] == ["The page token provided was invalid."]
        assert api.get("/ed-fi/students/deletes", params={"offset": huge}).status_code == 400
        assert api.get("/ed-fi/students/keyChanges", params={"offset": huge}).status_code == 400
    # in range, everything still reads
    assert len(api.get("/ed-fi/students", params={"offset": 2**31 - 1}).json()) == 0
    assert len(api.all("/ed-fi/students")) == 3
