"""Natural keys reused within one run: swaps, chains and cycles of key changes, a new item taking the old key of one
that moved, one natural key from two source items, and key changes with ``delete_missing`` (issue 9, cases 1, 2
and 8); 409 reports that name the right record (case 7).

The rule these tests hold target-edfi to: after one run the API holds what the source holds, and no DELETE is ever
sent for an Ed-Fi id the transaction log maps to a live source item.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from edfi_sandbox.server import Sandbox
from tests.conftest import Api
from tests.tap_support import run_tap, tap_config
from tests.target_support import (
    TARGET,
    RequestCounter,
    content,
    diff_content,
    run_target,
    singer_messages,
    target_config,
)
from tests.test_target_txlog import (
    log_settings,  # noqa: F401 - the fixture (SQLite and PostgreSQL logs)
    open_from,
    rows,
)

GRADE = "uri://ed-fi.org/GradeLevelDescriptor"
CATEGORY = "uri://ed-fi.org/EducationOrganizationCategoryDescriptor"
CLASS_PERIODS, STUDENTS = "/ed-fi/classPeriods", "/ed-fi/students"


def base_records() -> list[tuple[str, dict[str, Any]]]:
    """Descriptors and one school: what class periods and enrollments need."""
    return [
        ("gradeLevelDescriptors", {"namespace": GRADE, "codeValue": "Ninth grade", "shortDescription": "9"}),
        ("gradeLevelDescriptors", {"namespace": GRADE, "codeValue": "Tenth grade", "shortDescription": "10"}),
        ("educationOrganizationCategoryDescriptors", {"namespace": CATEGORY, "codeValue": "School",
                                                      "shortDescription": "School"}),
        ("schools", {"schoolId": 1, "nameOfInstitution": "School 1",
                     "educationOrganizationCategories": [
                         {"educationOrganizationCategoryDescriptor": f"{CATEGORY}#School"}],
                     "gradeLevels": [{"gradeLevelDescriptor": f"{GRADE}#Ninth grade"}]}),
    ]


def class_period(row: int, name: str) -> tuple[str, dict[str, Any]]:
    """Class period of vendor row ``row`` (its start time says which row it is) under the name ``name``."""
    hour = f"{7 + row:02d}"
    return ("classPeriods", {"period_id": f"CP{row}", "classPeriodName": name, "schoolReference": {"schoolId": 1},
                             "meetingTimes": [{"startTime": f"{hour}:00:00", "endTime": f"{hour}:50:00"}]})


def student(row: int, uid: str) -> tuple[str, dict[str, Any]]:
    """Student of vendor row ``row`` (its first name says which row it is) under the unique id ``uid``."""
    return ("students", {"student_id": f"ST{row}", "studentUniqueId": uid, "firstName": f"Row{row}",
                         "lastSurname": "Key", "birthDate": "2010-05-01"})


KEYS = {"classPeriods": ["period_id"], "students": ["student_id"]}


#: vendor row -> natural key, before and after: a swap (1, 2), a chain (3: P3->P4, 4: P4->P5), a cycle (5, 6, 7),
#: a move (8: P9->P10) whose old key a new row (9) takes
BEFORE = {1: "1", 2: "2", 3: "3", 4: "4", 5: "6", 6: "7", 7: "8", 8: "9"}
AFTER = {1: "2", 2: "1", 3: "4", 4: "5", 5: "7", 6: "8", 7: "6", 8: "10", 9: "9"}


def messages(records: list[tuple[str, dict[str, Any]]], seed: int | None = None, **kwargs: Any) -> bytes:
    records = list(records)
    if seed is not None:
        random.Random(seed).shuffle(records)
    return singer_messages(base_records() + records, key_properties=KEYS, **kwargs)


def names(sb: Sandbox, path: str, key: str, tag: Any) -> dict[str, Any]:
    """Natural key field -> what says which vendor row the item came from."""
    return {doc[key]: tag(doc) for doc in sb.store.iter_docs(path)}


def log_rows(log: Path | dict[str, str], sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of a query on the transaction log (a SQLite file, or the settings of any log)."""
    opened = open_from(log if isinstance(log, dict) else {"transaction_log": str(log)})
    try:
        return rows(opened, sql, params)
    finally:
        opened.close()


