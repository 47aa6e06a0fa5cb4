"""``meltano run tap-edfi target-jsonl`` and ``target-postgres`` end to end (needs meltano on PATH).

Skipped when ``meltano`` is not installed (it is not a dev dependency); target-postgres also needs
PostgreSQL on 127.0.0.1:5432 and ``meltano install`` to have installed the plugins.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from edfi_sandbox.server import Sandbox
from tests.tap_support import REPO, Mutator

MELTANO = shutil.which("meltano") or ("/tmp/meltano-venv/bin/meltano" if Path("/tmp/meltano-venv/bin/meltano").exists()
                                      else None)
pytestmark = pytest.mark.skipif(MELTANO is None, reason="meltano is not installed")


def _postgres_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _meltano(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    assert MELTANO is not None
    return subprocess.run([MELTANO, *args], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def installed() -> None:
    if not (REPO / ".meltano" / "extractors" / "tap-edfi").exists():
        proc = _meltano(["install"], {}, timeout=600)
        if proc.returncode != 0:
            pytest.skip(f"meltano install failed: {proc.stderr[-500:]}")


def test_meltano_run_into_postgres_then_incremental(installed: None, tmp_path: Path) -> None:
    if not _postgres_up():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")

    def sql(query: str) -> int:
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-tAc", query],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "PGPASSWORD": "postgres"})
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        return int(lines[-1]) if lines else 0

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
            sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE; SELECT 0')


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
