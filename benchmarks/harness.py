"""Processes for the benchmarks: the sandbox in its own process, contenders measured one process each.

Every contender runs as a child process of the harness and is reaped with ``os.wait4``, whose resource usage is
that process's own: user + system CPU seconds and peak RSS (``ru_maxrss``). The sandbox runs in another process
(``python -m edfi_sandbox.cli serve``), so what it costs is never counted for a client; requests are counted by the
sandbox itself (``GET /_sandbox/stats``) before and after each contender.
"""

from __future__ import annotations

import logging
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import requests

logger = logging.getLogger("bench.harness")

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLIENT_ID, CLIENT_SECRET = "sandbox-client", "sandbox-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds every process on the machine has used since boot (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    busy = values[0] + values[1] + values[2] + sum(values[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


#: Longest wait for a quiet machine before each measured run (``--quiet-wait``); 0: do not wait.
QUIET_WAIT = {"seconds": 60.0}


def wait_for_quiet(limit: float = 0.15, max_wait: float | None = None, sample: float = 1.0) -> float:
    """Wait until other processes use less than ``limit`` of the machine (sampled over ``sample`` seconds), at
    most ``max_wait`` seconds; returns the share measured last. Other sessions on a shared machine would
    otherwise be measured with the contender."""
    cores = os.cpu_count() or 1
    max_wait = QUIET_WAIT["seconds"] if max_wait is None else max_wait
    if max_wait <= 0:
        return 0.0
    waited = 0.0
    while True:
        before = machine_busy()
        time.sleep(sample)
        share = (machine_busy() - before) / (sample * cores)
        if share < limit or waited >= max_wait:
            if share >= limit:
                logger.warning("the machine is still %.0f%% busy with other work after %.0fs: measuring anyway",
                               share * 100, waited)
            return share
        if waited == 0:
            logger.info("the machine is %.0f%% busy with other work: waiting for it to quieten", share * 100)
        waited += sample


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


# -- the machine ---------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("singer-sdk", "edfi-api-client", "lightbeam", "orjson", "msgspec", "requests", "aiohttp", "uvicorn"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


