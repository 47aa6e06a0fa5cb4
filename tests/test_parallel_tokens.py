"""More parallel tap processes than the API has live tokens for one client (issue 15): with the shared token cache
(a file, a PostgreSQL table) every process succeeds with complete data and the client never holds more than the
limit (ODS/API 7.3: 15); without it the processes past the limit fail with the API's 429 and say what to do."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from edfi_sandbox.server import Sandbox
from tap_edfi.streams import stream_name
from tests.tap_support import PLUGIN_WARNINGS, TAP, Output, Warehouse, assert_matches, tap_config

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PROCESSES = 20
LIMIT = 15  # BearerTokenPerClientLimit (docs/token-cache.md)
TTL = 4  # seconds a token lives: tokens are renewed (a fifth of the lifetime early) while the processes run


def slices(sb: Sandbox, n: int) -> list[list[str]]:
    """Every resource of the sandbox, dealt round-robin into ``n`` slices (each process reads one)."""
    names = sorted(stream_name(res) for res in sb.model)
    return [names[i::n] for i in range(n)]


def start(sb: Sandbox, tmp: Path, cache: str, parts: list[list[str]], every: float = 0.0,
          burst: int = PROCESSES) -> list[subprocess.Popen]:
    """One tap process per slice: the first ``burst`` at once, then one every ``every`` seconds."""
    procs = []
    for n, part in enumerate(parts):
        if n >= burst and every:
            time.sleep(every)
        run_dir = tmp / f"p{n:02d}"
        run_dir.mkdir()
        cfg = tap_config(sb, resources=part, token_cache=cache, max_workers=2)
        (run_dir / "config.json").write_text(json.dumps(cfg))
        procs.append(subprocess.Popen([TAP, "--config", str(run_dir / "config.json")], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1", **PLUGIN_WARNINGS}))
    return procs


def finish(procs: list[subprocess.Popen]) -> list[subprocess.CompletedProcess]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def run_all_through(cache: str, make_sandbox: Any, tmp: Path) -> None:
    sb = make_sandbox("7.3", seed=5, token_ttl=TTL, max_tokens_per_client=LIMIT)
    sb.set_faults(latency_ms=200)  # a token fetch takes a while: processes asking meanwhile would fetch their own
    parts = slices(sb, PROCESSES)
    started = time.monotonic()
    # half at once (they ask for a token at the same moment: one fetches under the cache's lock, the others wait
    # for it), the other half over two token lifetimes (they find the cached token due for renewal while earlier
    # processes still use it)
    done = finish(start(sb, tmp, cache, parts, every=4 * TTL / PROCESSES, burst=PROCESSES // 2))
    elapsed = time.monotonic() - started
    wh = Warehouse()
    for proc, part in zip(done, parts, strict=True):
        err = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 0, f"{part}: {err[-3000:]}"
        assert "ResourceWarning" not in err
        wh.apply(Output(proc.stdout))
    assert_matches(wh, sb)  # every resource, item for item, across the 20 processes
    tokens = sb.app.tokens
    assert tokens.refused == 0
    # the cached token, and its successor while it renews (measured without the cache's lock: 5 to 8)
    assert tokens.peak_live[sb.client_id] <= 2, (tokens.peak_live, tokens.issued)
    # one token per lifetime (renewed a fifth early) at most: not one per process
    assert tokens.issued <= elapsed / (TTL * 4 / 5) + 1, (tokens.issued, elapsed)
    stats = sb.admin("GET", "stats").json()
    assert stats["tokensRefused"] == 0 and stats["peakLiveTokens"] == {sb.client_id: tokens.peak_live[sb.client_id]}


def test_twenty_processes_share_tokens_through_the_cache_file(make_sandbox: Any, tmp_path: Path) -> None:
    run_all_through(str(tmp_path / "cache" / "tokens.json"), make_sandbox, tmp_path)


def test_twenty_processes_share_tokens_through_postgresql(make_sandbox: Any, tmp_path: Path) -> None:
    psycopg = pytest.importorskip("psycopg")
    schema = f"tokens_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        run_all_through(f"{PG_URL}?options=-csearch_path%3D{schema}", make_sandbox, tmp_path)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_without_the_cache_the_processes_past_the_limit_fail_and_say_why(make_sandbox: Any, tmp_path: Path) -> None:
    sb = make_sandbox("7.3", seed=5, max_tokens_per_client=LIMIT)
    parts = slices(sb, PROCESSES)
    done = finish(start(sb, tmp_path, "off", parts))
    ok = [p for p in done if p.returncode == 0]
    failed = [p for p in done if p.returncode != 0]
    tokens = sb.app.tokens
    # the API issued its limit and refused the rest (a refused token request is not retried: only an expiry,
    # 30 minutes later, frees a token)
    assert len(ok) == LIMIT and len(failed) == PROCESSES - LIMIT
    assert tokens.issued == LIMIT and tokens.peak_live[sb.client_id] == LIMIT
    assert tokens.refused >= PROCESSES - LIMIT
    for proc in failed:
        err = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 2, err[-3000:]  # a known failure: one ERROR line
        assert "HTTP 429" in err and "Too many access tokens have been requested (limit is 15)" in err
        assert "set token_cache" in err  # what to do
        assert "Traceback" not in err
        out = Output(proc.stdout)
        assert not out.records  # nothing read, so nothing half-delivered
    # the processes that got a token read their resources completely
    names = {stream_name(res): res for res in sb.model}
    for proc, part in zip(done, parts, strict=True):
        if proc.returncode == 0:
            wh = Warehouse().apply(Output(proc.stdout))
            for name in part:
                assert set(wh.live(name)) == {doc["id"] for doc in sb.store.iter_docs(names[name].path)}, name
