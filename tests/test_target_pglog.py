"""The PostgreSQL transaction log when several loaders start at once, with a hostile schema setting, and with a
password in its URL (127.0.0.1:5432, database ``test``; every test uses its own schemas)."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from target_edfi.txlog import PostgresLog
from tests.target_support import TARGET, run_target, target_config
from tests.test_target_bad_input import good_input, record, school
from tests.test_target_bad_input import schema as schema_line
from tests.test_target_txlog import PG_URL, postgres_up

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not postgres_up(), reason="no PostgreSQL at 127.0.0.1:5432 (database test)")


@pytest.fixture
def schemas() -> Iterator[list[str]]:
    """Schema names to use; every one is dropped at the end."""
    made: list[str] = []
    yield made
    import psycopg
    from psycopg import sql

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def tables_in(schema: str) -> set[str]:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                                           (schema,))}


def test_concurrent_first_runs_all_succeed(schemas: list[str]) -> None:
    """Five loaders open a log whose schema does not exist yet, at the same instant, three times over."""
    for _ in range(3):
        schema = f"te_race_{uuid.uuid4().hex[:10]}"
        schemas.append(schema)
        barrier = threading.Barrier(5)
        errors: list[BaseException] = []

        def first_run(name: str = schema, barrier: threading.Barrier = barrier,
                      errors: list[BaseException] = errors) -> None:
            try:
                barrier.wait(10)
                log = PostgresLog(PG_URL, name)
                log.lock("http://a/data/v3")
                log.start_run(uuid.uuid4().hex, "http://a/data/v3")
                log.unlock()
                log.close()
            except BaseException as exc:  # collected: the assertion below names them
                errors.append(exc)

        threads = [threading.Thread(target=first_run) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert {"transaction_log", "spool", "runs"} <= tables_in(schema)


def test_a_crafted_schema_setting_is_refused_and_names_are_quoted(make_sandbox: Any, tmp_path: Path,
                                                                   schemas: list[str]) -> None:
    tag = uuid.uuid4().hex[:6]
    schemas.append(f"te_x{tag}")  # what the crafted value would create before its injected statement
    crafted = f'te_x{tag}"; CREATE TABLE public.te_pwned_{tag} (a int); --'
    try:
        with pytest.raises(ValueError, match="transaction_log_schema"):
            PostgresLog(PG_URL, crafted)
        pwned = [t for t in tables_in("public") if t == f"te_pwned_{tag}"]
    finally:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:  # what an unfixed log would have made
            conn.execute(f'DROP TABLE IF EXISTS public."te_pwned_{tag}"')
    assert pwned == []
    # through the plugin: the setting is checked against its pattern before anything runs
    sb = make_sandbox("7.3")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({**target_config(sb, PG_URL), "transaction_log_schema": crafted}))
    proc = subprocess.run([TARGET, "--config", str(cfg)], input=b"", capture_output=True, timeout=120)
    assert proc.returncode != 0 and b"transaction_log_schema" in proc.stderr
    assert f"te_pwned_{tag}" not in tables_in("public")
    # a mixed-case name is a quoted identifier: the tables are in exactly that schema
    name = f"TE_Mixed_{uuid.uuid4().hex[:6]}"
    schemas.append(name)
    PostgresLog(PG_URL, name).close()
    assert {"transaction_log", "spool", "runs"} <= tables_in(name)


def test_the_transaction_log_setting_is_secret_and_never_logged(make_sandbox: Any, tmp_path: Path,
                                                                 schemas: list[str],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    about = subprocess.run([TARGET, "--about", "--format=json"], capture_output=True, timeout=120, check=True).stdout
    prop = json.loads(about)["settings"]["properties"]["transaction_log"]
    assert prop.get("secret") is True
    project = yaml.safe_load((REPO / "meltano.yml").read_text())
    entry = next(p for p in project["plugins"]["loaders"] if p["name"] == "target-edfi")
    assert next(s for s in entry["settings"] if s["name"] == "transaction_log").get("sensitive") is True

    sb = make_sandbox("7.3")
    schema = f"te_secret_{uuid.uuid4().hex[:10]}"
    schemas.append(schema)
    url = PG_URL.replace("postgres@", "postgres:Pw-7731-secret@")  # trust auth: the password is not checked
    with caplog.at_level(logging.DEBUG):
        data = b"".join(good_input()) + schema_line("schools") + record("schools", school(1))
        run = run_target({**target_config(sb, url), "transaction_log_schema": schema}, data)
    assert run.exit_code == 0, run.results
    assert "PostgreSQL transaction log postgresql://127.0.0.1:5432/test" in caplog.text
    assert "Pw-7731-secret" not in caplog.text
