"""The request budget per API (issue 15, docs/scaling.md): one tap process never has more than ``max_workers``
requests at the API at once, whatever the paging (reverse offset windows, cursor partitions, snapshot pages);
parallel processes add up (the budget of an API is the sum of its jobs' ``max_workers``). Measured at the sandbox:
the most API requests it was serving at the same moment (``peakInFlight``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edfi_sandbox.server import Sandbox
from tap_edfi.streams import stream_name
from tests.tap_support import PLUGIN_WARNINGS, TAP, Output, Warehouse, assert_matches, run_tap, tap_config


@pytest.fixture(scope="module")
def sandbox() -> Any:
    with Sandbox("7.3", seed=40) as sb:
        sb.set_faults(latency_ms=30)  # every request lasts long enough to overlap with the others
        yield sb


def peak(sb: Sandbox) -> int:
    return int(sb.admin("GET", "stats").json()["peakInFlight"])


def reset(sb: Sandbox) -> None:
    assert sb.app.in_flight == 0
    sb.app.peak_in_flight = 0


@pytest.mark.parametrize(("workers", "paging", "use_snapshot"), [
    (3, "offset", "never"),  # reverse offset paging: windows read concurrently
    (3, "cursor", "never"),  # 7.3 partitions read concurrently
    (3, "auto", "always"),  # forward pages inside the snapshot, read concurrently
    (1, "auto", "auto"),
])
def test_one_tap_never_exceeds_max_workers(sandbox: Sandbox, workers: int, paging: str, use_snapshot: str) -> None:
    if use_snapshot == "always":
        sandbox.take_snapshot()  # of the same data: nothing changes in this module
    reset(sandbox)
    before = sandbox.app.requests
    out = run_tap(tap_config(sandbox, max_workers=workers, paging=paging, use_snapshot=use_snapshot, page_size=50,
                             token_cache="off"))
    assert_matches(Warehouse().apply(out), sandbox)
    assert sandbox.app.requests - before > 100  # enough requests for the pool to fill up
    assert peak(sandbox) == workers  # reached, never exceeded


def test_parallel_taps_add_up_to_the_sum_of_their_max_workers(sandbox: Sandbox, tmp_path: Path) -> None:
    reset(sandbox)
    names = sorted(stream_name(res) for res in sandbox.model)
    procs = []
    for n in range(3):
        cfg = tap_config(sandbox, max_workers=2, page_size=50, token_cache="off", resources=names[n::3])
        (tmp_path / f"c{n}.json").write_text(json.dumps(cfg))
        procs.append(subprocess.Popen([TAP, "--config", str(tmp_path / f"c{n}.json")], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env={**os.environ, **PLUGIN_WARNINGS}))
    wh = Warehouse()
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr.decode()[-3000:]
        wh.apply(Output(stdout))
    assert_matches(wh, sandbox)
    assert 2 <= peak(sandbox) <= 3 * 2


def test_the_group_planner_counts_within_max_workers(sandbox: Sandbox, tmp_path: Path) -> None:
    from tap_edfi.groups import main

    reset(sandbox)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tap_config(sandbox, max_workers=2, token_cache="off")))
    assert main(["--config", str(config), "--groups", "4", "--output", str(tmp_path / "plan.json")]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert len(plan["counts"]) == len(sandbox.model)
    assert peak(sandbox) == 2
