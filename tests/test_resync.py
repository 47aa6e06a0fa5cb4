"""Self-healing incremental sync: a stream whose tracked changes were purged, and ``resync`` on demand.

When the API's ``oldestChangeVersion`` is above a stream's bookmark + 1, the deletes in between can no longer be
read: the tap warns once, naming the stream, and reconciles it (every live item as a table version, then
``ACTIVATE_VERSION``). ``resync: [streams]`` forces that reconciliation for the streams it names. The sandbox's
admin endpoints purge tracked changes (``POST /_sandbox/purge-changes?below=N``) and delete items without change
tracking (``DELETE /_sandbox/items/{schema}/{resource}/{id}``): rows that vanish without a tracked delete.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import psycopg
import pytest

from edfi_sandbox.server import Sandbox
from tests.conftest import Api
from tests.tap_support import run_tap, tap_config
from tests.test_tap_meltano import _meltano, _postgres_up, installed  # noqa: F401 - the fixture

PG = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
STUDENTS = "/ed-fi/students"


def _body(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("id", "_etag", "_lastModifiedDate")}


def _vanish(sb: Sandbox, path: str, item_id: str) -> None:
    """Delete an item bypassing change tracking (no change version, no /deletes entry)."""
    before = Api(sb).newest()
    assert sb.admin("DELETE", f"items{path}/{item_id}").status_code == 204
    assert Api(sb).get(f"{path}/{item_id}").status_code == 404
    assert Api(sb).newest() == before
    assert item_id not in {d["id"] for d in Api(sb).get(f"{path}/deletes").json()}


def _live(sb: Sandbox, path: str) -> set[str]:
    return {d["id"] for d in sb.store.iter_docs(path)}


def _typed(messages: list[dict[str, Any]], kind: str, stream: str | None = None) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("type") == kind and (stream is None or m.get("stream") == stream)]


def test_purged_tracked_changes_reconcile_the_stream(make_sandbox, caplog: pytest.LogCaptureFixture) -> None:
    sb = make_sandbox("7.3", seed=5)
    api = Api(sb)
    config = tap_config(sb, resources=["students"], include_descriptors=False, change_version_lookback=0)
    first = run_tap(config)
    mark = first.last_state["bookmarks"]["students"]["change_version"]
    # after the first run: a student created and deleted (a tracked delete), another one updated
    docs = list(sb.store.iter_docs(STUDENTS))
    new = {**_body(docs[0]), "studentUniqueId": "PURGED1"}
    assert api.post(STUDENTS, new).status_code == 201
    [created] = api.get(STUDENTS, params={"studentUniqueId": "PURGED1"}).json()
    assert api.delete(f"{STUDENTS}/{created['id']}").status_code == 204
    updated = {**_body(docs[1]), "middleName": "Updated"}
    assert api.put(f"{STUDENTS}/{docs[1]['id']}", updated).status_code == 204
    newest = api.newest()
    assert newest > mark + 2
    # the host purges tracked changes below the newest change version: the tracked delete is gone
    reply = sb.admin("POST", "purge-changes", params={"below": newest})
    assert reply.status_code == 200 and reply.json()["purged"] >= 1
    assert api.changes("availableChangeVersions").json() == {"oldestChangeVersion": newest,
                                                             "newestChangeVersion": newest}
    assert api.get(f"{STUDENTS}/deletes").json() == []
    # and a student vanishes without a tracked delete
    gone = docs[2]["id"]
    _vanish(sb, STUDENTS, gone)
    with caplog.at_level(logging.WARNING):
        second = run_tap(config, state=first.last_state)
    [warning] = [r for r in caplog.records if "tracked changes purged" in r.getMessage()]
    text = warning.getMessage()
    assert warning.levelno == logging.WARNING
    assert f"students (bookmark {mark})" in text and f"oldestChangeVersion is {newest}" in text
    [activate] = _typed(second.messages, "ACTIVATE_VERSION")
    assert activate["stream"] == "students"
    records = _typed(second.messages, "RECORD", "students")
    versioned = {m["record"]["id"] for m in records if m.get("version") == activate["version"]}
    live = _live(sb, STUDENTS)
    assert versioned == live and gone not in live and docs[1]["id"] in live
    assert second.messages.index(activate) > max(second.messages.index(m) for m in records)
    marks = second.last_state["bookmarks"]["students"]
    assert marks["change_version"] == newest and "resync_pending" not in marks
    # the next run is incremental again, from the reconciliation's bound: nothing changed, nothing read
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        third = run_tap(config, state=second.last_state)
    assert _typed(third.messages, "RECORD") == _typed(third.messages, "ACTIVATE_VERSION") == []
    assert not [r for r in caplog.records if "tracked changes purged" in r.getMessage()]
    assert third.last_state["bookmarks"]["students"]["change_version"] == newest


def test_resync_reconciles_only_the_streams_it_names(make_sandbox) -> None:
    sb = make_sandbox("7.3", seed=5)
    config = tap_config(sb, resources=["students", "schools"], include_descriptors=False, change_version_lookback=0)
    first = run_tap(config)
    assert _typed(first.messages, "ACTIVATE_VERSION") == []
    gone_student = next(iter(sb.store.iter_docs(STUDENTS)))["id"]
    _vanish(sb, STUDENTS, gone_student)
    second = run_tap({**config, "resync": ["students"]}, state=first.last_state)
    [activate] = _typed(second.messages, "ACTIVATE_VERSION")
    assert activate["stream"] == "students"
    versioned = {m["record"]["id"] for m in _typed(second.messages, "RECORD", "students")
                 if m.get("version") == activate["version"]}
    assert versioned == _live(sb, STUDENTS) and gone_student not in versioned
    assert _typed(second.messages, "RECORD", "schools") == []  # schools read incrementally: nothing changed
    bound = second.tap.run_context.newest
    assert {s: second.last_state["bookmarks"][s]["change_version"] for s in ("students", "schools")} == \
        {"students": bound, "schools": bound}
    assert second.last_state["bookmarks"]["schools"]["reconciled_at"] == \
        first.last_state["bookmarks"]["schools"]["reconciled_at"]
    # without resync the next run is incremental for both
    third = run_tap(config, state=second.last_state)
    assert _typed(third.messages, "RECORD") == _typed(third.messages, "ACTIVATE_VERSION") == []


def test_meltano_resync_marks_vanished_rows_deleted_in_postgres(installed: None) -> None:  # noqa: F811
    assert _postgres_up(), "PostgreSQL is not running on 127.0.0.1:5432"
    schema = f"edfi_resync_{uuid.uuid4().hex[:8]}"

    def rows(query: str) -> list[tuple]:
        with psycopg.connect(PG, autocommit=True) as conn:
            return conn.execute(query).fetchall()

    def table(name: str) -> dict[str, tuple]:
        """id -> (deleted?, the row's columns other than the _sdc_ ones) of one table."""
        with psycopg.connect(PG, autocommit=True) as conn:
            cur = conn.execute(f'SELECT * FROM "{schema}"."{name}"')
            cols = [c.name for c in cur.description or []]
            out = {}
            for row in cur.fetchall():
                values = dict(zip(cols, row, strict=True))
                out[values["id"]] = (values["_sdc_deleted_at"] is not None,
                                     tuple(str(v) for k, v in sorted(values.items()) if not k.startswith("_sdc")))
            return out

    with Sandbox("7.3", seed=5) as sb:
        env = {"TAP_EDFI_BASE_URL": sb.base_url, "TAP_EDFI_CLIENT_ID": sb.client_id,
               "TAP_EDFI_CLIENT_SECRET": sb.client_secret, "TAP_EDFI_RESOURCES": '["schools", "students"]',
               "TAP_EDFI_INCLUDE_DESCRIPTORS": "false",
               "TARGET_POSTGRES_PASSWORD": "postgres", "TARGET_POSTGRES_DATABASE": "postgres",
               "TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": schema}
        suffix = ["--state-id-suffix", schema]
        try:
            proc = _meltano(["run", *suffix, "tap-edfi", "target-postgres"], env)
            assert proc.returncode == 0, proc.stderr[-3000:]
            students, schools = table("students"), table("schools")
            assert set(students) == _live(sb, STUDENTS) and not any(d for d, _ in students.values())
            gone = sorted(students)[:2]
            for item_id in gone:
                _vanish(sb, STUDENTS, item_id)
            # an incremental run does not see them go
            proc = _meltano(["run", *suffix, "tap-edfi", "target-postgres"], env)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert table("students") == students
            proc = _meltano(["run", *suffix, "tap-edfi", "target-postgres"], {**env, "TAP_EDFI_RESYNC": '["students"]'})
            assert proc.returncode == 0, proc.stderr[-3000:]
            after = table("students")
            assert {i for i, (deleted, _) in after.items() if deleted} == set(gone)
            assert {i for i, (deleted, _) in after.items() if not deleted} == _live(sb, STUDENTS)
            # nothing else changed: the other rows have the same content, schools are untouched
            assert {i: v for i, (_, v) in after.items()} == {i: v for i, (_, v) in students.items()}
            assert table("schools") == schools
            [(n,)] = rows(f'SELECT COUNT(*) FROM "{schema}"."students"')
            assert n == len(students)
        finally:
            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_a_bookmark_above_the_newest_change_version_reconciles_the_stream(make_sandbox) -> None:
    """A restored database: the bookmark is above newestChangeVersion. The stream is read from the start as a
    reconciliation, so rows the restored database does not have are dropped by the target too."""
    sb = make_sandbox("7.3", seed=5)
    config = tap_config(sb, resources=["students"], include_descriptors=False, change_version_lookback=0)
    first = run_tap(config)
    state = first.last_state
    state["bookmarks"]["students"]["change_version"] += 1000
    gone = next(iter(sb.store.iter_docs(STUDENTS)))["id"]
    _vanish(sb, STUDENTS, gone)
    second = run_tap(config, state=state)
    [activate] = _typed(second.messages, "ACTIVATE_VERSION", "students")
    versioned = {m["record"]["id"] for m in _typed(second.messages, "RECORD", "students")
                 if m.get("version") == activate["version"]}
    assert versioned == _live(sb, STUDENTS) and gone not in versioned
    assert second.last_state["bookmarks"]["students"]["change_version"] == second.tap.run_context.newest