def assert_log_consistent(log: Path | dict[str, str], sb: Sandbox, path: str, key: str) -> None:
    """Every live row of the log names an item the API has under that natural key; no Ed-Fi id and no source item
    twice."""
    rows = log_rows(log, "SELECT natural_key, edfi_id, source_key FROM {p}transaction_log WHERE resource = ? "
                         "AND NOT deleted AND edfi_id IS NOT NULL", (path,))
    by_id = {doc["id"]: doc for doc in sb.store.iter_docs(path)}
    assert len({edfi_id for _, edfi_id, _ in rows}) == len(rows)
    owners = [source for _, _, source in rows if source is not None]
    assert len(set(owners)) == len(owners)
    for natural_key, edfi_id, _ in rows:
        assert edfi_id in by_id, f"the log maps {natural_key} to {edfi_id}, which the API does not have"
        assert by_id[edfi_id][key] == orjson.loads(natural_key)[key]
    assert len(rows) == len(by_id)


def test_swaps_chains_and_cycles_of_key_updatable_items(make_sandbox: Any, tmp_path: Path) -> None:
    """classPeriods (key-updatable, the PUT path): items are PUT to their new keys in an order in which no key is
    taken twice (a chain from its end); cycles, whose every new key is held by another moving item, are POSTed in
    place. Nothing is deleted."""
    sb = make_sandbox("7.3")
    counter = RequestCounter(sb)
    config = target_config(sb, tmp_path / "log.db")
    first = [class_period(row, f"P{name}") for row, name in BEFORE.items()]
    assert run_target(config, messages(first)).exit_code == 0
    assert names(sb, CLASS_PERIODS, "classPeriodName", lambda d: d["meetingTimes"][0]["startTime"]) == {
        f"P{name}": f"{7 + row:02d}:00:00" for row, name in BEFORE.items()}

    second = messages([class_period(row, f"P{name}") for row, name in AFTER.items()], seed=3)
    counter.reset()
    run = run_target(config, second)
    assert run.exit_code == 0, run.results
    assert names(sb, CLASS_PERIODS, "classPeriodName", lambda d: d["meetingTimes"][0]["startTime"]) == {
        f"P{name}": f"{7 + row:02d}:00:00" for row, name in AFTER.items()}
    # the chain's end and the move first (PUT), then its other link (PUT); the swap and the cycle in place (POST);
    # the new row at the old key of the move (POST, created)
    assert counter.counts == {"PUT": 3, "POST": 2 + 3 + 1}
    assert counter.statuses[("POST", 201)] == 1
    cp = run.resource(CLASS_PERIODS)
    assert cp["key_changes"] == 8 and cp["created"] == 1 and cp["failed"] == 0
    assert run.totals["unaccounted"] == 0
    assert_log_consistent(tmp_path / "log.db", sb, CLASS_PERIODS, "classPeriodName")

    counter.reset()
    assert run_target(config, second).exit_code == 0
    assert counter.writes == 0  # the log knows where every item is


def test_a_key_change_that_waits_holds_its_key_for_the_chain_behind_it(make_sandbox: Any, tmp_path: Path) -> None:
    """Chain P3->P4, P4->(P5 in school 2): school 2 never comes, so the end of the chain cannot move; P3's item
    must then not take P4 by overwriting the item still there: both stay as they are, both are reported."""
    sb = make_sandbox("7.3")
    counter = RequestCounter(sb)
    config = target_config(sb, tmp_path / "log.db")
    assert run_target(config, messages([class_period(3, "P3"), class_period(4, "P4")])).exit_code == 0
    moved = class_period(4, "P5")
    moved[1]["schoolReference"] = {"schoolId": 2}
    counter.reset()
    run = run_target(config, messages([class_period(3, "P4"), moved]))
    assert run.exit_code == 1
    assert names(sb, CLASS_PERIODS, "classPeriodName", lambda d: d["meetingTimes"][0]["startTime"]) == {
        "P3": "10:00:00", "P4": "11:00:00"}  # nothing lost, nothing overwritten
    assert counter.counts == {"PUT": 3, "GET": 1}  # the end of the chain once per pass; school 2 looked up
    cp = run.resource(CLASS_PERIODS)
    assert cp["failed"] == 2 and cp["key_changes"] == 0
    messages_ = sorted(g["message"] for g in cp["failures"])
    assert messages_[0].startswith("key change not sent: its new natural key is held by an item whose own key")
    assert messages_[1] == "unresolved reference: not in the target: schoolReference (school)"
    assert_log_consistent(tmp_path / "log.db", sb, CLASS_PERIODS, "classPeriodName")


