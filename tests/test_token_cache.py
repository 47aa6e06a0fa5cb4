"""Bearer tokens shared by processes (issue 10, point 7): a locked cache file by default, a PostgreSQL table as an
option; used by tap and target, renewed early, never logged; "too many active tokens" (7.x: 15 live tokens per
client) answered with the cached token and a message that says when a token frees up."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from edfi_core.token_cache import TABLE, cache_key
from edfi_sandbox.server import Sandbox
from tests.tap_support import TAP, Output, run_tap_process, tap_config
from tests.target_support import run_target_process, singer_messages, target_config

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEBUG = {"LOGLEVEL": "DEBUG", "PYTHONUNBUFFERED": "1"}


def seeded(make_sandbox: Any, **kw: Any) -> Sandbox:
    return make_sandbox("7.3", seed=5, **kw)


def students(sb: Sandbox) -> set[str]:
    return {doc["id"] for doc in sb.store.iter_docs("/ed-fi/students")}


def config(sb: Sandbox, cache: str | Path, **extra: Any) -> dict[str, Any]:
    return tap_config(sb, resources=["students"], include_descriptors=False, token_cache=str(cache), **extra)


def tap(cfg: dict[str, Any], tmp: Path, n: int) -> subprocess.CompletedProcess:
    run_dir = tmp / f"run{n}"
    run_dir.mkdir()
    return subprocess.run([TAP, "--config", _write(run_dir / "config.json", cfg)], capture_output=True,
                          timeout=180, env={**os.environ, **DEBUG})


def _write(path: Path, value: Any) -> str:
    path.write_text(json.dumps(value))
    return str(path)


def delivered(proc: subprocess.CompletedProcess) -> set[str]:
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return {r["id"] for r in Output(proc.stdout).stream_records("students")}


def cached_tokens(path: Path) -> list[str]:
    return [e["token"] for e in json.loads(path.read_text())["entries"].values()]


def test_sixteen_sequential_tap_runs_and_a_target_run_share_one_token(make_sandbox: Any, tmp_path: Path) -> None:
    sb = seeded(make_sandbox)
    expected = students(sb)
    assert len(expected) == 5
    cache = tmp_path / "cache" / "tokens.json"
    cfg = config(sb, cache)
    stderr = []
    for n in range(17):  # 15 live tokens per client on 7.x: without sharing the 16th run fails with 429
        proc = tap(cfg, tmp_path, n)
        stderr.append(proc.stderr)
        assert delivered(proc) == expected, f"run {n + 1}"
    # the target takes the same token from the cache
    new = {"studentUniqueId": "T-1", "firstName": "Grace", "lastSurname": "Hopper", "birthDate": "2011-02-03"}
    target = run_target_process(target_config(sb, tmp_path / "log.db", token_cache=str(cache)),
                                singer_messages([("students", new)]), tmp_path, env=DEBUG)
    stderr.append(target.stderr)
    assert target.returncode == 0, target.stderr.decode()[-3000:]
    assert any(d["studentUniqueId"] == "T-1" for d in sb.store.iter_docs("/ed-fi/students"))
    assert sb.app.tokens.issued == 1
    # the file is private, and neither the token nor the secret is in any log line (DEBUG included)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    (token,) = cached_tokens(cache)
    assert len(token) >= 16
    (entry,) = json.loads(cache.read_text())["entries"].values()
    assert entry["expires_at"] - entry["renew_at"] == pytest.approx(60, abs=1)  # renewed a minute early
    for err in stderr:
        assert token.encode() not in err
        assert sb.client_secret.encode() not in err
    assert b"bearer token from the token cache" in stderr[1]


def test_parallel_processes_share_one_token(make_sandbox: Any, tmp_path: Path) -> None:
    sb = seeded(make_sandbox)
    sb.set_faults(latency_ms=50)  # the first fetch takes a while: the others wait for it on the cache's lock
    expected = students(sb)
    cfg = config(sb, tmp_path / "tokens.json")
    procs = []
    for n in range(4):
        run_dir = tmp_path / f"p{n}"
        run_dir.mkdir()
        procs.append(subprocess.Popen([TAP, "--config", _write(run_dir / "config.json", cfg)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert delivered(subprocess.CompletedProcess(p.args, p.returncode, out, err)) == expected
    assert sb.app.tokens.issued == 1


def test_postgresql_token_cache(make_sandbox: Any, tmp_path: Path) -> None:
    psycopg = pytest.importorskip("psycopg")
    schema = f"tokens_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        sb = seeded(make_sandbox)
        expected = students(sb)
        url = f"{PG_URL}?options=-csearch_path%3D{schema}"
        cfg = config(sb, url)
        errs = []
        for n in range(3):
            proc = tap(cfg, tmp_path, n)
            errs.append(proc.stderr)
            assert delivered(proc) == expected
        assert sb.app.tokens.issued == 1
        with psycopg.connect(PG_URL) as conn:
            rows = conn.execute(f'SELECT cache_key, entry FROM "{schema}".{TABLE}').fetchall()
        key = cache_key(sb.oauth_url, sb.client_id, sb.client_secret, None)
        assert [r[0] for r in rows] == [key]
        token = json.loads(rows[0][1])["token"]
        assert sb.app.tokens.check(f"Bearer {token}") is not None
        assert all(token.encode() not in e for e in errs)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_corrupt_cache_file_is_ignored_with_a_warning(make_sandbox: Any, tmp_path: Path) -> None:
    sb = seeded(make_sandbox)
    expected = students(sb)
    cache = tmp_path / "tokens.json"
    cache.write_bytes(b'{"entries": {"abc": "SECRET-LOOKING-GARBAGE"')  # cut short
    cfg = config(sb, cache)
    first = tap(cfg, tmp_path, 0)
    assert delivered(first) == expected
    err = first.stderr.decode()
    assert "is corrupt" in err and str(cache) in err
    assert "SECRET-LOOKING-GARBAGE" not in err
    assert len(cached_tokens(cache)) == 1  # rewritten with the new token
    second = tap(cfg, tmp_path, 1)
    assert delivered(second) == expected
    assert "is corrupt" not in second.stderr.decode()
    assert sb.app.tokens.issued == 1


def _edit_entry(cache: Path, **values: float) -> dict[str, Any]:
    data = json.loads(cache.read_text())
    (entry,) = data["entries"].values()
    entry.update(values)
    cache.write_text(json.dumps(data))
    return entry


def test_too_many_tokens_reuses_the_cached_token_or_says_when_one_frees_up(make_sandbox: Any,
                                                                           tmp_path: Path) -> None:
    sb = seeded(make_sandbox, max_tokens_per_client=2)
    expected = students(sb)
    cache = tmp_path / "tokens.json"
    cfg = config(sb, cache)
    assert delivered(tap(cfg, tmp_path, 0)) == expected
    sb.token()  # another tool takes the client's last token
    # the cached token is due for renewal but still valid: the renewal gets 429, the cached token is used
    entry = _edit_entry(cache, renew_at=time.time() - 1)
    started = time.monotonic()
    proc = tap(cfg, tmp_path, 1)
    assert delivered(proc) == expected
    assert time.monotonic() - started < 60  # no retrying a 429 that only waiting for an expiry can lift
    err = proc.stderr.decode()
    assert "too many active tokens" in err and "cached one is used until it expires at" in err
    assert sb.app.tokens.issued == 2
    # no valid token left in the cache: the run fails and says when the first known token frees up
    _edit_entry(cache, renew_at=time.time() - 10, expires_at=time.time() - 5)
    proc = tap(cfg, tmp_path, 2)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "HTTP 429" in err and "Too many access tokens" in err
    expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(entry["expires_at"]))
    assert f"the first of them expires at {expires}" in err
    assert entry["token"] not in err
    assert sb.app.tokens.issued == 2


def test_without_a_cache_the_sixteenth_run_says_when_a_token_frees_up(make_sandbox: Any, tmp_path: Path) -> None:
    sb = seeded(make_sandbox, max_tokens_per_client=1)
    cfg = config(sb, "off")
    assert delivered(tap(cfg, tmp_path, 0)) == students(sb)
    proc = run_tap_process(cfg, tmp_path)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "Too many access tokens" in err and "set token_cache" in err and "expires_in" in err
    assert sb.app.tokens.issued == 1


@pytest.mark.parametrize("plugin", ["tap_edfi.tap:TapEdFi", "target_edfi.target:TargetEdFi"])
def test_a_postgresql_cache_without_its_driver_fails_at_start_naming_the_setting(plugin: str, tmp_path: Path) -> None:
    """Without psycopg a postgresql:// cache could never work: parallel jobs would each take tokens and pass the
    API's live-token limit. Both plugins stop at once (exit 2, one ERROR line) saying what to install."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"base_url": "http://127.0.0.1:9/", "client_id": "c", "client_secret": "s3cr3t-value",
                               "token_cache": "postgresql://postgres:pgpass@127.0.0.1:5432/test"}))
    module, cls = plugin.split(":")
    code = ("import importlib.util, sys\n"
            "real = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda name, *a: None if name == 'psycopg' else real(name, *a)\n"
            f"sys.argv = ['plugin', '--config', {str(cfg)!r}]\n"
            f"from {module} import {cls}\n{cls}.cli()\n")
    proc = subprocess.run([str(Path(TAP).parent / "python"), "-c", code], input=b"", capture_output=True, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err[-2000:]
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "token_cache setting" in errors[0] and "edfi-singer[postgres]" in errors[0], err
    assert "Traceback" not in err and "pgpass" not in err and "s3cr3t" not in err
    assert proc.stdout == b""
