"""``meltano run tap-edfi`` into target-jsonl, target-postgres (as shipped) and target-duckdb (the demo), end to end.

``make test`` installs meltano in ``.venv-meltano`` and puts it on PATH; target-postgres writes to the
real PostgreSQL on 127.0.0.1:5432. Nothing here is skipped: a missing meltano or database fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml

from edfi_sandbox.server import Sandbox
from tests.tap_support import REPO, Mutator

MELTANO = shutil.which("meltano") or str(REPO / ".venv-meltano" / "bin" / "meltano")


def _postgres_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _meltano(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    assert Path(MELTANO).exists(), "meltano is not installed: run `make test` (it installs .venv-meltano)"
    env = {**os.environ, "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false", **env}
    return subprocess.run([MELTANO, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _venv_python(kind: str, plugin: str) -> Path:
    return REPO / ".meltano" / kind / plugin / "venv" / "bin" / "python"


@pytest.fixture(scope="module")
def installed() -> None:
    project = yaml.safe_load((REPO / "meltano.yml").read_text())
    if not all(_venv_python(kind, p["name"]).exists() for kind, plugins in project["plugins"].items()
               for p in plugins):
        proc = _meltano(["install"], {}, timeout=600)
        assert proc.returncode == 0, f"meltano install failed: {proc.stderr[-2000:]}"


def test_meltano_run_into_postgres_then_incremental(installed: None, tmp_path: Path) -> None:
    assert _postgres_up(), "PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)"

    def sql(query: str) -> int:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
            row = conn.execute(query).fetchone()
        return int(row[0]) if row else 0

    schema = f"edfi_test_{uuid.uuid4().hex[:8]}"
    with Sandbox("7.3", seed=40) as sb:
        # target-postgres as shipped in meltano.yml: only the schema is this test's own
        env = {"TAP_EDFI_BASE_URL": sb.base_url, "TAP_EDFI_CLIENT_ID": sb.client_id,
               "TAP_EDFI_CLIENT_SECRET": sb.client_secret, "TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": schema}
        suffix = ["--state-id-suffix", schema]
        proc = _meltano(["run", *suffix, "tap-edfi", "target-postgres"], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        try:
            for res in sb.model:
                table = res.name
                expected = sum(1 for _ in sb.store.iter_docs(res.path))
                got = sql(f'SELECT count(*) FROM "{schema}"."{table}"')
                assert got == expected, f"{table}: {got} rows, the API has {expected}"
            m = Mutator(sb)
            m.update("/ed-fi/students", 3, "firstName", lambda d: "Changed")
            m.delete("/ed-fi/studentSchoolAttendanceEvents", 4)
            proc = _meltano(["run", *suffix, "tap-edfi", "target-postgres"], env)
            assert proc.returncode == 0, proc.stderr[-3000:]
            changed = sql(f'SELECT count(*) FROM "{schema}"."students" WHERE "firstName" = \'Changed\'')
            assert changed == 3
            deleted = sql(f'SELECT count(*) FROM "{schema}"."studentSchoolAttendanceEvents" '
                          "WHERE _sdc_deleted_at IS NOT NULL")
            assert deleted == 4
            live = sql(f'SELECT count(*) FROM "{schema}"."studentSchoolAttendanceEvents" '
                       "WHERE _sdc_deleted_at IS NULL")
            assert live == sum(1 for _ in sb.store.iter_docs("/ed-fi/studentSchoolAttendanceEvents"))
        finally:
            with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_meltano_run_into_jsonl_flattened(installed: None, tmp_path: Path) -> None:
    """Settings as Meltano passes them from the environment: `flattening_enabled` is a boolean (kind)."""
    with Sandbox("6.1", seed=20) as sb:
        env = {"TAP_EDFI_BASE_URL": sb.base_url, "TAP_EDFI_CLIENT_ID": sb.client_id,
               "TAP_EDFI_CLIENT_SECRET": sb.client_secret, "TARGET_JSONL_DESTINATION_PATH": str(tmp_path),
               "TAP_EDFI_FLATTENING_ENABLED": "true", "TAP_EDFI_FLATTENING_MAX_DEPTH": "1",
               "TAP_EDFI_MAX_WORKERS": "4"}
        printed = _meltano(["config", "print", "tap-edfi"], env)
        config = json.loads(printed.stdout[printed.stdout.index("{"):])
        assert (config["flattening_enabled"], config["flattening_max_depth"], config["max_workers"]) == (True, 1, 4)
        proc = _meltano(["run", "--state-id-suffix", uuid.uuid4().hex[:8], "tap-edfi", "target-jsonl"], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        for res in sb.model:
            expected = sum(1 for _ in sb.store.iter_docs(res.path))
            path = tmp_path / f"{res.name}.jsonl"
            got = len(path.read_text().splitlines()) if path.exists() else 0
            assert got == expected, f"{res.name}: {got} lines, the API has {expected}"
        rows = [json.loads(line) for line in (tmp_path / "studentSchoolAssociations.jsonl").read_text().splitlines()]
        api = {d["id"]: d for d in sb.store.iter_docs("/ed-fi/studentSchoolAssociations")}
        assert {r["id"]: r["studentReference__studentUniqueId"] for r in rows} == \
            {i: d["studentReference"]["studentUniqueId"] for i, d in api.items()}


def test_plugin_venvs_have_no_sandbox_server_and_one_backoff(installed: None) -> None:
    """What `meltano install` put in tap-edfi's and target-edfi's venvs (pip_url of meltano.yml)."""
    script = ("import importlib.metadata as m, json; names = {d.metadata['Name'].lower() for d in m.distributions()}; "
              "owners = sorted(d.metadata['Name'].lower() for d in m.distributions() "
              "if any(str(f) == 'backoff/__init__.py' for f in (d.files or [])));"
              "print(json.dumps({'names': sorted(names), 'backoff': owners}))")
    for kind, plugin in (("extractors", "tap-edfi"), ("loaders", "target-edfi")):
        out = subprocess.run([str(_venv_python(kind, plugin)), "-c", script], capture_output=True, text=True,
                             check=True, timeout=60).stdout
        found = json.loads(out)
        assert not {"starlette", "uvicorn", "uvloop", "watchfiles", "websockets"} & set(found["names"]), plugin
        assert found["backoff"] == ["python-backoff"], plugin
        # [postgres] in both: a postgresql:// token_cache (both) or transaction_log (target-edfi)
        assert "psycopg" in found["names"], plugin
    sandbox = _venv_python("extractors", "tap-edfi").parent / "edfi-sandbox"
    proc = subprocess.run([str(sandbox), "serve", "--port", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "pip install 'edfi-singer[sandbox]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_make_demo_runs_meltano_into_duckdb(installed: None) -> None:
    """The quickstart: two `meltano run tap-edfi target-duckdb`, every table checked against the API."""
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(REPO / "scripts" / "demo.py"),
                           "--students", "60"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "every table holds the API's items" in out
    assert "2nd run (from Meltano's state dev:tap-edfi-to-target-duckdb)" in out
    students = re.search(r"^  students +([\d,]+) +([\d,]+) +([\d,]+)$", out, re.M)
    assert students and students.group(1) == students.group(3) == "60"
    grades = re.findall(r"^  ([A-Z][a-z]+(?: grade)?) +(\d+)$", out, re.M)
    assert grades and sum(int(n) for _, n in grades) == 60  # one school association per student
    state = json.loads(re.search(r"^Meltano's state of students: (\{.*\})$", out, re.M).group(1))  # type: ignore[union-attr]
    assert state["change_version"] > 0


def test_meltano_shows_a_tap_error_as_one_error_line(installed: None, tmp_path: Path) -> None:
    """`structured-logging` in meltano.yml: Meltano reads the tap's JSON log, levels and all."""
    with Sandbox("7.3", seed=5) as sb:
        env = {"TAP_EDFI_BASE_URL": sb.base_url, "TAP_EDFI_CLIENT_ID": sb.client_id,
               "TAP_EDFI_CLIENT_SECRET": "not-the-secret", "TARGET_JSONL_DESTINATION_PATH": str(tmp_path)}
        proc = _meltano(["run", "--state-id-suffix", uuid.uuid4().hex[:8], "tap-edfi", "target-jsonl"], env)
    assert proc.returncode == 1
    tap_errors = [line for line in proc.stderr.splitlines() if re.search(r"\[error\s*\] tap-edfi ", line)]
    assert len(tap_errors) == 1, proc.stderr[-3000:]
    assert "invalid_client (check client_id and client_secret)" in tap_errors[0]
    assert "not-the-secret" not in proc.stderr
    assert not [line for line in proc.stderr.splitlines() if re.search(r"\[info\s*\] tap-edfi\s+Traceback", line)]


