"""The transaction log on SQLite and on the real PostgreSQL at 127.0.0.1:5432: what a user who queries it sees."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edfi_core.keys import canonical, key_hash
from edfi_core.openapi import without_server_fields
from target_edfi.txlog import SQLiteLog, TransactionLog, open_log
from tests.tap_support import Mutator
from tests.target_support import (
    RequestCounter,
    content,
    diff_content,
    payload_of,
    run_target,
    singer_messages,
    target_config,
)

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            pass
    except OSError:
        return False
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception:
        return False
    return True


@pytest.fixture(params=["sqlite", "postgresql"])
def log_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    if request.param == "sqlite":
        yield {"transaction_log": str(tmp_path / "log.db")}
        return
    if not postgres_up():
        pytest.skip("no PostgreSQL at 127.0.0.1:5432 (database test)")
    import psycopg

    schema = f"target_edfi_test_{uuid.uuid4().hex[:10]}"
    yield {"transaction_log": PG_URL, "transaction_log_schema": schema}
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def open_from(settings: dict[str, str]) -> TransactionLog:
    return open_log(settings["transaction_log"], settings.get("transaction_log_schema", "target_edfi"))


def rows(log: TransactionLog, sql: str, params: tuple = ()) -> list[tuple]:
    return [tuple(r) for r in log.execute(sql, params).fetchall()]


def test_transaction_log_backends(log_settings: dict[str, str], make_sandbox: Any, tmp_path: Path) -> None:
    a = make_sandbox("7.3", seed=2)
    b = make_sandbox("7.3")
    counter = RequestCounter(b)
    records = []
    for res in a.model:
        for doc in a.store.iter_docs(res.path):
            body = payload_of(res, doc)
            records.append((res.name, {**body, "row_id": doc["id"]} if res.name == "students" else body))
    keys = {"students": ["row_id"]}
    total = len(records)
    config = target_config(b, "", **log_settings)

    run = run_target(config, singer_messages(records, key_properties=keys))
    assert run.exit_code == 0, run.results
    assert diff_content(content(a), content(b)) == []
    counter.reset()
    assert run_target(config, singer_messages(records, key_properties=keys)).totals["skipped_unchanged"] == total
    assert counter.counts == {}

    # a change and a delete
    student = next(a.store.iter_docs("/ed-fi/students"))
    Mutator(a).update("/ed-fi/students", 1, "firstName", lambda d: "Renamed")
    event = next(a.store.iter_docs("/ed-fi/studentSchoolAttendanceEvents"))
    deleted = {**without_server_fields(event), "_sdc_deleted_at": "2025-01-01T00:00:00Z"}
    assert Mutator(a).http.delete(Mutator(a).url(f"/ed-fi/studentSchoolAttendanceEvents/{event['id']}")).ok
    changed = [(s, {**r, "firstName": "Renamed"} if r.get("row_id") == student["id"] else r) for s, r in records]
    run = run_target(config, singer_messages([*changed, ("studentSchoolAttendanceEvents", deleted)],
                                             key_properties=keys))
    assert run.exit_code == 0
    assert counter.counts == {"POST": 1, "DELETE": 1}
    assert diff_content(content(a), content(b)) == []

    # what a user querying the log sees
    log = open_from(log_settings)
    try:
        target = b.data_url.rstrip("/")
        assert rows(log, "SELECT COUNT(*) FROM {p}transaction_log WHERE target = ?", (target,)) == [(total,)]
        res = b.model.get("/ed-fi/students")
        stored = b.store.get_by_key("/ed-fi/students", {"studentUniqueId": student["studentUniqueId"]})
        natural = res.natural_key(student)
        (row,) = rows(log, "SELECT natural_key, source_stream, source_key, edfi_id, payload_hash, deleted, status, "
                           "http_status, attempts, first_sent_at, last_sent_at, accepted_at, run_id "
                           "FROM {p}transaction_log WHERE target = ? AND resource = ? AND key_hash = ?",
                      (target, res.path, key_hash(natural)))
        assert json.loads(row[0]) == natural
        assert row[1] == "students" and json.loads(row[2]) == {"row_id": student["id"]}
        assert row[3] == stored["id"]  # the Ed-Fi id from Location
        assert row[4] and not row[5] and row[6] == "updated" and row[7] == 200 and row[8] == 2
        assert row[9] is not None and row[10] is not None and row[11] is not None and row[12] == run.target.run_id
        ev = b.model.get("/ed-fi/studentSchoolAttendanceEvents")
        (gone,) = rows(log, "SELECT deleted, status, http_status FROM {p}transaction_log WHERE target = ? "
                            "AND resource = ? AND key_hash = ?", (target, ev.path, key_hash(ev.natural_key(event))))
        assert bool(gone[0]) and gone[1] == "deleted" and gone[2] == 204
        assert rows(log, "SELECT COUNT(*) FROM {p}spool WHERE target = ?", (target,)) == [(0,)]
        statuses = rows(log, "SELECT status FROM {p}runs WHERE target = ? ORDER BY started_at", (target,))
        assert statuses == [("done",), ("done",), ("done",)]
        summary = json.loads(rows(log, "SELECT summary FROM {p}runs WHERE run_id = ?", (run.target.run_id,))[0][0])
        assert summary["totals"]["deleted"] == 1
        assert canonical(natural).decode() == row[0]
    finally:
        log.close()


def test_one_run_per_target_at_a_time(log_settings: dict[str, str]) -> None:
    """A second run to the same target waits for the first; a run to another target does not."""
    first, second, other = open_from(log_settings), open_from(log_settings), open_from(log_settings)
    try:
        first.lock("http://a/data/v3")
        other.lock("http://b/data/v3")  # another target: not blocked
        got = threading.Event()

        def take() -> None:
            second.lock("http://a/data/v3")
            got.set()

        thread = threading.Thread(target=take, daemon=True)
        thread.start()
        time.sleep(1.0)
        assert not got.is_set()
        first.unlock()
        assert got.wait(10)
    finally:
        for log in (first, second, other):
            log.close()


def test_sqlite_log_survives_reopening(tmp_path: Path) -> None:
    log = SQLiteLog(tmp_path / "x" / "log.db")
    log.spool([("t", "s", "k", 1, "upsert", "/ed-fi/students", "s", "k", "h", "{}", "p", b"{}", None, None, 0,
               log.now())])
    log.commit()
    log.close()
    again = SQLiteLog(tmp_path / "x" / "log.db")
    assert again.max_seq("t") == 1 and again.pending("t") == {"/ed-fi/students": {"upsert": 1}}
    again.close()