# -- the sandbox ----------------------------------------------------------------------------------------------
class SandboxProcess:
    """``edfi-sandbox serve`` in a child process, on a free loopback port."""

    def __init__(self, db: Path | None, *, students: int = 0, latency_ms: float = 0.0, api_version: str = "7.3",
                 log_path: Path | None = None) -> None:
        self.db = db
        self.students = students
        self.latency_ms = latency_ms
        self.api_version = api_version
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None
        self._token: str | None = None
        self.http = requests.Session()
        self.http.trust_env = False  # loopback: never through a proxy
        self.admin_token = secrets.token_urlsafe(18)  # the /_sandbox/* endpoints require it
        self.http.headers["X-Sandbox-Admin-Token"] = self.admin_token

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 1800) -> SandboxProcess:
        cmd = [sys.executable, "-m", "edfi_sandbox.cli", "serve", "--port", str(self.port),
               "--api-version", self.api_version, "--latency-ms", str(self.latency_ms), "--log-level", "warning",
               "--admin-token", self.admin_token]
        if self.db is not None:
            cmd += ["--db", str(self.db)]
            if not self.db.exists() and self.students:
                cmd += ["--seed", str(self.students)]
        elif self.students:
            cmd += ["--seed", str(self.students)]
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115  # closed in stop()
        started = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log or subprocess.DEVNULL,
                                     stderr=self._log or subprocess.DEVNULL)
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the sandbox exited during start-up (status {self.proc.returncode}); "
                                   f"see {self.log_path}")
            try:
                self.http.get(self.base_url + "/_sandbox/stats", timeout=2)
                logger.info("sandbox up on %s in %.1fs (db %s, latency %s ms)", self.base_url,
                            time.monotonic() - started, self.db, self.latency_ms)
                return self
            except requests.ConnectionError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the sandbox did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def stats(self) -> dict[str, Any]:
        resp = self.http.get(self.base_url + "/_sandbox/stats", timeout=30)
        resp.raise_for_status()
        return resp.json()

    def revoke_tokens(self) -> None:
        """Forget every bearer token: a 7.x API allows a client 15 live tokens, and every contender takes one."""
        resp = self.http.delete(self.base_url + "/_sandbox/tokens", timeout=30)
        resp.raise_for_status()
        self._token = None

    def set_latency(self, latency_ms: float) -> None:
        resp = self.http.put(self.base_url + "/_sandbox/faults", json={"latency_ms": latency_ms}, timeout=30)
        resp.raise_for_status()
        self.latency_ms = latency_ms

    def token(self) -> str:
        if self._token is None:
            resp = self.http.post(self.base_url + "/oauth/token", data={"grant_type": "client_credentials"},
                                  auth=(CLIENT_ID, CLIENT_SECRET), timeout=60)
            resp.raise_for_status()
            self._token = resp.json()["access_token"]
        return self._token

    def get(self, path: str, params: dict[str, Any] | None = None) -> requests.Response:
        url = path if path.startswith("http") else self.base_url + path
        resp = self.http.get(url, params=params, headers={"Authorization": f"Bearer {self.token()}"}, timeout=600)
        resp.raise_for_status()
        return resp

    def count(self, resource: str, min_cv: int | None = None, max_cv: int | None = None) -> int:
        params: dict[str, Any] = {"limit": 0, "totalCount": "true"}
        if min_cv is not None:
            params["minChangeVersion"] = min_cv
        if max_cv is not None:
            params["maxChangeVersion"] = max_cv
        return int(self.get(f"/data/v3{resource}", params).headers["Total-Count"])

    def newest_change_version(self) -> int:
        return int(self.get("/changeQueries/v1/availableChangeVersions").json()["newestChangeVersion"])

    def resource_paths(self) -> list[str]:
        """Every resource and descriptor path the sandbox serves, from its OpenAPI documents."""
        paths: set[str] = set()
        for doc in self.get("/metadata/").json():
            spec = self.get(doc["endpointUri"]).json()
            paths.update(p for p in spec.get("paths", {}) if p.count("/") == 2 and "{" not in p)
        return sorted(paths)


