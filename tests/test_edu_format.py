"""``record_format: edu``: the raw tables edu_edfi_airflow loads and edu_edfi_source reads (docs/edu-format.md)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from edfi_sandbox.server import Sandbox
from tap_edfi.edu import resource_name
from tap_edfi.sync import SettingsError
from tests.tap_support import Mutator, run_tap, tap_config
from tests.test_tap_meltano import _meltano, _postgres_up, installed  # noqa: F401  # the fixture

# The columns of edu_edfi_airflow's raw tables, in order: the COPY INTO column list of
# edu_edfi_airflow/providers/snowflake/transfers/s3_to_snowflake.py (S3ToSnowflakeOperator.run_sql_queries);
# edu_edfi_source reads them in models/staging/edfi_3/base/base_ef3__*.sql (tenant_code, api_year, pull_timestamp,
# file_row_number, filename, ods_version, data_model_version, v:...) and macros/source_edfi3.sql (name, v:id of
# the `_deletes` table, pull_timestamp).
RAW_COLUMNS = ["tenant_code", "api_year", "pull_date", "pull_timestamp", "file_row_number", "filename", "name",
               "ods_version", "data_model_version", "v"]
TENANT, YEAR = "district_a", 2025


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox("7.3", seed=20) as sb:
        yield sb


def edu_config(sb: Sandbox, **extra: object) -> dict:
    return tap_config(sb, record_format="edu", tenant_code=TENANT, api_year=YEAR, **extra)


def test_schemas_are_the_raw_tables_columns(sandbox: Sandbox) -> None:
    out = run_tap(edu_config(sandbox))
    expected_streams = {resource_name(res) for res in sandbox.model} | {"_deletes", "_key_changes"}
    assert set(out.schemas) == expected_streams
    for name, msg in out.schemas.items():
        props = msg["schema"]["properties"]
        assert list(props) == RAW_COLUMNS, name
        assert msg["key_properties"] == [], name
        assert props["v"]["type"] == "object"
        assert props["api_year"]["type"] == "integer"
        assert props["file_row_number"]["type"] == "integer"
        assert props["pull_timestamp"]["format"] == "date-time"
        assert props["pull_date"]["format"] == "date"
    assert resource_name(next(r for r in sandbox.model if r.name == "studentSchoolAssociations")) == \
        "student_school_associations"


def test_rows_carry_the_document_tenant_year_and_deletes(sandbox: Sandbox) -> None:
    out = run_tap(edu_config(sandbox))
    stamps = set()
    for res in sandbox.model:
        name = resource_name(res)
        rows = out.stream_records(name)
        docs = {d["id"]: d for d in sandbox.store.iter_docs(res.path)}
        assert {r["v"]["id"]: r["v"] for r in rows} == docs, name
        assert len(rows) == len(docs), name
        assert {(r["tenant_code"], r["api_year"], r["name"]) for r in rows} <= {(TENANT, YEAR, name)}
        assert sorted(r["file_row_number"] for r in rows) == list(range(1, len(rows) + 1)), name
        assert all(r["filename"].endswith(f"/resources/{name}.jsonl") for r in rows), name
        assert {r["ods_version"] for r in rows} <= {"7.3"}, name
        stamps |= {(r["pull_date"], r["pull_timestamp"]) for r in rows}
    assert len(stamps) == 1  # one pull per run
    day, stamp = stamps.pop()
    assert dt.datetime.fromisoformat(stamp).date().isoformat() == day
    assert out.stream_records("_deletes") == []

    gone = "/ed-fi/studentSchoolAttendanceEvents"
    m = Mutator(sandbox)
    assert m.delete(gone, 3) == 3
    ids = {i for op, path, i in m.log if op == "delete"}
    out2 = run_tap(edu_config(sandbox, change_version_lookback=0), state=out.last_state)
    deletes = out2.stream_records("_deletes")
    assert {d["v"]["id"] for d in deletes} == ids
    assert {(d["tenant_code"], d["api_year"], d["name"]) for d in deletes} == \
        {(TENANT, YEAR, "student_school_attendance_events")}
    assert sorted(d["file_row_number"] for d in deletes) == [1, 2, 3]
    assert all("/resource_deletes/" in d["filename"] for d in deletes)
    assert out2.stream_records("student_school_attendance_events") == []
    # the deleted ids are those of rows the first run wrote (edu_edfi_source joins them on v:id)
    assert ids <= {r["v"]["id"] for r in out.stream_records("student_school_attendance_events")}


def test_edu_never_writes_table_versions_even_when_a_resync_is_asked(sandbox: Sandbox,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Raw tables keep every pull of several tenants and years: an ACTIVATE_VERSION would mark the other pulls'
    rows deleted, so `resync` (and purged tracked changes) say what to do instead."""
    first = run_tap(edu_config(sandbox))
    with caplog.at_level("WARNING"):
        out = run_tap(edu_config(sandbox, resync=["students"]), state=first.last_state)
    assert not [m for m in out.messages if m["type"] == "ACTIVATE_VERSION"]
    assert all("version" not in m for m in out.records)
    assert "record_format edu writes no table versions, so students (resync setting) cannot be reconciled" in \
        caplog.text


@pytest.mark.parametrize("missing", ["tenant_code", "api_year"])
def test_edu_without_tenant_or_year_fails_naming_the_setting(sandbox: Sandbox, missing: str) -> None:
    config = edu_config(sandbox)
    del config[missing]
    with pytest.raises(SettingsError, match=f"the {missing} setting is not set"):
        run_tap(config)


def test_meltano_run_into_postgres_makes_the_raw_tables(installed: None, sandbox: Sandbox,  # noqa: F811
                                                        tmp_path: Path) -> None:
    assert _postgres_up(), "PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)"
    schema = f"edu_test_{uuid.uuid4().hex[:8]}"
    env = {"TAP_EDFI_BASE_URL": sandbox.base_url, "TAP_EDFI_CLIENT_ID": sandbox.client_id,
           "TAP_EDFI_CLIENT_SECRET": sandbox.client_secret, "TAP_EDFI_RECORD_FORMAT": "edu",
           "TAP_EDFI_TENANT_CODE": TENANT, "TAP_EDFI_API_YEAR": str(YEAR),
           "TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": schema}
    proc = _meltano(["run", "--state-id-suffix", schema, "tap-edfi", "target-postgres"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    try:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
            def columns(table: str) -> dict[str, str]:
                rows = conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                                    "WHERE table_schema = %s AND table_name = %s", (schema, table)).fetchall()
                return {str(c): str(t) for c, t in rows}

            for res in sandbox.model:
                table = resource_name(res)
                cols = columns(table)
                assert set(RAW_COLUMNS) <= set(cols), (table, cols)
                assert cols["v"] == "jsonb" and cols["api_year"] == "bigint", (table, cols)
                expected = sum(1 for _ in sandbox.store.iter_docs(res.path))
                row = conn.execute(f'SELECT count(*), count(DISTINCT v->>\'id\') FROM "{schema}"."{table}" '
                                   "WHERE tenant_code = %s AND api_year = %s AND name = %s",
                                   (TENANT, YEAR, table)).fetchone()
                assert row == (expected, expected), f"{table}: {row} rows, the API has {expected}"
            assert set(RAW_COLUMNS) <= set(columns("_deletes"))
    finally:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
