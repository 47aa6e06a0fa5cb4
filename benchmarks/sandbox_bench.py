"""Sandbox benchmark: seeding time and page latency under concurrent clients.

Starts ``edfi-sandbox serve`` in its own process (so the clients measured here do not share its
interpreter), seeds a district, then has N concurrent clients read 500-row pages of the largest
resource at random offsets (shallow and deep) and prints latency percentiles and throughput.

    python benchmarks/sandbox_bench.py                      # 25,500 students: ~1M school attendance events
    python benchmarks/sandbox_bench.py --students 2000 --requests 200   # a quick look
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from edfi_sandbox.app import encode_token
from edfi_sandbox.server import free_port

logger = logging.getLogger("sandbox_bench")
RESOURCE = "/ed-fi/studentSchoolAttendanceEvents"


def start_server(students: int, port: int, db: Path) -> tuple[subprocess.Popen, float]:
    started = time.perf_counter()
    seed = [] if db.exists() else ["--seed", str(students)]  # an existing database is served as it is
    proc = subprocess.Popen(
        [sys.executable, "-m", "edfi_sandbox.cli", "serve", "--port", str(port), *seed,
         "--db", str(db), "--log-level", "warning"],
    )
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("sandbox exited during start-up")
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=2)
            return proc, time.perf_counter() - started
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("sandbox did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=25_500)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=640, help="page requests in all")
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--paging", choices=("offset", "cursor"), default="offset",
                        help="offset: limit/offset pages; cursor: 7.3 pageToken pages at the same positions")
    parser.add_argument("--db", type=Path, help="keep the seeded database here and reuse it on later runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc, startup = start_server(args.students, port, args.db or Path(tmp) / "bench.db")
        try:
            return run(args, port, startup, proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args: argparse.Namespace, port: int, startup: float, server_pid: int) -> int:
    base = f"http://127.0.0.1:{port}"
    token = requests.post(base + "/oauth/token", data={"grant_type": "client_credentials"},
                          auth=("sandbox-client", "sandbox-secret"), timeout=10).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    url = base + "/data/v3" + RESOURCE
    counts = {}
    for path in (RESOURCE, "/ed-fi/studentSectionAttendanceEvents"):
        counts[path] = int(requests.get(base + "/data/v3" + path, params={"limit": 0, "totalCount": "true"},
                                        headers=headers, timeout=60).headers["Total-Count"])
    total = counts[RESOURCE]
    rng = random.Random(1)
    offsets = [rng.randrange(0, max(1, total - args.limit)) for _ in range(args.requests)]
    latencies: list[tuple[int, float]] = []
    lock = threading.Lock()
    cursor = iter(offsets)

    def worker() -> None:
        http = requests.Session()
        http.headers.update(headers)
        while True:
            with lock:
                offset = next(cursor, None)
            if offset is None:
                return
            if args.paging == "cursor":  # aggregate ids are dense from 1 in a seeded resource
                params = {"pageToken": encode_token(offset + 1, 2**31 - 1), "pageSize": args.limit}
            else:
                params = {"offset": offset, "limit": args.limit}
            t0 = time.perf_counter()
            resp = http.get(url, params=params, timeout=120)
            body = resp.content
            elapsed = time.perf_counter() - t0
            assert resp.status_code == 200 and body.startswith(b"[")
            with lock:
                latencies.append((offset, elapsed))

    cpu_before = cpu_seconds(server_pid)
    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    server_cpu = cpu_seconds(server_pid) - cpu_before
    ms = sorted(e * 1000 for _, e in latencies)
    deep = sorted(e * 1000 for o, e in latencies if o > total * 0.9)
    shallow = sorted(e * 1000 for o, e in latencies if o < total * 0.1)

    def pct(values: list[float], p: float) -> float:
        return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")

    out = sys.stdout
    out.write(f"\nsandbox: {args.students:,} students, seeded and serving in {startup:.1f}s\n")
    out.write(f"  attendance events: {sum(counts.values()):,} ({total:,} in {RESOURCE})\n")
    out.write(f"  {args.paging} paging: {args.clients} clients, {len(ms)} pages of {args.limit}, {wall:.1f}s: "
              f"{len(ms) / wall:.0f} pages/s, {len(ms) * args.limit / wall:,.0f} rows/s\n")
    out.write(f"  latency ms: p50 {pct(ms, 0.5):.0f}  p90 {pct(ms, 0.9):.0f}  p99 {pct(ms, 0.99):.0f}  "
              f"max {ms[-1]:.0f}  mean {statistics.mean(ms):.0f}\n")
    out.write(f"  server CPU per page: {server_cpu / len(ms) * 1000:.1f} ms "
              f"(ceiling {len(ms) / server_cpu:.0f} pages/s on this machine)\n")
    out.write(f"  first 10% of offsets p50 {pct(shallow, 0.5):.0f} ms; last 10% p50 {pct(deep, 0.5):.0f} ms\n")
    # a single client alone: the cost of one page without queueing behind 31 others
    solo = []
    http = requests.Session()
    http.headers.update(headers)
    for offset in (0, total // 2, total - args.limit):
        t0 = time.perf_counter()
        http.get(url, params={"offset": offset, "limit": args.limit}, timeout=120).content  # noqa: B018
        solo.append((offset, (time.perf_counter() - t0) * 1000))
    out.write("  one client alone: " + ", ".join(f"offset {o:,}: {t:.0f} ms" for o, t in solo) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