def seeded_db(cache: Path, students: int, log_path: Path | None = None) -> Path:
    """A database seeded with a district of ``students`` students, made once and kept in ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    db = cache / f"seed-{students}.db"
    ready = cache / f"seed-{students}.ready"
    if db.exists() and ready.exists():
        return db
    for stale in cache.glob(f"seed-{students}.db*"):
        stale.unlink()
    logger.info("seeding a district of %d students into %s (once; later runs reuse it)", students, db)
    started = time.monotonic()
    with SandboxProcess(db, students=students, log_path=log_path):
        pass
    ready.write_text(f"{time.monotonic() - started:.1f}\n")
    logger.info("seeded %s in %.0fs", db, time.monotonic() - started)
    return db


def copy_db(source: Path, dest: Path) -> Path:
    """A writable copy of a seeded database (with its WAL, if any)."""
    for suffix in ("", "-wal"):
        src = Path(str(source) + suffix)
        dst = Path(str(dest) + suffix)
        dst.unlink(missing_ok=True)
        if src.exists():
            shutil.copyfile(src, dst)
    Path(str(dest) + "-shm").unlink(missing_ok=True)
    return dest


# -- measured processes -----------------------------------------------------------------------------------
@dataclass
class Usage:
    """What one process used: wall seconds, CPU seconds, peak RSS, exit status."""

    wall: float
    user: float
    system: float
    maxrss_kib: int
    status: int

    @property
    def cpu(self) -> float:
        return self.user + self.system


@dataclass
class Run:
    """One measured contender: its own usage, its helpers' (a sink), and the sandbox's."""

    name: str
    usage: Usage
    helpers: dict[str, Usage] = field(default_factory=dict)
    requests: int = 0
    requests_by_area: dict[str, int] = field(default_factory=dict)
    server_cpu: float = 0.0
    change_versions: int = 0
    rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: CPU seconds other processes (not the contender, its sink or the sandbox) used during the run, and the
    #: share of the machine that is
    foreign_cpu: float = 0.0
    foreign_share: float = 0.0


def _wait(proc: subprocess.Popen, started: float) -> Usage:
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Usage(time.perf_counter() - started, ru.ru_utime, ru.ru_stime, ru.ru_maxrss, proc.returncode)


def run_measured(name: str, cmd: Sequence[str], *, sandbox: SandboxProcess, env: dict[str, str] | None = None,
                 cwd: Path | None = None, stdin: Path | None = None, stdout: Path | None = None,
                 stderr: Path | None = None, sink: Sequence[str] | None = None) -> Run:
    """Run ``cmd`` (optionally piped into ``sink``) and measure it.

    The command's wall time runs from its start until both it and its sink have exited (a tap is done when
    its output has been consumed). CPU and peak RSS are the command's own; the sink's are kept apart.
    """
    wait_for_quiet()
    sandbox.revoke_tokens()
    before, cpu_before = sandbox.stats(), sandbox.cpu()
    busy_before = machine_busy()
    # every contender takes its own token (revoked above): no token shared from an earlier run through a cache
    env = {"EDFI_SINGER_TOKEN_CACHE": "off", **os.environ, **(env or {})}
    files: list[IO[bytes]] = []

    def _open(path: Path | None, mode: str) -> IO[bytes] | int:
        if path is None:
            return subprocess.DEVNULL
        fh = open(path, mode)  # noqa: SIM115  # closed below
        files.append(fh)
        return fh

    logger.info("running %s: %s", name, " ".join(str(c) for c in cmd) + (" | " + " ".join(sink) if sink else ""))
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(list(cmd), stdin=_open(stdin, "rb"), stdout=subprocess.PIPE if sink else
                                _open(stdout, "wb"), stderr=_open(stderr, "ab"), env=env, cwd=cwd)
        sink_proc = None
        if sink:
            sink_proc = subprocess.Popen(list(sink), stdin=proc.stdout, stdout=_open(stdout, "wb"),
                                         stderr=_open(stderr, "ab"), env=env, cwd=cwd)
            assert proc.stdout is not None
            proc.stdout.close()  # the sink holds the only reader: the tap gets SIGPIPE if it dies
        usage = _wait(proc, started)
        helpers = {"sink": _wait(sink_proc, started)} if sink_proc is not None else {}
    finally:
        for fh in files:
            fh.close()
    if sink_proc is not None:
        usage.wall = helpers["sink"].wall  # done when the output has been consumed
    busy_after = machine_busy()
    after, cpu_after = sandbox.stats(), sandbox.cpu()
    by_area = {k: v - before.get("byArea", {}).get(k, 0) for k, v in after.get("byArea", {}).items()}
    run = Run(name, usage, helpers, after["requests"] - before["requests"],
              {k: v for k, v in by_area.items() if v}, cpu_after - cpu_before,
              int(after.get("changeVersion", 0)) - int(before.get("changeVersion", 0)))
    ours = usage.cpu + sum(h.cpu for h in helpers.values()) + run.server_cpu
    run.foreign_cpu = max(0.0, busy_after - busy_before - ours)
    run.foreign_share = run.foreign_cpu / (usage.wall * (os.cpu_count() or 1)) if usage.wall else 0.0
    if run.foreign_share > 0.15:
        logger.warning("%s: other processes used %.0f%% of the machine during the run (%.1f CPU s)", name,
                       run.foreign_share * 100, run.foreign_cpu)
    logger.info("%s: exit %d, %.1fs wall, %.1fs CPU, %.0f MiB peak RSS, %d requests", name, usage.status,
                usage.wall, usage.cpu, usage.maxrss_kib / 1024, run.requests)
    if usage.status != 0 or any(h.status != 0 for h in helpers.values()):
        tail = stderr.read_text(errors="replace")[-3000:] if stderr and stderr.exists() else ""
        raise RuntimeError(f"{name} failed (exit {usage.status}, helpers "
                           f"{ {k: h.status for k, h in helpers.items()} }):\n{tail}")
    return run