def test_swaps_chains_and_cycles_by_post_and_delete(make_sandbox: Any, log_settings: dict[str, str]) -> None:  # noqa: F811
    """students (not key-updatable: POST the new key, DELETE the old item): an old key another record of the run
    takes is overwritten in place, never deleted; only the key nobody takes any more (the chain's start) is."""
    sb = make_sandbox("7.3")
    counter = RequestCounter(sb)
    config = target_config(sb, "", **log_settings)
    assert run_target(config, messages([student(row, f"U{uid}") for row, uid in BEFORE.items()])).exit_code == 0

    second = messages([student(row, f"U{uid}") for row, uid in AFTER.items()], seed=5)
    counter.reset()
    run = run_target(config, second)
    assert run.exit_code == 0, run.results
    assert names(sb, STUDENTS, "studentUniqueId", lambda d: d["firstName"]) == {
        f"U{uid}": f"Row{row}" for row, uid in AFTER.items()}
    assert counter.counts == {"POST": 9, "DELETE": 1}  # the item at U3, which no source item has any more
    st = run.resource(STUDENTS)
    assert st["key_changes"] == 8 and st["old_items_deleted"] == 1 and st["failed"] == 0
    assert run.totals["unaccounted"] == 0
    assert_log_consistent(log_settings, sb, STUDENTS, "studentUniqueId")

    counter.reset()
    assert run_target(config, second).exit_code == 0
    assert counter.writes == 0


def test_enrollments_that_swap_entry_dates_through_a_temporary_date_replicate(make_sandbox: Any,
                                                                              tmp_path: Path) -> None:
    """Ed-Fi to Ed-Fi: in the source two enrollments of one student swap their entry dates through a temporary date
    (three PUTs); tap-edfi's key changes say first old and last new key of each; B ends equal to A."""
    a = make_sandbox("7.3", seed=2)
    b = make_sandbox("7.3")
    counter = RequestCounter(b)
    config = target_config(b, tmp_path / "log.db")
    api = Api(a)
    first_doc = next(iter(a.store.iter_docs("/ed-fi/studentSchoolAssociations")))
    second_doc = {k: v for k, v in first_doc.items() if k not in ("id", "_etag", "_lastModifiedDate")}
    second_doc["entryDate"] = "2019-08-19"
    second_doc["primarySchool"] = not first_doc.get("primarySchool", False)  # tells the two apart
    assert api.post("/ed-fi/studentSchoolAssociations", second_doc).status_code == 201
    first = run_tap(tap_config(a))
    assert run_target(config, first.raw).exit_code == 0
    assert diff_content(content(a), content(b)) == []

    docs = [d for d in a.store.iter_docs("/ed-fi/studentSchoolAssociations")
            if d["studentReference"] == first_doc["studentReference"] and d["schoolReference"] ==
            first_doc["schoolReference"]]
    e1, e2 = sorted(docs, key=lambda d: d["entryDate"])[:2]

    def put(doc: dict[str, Any], entry_date: str) -> None:
        body = {k: v for k, v in doc.items() if k not in ("id", "_etag", "_lastModifiedDate")}
        body["entryDate"] = entry_date
        assert api.put(f"/ed-fi/studentSchoolAssociations/{doc['id']}", body).status_code == 204

    put(e1, "1999-01-01")  # the temporary date
    put(e2, e1["entryDate"])
    put(e1, e2["entryDate"])
    # and two class periods of one school swap their names the same way (the API cascades to the sections)
    periods = [d for d in a.store.iter_docs(CLASS_PERIODS)]
    p1 = periods[0]
    p2 = next(d for d in periods[1:] if d["schoolReference"]["schoolId"] == p1["schoolReference"]["schoolId"])
    for doc, name in ((p1, "temporary"), (p2, p1["classPeriodName"]), (p1, p2["classPeriodName"])):
        body = {k: v for k, v in doc.items() if k not in ("id", "_etag", "_lastModifiedDate")}
        body["classPeriodName"] = name
        assert api.put(f"{CLASS_PERIODS}/{doc['id']}", body).status_code == 204
    second = run_tap(tap_config(a), state=first.last_state)
    counter.reset()
    run = run_target(config, second.raw)
    assert run.exit_code == 0, run.results
    assert diff_content(content(a), content(b)) == []
    assert counter.counts["DELETE"] == 0 and run.totals["failed_all"] == 0
    ssa = run.resource("/ed-fi/studentSchoolAssociations")
    assert ssa["key_changes"] == 2 and ssa["key_change_rows"] == 2
    assert run.resource(CLASS_PERIODS)["key_changes"] == 2
    assert run.totals["unaccounted"] == 0  # every record of the tap (key change rows and deletes too) counted once

    counter.reset()
    assert run_target(config, second.raw).exit_code == 0
    assert counter.writes == 0


