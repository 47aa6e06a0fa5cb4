"""target-edfi for a vendor: a district's data from a SIS export, shuffled, loaded, re-loaded, changed.

The vendor's data set is the content of a seeded sandbox (A): descriptors, the district, schools, sessions,
courses, sections, staff, students, enrollments, section associations, attendance and grades. It arrives the way
taps produce it: streams named in every form (``students``, ``student_school_associations``,
``public-local_education_agencies``, ``ed-fi/sections``, a ``resource_map`` for ``attendance``), some with the
vendor's own row ids as key properties, one with flat string columns (tap-csv), all records interleaved in a random
order. Target-edfi loads it into an empty sandbox (B) over HTTP; B must then hold exactly what A holds.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from edfi_core.openapi import without_server_fields
from edfi_sandbox.server import Sandbox
from tests.tap_support import Mutator, next_day
from tests.target_support import (
    RequestCounter,
    content,
    diff_content,
    payload_of,
    run_target,
    singer_messages,
    target_config,
)

SEED = 4
#: resource -> stream name as the vendor's taps name it (others: the resource name)
STREAMS = {
    "/ed-fi/studentSchoolAssociations": "student_school_associations",
    "/ed-fi/localEducationAgencies": "public-local_education_agencies",
    "/ed-fi/sections": "ed-fi/sections",
    "/ed-fi/studentSchoolAttendanceEvents": "attendance",
    "/ed-fi/students": "students",
}
RESOURCE_MAP = {"attendance": "ed-fi/studentSchoolAttendanceEvents"}
#: streams keyed by the vendor's own row ids (a column that is not an Ed-Fi field)
KEYED = {"students": "student_id", "student_school_associations": "enrollment_id", "attendance": "attendance_id",
         "ed-fi/sections": "section_id"}


class Vendor:
    """The vendor's export of what sandbox A holds, with stable vendor row ids."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.ids: dict[str, str] = {}  # Ed-Fi id in A -> vendor row id

    def vendor_id(self, edfi_id: str, stream: str) -> str:
        if edfi_id not in self.ids:
            self.ids[edfi_id] = f"{stream[:3].upper()}-{len(self.ids) + 1:05d}"
        return self.ids[edfi_id]

    def records(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for res in self.sb.model:
            stream = STREAMS.get(res.path, res.name)
            for doc in self.sb.store.iter_docs(res.path):
                record = payload_of(res, doc)
                if stream in KEYED:
                    record[KEYED[stream]] = self.vendor_id(doc["id"], stream)
                if stream == "students":  # tap-csv: every column a string, dates as timestamps
                    record = {k: (f"{v}T00:00:00+00:00" if k == "birthDate" else str(v)) for k, v in record.items()}
                out.append((stream, record))
        return out

    def messages(self, extra: list[tuple[str, dict[str, Any]]] = (), seed: int = 7) -> bytes:
        records = self.records() + list(extra)
        random.Random(seed).shuffle(records)
        data = singer_messages(records, key_properties={s: [k] for s, k in KEYED.items()})
        # STATE messages along the way: only the last comes back, after everything was applied
        lines = data.splitlines()
        third = len(lines) // 3
        states = [orjson.dumps({"type": "STATE", "value": {"position": n}}) for n in (1, 2, 3)]
        lines = [*lines[:third], states[0], *lines[third:2 * third], states[1], *lines[2 * third:], states[2]]
        return b"\n".join(lines) + b"\n"


@pytest.fixture
def sites(make_sandbox: Any) -> tuple[Sandbox, Sandbox, RequestCounter]:
    a = make_sandbox("7.3", seed=SEED)
    b = make_sandbox("7.3")
    return a, b, RequestCounter(b)


def test_vendor_load_rerun_change_delete_and_key_changes(sites: tuple[Sandbox, Sandbox, RequestCounter],
                                                          tmp_path: Path) -> None:
    a, b, counter = sites
    vendor = Vendor(a)
    config = target_config(b, tmp_path / "log.db", resource_map=RESOURCE_MAP, results_file=str(tmp_path / "r.json"))
    total = sum(a.store.count(res.path) for res in a.model)

    # 1. everything, shuffled: loads completely, in dependency order, nothing deferred
    run = run_target(config, vendor.messages())
    assert run.exit_code == 0, run.results
    assert diff_content(content(a), content(b)) == []
    assert run.totals["created"] == total and run.totals["failed_all"] == 0 and run.totals["deferred"] == 0
    assert counter.counts == {"POST": total}
    assert run.states == [{"position": 3}]  # held back until the end, then only the latest
    assert orjson.loads((tmp_path / "r.json").read_bytes())["totals"]["created"] == total

    # 2. the same input again: not a single request for unchanged records
    counter.reset()
    run = run_target(config, vendor.messages(seed=8))
    assert run.exit_code == 0
    assert counter.counts == {}
    assert run.totals["skipped_unchanged"] == total and run.totals["requests"] == 0

    # 3. the source changes: updates, deletes, a key change on a key-updatable resource (PUT) and one on a
    #    resource that is not (the vendor corrected an attendance date on the same row: POST the new, DELETE the old)
    m = Mutator(a)
    assert m.update("/ed-fi/students", 3, "firstName", lambda d: d["firstName"] + "-changed") == 3
    assert m.update("/ed-fi/sections", 2, "sectionName", lambda d: d["sectionName"] + " (B)") == 2
    gone = {path: m.docs(path)[:n] for path, n in (("/ed-fi/studentSectionAttendanceEvents", 2), ("/ed-fi/grades", 1))}
    deletes = []
    for path, docs in gone.items():
        for doc in docs:
            assert m.http.delete(m.url(f"{path}/{doc['id']}"), timeout=30).status_code == 204
            record = {**without_server_fields(doc), "_sdc_deleted_at": "2025-01-01T00:00:00Z"}
            deletes.append((path.rsplit("/", 1)[-1], record))
    assert m.change_key("/ed-fi/studentSchoolAssociations", 1, "entryDate", lambda d: next_day(d["entryDate"])) == 1
    event = m.docs("/ed-fi/studentSchoolAttendanceEvents")[0]
    assert m.http.delete(m.url(f"/ed-fi/studentSchoolAttendanceEvents/{event['id']}"), timeout=30).status_code == 204
    moved = {**without_server_fields(event), "eventDate": "2031-03-03"}  # a date nobody else has
    resp = m.http.post(m.url("/ed-fi/studentSchoolAttendanceEvents"), json=moved, timeout=30)
    assert resp.status_code == 201
    vendor.ids[resp.headers["Location"].rsplit("/", 1)[-1]] = vendor.ids[event["id"]]  # same vendor row

    counter.reset()
    run = run_target(config, vendor.messages(deletes, seed=9))
    assert run.exit_code == 0, run.results
    assert diff_content(content(a), content(b)) == []
    assert counter.counts == {"POST": 3 + 2 + 1, "PUT": 1, "DELETE": 2 + 1 + 1}
    assert run.totals["key_changes"] == 2 and run.totals["deleted"] == 3 and run.totals["updated"] == 5
    # the old item of the POST-and-DELETE key change is not a record of the input: counted apart
    assert run.totals["old_items_deleted"] == 1 and run.totals["unaccounted"] == 0


def test_full_table_streams_delete_what_the_source_no_longer_has(sites: tuple[Sandbox, Sandbox, RequestCounter],
                                                                 tmp_path: Path) -> None:
    """``delete_missing``: after ACTIVATE_VERSION of a full-table stream, what this target sent for that stream
    earlier and the new version lacks is deleted (hard deletes in the source need no triggers)."""
    a, b, counter = sites
    vendor = Vendor(a)

    def full_table(records: list[tuple[str, dict[str, Any]]], version: int) -> bytes:
        data = singer_messages(records, key_properties={s: [k] for s, k in KEYED.items()},
                               versions={s: version for s, _ in records})
        streams = sorted({s for s, _ in records})
        activate = b"".join(orjson.dumps({"type": "ACTIVATE_VERSION", "stream": s, "version": version}) + b"\n"
                            for s in streams)
        return data + activate

    config = target_config(b, tmp_path / "log.db", resource_map=RESOURCE_MAP, delete_missing=True)
    records = vendor.records()
    assert run_target(config, full_table(records, 1)).exit_code == 0
    assert diff_content(content(a), content(b)) == []

    # the source lost some attendance and grades (hard deletes): the next full extract simply lacks them
    dropped = {"attendance": 3, "grades": 2}
    kept, removed = [], []
    for stream, record in records:
        if dropped.get(stream, 0) > 0:
            dropped[stream] -= 1
            removed.append((stream, record))
        else:
            kept.append((stream, record))
    counter.reset()
    run = run_target({**config, "delete_missing": False}, full_table(kept, 2))
    assert counter.counts == {} and run.totals["deleted"] == 0  # without delete_missing nothing is deleted
    run = run_target(config, full_table(kept, 3))
    assert run.exit_code == 0, run.results
    assert counter.counts == {"DELETE": 5}
    expected = content(a)
    for stream, record in removed:
        path = "/ed-fi/studentSchoolAttendanceEvents" if stream == "attendance" else f"/ed-fi/{stream}"
        res = a.model.get(path)
        from edfi_core.keys import canonical

        expected[path].pop(canonical(res.natural_key(record)).decode())
    assert diff_content(expected, content(b)) == []


# -- flat vendor sources: snake_case key columns, columns that are not Ed-Fi fields, views without keys ----------
STUDENTS = [{"studentUniqueId": f"90{n:04d}", "firstName": f"First{n}", "lastSurname": f"Last{n}",
             "birthDate": f"2010-0{1 + n % 9}-1{n % 10}"} for n in range(1, 7)]


def csv_row(student: dict[str, Any]) -> dict[str, str]:
    """A student as tap-csv reads it: snake_case headers, every cell a string."""
    return {"student_unique_id": student["studentUniqueId"], "first_name": student["firstName"],
            "last_surname": student["lastSurname"], "birth_date": student["birthDate"]}


def students_in(sb: Sandbox) -> dict[str, dict[str, Any]]:
    return content(sb, {"/ed-fi/students"})["/ed-fi/students"]


def expected_students(students: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    from edfi_core.keys import canonical

    return {canonical({"studentUniqueId": s["studentUniqueId"]}).decode(): s for s in students}


def test_a_snake_case_key_column_is_renamed_not_dropped(make_sandbox: Any, tmp_path: Path) -> None:
    """tap-csv with ``keys: [student_unique_id]``: the key column is an Ed-Fi field under another name; it is
    renamed like every other column (it used to be dropped first, and every record failed
    ``$.studentUniqueId: is required``)."""
    b = make_sandbox("7.3")
    data = singer_messages([("students", csv_row(s)) for s in STUDENTS],
                           key_properties={"students": ["student_unique_id"]})
    run = run_target(target_config(b, tmp_path / "log.db"), data)
    assert run.exit_code == 0, run.results
    assert run.totals["created"] == len(STUDENTS) and run.totals["failed_all"] == 0
    assert students_in(b) == expected_students(STUDENTS)


def test_columns_that_are_not_ed_fi_fields_are_dropped_with_one_warning_per_stream_and_field(
        make_sandbox: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``unknown_fields`` (default ``drop``): a view's own columns are left out, one warning per stream and field
    (never the values); ``fail`` fails each record, naming the field and the setting."""
    b = make_sandbox("7.3")
    rows = [{**csv_row(s), "sis_id": f"S{n}", "updated_at": f"2025-01-0{n}T10:00:00Z",
             "studentReference": {"studentUniqueId": s["studentUniqueId"]}}
            for n, s in enumerate(STUDENTS, 1)]
    data = singer_messages([("students", r) for r in rows])

    caplog.set_level("WARNING", logger="target_edfi")
    run = run_target(target_config(b, tmp_path / "fail.db", unknown_fields="fail", max_failures=-1), data)
    assert run.totals["created"] == 0 and run.totals["failed"] == len(STUDENTS)
    hints = [r.getMessage() for r in caplog.records if "unknown_fields: drop" in r.getMessage()]
    assert len(hints) == 1 and "$.sis_id" in hints[0] and "$.updated_at" in hints[0], hints
    assert students_in(b) == {}

    caplog.clear()
    run = run_target(target_config(b, tmp_path / "drop.db"), data)  # the default
    assert run.exit_code == 0, run.results
    assert run.totals["created"] == len(STUDENTS) and run.totals["failed_all"] == 0
    assert students_in(b) == expected_students(STUDENTS)
    warnings = sorted(r.getMessage() for r in caplog.records if "is not a property of" in r.getMessage())
    assert len(warnings) == 3, warnings  # sis_id, updated_at, studentReference: once each, not once per record
    assert all("students" in w and "S1" not in w and "2025" not in w for w in warnings)
    assert any("$.sis_id" in w for w in warnings) and any("$.studentReference" in w for w in warnings)


def test_source_keys_name_the_source_key_of_a_stream_the_tap_gives_none(make_sandbox: Any, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A SQL view has no key properties: ``source_keys`` names its row id column (by stream name or by the table
    part of ``<schema>-<table>``). The column is not sent, and a changed natural key of the same row is a key change:
    the old student goes (students are not key-updatable: POST the new, DELETE the old)."""
    b = make_sandbox("7.3")
    counter = RequestCounter(b)
    config = target_config(b, tmp_path / "log.db", source_keys={"students": ["sis_id"]})

    def view(students: list[dict[str, Any]]) -> bytes:
        return singer_messages([("sis_edfi-students", {**csv_row(s), "sis_id": f"ROW-{n}"})
                                for n, s in enumerate(students, 1)])

    caplog.set_level("WARNING", logger="target_edfi")
    run = run_target(config, view(STUDENTS))
    assert run.exit_code == 0, run.results
    assert students_in(b) == expected_students(STUDENTS)
    assert not [r for r in caplog.records if "sis_id" in r.getMessage()]  # a source key, not an unknown field

    changed = [dict(s) for s in STUDENTS]
    changed[0]["studentUniqueId"] = "990001"  # the SIS corrected a student number on row ROW-1
    counter.reset()
    run = run_target(config, view(changed))
    assert run.exit_code == 0, run.results
    assert students_in(b) == expected_students(changed)
    assert counter.counts == {"POST": 1, "DELETE": 1}
    assert run.totals["key_changes"] == 1


def test_delete_missing_without_activate_version_says_so_per_stream(make_sandbox: Any, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """``delete_missing`` with a tap that never sends ACTIVATE_VERSION: a warning per stream at the end, naming the
    tap setting that makes singer-sdk taps send it; none for a stream that got one."""
    b = make_sandbox("7.3")
    config = target_config(b, tmp_path / "log.db", delete_missing=True)
    caplog.set_level("WARNING", logger="target_edfi")
    run = run_target(config, singer_messages([("students", csv_row(s)) for s in STUDENTS]))
    assert run.exit_code == 0, run.results
    warned = [r.getMessage() for r in caplog.records if "emit_activate_version_messages" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("stream students ended without ACTIVATE_VERSION"), warned

    caplog.clear()
    versioned = singer_messages([("students", csv_row(s)) for s in STUDENTS], versions={"students": 5})
    versioned += orjson.dumps({"type": "ACTIVATE_VERSION", "stream": "students", "version": 5}) + b"\n"
    run = run_target(config, versioned)
    assert run.exit_code == 0, run.results
    assert not [r for r in caplog.records if "emit_activate_version_messages" in r.getMessage()]
    assert students_in(b) == expected_students(STUDENTS)
