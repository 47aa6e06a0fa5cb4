"""tap-edfi when things go wrong: churn during a sync, kill -9, faults, short tokens, 403s, fatal errors."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from edfi_sandbox.server import Sandbox
from tap_edfi.sync import SyncError
from tests.tap_support import TAP, Output, Warehouse, assert_matches, run_tap, run_tap_process, tap_config

CHURN_CASES = [("5.3", "offset"), ("6.1", "offset"), ("7.1", "offset"), ("7.3", "offset"), ("7.3", "cursor"),
               ("8.0", "offset"), ("8.1", "cursor")]


@pytest.mark.parametrize(("version", "paging"), CHURN_CASES)
def test_churn_during_full_sync_loses_nothing(version: str, paging: str) -> None:
    with Sandbox(version, seed=60) as sb:
        sb.set_faults(latency_ms=3)
        config = tap_config(sb, page_size=25, max_window_rows=250, max_workers=4, paging=paging)
        churn = sb.start_churn(150, seed=7)
        try:
            first = run_tap(config)
        finally:
            sb.stop_churn()
        assert churn.updates + churn.deletes > 20, "the churn did not run during the sync"
        sb.clear_faults()
        wh = Warehouse().apply(first)
        # items changed during the first run have change versions above its bound: the next run reads them
        wh.apply(run_tap(config, state=first.last_state))
        assert_matches(wh, sb)


def test_forward_paging_would_lose_items_under_churn() -> None:
    """Why the tap does not page forward: the same churn makes naive forward paging skip items."""
    import requests

    with Sandbox("6.1", seed=60) as sb:
        path = "/ed-fi/studentSchoolAttendanceEvents"
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {sb.token()}"
        newest = sb.store.change_version
        seen: set[str] = set()
        offset = 0
        sb.set_faults(latency_ms=3)
        sb.start_churn(400, resources=[path], delete_fraction=0.0, seed=3)
        try:
            while True:
                page = http.get(sb.data_url + path, params={"offset": offset, "limit": 25,
                                                            "maxChangeVersion": newest}, timeout=30).json()
                seen |= {d["id"] for d in page}
                if len(page) < 25:
                    break
                offset += 25
        finally:
            sb.stop_churn()
        table = sb.store.table(path)
        in_window = {row[0] for row in sb.store.reader().execute(
            f'SELECT id FROM "{table}" WHERE change_version <= ?', (newest,))}
        # never changed, in the window from start to end, and still not read
        assert in_window - seen


def _read_until_states(proc: subprocess.Popen, states: int, deadline: float) -> bytes:
    data = b""
    seen = 0
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        data += line
        if line.startswith(b'{"type":"STATE"'):
            seen += 1
            if seen >= states:
                break
    return data


@pytest.mark.parametrize("version", ["5.3", "6.1", "7.1", "7.3", "8.0", "8.1"])
def test_kill_9_then_resume_loses_nothing(version: str, tmp_path: Path) -> None:
    with Sandbox(version, seed=80) as sb:
        sb.set_faults(latency_ms=15)
        config = tap_config(sb, page_size=25, max_window_rows=200, max_workers=4)
        cfg = tmp_path / "config.json"
        cfg.write_text(json.dumps(config))
        proc = subprocess.Popen([TAP, "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            partial = _read_until_states(proc, 25, time.monotonic() + 60)
            os.kill(proc.pid, signal.SIGKILL)
            # read the rest through the same buffered reader (communicate() would skip its buffer)
            assert proc.stdout is not None
            rest = proc.stdout.read()
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        partial += rest
        # a killed process may leave half a line behind: a target ignores it, and so do we
        lines = partial.split(b"\n")
        complete = b"\n".join(lines[:-1]) + b"\n"
        first = Output(complete)
        assert first.last_state is not None
        total = sum(1 for res in sb.model for _ in sb.store.iter_docs(res.path))
        assert len(first.records) < total, "the kill came too late to test anything"
        sb.clear_faults()
        second = run_tap_process(config, tmp_path, state=first.last_state)
        assert second.returncode == 0, second.stderr.decode()[-2000:]
        rerun = Output(second.stdout)
        wh = Warehouse().apply(first).apply(rerun)
        assert_matches(wh, sb)
        # only unfinished windows are read again
        assert len(first.records) + len(rerun.records) < 1.5 * total


@pytest.mark.parametrize("version", ["5.3", "6.1", "7.1", "7.3", "8.1"])  # 8.1: DMS's token endpoint, cursor
def test_faults_and_short_tokens(version: str, caplog: pytest.LogCaptureFixture) -> None:
    with Sandbox(version, seed=25, token_ttl=2) as sb:
        sb.set_faults(rate_429=0.03, rate_500=0.03, rate_502=0.02, rate_503=0.02, rate_drop=0.04, latency_ms=2,
                      retry_after=1, seed=11)
        config = tap_config(sb, page_size=30, max_window_rows=300, max_workers=8, max_tries=10,
                            max_backoff_seconds=1)
        with caplog.at_level(logging.WARNING):
            out = run_tap(config)
        sb.clear_faults()
        assert_matches(Warehouse().apply(out), sb)
        stats = out.tap.client.stats.as_dict()
        assert stats["retries"] > 5
        assert stats["token_fetches"] >= 2, stats
        assert sb.app.faults.injected.get("drop", 0) > 0
        assert config["client_secret"] not in caplog.text


def test_fatal_errors_name_stream_url_status_and_message(tmp_path: Path) -> None:
    with Sandbox("7.3", seed=10) as sb:
        sb.set_faults(rate_500=1.0)
        config = tap_config(sb, max_tries=2, max_backoff_seconds=0.1, resources=["students"])
        sb.set_faults(rate_500=0.0)
        # token and discovery work; then every data request fails
        from tap_edfi.tap import TapEdFi

        tap = TapEdFi(config=config)
        tap.run_context  # noqa: B018 - resolve before the faults start
        sb.set_faults(rate_500=1.0)
        with pytest.raises(SyncError) as err:
            import contextlib
            import io

            with contextlib.redirect_stdout(io.TextIOWrapper(io.BytesIO())):
                tap.sync_all()
        text = str(err.value)
        assert "students" in text and "/ed-fi/students" in text and "500" in text
        assert "An unexpected problem has occurred." in text
        assert sb.client_secret not in text
        sb.set_faults(rate_500=0.0)
        # bad credentials: the token URL, the status and the server's error; never the secret
        bad = {**config, "client_secret": "not-the-secret-xyz"}
        proc = run_tap_process(bad, tmp_path)
        assert proc.returncode != 0
        err_text = proc.stderr.decode()
        assert "oauth/token" in err_text and "401" in err_text and "invalid_client" in err_text
        assert "not-the-secret-xyz" not in err_text and "not-the-secret-xyz" not in proc.stdout.decode()


def test_forbidden_resource_is_skipped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with Sandbox("7.3", seed=10, forbidden=frozenset({"/ed-fi/staffs"})) as sb:
        config = tap_config(sb, resources=["staffs", "students"])
        with caplog.at_level(logging.WARNING):
            out = run_tap(config)
        warnings = [r for r in caplog.records if "staffs" in r.getMessage() and r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "403" in warnings[0].getMessage()
        assert out.stream_records("students")
        # no bookmark for what was not read: the next run tries again
        assert "change_version" not in (out.last_state or {})["bookmarks"].get("staffs", {})
        with pytest.raises(SyncError, match="403"):
            run_tap({**config, "fail_on_forbidden": True})
