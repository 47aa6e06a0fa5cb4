"""``meltano run tap-edfi target-jsonl`` and ``target-postgres`` end to end.

``make test`` installs meltano in ``.venv-meltano`` and puts it on PATH; target-postgres writes to the
real PostgreSQL on 127.0.0.1:5432. Nothing here is skipped: a missing meltano or database fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

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


@pytest.fixture(scope="module")
def installed() -> None:
    if not (REPO / ".meltano" / "extractors" / "tap-edfi").exists():
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
        env = {"TAP_EDFI_BASE_URL": sb.base_url, "TAP_EDFI_CLIENT_ID": sb.client_id,
               "TAP_EDFI_CLIENT_SECRET": sb.client_secret, "TARGET_POSTGRES_PASSWORD": "postgres",
               "TARGET_POSTGRES_DATABASE": "postgres", "TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": schema}
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


def test_meltano_run_into_jsonl(installed: None, tmp_path: Path) -> None:
    with Sandbox("6.1", seed=20) as sb:
        env = {"TAP_EDFI_BASE_URL": sb.base_url, "TAP_EDFI_CLIENT_ID": sb.client_id,
               "TAP_EDFI_CLIENT_SECRET": sb.client_secret, "TARGET_JSONL_DESTINATION_PATH": str(tmp_path)}
        proc = _meltano(["run", "--state-id-suffix", uuid.uuid4().hex[:8], "tap-edfi", "target-jsonl"], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        for res in sb.model:
            expected = sum(1 for _ in sb.store.iter_docs(res.path))
            path = tmp_path / f"{res.name}.jsonl"
            got = len(path.read_text().splitlines()) if path.exists() else 0
            assert got == expected, f"{res.name}: {got} lines, the API has {expected}"
