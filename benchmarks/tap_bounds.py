"""What bounds tap-edfi on one large resource: its run cut into start-up, planning and streaming, and varied.

    python benchmarks/tap_bounds.py                    # studentSectionAttendanceEvents of the 9,200-student district
    python benchmarks/tap_bounds.py --latency-ms 50

Runs tap-edfi (piped into the parsing sink of ``workers.py``) on the resource of part 1 of ``run.py`` with a progress
line every 0.2 s, and reads its log: **start-up** (process start to the run's bound: imports, settings, discovery,
``availableChangeVersions``), **planning** (to the first rows: counting the change-version range and cutting it
into windows, ``/partitions``), **streaming** (first rows to the last). Then the same with one thing changed at a
time: no latency, 32 workers, output to /dev/null instead of the sink; and the bare 8-thread HTTP client of
``run.py`` (the ceiling). Prints a table; nothing is written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BIN, CLIENT_ID, CLIENT_SECRET, SandboxProcess, run_measured, seeded_db

logger = logging.getLogger("bench.tap_bounds")
HERE = Path(__file__).resolve().parent
RESOURCE = "/ed-fi/studentSectionAttendanceEvents"
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
PROGRESS = re.compile(r"progress: ([0-9,]+)/")


def _when(line: str) -> float | None:
    m = STAMP.match(line)
    if not m:
        return None
    return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def phases(log: Path, started: float) -> dict[str, float]:
    """Start-up, planning and streaming seconds from a tap log written with progress_interval 0.2."""
    bound = first = last = None
    rows_first = 0
    for line in log.read_text(errors="replace").splitlines():
        t = _when(line)
        if t is None:
            continue
        if "run bound:" in line:
            bound = t
        m = PROGRESS.search(line)
        if m and first is None and int(m.group(1).replace(",", "")) > 0:
            first, rows_first = t, int(m.group(1).replace(",", ""))
        if "sync complete:" in line:
            last = t
    out: dict[str, float] = {}
    if bound is not None:
        out["startup_s"] = bound - started
        if first is not None:
            out["planning_s"] = first - bound
        if first is not None and last is not None:
            out["streaming_s"] = last - first
            out["rows_at_first_progress"] = rows_first
    return out


def tap_run(sb: SandboxProcess, work: Path, name: str, settings: dict[str, Any], sink: bool = True) -> dict:
    cfg = work / f"{name}.json"
    cfg.write_bytes(orjson.dumps({"base_url": sb.base_url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                                  "resources": [RESOURCE.rsplit("/", 1)[1]], "progress_interval": 0.2, **settings}))
    log = work / f"{name}.log"
    log.unlink(missing_ok=True)
    summary = work / f"{name}-sink.json"
    started = time.time()
    run = run_measured(name, [str(BIN / "tap-edfi"), "--config", str(cfg)], sandbox=sb, stderr=log,
                       sink=[sys.executable, str(HERE / "workers.py"), "sink", "--summary", str(summary)] if sink
                       else None, stdout=None if sink else Path("/dev/null"))
    rows = int(orjson.loads(summary.read_bytes())["records"]) if sink else 0
    return {"name": name, "wall_s": run.usage.wall, "cpu_s": run.usage.cpu, "server_cpu_s": run.server_cpu,
            "sink_cpu_s": run.helpers["sink"].cpu if sink else 0.0, "requests": run.requests, "rows": rows,
            "foreign_share": run.foreign_share, **phases(log, started)}


def bare_run(sb: SandboxProcess, work: Path, threads: int) -> dict:
    summary = work / f"bare-{threads}.json"
    cmd = [sys.executable, str(HERE / "workers.py"), "bare", "--base-url", sb.base_url, "--resource", RESOURCE,
           "--threads", str(threads), "--summary", str(summary), "--cursor"]
    run = run_measured(f"bare {threads}", cmd, sandbox=sb)
    return {"name": f"bare HTTP client, {threads} threads", "wall_s": run.usage.wall, "cpu_s": run.usage.cpu,
            "server_cpu_s": run.server_cpu, "sink_cpu_s": 0.0, "requests": run.requests,
            "rows": int(orjson.loads(summary.read_bytes())["rows"]), "foreign_share": run.foreign_share}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--students", type=int, default=9200)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "edfi-bench")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    db = seeded_db(a.cache_dir, a.students)
    work = Path(tempfile.mkdtemp(prefix="edfi-bench-bounds-"))
    cases: list[tuple[str, float, Any]] = [
        ("tap-edfi defaults", a.latency_ms, lambda sb: tap_run(sb, work, "defaults", {})),
        ("tap-edfi, no latency", 0.0, lambda sb: tap_run(sb, work, "no-latency", {})),
        ("tap-edfi, max_workers 32", a.latency_ms, lambda sb: tap_run(sb, work, "workers-32", {"max_workers": 32})),
        ("tap-edfi, output to /dev/null", a.latency_ms, lambda sb: tap_run(sb, work, "devnull", {}, sink=False)),
        ("bare HTTP client, 8 threads", a.latency_ms, lambda sb: bare_run(sb, work, 8)),
    ]
    results: dict[str, list[dict]] = {name: [] for name, _, _ in cases}
    with SandboxProcess(db, latency_ms=a.latency_ms) as sb:
        for rep in range(a.reps):
            for name, latency, fn in cases if rep % 2 == 0 else list(reversed(cases)):
                sb.set_latency(latency)
                results[name].append(fn(sb))
    keys = ("wall_s", "startup_s", "planning_s", "streaming_s", "cpu_s", "sink_cpu_s", "server_cpu_s", "requests",
            "foreign_share")
    out = sys.stdout
    out.write(f"\n{RESOURCE}, {a.students:,} students, latency {a.latency_ms:g} ms (medians of {a.reps})\n\n")
    out.write("| run | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys) + "\n")
    for name, runs in results.items():
        cells = []
        for k in keys:
            values = [r[k] for r in runs if k in r]
            cells.append(f"{statistics.median(values):.2f}" if values else "-")
        out.write(f"| {name} | " + " | ".join(cells) + " |\n")
    out.write(f"\nlogs in {work}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
