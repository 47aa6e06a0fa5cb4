"""tap-edfi checks that what it read is complete: odd 200 pages, no Total-Count, late commits.

Every test runs the tap against a sandbox over real HTTP on loopback, most of them through
:class:`tests.proxies.OddPageProxy`, which spoils a share of the data pages the sandbox answers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from edfi_sandbox.server import Sandbox
from tests.proxies import OddPageProxy
from tests.tap_support import Output, Warehouse, assert_matches, run_tap, run_tap_process, tap_config

#: what a share of the pages becomes (issue 10, point 1): silent losses before, and loud but raw errors
SILENT = ("empty", "half", "count60")
LOUD = ("object", "html", "truncated")
PAGING_CASES = [("7.3", "offset"), ("7.3", "cursor"), ("5.3", "offset")]


def proxied_config(sb: Sandbox, proxy: OddPageProxy, **extra: object) -> dict:
    return {**tap_config(sb, **extra), "base_url": proxy.url + sb.app.layout.root}


@pytest.mark.parametrize("kinds", [SILENT, LOUD], ids=["silent", "loud"])
@pytest.mark.parametrize(("version", "paging"), PAGING_CASES)
def test_odd_pages_lose_nothing(version: str, paging: str, kinds: tuple[str, ...],
                                caplog: pytest.LogCaptureFixture) -> None:
    """30 % of the data pages spoiled: the run still delivers every item, and its bookmarks are the run's bound."""
    with Sandbox(version, seed=30) as sb, OddPageProxy(sb.base_url, kinds, share=0.3, seed=5) as proxy:
        config = proxied_config(sb, proxy, page_size=20, max_window_rows=100, max_workers=4, paging=paging,
                                max_backoff_seconds=0.05, max_tries=10)
        with caplog.at_level(logging.WARNING):
            out = run_tap(config)
        assert set(proxy.injected) == set(kinds), proxy.injected  # every kind happened
        assert sum(proxy.injected.values()) > 30, proxy.injected
        assert_matches(Warehouse().apply(out), sb)
        # each item exactly once (duplicates of re-read pages are dropped)
        for stream, items in ((s, out.stream_records(s)) for s in out.schemas):
            ids = [r["id"] for r in items if not r.get("_sdc_deleted_at")]
            assert len(ids) == len(set(ids)), stream
        newest = sb.store.change_version
        assert out.last_state["bookmarks"]["students"]["change_version"] == newest
        assert "Traceback" not in caplog.text and "DecodeError" not in caplog.text
        if kinds == LOUD:
            assert "instead of a JSON array" in caplog.text and "truncated or malformed JSON" in caplog.text


@pytest.mark.parametrize("kind", ["half", "html"])
def test_persistent_odd_pages_fail_naming_stream_url_and_window(kind: str, tmp_path: Path) -> None:
    """Every page spoiled: the run fails, names the stream, URL and window, and keeps the stream's bookmark."""
    with Sandbox("7.3", seed=10) as sb, OddPageProxy(sb.base_url, [kind], share=0.0) as proxy:
        config = proxied_config(sb, proxy, resources=["students", "schools"], page_size=20, paging="offset",
                                max_tries=3, max_backoff_seconds=0.05)
        first = Output(run_tap_process(config, tmp_path).stdout)
        assert first.last_state["bookmarks"]["students"]["change_version"] == sb.store.change_version
        state = first.last_state
        # new students, then every students page spoiled (schools keeps working)
        from tests.tap_support import Mutator

        Mutator(sb).insert_copies("/ed-fi/students", 45, "studentUniqueId", "x")
        Mutator(sb).update("/ed-fi/schools", 1, "nameOfInstitution", lambda d: "Renamed High")
        proxy.match = lambda path: path.endswith("/ed-fi/students")
        proxy.set(share=1.0)
        proc = run_tap_process(config, tmp_path, state=state)
        assert proc.returncode != 0
        err = proc.stderr.decode()
        assert "stream 'students'" in err and "/ed-fi/students" in err and "change versions" in err
        assert ("incomplete after 3 reads" in err) if kind == "half" else ("HTML instead of a JSON array" in err)
        assert "Traceback (most recent call last)" not in err.split("SyncError")[0] or "msgspec" not in err
        out = Output(proc.stdout)
        marks = out.last_state["bookmarks"]
        assert marks["students"]["change_version"] == state["bookmarks"]["students"]["change_version"]
        assert config["client_secret"] not in err
        json.dumps(marks)


@pytest.mark.parametrize(("version", "paging"), PAGING_CASES)
def test_no_total_count_under_churn_loses_nothing(version: str, paging: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """No ``Total-Count`` anywhere and items changing during the sync: counts are probed, nothing is lost."""
    with Sandbox(version, seed=60) as sb, OddPageProxy(sb.base_url, ["strip_count"], share=1.0) as proxy:
        sb.set_faults(latency_ms=3)
        config = proxied_config(sb, proxy, page_size=25, max_window_rows=250, max_workers=4, paging=paging)
        churn = sb.start_churn(150, seed=7)
        try:
            with caplog.at_level(logging.WARNING):
                first = run_tap(config)
        finally:
            sb.stop_churn()
        assert churn.updates + churn.deletes > 20, "the churn did not run during the sync"
        assert proxy.injected.get("strip_count", 0) > 100
        assert "no Total-Count" in caplog.text
        sb.clear_faults()
        wh = Warehouse().apply(first)
        wh.apply(run_tap(config, state=first.last_state))
        assert_matches(wh, sb)