def test_kill_9_during_a_swap_then_rerun(make_sandbox: Any, tmp_path: Path) -> None:
    """150 pairs of students swap their unique ids; the run is killed with SIGKILL halfway; the rerun of the same
    input ends with the source's content, and no DELETE was sent at any point."""
    sb = make_sandbox("7.3")
    counter = RequestCounter(sb)
    log = tmp_path / "log.db"
    pairs = 150
    before = [student(row, f"U{row}") for row in range(2 * pairs)]
    after = [student(row, f"U{row + 1 if row % 2 == 0 else row - 1}") for row in range(2 * pairs)]
    assert run_target(target_config(sb, log), messages(before)).exit_code == 0
    data = tmp_path / "swap.jsonl"
    data.write_bytes(messages(after, seed=11, state={"swapped": True}))
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(target_config(sb, log, max_workers=2)))
    sb.set_faults(latency_ms=20)
    counter.reset()
    with data.open("rb") as stdin:
        proc = subprocess.Popen([TARGET, "--config", str(cfg)], stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while counter.counts["POST"] < pairs and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    assert out == b""
    time.sleep(0.5)  # what was in flight lands
    sent = counter.counts["POST"]
    assert 0 < sent < 2 * pairs, "the kill came too early or too late to test anything"
    sb.clear_faults()
    proc = subprocess.run([TARGET, "--config", str(cfg)], input=data.read_bytes(), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert json.loads(proc.stdout) == {"swapped": True}  # STATE, once everything was applied
    assert names(sb, STUDENTS, "studentUniqueId", lambda d: d["firstName"]) == {
        rec["studentUniqueId"]: rec["firstName"] for _, rec in after}
    assert counter.counts["DELETE"] == 0
    assert_log_consistent(log, sb, STUDENTS, "studentUniqueId")
    counter.reset()
    assert subprocess.run([TARGET, "--config", str(cfg)], input=data.read_bytes(), capture_output=True,
                          timeout=300).returncode == 0
    assert counter.writes == 0


# -- case 2: one natural key from two source items ------------------------------------------------------------------
def duplicate_input(pairs: int, seed: int) -> tuple[bytes, dict[str, str]]:
    """Two vendor rows per unique id, in a shuffled order; and the first name of the row that comes last."""
    records = []
    for i in range(pairs):
        for side in ("A", "B"):
            records.append(("students", {"student_id": f"{side}{i}", "studentUniqueId": f"D{i}",
                                         "firstName": f"{side}{i}", "lastSurname": "Twice", "birthDate": "2010-05-01"}))
    random.Random(seed).shuffle(records)
    # and one source item twice (its later record replaces the earlier: superseded, not a duplicate)
    records += [("students", {"student_id": "R", "studentUniqueId": "R", "firstName": name, "lastSurname": "Again",
                              "birthDate": "2010-05-01"}) for name in ("Earlier", "Later")]
    last = {rec["studentUniqueId"]: rec["firstName"] for _, rec in records}
    return singer_messages(base_records() + records, key_properties=KEYS), last


def test_one_natural_key_from_two_source_items_the_last_wins(make_sandbox: Any, tmp_path: Path) -> None:
    sb = make_sandbox("7.3")
    counter = RequestCounter(sb)
    config = target_config(sb, tmp_path / "log.db")
    data, last = duplicate_input(200, seed=1)
    run = run_target(config, data)
    assert run.exit_code == 0, run.results
    assert names(sb, STUDENTS, "studentUniqueId", lambda d: d["firstName"]) == last  # the last in input order
    st = run.resource(STUDENTS)
    assert st["duplicates"] == 200 and st["created"] == 201 and st["failed"] == 0 and st["superseded"] == 1
    assert counter.counts["POST"] == 4 + 201  # descriptors and the school, then one POST per natural key
    (example, *_) = st["duplicate_examples"]
    assert example["natural_key"]["studentUniqueId"].startswith("D") and len(example["source_keys"]) == 2
    winner = last[example["natural_key"]["studentUniqueId"]]  # the vendor row id is the first name here
    assert example["sent"] == f'students {{"student_id":"{winner}"}}'
    totals = run.totals
    assert totals["records"] == 4 + 400 + 2
    assert totals["records"] == sum(totals[k] for k in ("created", "updated", "key_changes", "deleted",
                                                        "already_deleted", "superseded", "skipped_unchanged",
                                                        "failed", "duplicates"))
    assert totals["unaccounted"] == 0

    for _ in range(2):  # the same input again: nothing flips, nothing is written
        counter.reset()
        run = run_target(config, data)
        assert run.exit_code == 0
        assert counter.writes == 0
        assert names(sb, STUDENTS, "studentUniqueId", lambda d: d["firstName"]) == last
        assert run.resource(STUDENTS)["duplicates"] == 200 and run.totals["unaccounted"] == 0
        assert run.resource(STUDENTS)["skipped_unchanged"] == 201


def test_duplicate_keys_fail_makes_them_named_failures(make_sandbox: Any, tmp_path: Path) -> None:
    sb = make_sandbox("7.3")
    data, _ = duplicate_input(20, seed=2)
    single = singer_messages([student(1, "U1")], key_properties=KEYS)
    run = run_target(target_config(sb, tmp_path / "log.db", duplicate_keys="fail"), data + single)
    assert run.exit_code == 1
    assert names(sb, STUDENTS, "studentUniqueId", lambda d: d["firstName"]) == {"U1": "Row1", "R": "Later"}
    st = run.resource(STUDENTS)
    assert st["failed"] == 40 and st["duplicates"] == 0 and st["created"] == 2 and st["superseded"] == 1
    (group,) = st["failures"]
    assert group["status"] == "duplicate" and "duplicate_keys is fail" in group["message"]
    assert run.totals["unaccounted"] == 0


# -- case 8: a key change with delete_missing -----------------------------------------------------------------------
def test_key_change_with_delete_missing_deletes_the_old_item_once(make_sandbox: Any,
                                                                  log_settings: dict[str, str]) -> None:  # noqa: F811
    sb = make_sandbox("7.3")
    counter = RequestCounter(sb)
    config = target_config(sb, "", delete_missing=True, **log_settings)

    def full_table(records: list[tuple[str, dict[str, Any]]], version: int) -> bytes:
        streams = sorted({s for s, _ in records})
        data = singer_messages(records, key_properties=KEYS, versions={s: version for s in streams})
        return data + b"".join(orjson.dumps({"type": "ACTIVATE_VERSION", "stream": s, "version": version}) + b"\n"
                               for s in streams)

    base = singer_messages(base_records())
    v1 = [student(1, "U1"), student(2, "U2"), student(3, "U3"), class_period(1, "P1"), class_period(2, "P2")]
    assert run_target(config, base + full_table(v1, 1)).exit_code == 0
    # row 2 changes its unique id (POST and DELETE), row 3 is gone from the source, class period 1 is renamed (PUT)
    v2 = [student(1, "U1"), student(2, "U2x"), class_period(1, "P1x"), class_period(2, "P2")]
    counter.reset()
    run = run_target(config, base + full_table(v2, 2))
    assert run.exit_code == 0, run.results
    assert names(sb, STUDENTS, "studentUniqueId", lambda d: d["firstName"]) == {"U1": "Row1", "U2x": "Row2"}
    assert set(names(sb, CLASS_PERIODS, "classPeriodName", lambda d: d)) == {"P1x", "P2"}
    assert counter.counts == {"POST": 1, "PUT": 1, "DELETE": 2}  # U2's old item and U3, each once
    assert counter.statuses[("DELETE", 204)] == 2
    status = dict(log_rows(log_settings, "SELECT natural_key, status FROM {p}transaction_log WHERE resource = ?",
                           (STUDENTS,)))
    assert status == {'{"studentUniqueId":"U1"}': "created", '{"studentUniqueId":"U2"}': "deleted",
                      '{"studentUniqueId":"U2x"}': "key_changed", '{"studentUniqueId":"U3"}': "deleted"}
    st = run.resource(STUDENTS)
    assert st["key_changes"] == 1 and st["old_items_deleted"] == 1 and st["missing_deleted"] == 1
    assert run.totals["unaccounted"] == 0 and run.totals["failed_all"] == 0


# -- case 7: 409 reports that name the right record ------------------------------------------------------------------
def enrollment(uid: str, entry_date: str = "2024-08-20", **extra: Any) -> tuple[str, dict[str, Any]]:
    return ("studentSchoolAssociations", {"studentReference": {"studentUniqueId": uid},
                                          "schoolReference": {"schoolId": 1}, "entryDate": entry_date,
                                          "entryGradeLevelDescriptor": f"{GRADE}#Ninth grade", **extra})


def test_a_missing_parent_is_named_after_checking_the_others_and_the_api_message_is_kept(
        make_sandbox: Any, tmp_path: Path) -> None:
    """The school and the school year were loaded by someone else (the log does not know them, the API has them):
    only the student, which the API does not have, is named; the API's own message is kept."""
    sb = make_sandbox("7.3")
    api = Api(sb)
    for stream, rec in base_records():
        path = "/ed-fi/schools" if stream == "schools" else f"/ed-fi/{stream}"
        assert api.post(path, rec).status_code == 201
    assert api.post("/ed-fi/schoolYearTypes", {"schoolYear": 2025, "currentSchoolYear": True,
                                               "schoolYearDescription": "2024-2025"}).status_code == 201
    data = singer_messages([enrollment("GHOST", schoolYearTypeReference={"schoolYear": 2025})])
    log = tmp_path / "log.db"
    run = run_target(target_config(sb, log), data)
    assert run.exit_code == 1
    (group,) = run.resource("/ed-fi/studentSchoolAssociations")["failures"]
    assert group["status"] == "409"
    assert group["message"] == "unresolved reference: not in the target: studentReference (student)"
    (said,) = group["api_messages"]
    assert "Student" in said and "does not exist" in said  # the API's words
    with sqlite3.connect(log) as db:
        (message,) = db.execute("SELECT message FROM transaction_log WHERE status = 'failed'").fetchone()
    assert 'studentReference (student {"studentUniqueId":"GHOST"})' in message
    assert "schoolReference" not in message and "schoolYearTypeReference" not in message
    assert said in message


@pytest.mark.parametrize("validate", [True, False])
def test_records_whose_parent_failed_in_this_run_fail_at_once_naming_it(validate: bool, make_sandbox: Any,
                                                                        tmp_path: Path) -> None:
    """A student that failed (invalid here, or rejected by the API without ``validate``): its enrollments are not
    sent and not deferred; each fails as a dependent of that student's record, named."""
    sb = make_sandbox("7.3")
    counter = RequestCounter(sb)
    bad = ("students", {"student_id": "ST1", "studentUniqueId": "S1", "firstName": "Bad", "lastSurname": "Date",
                        "birthDate": "31/12/2010"})
    records = [bad, student(2, "S2"), *(enrollment("S1", f"2024-08-2{i}") for i in range(3)), enrollment("S2")]
    run = run_target(target_config(sb, tmp_path / "log.db", validate=validate),
                     singer_messages(base_records() + records, key_properties=KEYS))
    assert run.exit_code == 1
    assert sb.store.count("/ed-fi/studentSchoolAssociations") == 1
    ssa = run.resource("/ed-fi/studentSchoolAssociations")
    assert ssa["failed"] == 3 and ssa["deferred"] == 0 and ssa["created"] == 1
    assert counter.counts["POST"] == 4 + (1 if validate else 2) + 1  # base, the student(s), S2's enrollment
    (group,) = ssa["failures"]
    assert group["message"] == "studentReference: the referenced student failed in this run"
    assert len(group["examples"]) == 3
    assert run.totals["unaccounted"] == 0
    with sqlite3.connect(tmp_path / "log.db") as db:
        messages = [m for (m,) in db.execute("SELECT message FROM transaction_log WHERE resource = ? AND status = "
                                             "'failed'", ("/ed-fi/studentSchoolAssociations",))]
    assert len(messages) == 3
    assert all('the referenced student {"studentUniqueId":"S1"} failed in this run (stream students, source key '
               '{"student_id":"ST1"}' in m for m in messages), messages
