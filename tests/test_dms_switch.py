"""A district moves from ODS/API 7.3 to DMS (API 8.1): the warehouse pipeline ``meltano run tap-edfi target-postgres``
keeps its Meltano state id and its tables, and the first run against the DMS reconciles every stream.

What really happens (README "Moving from ODS/API to DMS"): DMS assigns its own ``id`` to every item the migration
copied, and numbers its own change versions. The warehouse's tables are keyed by ``id``, so the reconciliation
inserts every DMS item as a new row and marks every 7.3 row deleted (target-postgres soft delete): the tables, their
columns and the live content by natural key stay, the ids of the live rows are the DMS's, and the 7.3 rows stay as
deleted history. The bookmarks then are the DMS's change versions and the next run is incremental.

Without ``resync`` the 7.3 bookmarks would be read as DMS change versions. After a migration they are close to the
DMS's own (the copy wrote about as many changes as the 7.3 had): an incremental read of the DMS returns nothing or
only the latest DMS changes, the 7.3 rows (ids the DMS does not have) stay live forever, and a delete on the DMS
never matches a row, all at exit 0. So the tap records the server in STATE (``server``: product, version, data URL
from discovery) and reconciles every stream when the product or the data URL changes. A state written by a
tap-edfi without that record cannot tell: the last test shows the ghost rows such a run leaves, which is why the
README still says to set ``resync`` on the first run against the DMS.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from edfi_sandbox.server import Sandbox
from tests.conftest import Api
from tests.tap_support import Mutator, run_tap, tap_config
from tests.target_support import content, diff_content, run_target, target_config, without_empty_collections
from tests.test_tap_meltano import _meltano, _postgres_up, installed  # noqa: F401 - the fixture

PG = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
STUDENTS = "/ed-fi/students"
FIELDS = ("firstName", "lastSurname", "birthDate")


def _env(sb: Sandbox, schema: str) -> dict[str, str]:
    return {"TAP_EDFI_BASE_URL": sb.api_root or sb.base_url, "TAP_EDFI_CLIENT_ID": sb.client_id,
            "TAP_EDFI_CLIENT_SECRET": sb.client_secret, "TAP_EDFI_RESOURCES": '["schools", "students"]',
            "TAP_EDFI_INCLUDE_DESCRIPTORS": "false", "TAP_EDFI_RESYNC": "[]",
            "TARGET_POSTGRES_PASSWORD": "postgres", "TARGET_POSTGRES_DATABASE": "postgres",
            "TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": schema}


def _table(schema: str, name: str) -> dict[str, dict[str, Any]]:
    """id -> the row (every column, _sdc ones included)."""
    with psycopg.connect(PG, autocommit=True) as conn:
        cur = conn.execute(f'SELECT * FROM "{schema}"."{name}"')
        cols = [c.name for c in cur.description or []]
        return {row["id"]: row for row in (dict(zip(cols, r, strict=True)) for r in cur.fetchall())}


def _live(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {i: r for i, r in rows.items() if r["_sdc_deleted_at"] is None}


def _content(row: dict[str, Any]) -> dict[str, Any]:
    """The row without the _sdc_ columns (batched/received times and table version change on every write)."""
    return {k: v for k, v in row.items() if not k.startswith("_sdc")}


def _by_key(rows: dict[str, dict[str, Any]], key: str) -> dict[str, tuple]:
    return {str(r[key]): tuple(str(r.get(f)) for f in FIELDS if f in r) for r in rows.values()}


def _items_by_key(sb: Sandbox, path: str, key: str) -> dict[str, tuple]:
    return {str(d[key]): tuple(str(d.get(f)) for f in FIELDS if f in d)
            for d in sb.store.iter_docs(path)}


def _ids(sb: Sandbox, path: str) -> set[str]:
    return {d["id"] for d in sb.store.iter_docs(path)}


def _lone_student(a: Sandbox) -> None:
    """A student no association names: the one the DMS can delete (it refuses to delete a referenced item)."""
    Mutator(a).insert_copies(STUDENTS, 1, "studentUniqueId", "lone")


def _migrate(a: Sandbox, b: Sandbox, tmp_path: Path) -> dict[str, str]:
    """The migration (tap-edfi from the 7.3 into target-edfi to the DMS, in process: tests/test_migration_dms.py
    runs it through meltano), then what changed on the DMS during the switch: one student deleted, one updated,
    one inserted."""
    copy = run_target(target_config(b, tmp_path / "log.db"), run_tap(tap_config(a)).raw)
    assert copy.exit_code == 0, copy.results
    assert diff_content(without_empty_collections(content(a)), without_empty_collections(content(b))) == []
    assert not _ids(a, STUDENTS) & _ids(b, STUDENTS)  # the DMS assigned its own ids
    m = Mutator(b)
    before = _ids(b, STUDENTS)
    assert m.delete(STUDENTS, 1) == 1
    [(_, _, deleted)] = m.log
    assert deleted in before and deleted not in _ids(b, STUDENTS)
    m.update(STUDENTS, 1, "firstName", lambda d: "Switched")
    m.insert_copies(STUDENTS, 1, "studentUniqueId", "dms")
    return {kind: item_id for kind, _, item_id in m.log}  # delete, update, insert -> the DMS id


@pytest.mark.parametrize("resync", ['["*"]', "none"])
def test_the_first_run_against_dms_reconciles_the_warehouse(resync: str, installed: None,  # noqa: F811
                                                            tmp_path: Path) -> None:
    """``resync``: the README's TAP_EDFI_RESYNC='["*"]'; ``none``: the same state without it, which the recorded
    server identity reconciles too."""
    assert _postgres_up(), "PostgreSQL is not running on 127.0.0.1:5432"
    schema = f"edfi_switch_{uuid.uuid4().hex[:8]}"
    suffix = ["--state-id-suffix", schema]
    try:
        with Sandbox("7.3", seed=5) as a, Sandbox("8.1") as b:
            _lone_student(a)
            proc = _meltano(["run", *suffix, "tap-edfi", "target-postgres"], _env(a, schema))
            assert proc.returncode == 0, proc.stderr[-3000:]
            ods_students, ods_schools = _table(schema, "students"), _table(schema, "schools")
            assert set(ods_students) == _ids(a, STUDENTS) and _live(ods_students) == ods_students

            switch = _migrate(a, b, tmp_path)
            env = _env(b, schema)
            if resync != "none":
                env["TAP_EDFI_RESYNC"] = resync
            proc = _meltano(["run", *suffix, "tap-edfi", "target-postgres"], env)
            assert proc.returncode == 0, proc.stderr[-3000:]
            if resync == "none":
                assert "server changed from ODS/API 7.3" in proc.stderr and "to DMS 8.1" in proc.stderr
            students, schools = _table(schema, "students"), _table(schema, "schools")
            # the live rows are the DMS's items: its ids, its content (the switch's delete, update and insert too)
            assert set(_live(students)) == _ids(b, STUDENTS)
            assert _by_key(_live(students), "studentUniqueId") == _items_by_key(b, STUDENTS, "studentUniqueId")
            assert "Switched" in {r["firstName"] for r in _live(students).values()}
            assert set(_live(schools)) == _ids(b, "/ed-fi/schools")
            assert _by_key(_live(schools), "schoolId") == _items_by_key(b, "/ed-fi/schools", "schoolId")
            # the same tables: every 7.3 row is still there, marked deleted (the DMS does not have its id); the
            # student the DMS deleted during the switch is a deleted row too (its /deletes entry, a DMS id)
            assert set(students) == set(ods_students) | _ids(b, STUDENTS) | {switch["delete"]}
            assert {i for i, r in students.items() if r["_sdc_deleted_at"] is not None} == \
                set(ods_students) | {switch["delete"]}
            assert {i for i, r in schools.items() if r["_sdc_deleted_at"] is not None} == set(ods_schools)

            # the run after is incremental: only what changed on the DMS is written
            changed = Mutator(b)
            changed.update(STUDENTS, 1, "lastSurname", lambda d: "Incremental")
            [(_, _, updated)] = changed.log
            proc = _meltano(["run", *suffix, "tap-edfi", "target-postgres"], _env(b, schema))
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert "server changed" not in proc.stderr and "reconciling" not in proc.stderr
            after = _table(schema, "students")
            assert after[updated]["lastSurname"] == "Incremental"
            assert set(_live(after)) == _ids(b, STUDENTS) and set(after) == set(students)
            # no other row changed content; the rows written again besides the update are the switch's changes,
            # which change_version_lookback (the last versions below the previous bound) reads once more
            assert {i: _content(r) for i, r in after.items() if i != updated} == \
                {i: _content(r) for i, r in students.items() if i != updated}
            rewritten = {i for i in after if after[i] != students[i]}
            assert updated in rewritten and rewritten - {updated} <= {switch["insert"], switch["delete"]}
            assert _table(schema, "schools") == schools
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_the_state_records_the_server_and_a_switch_reconciles(caplog: pytest.LogCaptureFixture,
                                                              tmp_path: Path) -> None:
    with Sandbox("7.3", seed=5) as a, Sandbox("8.1") as b:
        _lone_student(a)
        config = {"resources": ["students"], "include_descriptors": False, "change_version_lookback": 0}
        first = run_tap(tap_config(a, **config))
        assert first.last_state["server"] == {"product": "ODS/API", "version": "7.3", "data_url": a.data_url}
        _migrate(a, b, tmp_path)
        # the 7.3 bookmark is no DMS change version, yet it lies inside the DMS's range: nothing says so but STATE
        assert first.last_state["bookmarks"]["students"]["change_version"] < Api(b).newest()
        with caplog.at_level(logging.WARNING):
            second = run_tap(tap_config(b, **config), state=first.last_state)
        [warning] = [r.getMessage() for r in caplog.records if "server changed" in r.getMessage()]
        assert f"from ODS/API 7.3 at {a.data_url} to DMS 8.1.0 at {b.data_url}" in warning and "students" in warning
        [activate] = [m for m in second.messages if m["type"] == "ACTIVATE_VERSION"]
        versioned = {m["record"]["id"] for m in second.messages
                     if m["type"] == "RECORD" and m.get("version") == activate["version"]}
        assert activate["stream"] == "students" and versioned == _ids(b, STUDENTS)
        state = second.last_state
        assert state["server"] == {"product": "DMS", "version": "8.1.0", "data_url": b.data_url}
        assert state["bookmarks"]["students"]["change_version"] == Api(b).newest()
        assert "resync_pending" not in state["bookmarks"]["students"]
        # the same server again: incremental, nothing to read
        third = run_tap(tap_config(b, **config), state=state)
        assert [m for m in third.messages if m["type"] in ("RECORD", "ACTIVATE_VERSION")] == []


def test_a_state_without_the_server_record_keeps_ghost_rows(tmp_path: Path) -> None:
    """The hazard the README's resync step is for: a state of a tap-edfi that did not record the server (or one
    edited by hand) cannot tell the switch. Read against the DMS, the 7.3 bookmark is taken as a DMS change
    version: only the DMS changes above it are read, no 7.3 row is ever dropped, exit 0."""
    with Sandbox("7.3", seed=5) as a, Sandbox("8.1") as b:
        _lone_student(a)
        config = {"resources": ["students"], "include_descriptors": False, "change_version_lookback": 0}
        first = run_tap(tap_config(a, **config))
        state = {k: v for k, v in first.last_state.items() if k != "server"}
        switch = _migrate(a, b, tmp_path)
        second = run_tap(tap_config(b, **config), state=state)
        assert [m for m in second.messages if m["type"] == "ACTIVATE_VERSION"] == []
        records = second.stream_records("students")
        # only the switch's changes above the 7.3 bookmark: the update, the insert and a tombstone of an id the
        # warehouse never had; every 7.3 row stays live, the items the migration copied are never read
        assert {r["id"] for r in records if not r.get("_sdc_deleted_at")} == {switch["update"], switch["insert"]}
        assert {r["id"] for r in records if r.get("_sdc_deleted_at")} == {switch["delete"]}
        assert not {r["id"] for r in records} & _ids(a, STUDENTS)
        assert len(_ids(b, STUDENTS)) > 2
        # and the next run knows the server: a later switch is caught
        assert second.last_state["server"]["product"] == "DMS"
