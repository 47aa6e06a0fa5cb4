"""Bad input and bad records: each is reported (naming stream and record, with field paths) and everything else is
still sent; references that never come are deferred, retried, then reported with what is missing."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from edfi_core.dependencies import dependency_items
from tests.target_support import RequestCounter, run_target, target_config

GRADE = "uri://ed-fi.org/GradeLevelDescriptor"


def descriptor(name: str, code: str) -> dict[str, Any]:
    return {"namespace": f"uri://ed-fi.org/{name}", "codeValue": code, "shortDescription": code}


def school(school_id: int) -> dict[str, Any]:
    return {"schoolId": school_id, "nameOfInstitution": f"School {school_id}",
            "educationOrganizationCategories": [
                {"educationOrganizationCategoryDescriptor": "uri://ed-fi.org/EducationOrganizationCategoryDescriptor#School"}],
            "gradeLevels": [{"gradeLevelDescriptor": f"{GRADE}#Ninth grade"}]}


def student(uid: str, **extra: Any) -> dict[str, Any]:
    return {"studentUniqueId": uid, "firstName": "Ada", "lastSurname": "Lovelace", "birthDate": "2010-05-01", **extra}


def enrollment(uid: str, grade: str = f"{GRADE}#Ninth grade") -> dict[str, Any]:
    return {"studentReference": {"studentUniqueId": uid}, "schoolReference": {"schoolId": 1},
            "entryDate": "2024-08-20", "entryGradeLevelDescriptor": grade}


def line(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message) + b"\n"


def schema(stream: str, keys: list[str] | None = None) -> bytes:
    return line({"type": "SCHEMA", "stream": stream, "schema": {"properties": {}}, "key_properties": keys or []})


def record(stream: str, rec: dict[str, Any]) -> bytes:
    return line({"type": "RECORD", "stream": stream, "record": rec})


def good_input() -> list[bytes]:
    out = [schema("gradeLevelDescriptors"), schema("educationOrganizationCategoryDescriptors")]
    out += [record("gradeLevelDescriptors", descriptor("GradeLevelDescriptor", "Ninth grade")),
            record("educationOrganizationCategoryDescriptors",
                   descriptor("EducationOrganizationCategoryDescriptor", "School"))]
    out += [schema("students"), schema("studentSchoolAssociations")]
    for i in range(3):
        out += [record("students", student(f"S{i}")), record("studentSchoolAssociations", enrollment(f"S{i}"))]
    return out


def test_bad_input_is_reported_and_everything_else_is_sent(make_sandbox: Any, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    sb = make_sandbox("7.3")
    counter = RequestCounter(sb)
    bad = [
        b'{"type": "RECORD", "stream": "students", "record": {"studentUniqueId": "S9"\n',  # cut off
        record("schools", school(2)),  # before its SCHEMA
        record("students", student("S7", birthDate="31/12/2010", nickname="Al")),  # breaks the schema
        record("studentSchoolAssociations", enrollment("S1", grade="Ninth grade")),  # not a descriptor value
        record("studentSchoolAssociations", {**enrollment("S2"), "entryDate": "2024-09-01",
                                             "entryGradeLevelDescriptor": f"{GRADE}#Twelfth grade"}),  # unknown value
        schema("teachers"), record("teachers", {"name": "x"}), record("teachers", {"name": "y"}),  # no such resource
        record("studentSchoolAssociations", enrollment("GHOST")),  # a student that never comes
        b"not json at all\n",
    ]
    good = good_input()
    data = b"".join([*good[:4], bad[0], bad[1], schema("schools"), record("schools", school(1)), *good[4:], *bad[2:]])
    data += line({"type": "STATE", "value": {"done": True}})
    results = tmp_path / "results.json"
    with caplog.at_level(logging.INFO):
        # unknown_fields: fail (the default drops them, with a warning): here an unknown field is bad input
        run = run_target(target_config(sb, tmp_path / "log.db", results_file=str(results), unknown_fields="fail"),
                         data)

    # everything good landed
    assert sb.store.count("/ed-fi/students") == 3
    assert sb.store.count("/ed-fi/studentSchoolAssociations") == 3
    assert sb.store.count("/ed-fi/schools") == 1
    # nothing bad was sent except the dangling reference, three times (one per pass)
    assert counter.counts["POST"] == 2 + 1 + 3 + 3 + 3
    assert run.exit_code == 1  # max_failures 0
    assert run.states == [{"done": True}]  # failures are settled records: STATE still comes back

    summary = json.loads(results.read_text())
    assert summary["bad_input"]["malformed_json"] == 2
    assert summary["bad_input"]["record_without_schema"] == 1
    assert summary["unmapped_streams"] == {"teachers": 2}
    students = summary["resources"]["/ed-fi/students"]
    assert students["failed"] == 1
    assert "$.birthDate: is not a date" in students["failures"][0]["message"]
    assert "$.nickname: is not a property" in students["failures"][0]["message"]
    ssa = summary["resources"]["/ed-fi/studentSchoolAssociations"]
    assert ssa["failed"] == 3 and ssa["deferred"] == 3
    by_status = {g["status"]: g for g in ssa["failures"]}
    assert "not a descriptor value" in by_status["invalid"]["message"] or any(
        "not a descriptor value" in g["message"] for g in ssa["failures"])
    assert any("does not exist in the target API" in g["message"] for g in ssa["failures"])
    assert by_status["409"]["message"] == "unresolved reference: not in the target: studentReference (student)"
    assert by_status["409"]["examples"] == [{"entryDate": "2024-08-20", "schoolId": 1, "studentUniqueId": "GHOST"}]
    assert summary["totals"]["failed_all"] == 2 + 1 + 2 + 1 + 3

    text = caplog.text
    assert "input line 5 is not JSON" in text
    assert "RECORD of stream 'schools' before its SCHEMA" in text
    assert "stream students, record {\"studentUniqueId\":\"S7\"}: not sent: $.birthDate" in text
    assert "stream 'teachers' maps to no resource" in text
    assert 'studentReference (student {"studentUniqueId":"GHOST"})' in text  # the missing reference, named

    # a higher threshold: the same problems, exit status 0
    run = run_target(target_config(sb, tmp_path / "log2.db", max_failures=20), data)
    assert run.exit_code == 0


@pytest.fixture
def wrong_order(make_sandbox: Any) -> Iterator[tuple[Any, str]]:
    """A dependency list that puts students after their enrollments (a server with a stale order)."""
    sb = make_sandbox("7.3")
    items = [i.as_json() for i in dependency_items(sb.model)]
    for item in items:
        if item["resource"] == "/ed-fi/students":
            item["order"] = 99
    body = orjson.dumps(items)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield sb, f"http://127.0.0.1:{server.server_address[1]}/dependencies"
    server.shutdown()


def test_unresolved_references_are_deferred_to_a_later_pass(wrong_order: tuple[Any, str], tmp_path: Path) -> None:
    sb, url = wrong_order
    data = b"".join(good_input()) + b"".join(
        [schema("schools"), record("schools", school(1))])
    run = run_target(target_config(sb, tmp_path / "log.db", dependencies_url=url), data)
    assert run.exit_code == 0, run.results
    assert sb.store.count("/ed-fi/studentSchoolAssociations") == 3
    ssa = run.resource("/ed-fi/studentSchoolAssociations")
    assert ssa["deferred"] == 3 and ssa["created"] == 3 and ssa["failed"] == 0


def test_refused_credentials_stop_the_run_and_the_next_run_sends_everything(make_sandbox: Any, tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    sb = make_sandbox("7.3")
    data = b"".join(good_input()) + schema("schools") + record("schools", school(1)) + \
        line({"type": "STATE", "value": {"n": 1}})
    config = target_config(sb, tmp_path / "log.db")
    with caplog.at_level(logging.ERROR):
        run = run_target({**config, "client_secret": "wrong"}, data)
    assert run.exit_code == 2 and run.states == []  # no STATE: nothing was applied
    # the credentials are checked before any input is read (tests/test_target_durable.py, case 9)
    assert "cannot start" in caplog.text and "check client_id and client_secret" in caplog.text
    assert "wrong" not in caplog.text  # never a secret in a message
    assert sb.store.count("/ed-fi/students") == 0
    run = run_target(config, data)  # the same input again, with the right secret: everything is sent
    assert run.exit_code == 0 and run.totals["created"] == 9
    assert sb.store.count("/ed-fi/studentSchoolAssociations") == 3


def test_an_unreachable_api_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {"base_url": f"http://127.0.0.1:{port}", "client_id": "x", "client_secret": "y",
              "transaction_log": str(tmp_path / "log.db"), "max_tries": 1}
    with caplog.at_level(logging.ERROR):
        run = run_target(config, b"".join(good_input()))
    assert run.exit_code == 2
    assert f"cannot start: GET http://127.0.0.1:{port}/ failed" in caplog.text


def test_deletes_by_log_by_natural_key_gone_and_still_referenced(make_sandbox: Any, tmp_path: Path) -> None:
    """A delete finds the item by the log's Ed-Fi id, or by natural key when the log has none; 404 counts as done;
    409 (the item is still referenced) is reported with the server's message."""
    from tests.conftest import Api

    sb = make_sandbox("7.3")
    counter = RequestCounter(sb)
    config = target_config(sb, tmp_path / "log.db")
    data = b"".join(good_input()) + schema("schools") + record("schools", school(1))
    assert run_target(config, data).exit_code == 0
    api = Api(sb)
    assert api.post("/ed-fi/students", student("OTHER")).status_code == 201  # loaded by someone else
    gone = api.get("/ed-fi/studentSchoolAssociations", params={"studentUniqueId": "S2"}).json()[0]
    assert api.delete(f"/ed-fi/studentSchoolAssociations/{gone['id']}").status_code == 204  # deleted by someone else

    deleted_at = {"_sdc_deleted_at": "2025-01-01T00:00:00Z"}
    deletes = (schema("students") + schema("studentSchoolAssociations")
               + record("studentSchoolAssociations", {**enrollment("S0"), **deleted_at})  # in the log: by its id
               + record("studentSchoolAssociations", {**enrollment("S2"), **deleted_at})  # gone already: 404
               + record("students", {"studentUniqueId": "OTHER", **deleted_at})  # not in the log: by natural key
               + record("students", {"studentUniqueId": "S1", **deleted_at}))  # still enrolled: 409
    counter.reset()
    run = run_target(config, deletes)
    assert run.exit_code == 1  # one failure, max_failures 0
    assert counter.counts == {"DELETE": 4, "GET": 1}
    ssa, students = run.resource("/ed-fi/studentSchoolAssociations"), run.resource("/ed-fi/students")
    assert ssa["deleted"] == 1 and ssa["already_deleted"] == 1
    assert students["deleted"] == 1 and students["failed"] == 1
    (failure,) = students["failures"]
    assert failure["status"] == "409" and failure["message"].startswith("still referenced: ")
    assert "StudentSchoolAssociation" in failure["message"]
    assert sb.store.count("/ed-fi/studentSchoolAssociations") == 1
    assert {d["studentUniqueId"] for d in sb.store.iter_docs("/ed-fi/students")} == {"S0", "S1", "S2"}


def test_without_validate_the_api_judges_and_its_message_is_kept(make_sandbox: Any, tmp_path: Path) -> None:
    sb = make_sandbox("7.1")  # {"message": ..., "modelState": ...} error bodies
    data = b"".join(good_input()) + schema("schools") + record("schools", school(1)) + \
        record("students", student("S8", birthDate="31/12/2010"))
    run = run_target(target_config(sb, tmp_path / "log.db", validate=False), data)
    assert run.exit_code == 1
    (failure,) = run.resource("/ed-fi/students")["failures"]
    assert failure["status"] == "400" and "birthDate" in failure["message"]
    assert sb.store.count("/ed-fi/students") == 3