def test_meltano_run_composites_into_jsonl(installed: None, tmp_path: Path) -> None:
    """The ``composites`` setting as Meltano passes it (an array from the environment): a whole composite and a
    filtered form arrive in the target beside a resource, every item once."""
    with Sandbox("7.3", seed=10) as sb:
        env = {"TAP_EDFI_BASE_URL": sb.base_url, "TAP_EDFI_CLIENT_ID": sb.client_id,
               "TAP_EDFI_CLIENT_SECRET": sb.client_secret, "TARGET_JSONL_DESTINATION_PATH": str(tmp_path),
               "TAP_EDFI_RESOURCES": '["schools"]', "TAP_EDFI_COMPOSITES": '["students", "sections/students"]'}
        proc = _meltano(["run", "--state-id-suffix", uuid.uuid4().hex[:8], "tap-edfi", "target-jsonl"], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        students = {d["id"] for d in sb.store.iter_docs("/ed-fi/students")}
        enrolled = len(list(sb.store.iter_docs("/ed-fi/studentSectionAssociations")))
    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    whole = rows("composite_enrollment_students")
    assert sorted(r["id"] for r in whole) == sorted(students) and students
    of_sections = rows("composite_enrollment_students_of_sections")
    assert len(of_sections) == enrolled > 0
    assert len({(r["_parent_id"], r["id"]) for r in of_sections}) == enrolled
    assert len(rows("schools")) >= 1
