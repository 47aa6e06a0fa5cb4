"""tap-edfi and target-edfi side by side with edfi-api-client and lightbeam, on one sandbox, in one run.

    python benchmarks/run.py                 # the full benchmark (about 35 minutes; seeds its databases once)
    python benchmarks/run.py --quick         # a smaller district and one repetition (a few minutes)
    python benchmarks/run.py --parts 1,4 --latency-ms 50 --reps 3

The sandbox (``edfi-sandbox serve``, with ``--latency-ms`` added to every request) runs in its own process on
a seeded database kept in ``--cache-dir``; every contender runs in its own process, one at a time, in
alternating order across repetitions, and is measured from outside: wall time, its own CPU seconds and peak RSS
(``os.wait4``), requests counted by the sandbox (``GET /_sandbox/stats``). tap-edfi's output is piped into a
sink process that JSON-parses every line (``benchmarks/workers.py sink``).

Parts:

1. extraction of one large resource (``studentSectionAttendanceEvents``, 208,861 rows at 9,200 students):
   tap-edfi vs edfi-api-client (``get_rows``' paginator: change-version stepping with reverse offset paging,
   500 a page) vs ``lightbeam fetch`` (page size 500, pool of 8);
2. extraction of the whole district, every stream and descriptor: tap-edfi vs edfi-api-client over every
   resource (and lightbeam fetch of every endpoint);
3. loading 20,000 records of a whole district (every resource, descriptors first) into an empty sandbox:
   target-edfi vs ``lightbeam send``, at their defaults and at equal concurrency;
4. a rerun with nothing changed: requests of tap-edfi (from the STATE of part 2) and writes of target-edfi
   (part 3's input again, same transaction log);
5. peak RSS of tap-edfi and target-edfi at 100,000 and 1,000,000 records of ``studentSchoolAttendanceEvents``.

Results: a table on stdout, ``--out``/latest.json (every run of every contender) and latest.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import district_dataset, resource_dataset
from harness import (
    BIN,
    CLIENT_ID,
    CLIENT_SECRET,
    QUIET_WAIT,
    REPO,
    Run,
    SandboxProcess,
    copy_db,
    machine,
    run_measured,
    seeded_db,
)

logger = logging.getLogger("bench")

HERE = Path(__file__).resolve().parent
WORKERS = HERE / "workers.py"
PART1_RESOURCE = "/ed-fi/studentSectionAttendanceEvents"
MEMORY_RESOURCE = "/ed-fi/studentSchoolAttendanceEvents"
LIGHTBEAM_POOL = 8  # lightbeam 0.1.12's default connection pool_size


@dataclass
class Options:
    latency_ms: float
    students: int
    memory_students: int
    load_students: int
    load_records: int
    memory_records: list[int]
    target_memory_records: list[int]
    concurrency: list[int]
    reps: int
    long_reps: int
    parts: list[str]
    api_version: str
    lightbeam_page_size: int
    cache: Path
    out: Path
    work: Path
    quick: bool


@dataclass
class Contender:
    name: str
    run: Callable[[int], Run]  # rep -> a measured run
    peer: bool = False  # a peer (ratios are tap or target vs peers)
    info: str = ""


@dataclass
class Measure:
    """The repetitions of one contender in one part, and the medians reported."""

    part: str
    name: str
    info: str
    runs: list[Run] = field(default_factory=list)

    def median(self, fn: Callable[[Run], float]) -> float:
        values = [fn(r) for r in self.runs]
        return statistics.median(values) if values else float("nan")

    @property
    def rows(self) -> int:
        return int(self.median(lambda r: r.rows)) if self.runs else 0

    @property
    def wall(self) -> float:
        return self.median(lambda r: r.usage.wall)

    @property
    def rows_per_s(self) -> float:
        return self.median(lambda r: r.rows / r.usage.wall if r.usage.wall else 0.0)

    @property
    def cpu_per_100k(self) -> float:
        return self.median(lambda r: r.usage.cpu / r.rows * 100_000 if r.rows else float("nan"))

    @property
    def sink_cpu_per_100k(self) -> float | None:
        if not all("sink" in r.helpers for r in self.runs) or not self.runs:
            return None
        return self.median(lambda r: r.helpers["sink"].cpu / r.rows * 100_000 if r.rows else float("nan"))

    @property
    def requests(self) -> int:
        return int(self.median(lambda r: r.requests)) if self.runs else 0

    @property
    def rss_mib(self) -> float:
        return self.median(lambda r: r.usage.maxrss_kib / 1024)

    @property
    def server_cpu_ms_per_request(self) -> float:
        return self.median(lambda r: r.server_cpu / r.requests * 1000 if r.requests else float("nan"))

    def summary(self) -> dict[str, Any]:
        out = {"name": self.name, "info": self.info, "rows": self.rows, "wall_s": round(self.wall, 2),
               "rows_per_s": round(self.rows_per_s), "cpu_s_per_100k_rows": round(self.cpu_per_100k, 2),
               "requests": self.requests, "peak_rss_mib": round(self.rss_mib, 1),
               "server_cpu_ms_per_request": round(self.server_cpu_ms_per_request, 2),
               "foreign_share": round(self.median(lambda r: r.foreign_share), 3),
               "reps": len(self.runs)}
        if self.sink_cpu_per_100k is not None:
            out["sink_cpu_s_per_100k_rows"] = round(self.sink_cpu_per_100k, 2)
        if self.runs and all("sync_s" in r.extra for r in self.runs):
            out["sync_s"] = round(self.median(lambda r: r.extra["sync_s"]), 2)
        return out


class Bench:
    def __init__(self, opts: Options) -> None:
        self.o = opts
        self.results: dict[str, Any] = {"parts": {}}
        self.measures: dict[str, list[Measure]] = {}
        self.tap_state: dict[str, Any] | None = None
        self.failures: list[dict[str, Any]] = []
        self.tap_streams = 0
        self.target_settings, self.target_why = target_about()
        self.target_ok = self.target_settings is not None
        default = (self.target_settings or {}).get("max_workers", {}).get("default")
        self.target_workers = int(default) if isinstance(default, int) else 8
        if not self.o.concurrency:  # equal concurrency at each contender's default
            self.o.concurrency = sorted({self.target_workers, LIGHTBEAM_POOL})

    # -- helpers ------------------------------------------------------------------------------------------
    def workdir(self, name: str) -> Path:
        path = self.o.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def sink_cmd(self, summary: Path) -> list[str]:
        return [sys.executable, str(WORKERS), "sink", "--summary", str(summary)]

    def tap(self, sandbox: SandboxProcess, name: str, work: Path, settings: dict[str, Any],
            state: dict[str, Any] | None = None) -> Run:
        cfg = work / f"{name}-config.json"
        cfg.write_bytes(orjson.dumps({"base_url": sandbox.base_url, "client_id": CLIENT_ID,
                                      "client_secret": CLIENT_SECRET, **settings}))
        cmd = [str(BIN / "tap-edfi"), "--config", str(cfg)]
        if state is not None:
            state_file = work / f"{name}-state.json"
            state_file.write_bytes(orjson.dumps(state))
            cmd += ["--state", str(state_file)]
        summary = work / f"{name}-sink.json"
        log = work / f"{name}.log"
        log.unlink(missing_ok=True)
        run = run_measured(name, cmd, sandbox=sandbox, sink=self.sink_cmd(summary), stderr=log)
        sink = orjson.loads(summary.read_bytes())
        run.rows = int(sink["records"])
        run.extra = {"streams": len(sink["schemas"]), "state": sink["state"], "by_stream": sink["by_stream"]}
        found = re.search(r"sync complete: .* in ([0-9.]+)s", log.read_text(errors="replace"))
        if found:  # the tap's own figure: from its run bound to its last record (no start-up, no discovery)
            run.extra["sync_s"] = float(found.group(1))
        return run

    def eac(self, sandbox: SandboxProcess, name: str, work: Path, resources: list[str] | None,
            mode: str = "stepping") -> Run:
        summary = work / f"{name}-summary.json"
        cmd = [sys.executable, str(WORKERS), "eac", "--base-url", sandbox.base_url, "--mode", mode,
               "--summary", str(summary)]
        for path in resources or []:
            cmd += ["--resource", path]
        run = run_measured(name, cmd, sandbox=sandbox, stderr=work / f"{name}.log")
        run.rows = int(orjson.loads(summary.read_bytes())["rows"])
        return run

    def bare(self, sandbox: SandboxProcess, name: str, work: Path, resource: str, threads: int = 8) -> Run:
        summary = work / f"{name}-summary.json"
        cmd = [sys.executable, str(WORKERS), "bare", "--base-url", sandbox.base_url, "--resource", resource,
               "--threads", str(threads), "--summary", str(summary)]
        if self.o.api_version >= "7.3":
            cmd.append("--cursor")
        run = run_measured(name, cmd, sandbox=sandbox, stderr=work / f"{name}.log")
        run.rows = int(orjson.loads(summary.read_bytes())["rows"])
        return run

    def lightbeam_config(self, sandbox: SandboxProcess, work: Path, data_dir: Path, pool_size: int | None,
                         extra: dict[str, Any] | None = None) -> Path:
        connection: dict[str, Any] = {"verify_ssl": False}
        if pool_size is not None:
            connection["pool_size"] = pool_size
        cfg = {
            "data_dir": str(data_dir) + "/",
            "namespace": "ed-fi",
            "edfi_api": {"base_url": sandbox.base_url, "version": 3, "mode": None,
                         "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
            "connection": connection,
            "log_level": "WARNING",
            "show_stacktrace": True,
            **(extra or {}),
        }
        path = work / f"lightbeam-{data_dir.name}-{pool_size}.yaml"
        path.write_bytes(orjson.dumps(cfg))  # JSON is YAML
        return path

    def lightbeam_fetch(self, sandbox: SandboxProcess, name: str, work: Path, selector: str | None) -> Run:
        out = work / f"{name}-data"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        cfg = self.lightbeam_config(sandbox, work, out, 8, {"fetch": {"page_size": self.o.lightbeam_page_size}})
        cmd = [sys.executable, "-m", "lightbeam", "fetch", "-c", str(cfg)]
        if selector:
            cmd += ["-s", selector]
        run = run_measured(name, cmd, sandbox=sandbox, cwd=work, stderr=work / f"{name}.log")
        run.rows = 0
        for f in out.glob("*.jsonl"):
            with open(f, "rb") as fh:
                run.rows += sum(1 for _ in fh)
        shutil.rmtree(out, ignore_errors=True)
        return run

    def measure(self, part: str, contenders: list[Contender], reps: int | None = None) -> list[Measure]:
        """Every contender once per repetition, one at a time, the order reversed every other repetition."""
        measures = {c.name: Measure(part, c.name, c.info) for c in contenders}
        for rep in range(reps or self.o.reps):
            order = contenders if rep % 2 == 0 else list(reversed(contenders))
            for c in order:
                try:
                    run = c.run(rep)
                except Exception as exc:  # one failed run is reported; the others still run
                    logger.error("part %s rep %d %s failed: %s", part, rep + 1, c.name, exc)
                    self.failures.append({"part": part, "rep": rep + 1, "contender": c.name, "error": str(exc)[-2000:]})
                    continue
                measures[c.name].runs.append(run)
                logger.info("part %s rep %d %s: %d rows in %.1fs (%.0f rows/s), %.2f CPU s, %d requests, %.0f MiB",
                            part, rep + 1, c.name, run.rows, run.usage.wall, run.rows / max(run.usage.wall, 1e-9),
                            run.usage.cpu, run.requests, run.usage.maxrss_kib / 1024)
        out = list(measures.values())
        self.measures[part] = out
        return out

    def extraction_summary(self, part: str, measures: list[Measure], subject: str) -> dict[str, Any]:
        base = {m.name: m for m in measures}
        tap = base[subject]
        rows = {m.name: m.rows for m in measures}
        if len(set(rows.values())) > 1:
            logger.warning("part %s: contenders read different numbers of rows: %s", part, rows)
        ratios = {}
        for m in measures:
            if m.name == subject:
                continue
            ratios[m.name] = {
                "rows_per_s": round(tap.rows_per_s / m.rows_per_s, 2) if m.rows_per_s else None,
                "cpu_per_row": round(tap.cpu_per_100k / m.cpu_per_100k, 2) if m.cpu_per_100k else None,
            }
        return {"contenders": [m.summary() for m in measures], "ratios_of": subject, "ratios": ratios,
                "runs": {m.name: [run_dict(r) for r in m.runs] for m in measures}}

    # -- part 1 ---------------------------------------------------------------------------------------------
    def part1(self) -> None:
        db = seeded_db(self.o.cache, self.o.students, self.o.cache / "seed.log")
        work = self.workdir("part1")
        name = PART1_RESOURCE.rsplit("/", 1)[1]
        with self.sandbox(db) as sb:
            total = sb.count(PART1_RESOURCE)
            logger.info("part 1: %s has %d items", PART1_RESOURCE, total)
            contenders = [
                Contender("tap-edfi", lambda rep: self.tap(sb, "tap-edfi", work, {"resources": [name]}),
                          info="defaults (max_workers 8" + (", cursor paging)" if self.o.api_version >= "7.3"
                                                             else ", reverse offset paging)")),
                Contender("edfi-api-client", lambda rep: self.eac(sb, "edfi-api-client", work, [PART1_RESOURCE]),
                          peer=True, info="stepping + reverse offset paging, page 500, sequential"),
                Contender("lightbeam fetch", lambda rep: self.lightbeam_fetch(sb, "lightbeam-fetch", work, name),
                          peer=True, info=f"page {self.o.lightbeam_page_size}, pool 8"),
            ]
            if self.o.api_version >= "7.3" and not self.o.quick:
                contenders.insert(1, Contender(
                    "tap-edfi (offset paging)",
                    lambda rep: self.tap(sb, "tap-edfi-offset", work, {"resources": [name], "paging": "offset"}),
                    info="paging offset: what it does before ODS/API 7.3"))
                contenders.append(Contender(
                    "ceiling: bare HTTP client",
                    lambda rep: self.bare(sb, "bare-client", work, PART1_RESOURCE), peer=False,
                    info="8 threads of keep-alive http.client, pages counted and dropped"))
                contenders.append(Contender(
                    "edfi-api-client get_rows (cursor)",
                    lambda rep: self.eac(sb, "edfi-api-client-cursor", work, [PART1_RESOURCE], mode="get_rows"),
                    peer=True, info="get_rows on 7.3: cursor paging, sequential"))
            measures = self.measure("1", contenders)
        self.results["parts"]["1"] = {"title": f"Extraction of one resource ({name}, {total:,} rows)",
                                      **self.extraction_summary("1", measures, "tap-edfi")}

    # -- part 2 and the tap half of part 4 ------------------------------------------------------------------
    def part2(self) -> None:
        db = seeded_db(self.o.cache, self.o.students, self.o.cache / "seed.log")
        work = self.workdir("part2")
        with self.sandbox(db) as sb:
            contenders = [
                Contender("tap-edfi", lambda rep: self.tap(sb, "tap-edfi", work, {}), info="every stream, defaults"),
                Contender("edfi-api-client", lambda rep: self.eac(sb, "edfi-api-client", work, None), peer=True,
                          info="every resource and descriptor, stepping + reverse paging"),
            ]
            if not self.o.quick:
                contenders.append(Contender("lightbeam fetch",
                                            lambda rep: self.lightbeam_fetch(sb, "lightbeam-fetch", work, None),
                                            peer=True, info=f"every endpoint, page {self.o.lightbeam_page_size}"))
            measures = self.measure("2", contenders, self.o.long_reps)
            if measures[0].runs:
                tap_run = measures[0].runs[-1]
                self.tap_state = tap_run.extra["state"]
                self.tap_streams = int(tap_run.extra["streams"])
            self.results["parts"]["2"] = {"title": f"Extraction of the whole district ({self.o.students:,} students)",
                                          "streams": self.tap_streams,
                                          **self.extraction_summary("2", measures, "tap-edfi")}
            if "4" in self.o.parts:
                self.part4_tap(sb, work)

    def part4_tap(self, sb: SandboxProcess, work: Path) -> None:
        if self.tap_state is None:
            return
        runs = [self.tap(sb, "tap-edfi-rerun", work, {}, state=self.tap_state) for _ in range(self.o.reps)]
        run = runs[-1]
        data = run.requests_by_area.get("data", 0)
        self.results.setdefault("part4", {})["tap"] = {
            "streams": self.tap_streams, "requests": run.requests, "data_requests": data,
            "requests_by_area": run.requests_by_area, "records": run.rows,
            "requests_per_stream": round(run.requests / max(1, self.tap_streams), 3),
            "wall_s": round(run.usage.wall, 2), "runs": [run_dict(r) for r in runs],
        }

    # -- part 3 and the target half of part 4 ---------------------------------------------------------------
    def part3(self) -> None:
        if not self.target_ok:
            why = f"target-edfi not available: {self.target_why}"
            self.results["parts"]["3"] = {"title": "Loading", "skipped": why}
            self.results.setdefault("part4", {})["target"] = {"skipped": "target-edfi not available"}
            logger.warning("part 3: target-edfi not available (%s)", self.target_why)
            return
        db = seeded_db(self.o.cache, self.o.load_students, self.o.cache / "seed.log")
        data = self.o.cache / f"load-{self.o.load_students}-{self.o.load_records}"
        with self.sandbox(db, latency=0) as sb:
            info = district_dataset(sb, data, self.o.load_records)
        work = self.workdir("part3")
        records = int(info["records"])
        settings = [(None, "defaults")] + [(c, f"concurrency {c}") for c in self.o.concurrency]
        rows = []
        for workers, label in settings:
            contenders = [
                Contender(f"target-edfi {label}", lambda rep, w=workers: self.target_load(data, work, w, rep),
                          info=f"max_workers {workers or self.target_workers}"),
                Contender(f"lightbeam send {label}", lambda rep, w=workers: self.lightbeam_send(data, work, w, rep),
                          peer=True, info=f"pool_size {workers or LIGHTBEAM_POOL}"),
            ]
            if workers is not None and not self.o.quick:
                contenders.append(Contender(
                    f"ceiling {label}", lambda rep, w=workers: self.bare_load(data, work, w, rep),
                    info=f"bare http.client loop, {workers} threads, dependency order"))
            measures = self.measure(f"3 {label}", contenders, self.o.long_reps)
            target, peer = measures[:2]
            concurrency = [workers or self.target_workers, workers or LIGHTBEAM_POOL, workers or 0]
            for m, conc in zip(measures, concurrency[: len(measures)], strict=True):
                bound = conc / (self.o.latency_ms / 1000) if self.o.latency_ms else float("inf")
                data_rps = m.median(lambda r: r.requests_by_area.get("data", 0) / r.usage.wall)
                rows.append({**m.summary(), "setting": label, "concurrency": conc,
                             "data_requests": int(m.median(lambda r: r.requests_by_area.get("data", 0)))
                             if m.runs else 0,
                             "data_requests_per_s": round(data_rps, 1), "latency_bound_rps": round(bound, 1),
                             "efficiency": round(data_rps / bound, 3) if bound != float("inf") else None,
                             "writes_ok": [r.extra.get("ok") for r in m.runs]})
            rows[-len(measures)]["ratio_to_lightbeam"] = (round(target.rows_per_s / peer.rows_per_s, 2)
                                                          if peer.rows_per_s else None)
        self.results["parts"]["3"] = {"title": f"Loading {records:,} records ({len(info['by_resource'])} resources) "
                                               "into an empty sandbox", "records": records,
                                      "by_resource": info["by_resource"], "contenders": rows,
                                      "runs": {m.name: [run_dict(r) for r in m.runs]
                                               for part, ms in self.measures.items() if part.startswith("3")
                                               for m in ms}}

    def target_config(self, sb: SandboxProcess, work: Path, log: Path, workers: int | None,
                      results: Path) -> Path:
        cfg: dict[str, Any] = {"base_url": sb.base_url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                               "transaction_log": str(log), "results_file": str(results)}
        if workers is not None:
            cfg["max_workers"] = workers
        path = work / f"target-{log.stem}.json"
        path.write_bytes(orjson.dumps(cfg))
        return path

    def target_load(self, data: Path, work: Path, workers: int | None, rep: int) -> Run:
        tag = f"w{workers or 'default'}-r{rep}"
        log = work / f"txlog-{tag}.db"
        for stale in work.glob(f"txlog-{tag}.db*"):
            stale.unlink()
        results = work / f"target-results-{tag}.json"
        with self.sandbox(None) as sb:  # an empty sandbox for every load
            cfg = self.target_config(sb, work, log, workers, results)
            cmd = [str(BIN / "target-edfi"), "--config", str(cfg)]
            run = run_measured(f"target-edfi {tag}", cmd, sandbox=sb, stdin=data / "singer.jsonl",
                               stdout=work / f"target-{tag}.out", stderr=work / f"target-{tag}.log", cwd=work)
            run.rows = int(orjson.loads((data / "dataset.json").read_bytes())["records"])
            run.extra = target_outcome(results)
            run.extra["ok"] = run.extra.get("failed", 0) == 0
            if workers is None and rep == 0 and "4" in self.o.parts:
                self.part4_target(sb, data, work, cfg)
        return run

    def part4_target(self, sb: SandboxProcess, data: Path, work: Path, cfg: Path) -> None:
        """The same input again, the same transaction log, the same API: nothing should be written."""
        config = orjson.loads(cfg.read_bytes())
        results = work / "target-rerun-results.json"
        config["results_file"] = str(results)
        rerun_cfg = work / "target-rerun.json"
        rerun_cfg.write_bytes(orjson.dumps(config))
        run = run_measured("target-edfi rerun", [str(BIN / "target-edfi"), "--config", str(rerun_cfg)],
                           sandbox=sb, stdin=data / "singer.jsonl", stdout=work / "target-rerun.out",
                           stderr=work / "target-rerun.log", cwd=work)
        outcome = target_outcome(results)
        self.results.setdefault("part4", {})["target"] = {
            "records": int(orjson.loads((data / "dataset.json").read_bytes())["records"]),
            "requests": run.requests, "data_requests": run.requests_by_area.get("data", 0),
            "requests_by_area": run.requests_by_area, "change_versions_used": run.change_versions,
            "writes": outcome.get("created", 0) + outcome.get("updated", 0) + outcome.get("deleted", 0)
            + outcome.get("key_changes", 0),
            "outcome": outcome, "wall_s": round(run.usage.wall, 2), "run": run_dict(run),
        }

    def bare_load(self, data: Path, work: Path, threads: int, rep: int) -> Run:
        tag = f"t{threads}-r{rep}"
        summary = work / f"bare-load-{tag}.json"
        with self.sandbox(None) as sb:
            cmd = [sys.executable, str(WORKERS), "bare-load", "--base-url", sb.base_url, "--data-dir",
                   str(data / "lightbeam"), "--threads", str(threads), "--summary", str(summary)]
            run = run_measured(f"bare load {tag}", cmd, sandbox=sb, stderr=work / f"bare-load-{tag}.log")
        out = orjson.loads(summary.read_bytes())
        run.rows = int(out["rows"])
        run.extra = {"statuses": out["statuses"], "ok": True}
        return run

    def lightbeam_send(self, data: Path, work: Path, pool: int | None, rep: int) -> Run:
        tag = f"p{pool or 'default'}-r{rep}"
        results = work / f"lightbeam-results-{tag}.json"
        with self.sandbox(None) as sb:
            cfg = self.lightbeam_config(sb, work, data / "lightbeam", pool)
            cmd = [sys.executable, "-m", "lightbeam", "send", "-c", str(cfg), "--results-file", str(results)]
            run = run_measured(f"lightbeam send {tag}", cmd, sandbox=sb, cwd=work,
                               stderr=work / f"lightbeam-send-{tag}.log")
            run.rows = int(orjson.loads((data / "dataset.json").read_bytes())["records"])
            if results.exists():
                out = orjson.loads(results.read_bytes())
                run.extra = {"processed": out.get("total_records_processed"),
                             "failed": out.get("total_records_failed"),
                             "ok": not out.get("total_records_failed")}
        return run

    # -- part 5 ----------------------------------------------------------------------------------------------
    def part5(self) -> None:
        db = seeded_db(self.o.cache, self.o.memory_students, self.o.cache / "seed.log")
        work = self.workdir("part5")
        name = MEMORY_RESOURCE.rsplit("/", 1)[1]
        out: dict[str, Any] = {"title": f"Peak memory ({name})", "resource": MEMORY_RESOURCE}
        with self.sandbox(db) as sb:
            total, newest = sb.count(MEMORY_RESOURCE), sb.newest_change_version()
            tap_rows = []
            for n in self.o.memory_records:
                start = start_version_for(sb, MEMORY_RESOURCE, n, newest)
                runs = [self.tap(sb, f"tap-edfi-{n}", work, {"resources": [name], "start_change_version": start})
                        for _ in range(self.o.reps)]
                tap_rows.append(memory_row(n, runs))
            out["tap"] = {"rows": tap_rows, "growth": growth(tap_rows), "items": total}
        if not self.target_ok:
            out["target"] = {"skipped": f"target-edfi not available: {self.target_why}"}
        else:
            sizes = self.o.target_memory_records
            with self.sandbox(db, latency=0) as sb:
                files = resource_dataset(sb, self.o.cache / f"memory-{self.o.memory_students}", MEMORY_RESOURCE, sizes)
            copy = copy_db(db, work / "target-memory.db")
            target_rows = []
            try:
                with self.sandbox(copy) as sb:
                    for n in sizes:
                        log = work / f"txlog-memory-{n}.db"
                        for stale in work.glob(f"txlog-memory-{n}.db*"):
                            stale.unlink()
                        results = work / f"target-memory-{n}-results.json"
                        cfg = self.target_config(sb, work, log, None, results)
                        run = run_measured(f"target-edfi {n}", [str(BIN / "target-edfi"), "--config", str(cfg)],
                                           sandbox=sb, stdin=files[n], stdout=work / f"target-memory-{n}.out",
                                           stderr=work / f"target-memory-{n}.log", cwd=work)
                        run.rows = n
                        run.extra = target_outcome(results)
                        target_rows.append(memory_row(n, [run]))
            finally:
                for f in work.glob("target-memory.db*"):
                    f.unlink()
            out["target"] = {"rows": target_rows, "growth": growth(target_rows),
                             "note": "records already in the API (a copy of the seeded database): every record is "
                                     "POSTed and answered 200 without a change"}
        self.results["parts"]["5"] = out

    # -- running ---------------------------------------------------------------------------------------------
    def sandbox(self, db: Path | None, latency: float | None = None) -> SandboxProcess:
        return SandboxProcess(db, latency_ms=self.o.latency_ms if latency is None else latency,
                              api_version=self.o.api_version, log_path=self.o.work / "sandbox.log")

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        self.results.update({
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
            "command": " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]),
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.o).items()},
            "target_available": self.target_ok,
            "target_unavailable_because": self.target_why or None,
            "code": source_fingerprint("tap_edfi", "target_edfi", "edfi_core", "edfi_sandbox"),
        })
        steps = {"1": self.part1, "2": self.part2, "3": self.part3, "5": self.part5}
        for part in ("1", "2", "3", "5"):
            if part in self.o.parts or (part == "2" and "4" in self.o.parts) or (part == "3" and "4" in self.o.parts):
                t0 = time.monotonic()
                steps[part]()
                logger.info("part %s done in %.0fs", part, time.monotonic() - t0)
        if "4" in self.o.parts:
            self.results["parts"]["4"] = {"title": "Rerun with nothing changed", **self.results.pop("part4", {})}
        self.results.pop("part4", None)
        self.results["failures"] = self.failures
        self.results["seconds"] = round(time.monotonic() - started)
        return self.results


# -- helpers ---------------------------------------------------------------------------------------------------
def run_dict(run: Run) -> dict[str, Any]:
    d = asdict(run)
    d["extra"] = {k: v for k, v in run.extra.items() if k != "state"}
    return d


def target_about() -> tuple[dict[str, Any] | None, str]:
    """target-edfi's settings (``--about``), or None and why it cannot be run."""
    exe = BIN / "target-edfi"
    if not exe.exists():
        return None, f"{exe} is not installed"
    try:
        proc = subprocess.run([str(exe), "--about", "--format", "json"], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        return None, lines[-1] if lines else f"--about exited {proc.returncode}"
    try:
        about = orjson.loads(proc.stdout)
    except orjson.JSONDecodeError:
        return None, "target-edfi --about gives no JSON"
    props = (about.get("settings") or {}).get("properties") or {}
    missing = {"base_url", "client_id", "client_secret", "transaction_log", "max_workers"} - set(props)
    if missing:
        return None, f"settings missing: {sorted(missing)}"
    return props, ""


def source_fingerprint(*packages: str) -> dict[str, Any]:
    """What code was measured: a hash of each package's sources and their newest modification time."""
    out: dict[str, Any] = {}
    for package in packages:
        digest = hashlib.sha256()
        newest = 0.0
        for path in sorted((REPO / package).glob("*.py")):
            digest.update(path.name.encode() + path.read_bytes())
            newest = max(newest, path.stat().st_mtime)
        out[package] = {"sha256": digest.hexdigest()[:12],
                        "modified": dt.datetime.fromtimestamp(newest, dt.timezone.utc).isoformat(timespec="seconds")}
    return out


def target_outcome(results: Path) -> dict[str, Any]:
    if not results.exists():
        return {}
    data = orjson.loads(results.read_bytes())
    totals: dict[str, int] = {}
    for counts in (data.get("resources") or {}).values():
        for k, v in counts.items():
            if isinstance(v, int):
                totals[k] = totals.get(k, 0) + v
    return totals


def start_version_for(sb: SandboxProcess, path: str, rows: int, newest: int) -> int:
    """The lowest change version from which ``path`` has at most ``rows`` items (0: all of them)."""
    if sb.count(path) <= rows:
        return 0
    lo, hi = 0, newest + 1  # count(lo..) > rows >= count(hi..)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if sb.count(path, mid, newest) > rows:
            lo = mid
        else:
            hi = mid
    return hi


def memory_row(n: int, runs: list[Run]) -> dict[str, Any]:
    return {"records_asked": n, "rows": runs[-1].rows,
            "peak_rss_mib": round(statistics.median(r.usage.maxrss_kib / 1024 for r in runs), 1),
            "wall_s": round(statistics.median(r.usage.wall for r in runs), 2),
            "rows_per_s": round(statistics.median(r.rows / r.usage.wall for r in runs)),
            "cpu_s": round(statistics.median(r.usage.cpu for r in runs), 2),
            "requests": runs[-1].requests, "extra": {k: v for k, v in runs[-1].extra.items() if k != "state"},
            "runs": [run_dict(r) for r in runs]}


def growth(rows: list[dict[str, Any]]) -> float | None:
    if len(rows) < 2 or not rows[0]["peak_rss_mib"]:
        return None
    return round(rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"] - 1, 3)


def foreign_shares(node: Any) -> list[float]:
    """The ``foreign_share`` of every measured run in the results."""
    if isinstance(node, dict):
        if "foreign_share" in node and "usage" in node:
            return [float(node["foreign_share"])]
        return [x for v in node.values() for x in foreign_shares(v)]
    if isinstance(node, list):
        return [x for v in node for x in foreign_shares(v)]
    return []


# -- the report -----------------------------------------------------------------------------------------------
def fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:  # NaN
        return "-"
    return format(value, spec)


def report(results: dict[str, Any]) -> str:
    """The results as Markdown (also printed)."""
    m = results["machine"]
    o = results["options"]
    code = results.get("code") or {}
    lines = [f"Measured {results['started_at']} with `{results['command']}`: latency {o['latency_ms']:g} ms per "
             f"request, {o['reps']} repetitions per contender in parts 1, 4, 5 and {o['long_reps']} in parts 2, 3 "
             f"(medians; order alternated), sandbox ODS/API {o['api_version']}. Code: "
             + ", ".join(f"{k} {v['sha256']} ({v['modified']})" for k, v in code.items()) + ".",
             f"Machine: {m['nproc']} cores ({m['cpu'] or 'unknown CPU'}), {m['memory_gib']} GiB, Python {m['python']}; "
             + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v and k in
                         ("singer-sdk", "edfi-api-client", "lightbeam")) + ".", ""]
    parts = results["parts"]
    for key in ("1", "2"):
        if key not in parts:
            continue
        p = parts[key]
        lines += [f"**{key}. {p['title']}**", "",
                  "| contender | rows | wall s | rows/s | CPU s per 100k rows | requests | peak RSS MiB | "
                  "tap-edfi rows/s ratio | tap-edfi CPU/row ratio |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for c in p["contenders"]:
            r = p["ratios"].get(c["name"], {})
            cpu = fmt(c["cpu_s_per_100k_rows"], ".2f")
            if "sink_cpu_s_per_100k_rows" in c:
                cpu += f" (+{fmt(c['sink_cpu_s_per_100k_rows'], '.2f')} sink)"
            wall = fmt(c["wall_s"], ".1f") + (f" (sync {c['sync_s']:.1f})" if "sync_s" in c else "")
            lines.append(f"| {c['name']} ({c['info']}) | {fmt(c['rows'])} | {wall} | "
                         f"{fmt(c['rows_per_s'])} | {cpu} | {fmt(c['requests'])} | {fmt(c['peak_rss_mib'], '.0f')} | "
                         f"{fmt(r.get('rows_per_s'), '.2f') + 'x' if r else ''} | "
                         f"{fmt(r.get('cpu_per_row'), '.2f') + 'x' if r else ''} |")
        lines.append("")
    if "3" in parts:
        p = parts["3"]
        lines += [f"**3. {p['title']}**", ""]
        if "skipped" in p:
            lines += [p["skipped"], ""]
        else:
            lines += ["| contender | setting | records/s | wall s | data requests | requests/s | latency bound req/s | "
                      "efficiency | CPU s per 100k | peak RSS MiB | target/lightbeam |",
                      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for c in p["contenders"]:
                who = next(w for w in ("target-edfi", "lightbeam send", "ceiling") if c["name"].startswith(w))
                lines.append(f"| {who} | "
                             f"{c['setting']} ({c['info']}) | {fmt(c['rows_per_s'])} | {fmt(c['wall_s'], '.1f')} | "
                             f"{fmt(c['data_requests'])} | {fmt(c['data_requests_per_s'], '.0f')} | "
                             f"{fmt(c['latency_bound_rps'], '.0f')} | {fmt(c['efficiency'], '.0%')} | "
                             f"{fmt(c['cpu_s_per_100k_rows'], '.2f')} | {fmt(c['peak_rss_mib'], '.0f')} | "
                             f"{fmt(c.get('ratio_to_lightbeam'), '.2f') + 'x' if 'ratio_to_lightbeam' in c else ''} |")
            lines.append("")
    if "4" in parts:
        p = parts["4"]
        lines += [f"**4. {p['title']}**", ""]
        t = p.get("tap")
        if t:
            lines.append(f"- tap-edfi, incremental from the STATE of part 2: {t['requests']} requests for "
                         f"{t['streams']} streams ({t['requests_per_stream']:.2f} per stream; {t['data_requests']} "
                         f"to the data API), {t['records']} records, {t['wall_s']:.1f} s.")
        g = p.get("target")
        if g and "skipped" in g:
            lines.append(f"- target-edfi: {g['skipped']}.")
        elif g:
            lines.append(f"- target-edfi, the same {g['records']:,} records again: {g['writes']} writes "
                         f"({g['data_requests']} requests to the data API, {g['requests']} in all; change version "
                         f"moved by {g['change_versions_used']}), {g['wall_s']:.1f} s.")
        lines.append("")
    if "5" in parts:
        p = parts["5"]
        lines += [f"**5. {p['title']}**", "", "| program | records | peak RSS MiB | wall s | records/s | requests |",
                  "|---|---:|---:|---:|---:|---:|"]
        for who in ("tap", "target"):
            section = p.get(who) or {}
            label = "tap-edfi" if who == "tap" else "target-edfi"
            if "skipped" in section:
                lines.append(f"| {label} | - | {section['skipped']} | | | |")
                continue
            for row in section.get("rows", []):
                lines.append(f"| {label} | {fmt(row['rows'])} | {fmt(row['peak_rss_mib'], '.0f')} | "
                             f"{fmt(row['wall_s'], '.1f')} | {fmt(row['rows_per_s'])} | {fmt(row['requests'])} |")
            if section.get("growth") is not None:
                lines.append(f"| {label}: growth | | {section['growth']:+.0%} | | | |")
        lines.append("")
    shares = sorted(foreign_shares(results["parts"]))
    if shares:
        lines.append(f"Other processes on the machine used a median {shares[len(shares) // 2]:.0%} (at most "
                     f"{shares[-1]:.0%}) of it during the {len(shares)} measured runs.")
    for f in results.get("failures") or []:
        lines.append(f"FAILED: part {f['part']} rep {f['rep']} {f['contender']}: {f['error'].splitlines()[-1:]}")
    lines.append(f"Whole run: {results['seconds']} s.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency-ms", type=float, default=20.0, help="latency added to every request (default 20)")
    p.add_argument("--students", type=int, help="district of parts 1, 2 and 4 (default 9200; --quick 2600)")
    p.add_argument("--memory-students", type=int, help="district of part 5 (default 25500; --quick 2600)")
    p.add_argument("--load-students", type=int, help="district the load data set comes from (default 450; --quick 60)")
    p.add_argument("--load-records", type=int, help="records loaded in part 3 (default 20000; --quick 3000)")
    p.add_argument("--memory-records", help="tap-edfi records of part 5, comma-separated "
                                            "(default 100000,1000000; --quick 10000,100000)")
    p.add_argument("--target-memory-records",
                   help="target-edfi records of part 5, comma-separated (default 100000,1000000, a million POSTs: "
                        "about 20 minutes; --quick 1000,5000)")
    p.add_argument("--concurrency", default=None,
                   help="equal concurrency settings of part 3, comma-separated (default: each contender's "
                        "default, i.e. target-edfi's max_workers and lightbeam's pool_size 8)")
    p.add_argument("--reps", type=int, help="repetitions of each contender in parts 1, 4 and 5 (default 3; --quick 1)")
    p.add_argument("--long-reps", type=int,
                   help="repetitions in parts 2 and 3, whose runs take minutes (default 2, or --reps; --quick 1)")
    p.add_argument("--parts", default="1,2,3,4,5", help="which parts (default 1,2,3,4,5)")
    p.add_argument("--api-version", default="7.3", choices=("5.3", "6.1", "7.1", "7.3"))
    p.add_argument("--lightbeam-page-size", type=int, default=500, help="lightbeam fetch page size (default 500)")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "edfi-bench",
                   help="seeded databases and data sets, kept between runs")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where latest.json and latest.md go")
    p.add_argument("--quick", action="store_true", help="a small district, one repetition: a few minutes")
    p.add_argument("--quiet-wait", type=float, default=60.0,
                   help="before each measured run, wait up to this many seconds for other processes to use less "
                        "than 15%% of the machine (default 60; 0: never wait)")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quick = a.quick
    QUIET_WAIT["seconds"] = a.quiet_wait

    def ints(text: str | None, default: str) -> list[int]:
        return [int(x) for x in (text if text is not None else default).split(",") if x.strip()]

    memory = ints(a.memory_records, "10000,100000" if quick else "100000,1000000")
    return Options(
        latency_ms=a.latency_ms,
        students=a.students or (2600 if quick else 9200),
        memory_students=a.memory_students or (2600 if quick else 25500),
        load_students=a.load_students or (60 if quick else 450),
        load_records=a.load_records or (3000 if quick else 20000),
        memory_records=memory,
        target_memory_records=ints(a.target_memory_records, "1000,5000" if quick else "100000,1000000"),
        concurrency=ints(a.concurrency, ""),
        reps=a.reps or (1 if quick else 3),
        long_reps=a.long_reps or a.reps or (1 if quick else 2),
        parts=[x.strip() for x in a.parts.split(",") if x.strip()],
        api_version=a.api_version,
        lightbeam_page_size=a.lightbeam_page_size,
        cache=a.cache_dir,
        out=a.out,
        work=Path(tempfile.mkdtemp(prefix="edfi-bench-run-")),
        quick=quick,
    )


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the sandboxes


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    opts = parse_args(argv)
    os.chdir(REPO)
    logger.info("working in %s; cache %s", opts.work, opts.cache)
    try:
        results = Bench(opts).run()
    finally:
        logger.info("work files kept in %s", opts.work)
    opts.out.mkdir(parents=True, exist_ok=True)
    text = report(results)
    (opts.out / "latest.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    (opts.out / "latest.md").write_text(text)
    sys.stdout.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
