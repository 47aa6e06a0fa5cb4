"""tap-edfi and target-edfi as scoped clients (relationship-based authorization, docs/authorization.md)."""

from __future__ import annotations

import pytest

from tests.tap_support import Warehouse, run_tap, tap_config
from tests.target_support import RequestCounter, run_target, singer_messages, target_config
from tests.test_sandbox_authorization import (
    LEA_CLIENT,
    OTHER_SCHOOL,
    SCHOOL,
    SCHOOL_CLIENT,
    ClientApi,
    enrollment,
    other_district,
    student,
)

READ = ["students", "studentSchoolAssociations", "contacts", "studentContactAssociations", "grades",
        "staffs", "schools", "sections"]


def visible(api: ClientApi, path: str) -> dict[str, dict]:
    """Every item the client lists, by id (offset paging)."""
    out: dict[str, dict] = {}
    offset = 0
    while True:
        page = api.get(path, offset=offset, limit=500)
        assert page.status_code == 200, page.text
        out.update({item["id"]: item for item in page.json()})
        if len(page.json()) < 500:
            return out
        offset += 500


@pytest.mark.parametrize("version,paging,snapshot", [
    ("6.1", "offset", "never"),
    ("7.3", "offset", "never"),
    ("7.3", "cursor", "never"),
    ("7.3", "cursor", "always"),
    ("5.3", "offset", "always"),
])
def test_tap_reads_exactly_what_a_school_client_may_see(make_sandbox, version, paging, snapshot) -> None:
    sb = make_sandbox(version, seed=30, clients=(SCHOOL_CLIENT,))
    admin = ClientApi(sb)
    other_district(admin)
    # deletes: one of the school's students (enrollment first), one never enrolled
    for uid, enrolled in (("LEAVER", True), ("LONER", False)):
        assert admin.post("/ed-fi/students", student(uid)).status_code == 201
        if enrolled:
            assert admin.post("/ed-fi/studentSchoolAssociations", enrollment(uid, SCHOOL)).status_code == 201
            ssa = admin.get("/ed-fi/studentSchoolAssociations", studentUniqueId=uid).json()[0]["id"]
            assert admin.delete(f"/ed-fi/studentSchoolAssociations/{ssa}").status_code == 204
        sid = admin.get("/ed-fi/students", studentUniqueId=uid).json()[0]["id"]
        assert admin.delete(f"/ed-fi/students/{sid}").status_code == 204
    school = ClientApi(sb, "school-app")
    if snapshot == "always":
        sb.take_snapshot()

    config = tap_config(sb, client_id="school-app", client_secret="school-secret", paging=paging,
                        use_snapshot=snapshot, include_descriptors=False, deletes="streams", resources=READ)
    out = run_tap(config)
    wh = Warehouse().apply(out)
    for name in READ:
        stream = f"ed_fi_{name}" if f"ed_fi_{name}" in wh.tables else name
        got = wh.live(stream)
        expected = visible(school, f"/ed-fi/{name}")
        assert set(got) == set(expected), (name, len(got), len(expected))
        assert len(out.stream_records(stream)) == len(expected), name  # nothing twice, nothing missing
    students = {r["studentUniqueId"] for r in wh.live(_stream(wh, "students")).values()}
    enrolled = {a["studentReference"]["studentUniqueId"] for a in visible(admin, "/ed-fi/studentSchoolAssociations")
                .values() if a["schoolReference"]["schoolId"] == SCHOOL}
    assert students == enrolled and len(students) == 30 and not students & {"OTHER0", "OTHER1", "OTHER2"}
    assert len(visible(admin, "/ed-fi/students")) == 33
    assert not any(r["schoolReference"]["schoolId"] == OTHER_SCHOOL
                   for r in wh.live(_stream(wh, "studentSchoolAssociations")).values())
    assert len(wh.live(_stream(wh, "staffs"))) == 0  # no employment/assignment associations in the built-in model
    assert len(wh.live(_stream(wh, "schools"))) == 2  # education organizations: no further authorization
    if version >= "6":  # 5.3 deletes carry no key values; the school's delete is still the only one it sees
        deletes = [r for r in out.stream_records(_stream(wh, "students") + "_deletes")]
        assert [d["keyValues"]["studentUniqueId"] for d in deletes] == ["LEAVER"]
    else:
        assert len(out.stream_records(_stream(wh, "students") + "_deletes")) == 1


def _stream(wh: Warehouse, name: str) -> str:
    return f"ed_fi_{name}" if f"ed_fi_{name}" in wh.tables else name


