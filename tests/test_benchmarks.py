"""The benchmark keeps running: a small part 1 end to end (its figures are not judged here, only its accounting)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_part1_quick_runs_every_contender_on_the_same_rows(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--parts", "1", "--students", "300",
         "--quiet-wait", "0", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "latest.json").read_text())
    assert results["failures"] == []
    part = results["parts"]["1"]
    rows = {c["name"]: c["rows"] for c in part["contenders"]}
    assert {"tap-edfi", "edfi-api-client", "lightbeam fetch"} <= set(rows)
    assert len(set(rows.values())) == 1 and next(iter(rows.values())) > 1000  # every contender read every row
    for c in part["contenders"]:
        assert c["rows_per_s"] > 0 and c["requests"] > 0 and c["peak_rss_mib"] > 0
    assert part["ratios"]["edfi-api-client"]["rows_per_s"] > 0
    table = (out / "latest.md").read_text()
    assert "| tap-edfi" in table and "Machine:" in table
