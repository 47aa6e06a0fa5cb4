"""The example DAG (edfi_airflow) run by Airflow itself: scheduler, DAG processor and execution API with the
LocalExecutor on PostgreSQL, two sandboxes (two tenants), two stream groups each, into target-postgres.

One run kills a task (``kill -9`` of the task's process and everything under it) and Airflow retries it; a second
run after changes in both APIs. ``make test`` installs Airflow in ``.venv-airflow`` (``make airflow``) and Meltano
in ``.venv-meltano``; PostgreSQL on 127.0.0.1:5432 (trust). The measured figures it prints are the README's
capacity note.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from edfi_sandbox.server import Sandbox, free_port
from tap_edfi.groups import plan_groups
from tap_edfi.streams import stream_name
from tests.tap_support import REPO, Mutator

AIRFLOW = REPO / ".venv-airflow" / "bin" / "airflow"
MELTANO = REPO / ".venv-meltano" / "bin" / "meltano"
PG = "host=127.0.0.1 port=5432 user=postgres"
ATTENDANCE = "/ed-fi/studentSchoolAttendanceEvents"


def sql(db: str, query: str, *args: Any) -> list[tuple]:
    with psycopg.connect(f"{PG} dbname={db}", autocommit=True) as conn:
        cur = conn.execute(query, args or None)
        return cur.fetchall() if cur.description else []


class Writer(Mutator):
    """Changes through the API as another client (the pipeline's client must hold only the tokens it took)."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.http = requests.Session()
        self.http.headers["Authorization"] = "Bearer " + sb.token("writer")
        self.log = []


class Airflow:
    """An Airflow installation of this test: metadata database, home, the three processes."""

    def __init__(self, home: Path, env: dict[str, str], db: str) -> None:
        self.home, self.env, self.db = home, env, db
        self.procs: list[subprocess.Popen] = []
        self.files: list[Any] = []

    def cli(self, *args: str, timeout: float = 180) -> str:
        proc = subprocess.run([str(AIRFLOW), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"airflow {' '.join(args)}: {proc.stdout[-2000:]} {proc.stderr[-3000:]}"
        return proc.stdout

    def start(self, name: str, *args: str) -> None:
        log = open(self.home / f"{name}.log", "w")  # noqa: SIM115 (closed in stop)
        self.files.append(log)
        self.procs.append(subprocess.Popen([str(AIRFLOW), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for log in self.files:
            log.close()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.home.glob("*.log")))

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = sql(self.db, "SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", dag_id, run_id)
        return rows[0][0] if rows else None

    def tasks(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        rows = sql(self.db, "SELECT task_id, state, try_number, start_date, end_date FROM task_instance "
                            "WHERE dag_id = %s AND run_id = %s", dag_id, run_id)
        return {r[0]: {"state": r[1], "try": r[2], "start": r[3], "end": r[4]} for r in rows}

    def wait(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state in ("success", "failed"):
                return state
            time.sleep(1)
        raise AssertionError(f"DAG run {run_id} did not finish in {timeout}s: {self.tasks(dag_id, run_id)}\n"
                             + self.logs())


def meltano_processes(suffix: str) -> list[int]:
    """pids of ``meltano run --state-id-suffix <suffix>``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"/meltano") for a in args[:2]) and b"--state-id-suffix" in args and suffix.encode() in args:
            found.append(int(entry.name))
    return found


def parent(pid: int) -> int:
    return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])


def _runs(pid: int, executable: bytes) -> bool:
    """Whether process ``pid`` runs the program whose path ends with ``executable`` (directly or as a script)."""
    try:
        args = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(a.endswith(executable) for a in args[:2])


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(parent(int(entry.name)), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def api_ids(sb: Sandbox) -> dict[str, set[str]]:
    return {stream_name(res): {d["id"] for d in sb.store.iter_docs(res.path)} for res in sb.model}


def warehouse_ids(db: str, schema: str, table: str) -> set[str]:
    return {r[0] for r in sql(db, f'SELECT id FROM "{schema}"."{table}" WHERE _sdc_deleted_at IS NULL')}


def overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


@pytest.fixture
def databases() -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    names = {"airflow": f"af_{tag}", "meltano": f"meltano_{tag}", "warehouse": f"wh_{tag}"}
    for db in names.values():
        sql("postgres", f'CREATE DATABASE "{db}"')
    yield names
    for db in names.values():
        sql("postgres", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def test_example_dag_on_airflow_parallel_killed_task_resumes_then_incremental(databases: dict[str, str],
                                                                               tmp_path: Path) -> None:
    assert AIRFLOW.exists(), "Airflow is not installed: run `make airflow` (`make test` does)"
    assert MELTANO.exists(), "meltano is not installed: run `make meltano` (`make test` does)"
    began = time.monotonic()
    tag = databases["airflow"][3:]
    dag_id = f"edfi_test_{tag}"
    # two tenants of one 7.3 ODS/API (each its own sandbox); a limit of 2 live tokens per client, which 4 tasks per
    # run, a retry and two runs would pass without the shared token cache
    sandboxes = {
        "t1": Sandbox("7.3", seed=40, tenant="t1", context="2025", max_tokens_per_client=2,
                      extra_clients={"writer": "writer-secret"}).start(),
        "t2": Sandbox("7.3", seed=25, seed_value=7, tenant="t2", context="2025", max_tokens_per_client=2,
                      extra_clients={"writer": "writer-secret"}).start(),
    }
    airflow: Airflow | None = None
    try:
        counts = {stream_name(res): sum(1 for _ in sandboxes["t1"].store.iter_docs(res.path))
                  for res in sandboxes["t1"].model}
        plan = plan_groups(counts, 2)
        assert len(plan) == 2, plan
        # the second (smaller) group also takes whatever no group names (resources added to the API later)
        groups = [{"name": "g1", "resources": plan[0]}, {"name": "g2", "resources": plan[1], "rest": True}]
        wh = databases["warehouse"]
        config = {
            "dag_id": dag_id, "schedule": None,
            "meltano": {"executable": str(MELTANO), "project_dir": str(REPO), "environment": "dev",
                        "extractor": "tap-edfi", "loader": "target-postgres", "work_dir": str(tmp_path / "work")},
            "state_database_conn_id": "meltano_systemdb",
            # the workers of a LocalExecutor share a disk: the file cache (a PostgreSQL cache needs tap-edfi
            # installed with edfi-singer[postgres]; this repo's meltano.yml installs it without)
            "token_cache": str(tmp_path / "tokens" / "oauth-tokens.json"),
            "max_workers": 2, "retries": 2, "retry_delay_seconds": 2,
            # small pages and windows: a slow API's task is caught mid-read
            "tap_settings": {"page_size": 100, "max_window_rows": 300, "change_version_lookback": 0},
            "target_settings": {"sqlalchemy_url": f"postgresql+psycopg://postgres@127.0.0.1:5432/{wh}",
                                "default_target_schema": "edfi_{api}"},
            "apis": [{"id": "t1", "conn_id": "edfi_t1", "tenant": "t1", "year": 2025, "pool_slots": 2},
                     {"id": "t2", "conn_id": "edfi_t2", "tenant": "t2", "year": 2025, "pool_slots": 1}],
            "groups": groups,
        }
        (tmp_path / "config.json").write_text(json.dumps(config))
        port = free_port()
        pg_conn = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres",
                   "schema": databases["meltano"]}
        home = tmp_path / "airflow"
        home.mkdir()
        env = {**os.environ,
               "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
               "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "edfi_airflow" / "example_dags"),
               "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
               "AIRFLOW__CORE__PARALLELISM": "8",
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
                   f"postgresql+psycopg://postgres@127.0.0.1:5432/{databases['airflow']}",
               "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
               "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex,
               "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
               "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
               "EDFI_AIRFLOW_CONFIG": str(tmp_path / "config.json"),
               "AIRFLOW_CONN_MELTANO_SYSTEMDB": json.dumps(pg_conn),
               **{f"AIRFLOW_CONN_EDFI_{name.upper()}": json.dumps(
                   {"conn_type": "http", "host": sb.api_root, "login": sb.client_id, "password": sb.client_secret})
                  for name, sb in sandboxes.items()}}
        airflow = Airflow(home, env, databases["airflow"])
        airflow.cli("db", "migrate")
        pools_file = tmp_path / "pools.json"
        python = str(REPO / ".venv-airflow" / "bin" / "python")
        pools_file.write_text(subprocess.run([python, "-m", "edfi_airflow", "pools", str(tmp_path / "config.json")],
                                             capture_output=True, text=True, check=True, env=env).stdout)
        airflow.cli("pools", "import", str(pools_file))
        airflow.start("api-server", "api-server", "--apps", "execution", "-H", "127.0.0.1", "-p", str(port), "-w", "1")
        airflow.start("dag-processor", "dag-processor")
        airflow.start("scheduler", "scheduler")
        deadline = time.monotonic() + 180
        while not sql(databases["airflow"], "SELECT 1 FROM dag WHERE dag_id = %s", dag_id):
            assert time.monotonic() < deadline, "the DAG was not parsed in 180 s\n" + airflow.logs()
            time.sleep(1)
        setup_s = time.monotonic() - began

        # -- run 1: everything, in parallel within the pools -----------------------------------------------------
        started = time.monotonic()
        airflow.cli("dags", "trigger", dag_id, "--run-id", "r1")
        assert airflow.wait(dag_id, "r1") == "success", airflow.tasks(dag_id, "r1")
        run1_s = time.monotonic() - started
        tasks1 = airflow.tasks(dag_id, "r1")
        assert all(t["state"] == "success" and t["try"] == 1 for t in tasks1.values()), tasks1

        def check_warehouse() -> None:
            for name, sb in sandboxes.items():
                for table, ids in api_ids(sb).items():
                    got = warehouse_ids(wh, f"edfi_{name}", table)
                    assert got == ids, f"{name}.{table}: {len(got)} live rows, the API has {len(ids)}"

        check_warehouse()
        after_r1 = {name: sb.admin("GET", "stats").json()["requests"] for name, sb in sandboxes.items()}
        assert overlaps(tasks1["t1.g1"], tasks1["t1.g2"]), tasks1  # pool edfi_t1: 2 slots
        assert not overlaps(tasks1["t2.g1"], tasks1["t2.g2"]), tasks1  # pool edfi_t2: 1 slot
        assert any(overlaps(tasks1[a], tasks1[b]) for a in ("t1.g1", "t1.g2") for b in ("t2.g1", "t2.g2")), tasks1

        # -- run 2: changes in both APIs; t1's task with students killed (kill -9) mid-run, retried by Airflow -------
        changed = {}
        for name, sb in sandboxes.items():
            w = Writer(sb)
            n = w.update("/ed-fi/students", 3, "firstName", lambda d, name=name: f"Changed-{name}")
            n += len(w.insert_copies("/ed-fi/students", 2, "studentUniqueId", "x"))
            n += w.delete(ATTENDANCE, 4)
            changed[name] = n
        victim = f"t1.{'g1' if 'students' in plan[0] else 'g2'}"
        sandboxes["t1"].set_faults(latency_ms=300)  # t1's tasks read for a while: the kill lands mid-read
        before2 = datetime.now(timezone.utc)
        started = time.monotonic()
        requests_before = sandboxes["t1"].admin("GET", "stats").json()["requests"]
        airflow.cli("dags", "trigger", dag_id, "--run-id", "r2")
        deadline = time.monotonic() + 300
        tap_seen: float | None = None
        while True:
            assert time.monotonic() < deadline, f"{victim}: no tap-edfi running in 300 s\n" + airflow.logs()
            pids = meltano_processes(victim)
            taps = [p for p in descendants(pids[0])[1:] if _runs(p, b"/tap-edfi")] if pids else []
            if taps and tap_seen is None:
                tap_seen = time.monotonic()
            if tap_seen is not None and time.monotonic() - tap_seen >= 4:
                assert taps, f"{victim}'s tap ended within 4 s: nothing to kill mid-run"
                tree = descendants(parent(pids[0]))  # the task's process, meltano, tap-edfi, target-postgres
                for pid in tree:
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.2)
        served = sandboxes["t1"].admin("GET", "stats").json()["requests"] - requests_before
        assert served > 0
        sandboxes["t1"].clear_faults()
        assert airflow.wait(dag_id, "r2") == "success", airflow.tasks(dag_id, "r2")
        run2_s = time.monotonic() - started
        tasks2 = airflow.tasks(dag_id, "r2")
        assert tasks2[victim]["try"] == 2, tasks2  # the killed try, then the retry
        first_try = sql(databases["airflow"], "SELECT state FROM task_instance_history "
                        "WHERE dag_id = %s AND run_id = 'r2' AND task_id = %s", dag_id, victim)
        assert [r[0] for r in first_try] == ["failed"], first_try  # the killed try, as Airflow's history keeps it
        assert all(t["try"] == 1 for name, t in tasks2.items() if name != victim), tasks2
        # nothing lost, and only the changes were read: the retry resumed from the task's own state (run 1's
        # bookmarks), it did not read its streams again from the start
        check_warehouse()
        for name in sandboxes:
            written = 0
            for table in api_ids(sandboxes[name]):
                written += sql(wh, f'SELECT count(*) FROM "edfi_{name}"."{table}" WHERE _sdc_batched_at >= %s',
                               before2.replace(tzinfo=None) if _naive(wh) else before2)[0][0]
            assert written == changed[name] == 9, (name, written, changed[name])
            deleted = sql(wh, f'SELECT count(*) FROM "edfi_{name}"."studentSchoolAttendanceEvents" '
                              "WHERE _sdc_deleted_at IS NOT NULL")[0][0]
            assert deleted == 4
            renamed = sql(wh, f'SELECT count(*) FROM "edfi_{name}"."students" WHERE "firstName" = %s',
                          f"Changed-{name}")[0][0]
            in_api = sum(1 for d in sandboxes[name].store.iter_docs("/ed-fi/students")
                         if d.get("firstName") == f"Changed-{name}")
            assert renamed == in_api >= 3  # the 3 updated (and copies of them)

        # -- tokens: one per client for both runs, the retry and the killed try -----------------------------------
        figures: dict[str, Any] = {"setup_s": round(setup_s, 1), "run1_s": round(run1_s, 1),
                                   "run2_s": round(run2_s, 1)}
        for name, sb in sandboxes.items():
            stats = sb.admin("GET", "stats").json()
            assert stats["peakLiveTokens"][sb.client_id] == 1, stats
            assert stats["tokensRefused"] == 0, stats
            figures[name] = {"requests_run1": after_r1[name], "requests_run2": stats["requests"] - after_r1[name],
                             "items": sum(len(v) for v in api_ids(sb).values()),
                             "peak_live_tokens": stats["peakLiveTokens"]}
        for run, tasks in (("r1", tasks1), ("r2", tasks2)):  # seconds from the run's first task: start-end
            zero = min(v["start"] for v in tasks.values())
            figures[run] = {t: f"{(v['start'] - zero).total_seconds():.1f}-{(v['end'] - zero).total_seconds():.1f}"
                            for t, v in sorted(tasks.items())}
        figures["killed"] = {"task": victim, "requests_before_kill": served}
        figures["test_s"] = round(time.monotonic() - began, 1)
        print("AIRFLOW FIGURES " + json.dumps(figures))  # the README's capacity note
    finally:
        if airflow is not None:
            airflow.stop()
        for sb in sandboxes.values():
            sb.stop()


def _naive(db: str) -> bool:
    """Whether target-postgres made ``_sdc_batched_at`` a timestamp without time zone."""
    rows = sql(db, "SELECT data_type FROM information_schema.columns WHERE column_name = '_sdc_batched_at' LIMIT 1")
    return bool(rows) and rows[0][0] == "timestamp without time zone"
