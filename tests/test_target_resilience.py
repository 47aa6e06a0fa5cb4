"""target-edfi when things go wrong: faults and short tokens, and kill -9 in the middle of sending.

"Lands once" is checked with the sandbox's change versions: every insert or update that changes an item takes one
from the global sequence, and an upsert that changes nothing takes none. Loading N items into an empty sandbox
must therefore end at change version N, however many requests were retried or resent.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.tap_support import run_tap, tap_config
from tests.target_support import TARGET, RequestCounter, content, diff_content, run_target, target_config


def test_faults_and_short_tokens_everything_lands_once(make_sandbox: Any, tmp_path: Path) -> None:
    a = make_sandbox("7.3", seed=1)
    b = make_sandbox("7.3", token_ttl=2)
    messages = run_tap(tap_config(a)).raw
    total = sum(a.store.count(res.path) for res in a.model)
    b.set_faults(rate_429=0.04, rate_500=0.03, rate_503=0.02, rate_drop=0.04, retry_after=1, seed=11)
    run = run_target(target_config(b, tmp_path / "log.db", max_backoff_seconds=0.5), messages)
    b.clear_faults()
    assert run.exit_code == 0, run.results
    assert diff_content(content(a), content(b)) == []
    assert run.totals["created"] == total and run.totals["failed_all"] == 0
    assert b.store.change_version == total  # each item written exactly once
    http = run.results["http"]
    assert http["retries"] > 0.05 * total  # the faults were there
    assert {"HTTP 429", "HTTP 500", "HTTP 503"} <= set(http["retry_reasons"])
    dropped = {"IncompleteRead", "RemoteDisconnected", "ConnectionResetError", "ChunkedEncodingError"}
    assert dropped & set(http["retry_reasons"])  # dropped connections
    assert http["token_fetches"] >= 3 or http["auth_renewals"] >= 1  # 2-second tokens were renewed


def test_kill_9_while_sending_then_rerun_loses_nothing_and_sends_nothing_twice(make_sandbox: Any,
                                                                               tmp_path: Path) -> None:
    a = make_sandbox("7.3", seed=4)
    b = make_sandbox("7.3")
    counter = RequestCounter(b)
    messages = tmp_path / "input.jsonl"
    messages.write_bytes(run_tap(tap_config(a)).raw)
    total = sum(a.store.count(res.path) for res in a.model)
    log = tmp_path / "log.db"
    config = tmp_path / "config.json"
    config.write_text(__import__("json").dumps(target_config(b, log)))
    b.set_faults(latency_ms=15)

    with messages.open("rb") as stdin:
        proc = subprocess.Popen([TARGET, "--config", str(config)], stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while counter.counts["POST"] < total // 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    assert out == b"", "no STATE may come out of a run that did not finish"
    # the sandbox still answers the requests that were in flight at the kill (each waits out its latency):
    # let them land before counting, so that none is taken for a request of the rerun
    settle_deadline = time.monotonic() + 10
    while time.monotonic() < settle_deadline:
        before = b.store.change_version
        time.sleep(0.3)
        if b.store.change_version == before:
            break
    written = b.store.change_version
    assert 0 < written < total, "the kill came too early or too late to test anything"
    with sqlite3.connect(log) as db:
        logged = db.execute("SELECT COUNT(*) FROM transaction_log WHERE status = 'created'").fetchone()[0]
        spooled = db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
    assert logged <= written and spooled == total - logged  # the spool keeps what was not settled
    assert written - logged <= 2 * 8 + 100  # at most what was in flight or not yet committed

    b.clear_faults()
    counter.reset()
    proc = subprocess.run([TARGET, "--config", str(config)], input=messages.read_bytes(), capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.strip(), "the finished run echoes STATE"
    assert diff_content(content(a), content(b)) == []
    assert b.store.change_version == total  # what was accepted before the kill was not accepted again
    # only what the log did not know as accepted is sent, each accepted once: every unsettled record gets exactly
    # one POST the API takes (201, or 200 for an item whose POST landed at the kill but was not logged: re-posted
    # unchanged, which the API does not count as a change, see change_version); the only other POSTs can be
    # second tries of records deferred by a 409 (posted before a parent in the same dependency group)
    accepted = sum(n for (method, status), n in counter.statuses.items() if method == "POST" and status < 300)
    assert accepted == total - logged
    assert counter.statuses[("POST", 201)] == total - written  # what had not landed is created, nothing else
    assert counter.counts["POST"] == accepted + counter.statuses[("POST", 409)]
    with sqlite3.connect(log) as db:
        assert db.execute("SELECT COUNT(*) FROM spool").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM transaction_log WHERE deleted = 0 AND edfi_id IS NOT NULL"
                          ).fetchone()[0] == total


def test_a_kept_alive_connection_the_server_closed_is_reopened_at_once() -> None:
    """A server that closes idle keep-alive connections: the next request on one is sent again on a new connection
    at once, not counted as a failed try (the request never reached the server)."""
    import http.server
    import threading

    from edfi_core.session import EdFiClient
    from edfi_core.transport import Transport

    served: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True  # keep-alive promised, connection closed anyway

        def do_GET(self) -> None:
            served.append(self.path)
            port = self.server.server_address[1]
            if self.path == "/":
                urls = {"dataManagementApi": f"http://127.0.0.1:{port}/data/v3",
                        "oauth": f"http://127.0.0.1:{port}/oauth/token"}
                self._reply(__import__("json").dumps({"version": "7.3", "urls": urls}).encode())
            else:
                self._reply(b"[]")

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._reply(b'{"access_token": "t", "expires_in": 1800, "token_type": "bearer"}')

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = EdFiClient(f"http://127.0.0.1:{server.server_address[1]}", "id", "secret", max_tries=1)
        transport = Transport(client)
        url = client.data_url("/ed-fi/students")
        for _ in range(3):
            assert transport.request("GET", url).status_code == 200  # max_tries 1: a counted failure would raise
        assert served.count("/data/v3/ed-fi/students") == 3
        assert client.stats.as_dict()["retries"] == 0
    finally:
        server.shutdown()