@pytest.mark.parametrize("version", ["6.1", "7.3"])
def test_target_loads_a_district_as_its_client_in_authorization_order(make_sandbox, tmp_path, version) -> None:
    """A District Hosted SIS Vendor client of the LEA: new students and their enrollments land; a student that
    exists already (no enrollment yet) is updated after its enrollment (the Update entry of the authorization
    order); what lies outside the district is refused with the API's 403 and not sent again."""
    sb = make_sandbox(version, seed=30, clients=(LEA_CLIENT,))
    admin = ClientApi(sb)
    other_district(admin)
    assert admin.post("/ed-fi/students", student("EXIST1")).status_code == 201  # created by someone, no enrollment
    records = [("students", {**student(uid), "firstName": f"Loaded{uid}"})
               for uid in ("NEWA", "NEWB", "EXIST1", "OUTX", "OTHER0")]
    records += [("studentSchoolAssociations", enrollment(uid, SCHOOL)) for uid in ("NEWA", "NEWB", "EXIST1")]
    records += [("studentSchoolAssociations", enrollment("OUTX", OTHER_SCHOOL))]
    counter = RequestCounter(sb)
    run = run_target(target_config(sb, tmp_path / "log.db", client_id="lea-app", client_secret="lea-secret"),
                     singer_messages(records))
    assert run.exit_code != 0  # two records were refused: not a silent success

    lea = ClientApi(sb, "lea-app")
    by_uid = {s["studentUniqueId"]: s for s in visible(admin, "/ed-fi/students").values()}
    for uid in ("NEWA", "NEWB", "EXIST1", "OUTX"):  # creating a student needs no relationship
        assert by_uid[uid]["firstName"] == f"Loaded{uid}", uid
    assert by_uid["OTHER0"]["firstName"] == "Test"  # another district's student: refused
    enrolled = {(a["studentReference"]["studentUniqueId"], a["schoolReference"]["schoolId"])
                for a in visible(admin, "/ed-fi/studentSchoolAssociations").values()}
    assert {("NEWA", SCHOOL), ("NEWB", SCHOOL), ("EXIST1", SCHOOL)} <= enrolled
    assert ("OUTX", OTHER_SCHOOL) not in enrolled
    # everything the client may write is there, as it reads it
    mine = {s["studentUniqueId"] for s in visible(lea, "/ed-fi/students").values()}
    assert {"NEWA", "NEWB", "EXIST1"} <= mine and "OUTX" not in mine and len(mine) == 33

    students = run.resource("/ed-fi/students")
    ssas = run.resource("/ed-fi/studentSchoolAssociations")
    assert students["created"] == 3 and students["updated"] == 1 and students["failed"] == 1, students
    assert ssas["created"] == 3 and ssas["failed"] == 1, ssas
    messages = [g["message"] for g in students["failures"] + ssas["failures"]]
    if version >= "7.2":
        assert any("Hint: You may need to create a corresponding 'StudentSchoolAssociation' item." in m
                   and "No relationships have been established between the caller's education organization id claim"
                   " (867530)" in m for m in messages), messages
        assert any("(867530) and the resource item's 'SchoolId' value." in m for m in messages), messages
    else:
        assert "Authorization denied. No relationships have been established between the caller's education" \
               " organization id claim (867530) and the resource item's 'StudentUniqueId' value." in messages
        assert "Authorization denied. No relationships have been established between the caller's education" \
               " organization id claim (867530) and the resource item's 'SchoolId' value." in messages
    # 403s are not retried: the other district's enrollment once; the people's updates once more after their
    # enrollments (EXIST1 then succeeds, OTHER0 is refused again)
    assert counter.statuses[("POST", 403)] == 4, counter.statuses
    assert counter.counts["POST"] == 5 + 1 + 1 + 4, counter.counts


def test_tap_without_read_changes_on_7x_says_so(make_sandbox, caplog) -> None:
    """A 7.x SIS Vendor key has no ReadChanges: the tap reads the items and skips deletes and key changes with a
    warning that quotes the API's 403 (not silently)."""
    sb = make_sandbox("7.3", seed=30, clients=(f"plain:p:SIS Vendor:{SCHOOL}",))
    with caplog.at_level("WARNING"):
        out = run_tap(tap_config(sb, client_id="plain", client_secret="p", deletes="streams",
                                 include_descriptors=False, resources=["students"]))
    assert len(out.stream_records(_stream(Warehouse().apply(out), "students"))) == 30
    assert "must grant permission of the 'http://ed-fi.org/odsapi/actions/readChanges' action" in caplog.text
    assert "not authorized" in caplog.text
