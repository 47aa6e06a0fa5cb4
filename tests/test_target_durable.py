"""What target-edfi guarantees when the world is hostile: nothing is counted as written without the API's own
answer, nothing transient is dropped, rejected records are kept (dead letters), one poison record fails alone,
and bad credentials fail before any input is read. Everything runs against sandboxes over real HTTP on loopback;
hostile intermediaries are the loopback proxies of :mod:`tests.proxies`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from tests.proxies import FaultProxy
from tests.target_support import content, diff_content, run_target, target_config
from tests.test_target_bad_input import descriptor, enrollment, record, schema, school, student
from tests.test_target_txlog import log_settings  # noqa: F401 - the fixture (SQLite and PostgreSQL logs)

GRADE = "uri://ed-fi.org/GradeLevelDescriptor"
CATEGORY = "EducationOrganizationCategoryDescriptor"


def state(value: Any) -> bytes:
    return orjson.dumps({"type": "STATE", "value": value}) + b"\n"


def district(students: int, first: int = 0) -> list[bytes]:
    """Descriptors, one school, ``students`` students with an enrollment each (streams keyed by natural key)."""
    out = [schema("gradeLevelDescriptors"), schema("educationOrganizationCategoryDescriptors"), schema("schools"),
           schema("students"), schema("studentSchoolAssociations")]
    out += [record("gradeLevelDescriptors", descriptor("GradeLevelDescriptor", "Ninth grade")),
            record("educationOrganizationCategoryDescriptors", descriptor(CATEGORY, "School")),
            record("schools", school(1))]
    for i in range(first, first + students):
        out += [record("students", student(f"S{i:04d}")), record("studentSchoolAssociations", enrollment(f"S{i:04d}"))]
    return out


def nested_record_line(stream: str, rec: dict[str, Any], depth: int) -> bytes:
    """A RECORD line whose ``_ext`` is nested ``depth`` levels deep (written as text: orjson will not encode it)."""
    head = orjson.dumps({"type": "RECORD", "stream": stream, "record": rec})[:-2]  # without the closing "}}"
    return head + b',"_ext":' + b'{"x":' * depth + b"1" + b"}" * depth + b"}}\n"


# -- case 6: a poison record ------------------------------------------------------------------------------------
def test_a_poison_record_fails_alone_named_and_the_run_goes_on(make_sandbox: Any, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    sb = make_sandbox("7.3")
    lines = district(4)
    poison = nested_record_line("students", student("S9999"), 500)  # about 3 KB, 500 levels deep
    assert len(poison) < 6000
    lines.insert(6, poison)  # among the students, before the good ones
    run = run_target(target_config(sb, tmp_path / "log.db"), b"".join(lines) + state({"pos": 1}))
    assert run.states == [{"pos": 1}]  # the run finished and echoed STATE
    assert run.exit_code == 1  # one record failed (max_failures 0)
    assert run.totals["failed_all"] == 1 and run.totals["created"] == 3 + 8
    assert sb.store.count("/ed-fi/students") == 4 and sb.store.count("/ed-fi/studentSchoolAssociations") == 4
    assert sb.store.count("/ed-fi/students", ) == len(content(sb, ["/ed-fi/students"])["/ed-fi/students"])
    message = [r.getMessage() for r in caplog.records if "record not sent" in r.getMessage()]
    assert len(message) == 1
    assert "stream 'students'" in message[0] and "input line 7" in message[0]
    assert '"studentUniqueId":"S9999"' in message[0] and "nested more than 64 levels" in message[0]
    assert "Lovelace" not in message[0]  # no student values but the key


def through(proxy: FaultProxy, sb: Any, log: Path, **extra: Any) -> dict[str, Any]:
    """A target config that reaches the sandbox through the proxy (its root payload then names the proxy)."""
    root = urlsplit(sb.api_root)
    return {**target_config(sb, log, **extra), "base_url": proxy.url + root.path}


def spooled(log: Path) -> int:
    with sqlite3.connect(log) as db:
        return db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]


def logged_accepted(log: Path, resource: str) -> list[tuple]:
    with sqlite3.connect(log) as db:
        return db.execute("SELECT natural_key, edfi_id FROM transaction_log WHERE resource = ? AND status IN "
                          "('created', 'updated')", (resource,)).fetchall()


def reference_content(make_sandbox: Any, tmp_path: Path, messages: bytes) -> dict:
    """What the sandbox holds after the same input sent without any intermediary."""
    ref = make_sandbox("7.3")
    run = run_target(target_config(ref, tmp_path / "ref.db"), messages)
    assert run.exit_code == 0, run.results
    return content(ref)


# -- case 3: a 2xx that is not the API's answer -----------------------------------------------------------------
def test_a_2xx_that_is_not_the_apis_answer_is_not_counted_as_written(make_sandbox: Any, tmp_path: Path) -> None:
    """A proxy answers every enrollment POST with its ``200 text/html`` login page: no enrollment counts as written,
    each is tried ``max_tries`` times, kept in the spool, and the next run (no input at all) writes them."""
    sb = make_sandbox("7.3")
    messages = b"".join(district(20)) + state({"pos": 20})
    expected = reference_content(make_sandbox, tmp_path, messages)
    log = tmp_path / "log.db"
    with FaultProxy(sb.base_url, html=1.0, only=("/studentSchoolAssociations",)) as proxy:
        config = through(proxy, sb, log, max_tries=3, max_backoff_seconds=0.05)
        run = run_target(config, messages)
        assert sb.store.count("/ed-fi/studentSchoolAssociations") == 0
        assert proxy.faults["html"] == 20 * 3  # every try of every enrollment got the login page
        assert run.exit_code == 3, run.results  # not 0: records wait
        assert run.states == [{"pos": 20}]  # the spool is durable: STATE may be echoed
        assert run.totals["created"] == 3 + 20 and run.totals["waiting"] == 20 and run.totals["failed_all"] == 0
        assert run.totals["updated"] == 0 and run.totals["unaccounted"] == 0
        reasons = run.resource("/ed-fi/studentSchoolAssociations")["waiting_reasons"]
        assert reasons == [{"status": "200", "message": "HTTP 200 text/html, not the API's answer", "count": 20}]
        assert logged_accepted(log, "/ed-fi/studentSchoolAssociations") == []  # nothing logged as accepted
        assert all(edfi_id for _, edfi_id in logged_accepted(log, "/ed-fi/students"))
        assert spooled(log) == 20

        proxy.set(html=0.0)
        again = run_target(config, b"")  # no input: the spool is sent
    assert again.exit_code == 0, again.results
    assert again.totals["created"] == 20 and again.totals["waiting"] == 0 and again.totals["unaccounted"] == 0
    assert spooled(log) == 0
    assert diff_content(expected, content(sb)) == []


# -- case 4: exhausted retries are not a verdict ----------------------------------------------------------------
def test_exhausted_retries_keep_records_in_the_spool_and_the_next_run_sends_them(make_sandbox: Any,
                                                                                  tmp_path: Path) -> None:
    """A proxy that answers writes with HTML or 503, hangs after forwarding or drops the connection, with two tries
    per request: records whose tries all failed wait in the spool (the run
    exits 3 and says how many and why); a run with no input sends them; the API then equals the source."""
    sb = make_sandbox("7.3")
    messages = b"".join(district(60)) + state({"pos": 60})
    expected = reference_content(make_sandbox, tmp_path, messages)
    log = tmp_path / "log.db"
    with FaultProxy(sb.base_url, html=0.15, hang=0.05, drop=0.1, busy=0.15, hang_seconds=1.5, seed=5) as proxy:
        config = through(proxy, sb, log, max_tries=2, max_backoff_seconds=0.05, request_timeout=0.5, max_workers=8)
        run = run_target(config, messages)
        proxy.set(html=0.0, hang=0.0, drop=0.0, busy=0.0)
        waiting = run.totals["waiting"]
        assert waiting > 0 and all(proxy.faults[m] for m in ("html", "drop", "hang", "busy"))
        assert run.exit_code == 3 and run.states == [{"pos": 60}]
        assert spooled(log) == waiting and run.totals["failed_all"] == 0
        counted = sum(run.totals[k] for k in ("created", "updated", "skipped_unchanged", "deferred", "waiting"))
        assert counted >= run.totals["records"] and run.totals["unaccounted"] == 0
        for natural_key, edfi_id in logged_accepted(log, "/ed-fi/studentSchoolAssociations"):  # logged = there
            assert sb.store.get("/ed-fi/studentSchoolAssociations", edfi_id), natural_key
        again = run_target(config, b"")
    assert again.exit_code == 0, again.results
    assert again.totals["waiting"] == 0 and spooled(log) == 0 and again.totals["unaccounted"] == 0
    assert diff_content(expected, content(sb)) == []


# -- case 9: credentials and the API are checked before any input is read ---------------------------------------
def test_a_wrong_secret_fails_in_seconds_before_any_input_is_read(make_sandbox: Any, tmp_path: Path) -> None:
    """The upstream tap is still extracting (stdin open, nothing written yet): a wrong secret must not wait for it."""
    import subprocess
    import time

    from tests.target_support import TARGET

    sb = make_sandbox("7.3")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**target_config(sb, tmp_path / "log.db"), "client_secret": "not-the-secret-42"}))
    started = time.monotonic()
    with (tmp_path / "out").open("wb") as out_file, (tmp_path / "err").open("wb") as err_file:
        proc = subprocess.Popen([TARGET, "--config", str(config)], stdin=subprocess.PIPE, stdout=out_file,
                                stderr=err_file)
        try:
            proc.wait(timeout=30)  # stdin stays open and empty: an upstream extract that has not finished
        except subprocess.TimeoutExpired:
            pass
        finally:
            assert proc.stdin is not None
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            proc.stdin.close()
    elapsed = time.monotonic() - started
    out, err = (tmp_path / "out").read_bytes(), (tmp_path / "err").read_bytes()
    assert elapsed < 30, "the run waited for its input instead of checking the credentials first"
    assert proc.returncode == 2 and out == b""
    errors = [line for line in err.decode().splitlines() if "cannot start" in line]
    assert len(errors) == 1 and "client_secret" in errors[0] and "401" in errors[0]
    assert "not-the-secret-42" not in err.decode()
    assert not (tmp_path / "log.db").exists() or spooled(tmp_path / "log.db") == 0


# -- case 5: rejected records are kept (dead letters) -----------------------------------------------------------
def failed_listing(config: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    import subprocess

    from tests.target_support import TARGET

    cfg = tmp_path / "dead-config.json"
    cfg.write_text(json.dumps(config))
    proc = subprocess.run([TARGET, "--config", str(cfg), "--failed"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_rejected_records_are_kept_retried_when_their_parent_arrives_and_resent_on_demand(
        make_sandbox: Any, api_for: Any, tmp_path: Path, log_settings: dict[str, str]) -> None:  # noqa: F811
    """On SQLite and on PostgreSQL."""
    import subprocess

    from tests.target_support import TARGET

    sb = make_sandbox("7.3")
    config = target_config(sb, "", **log_settings)
    first = [
        *district(3),
        record("studentSchoolAssociations", enrollment("GHOST")),  # its student comes in the next run: 409
        record("studentSchoolAssociations", enrollment("LATE")),  # its student is made by someone else: 409
        record("studentSchoolAssociations", {**enrollment("S0001"), "entryDate": "2024-09-01",  # unknown value
                                             "entryGradeLevelDescriptor": f"{GRADE}#Tenth grade"}),
        record("students", student("S0009", birthDate="31/12/2010")),  # invalid here, never sent
    ]
    run = run_target(config, b"".join(first) + state({"pos": 1}))
    assert run.exit_code == 1 and run.totals["failed_all"] == 4 and run.states == [{"pos": 1}]
    assert sb.store.count("/ed-fi/studentSchoolAssociations") == 3

    listed = failed_listing(config, tmp_path)
    assert len(listed) == 4
    by_key = {json.dumps(d["key"], sort_keys=True): d for d in listed}
    ghost = by_key[json.dumps({"entryDate": "2024-08-20", "schoolId": 1, "studentUniqueId": "GHOST"}, sort_keys=True)]
    assert ghost["resource"] == "/ed-fi/studentSchoolAssociations" and ghost["status"] == 409
    assert "studentReference" in ghost["message"]
    bad = by_key[json.dumps({"studentUniqueId": "S0009"})]
    assert bad["status"] == "invalid" and "birthDate" in bad["message"]
    text = json.dumps(listed)
    assert "31/12/2010" not in text and "Lovelace" not in text and "Ada" not in text  # only natural keys

    # the next run brings the student and the descriptor value: what waited for them is sent, without its input
    second = [schema("students"), record("students", student("GHOST")), schema("gradeLevelDescriptors"),
              record("gradeLevelDescriptors", descriptor("GradeLevelDescriptor", "Tenth grade"))]
    run = run_target(config, b"".join(second))
    assert run.exit_code == 0, run.results
    assert run.totals["retried_failed"] == 2 and run.totals["created"] == 2 + 2
    assert sb.store.count("/ed-fi/studentSchoolAssociations") == 5
    assert {json.dumps(d["key"], sort_keys=True) for d in failed_listing(config, tmp_path)} == {
        json.dumps({"entryDate": "2024-08-20", "schoolId": 1, "studentUniqueId": "LATE"}, sort_keys=True),
        json.dumps({"studentUniqueId": "S0009"})}

    # someone else creates student LATE in the API: the next run finds it there and sends what waited for it
    api = api_for(sb)
    assert api.post("/ed-fi/students", student("LATE")).status_code == 201
    run = run_target(config, b"")
    assert run.exit_code == 0, run.results
    assert run.totals["retried_failed"] == 1 and run.totals["created"] == 1
    assert sb.store.count("/ed-fi/studentSchoolAssociations") == 6
    assert [d["key"] for d in failed_listing(config, tmp_path)] == [{"studentUniqueId": "S0009"}]

    # --resend-failed sends every dead letter again, without input: S0009 goes to the API, which rejects it
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    proc = subprocess.run([TARGET, "--config", str(cfg), "--resend-failed"], capture_output=True, timeout=120)
    assert proc.returncode == 1, proc.stderr.decode()[-2000:]  # S0009 is rejected again, by the API this time
    assert sb.store.count("/ed-fi/studentSchoolAssociations") == 6
    (left,) = failed_listing(config, tmp_path)
    assert left["key"] == {"studentUniqueId": "S0009"} and left["status"] == 400 and left["tries"] == 2


def test_a_lookup_without_a_response_keeps_dead_letters_and_the_run_goes_on(
        make_sandbox: Any, api_for: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Lookups by natural key get no response (a proxy drops every GET of students with a query, after forwarding
    it): the dead letter waiting for a student someone else created stays rejected, one WARNING says why (no
    student data in it), no further lookup is made that run, and a new record's 409 still names its missing
    reference. The next run, with lookups answered, finds the student and sends what waited."""
    sb = make_sandbox("7.3")
    with FaultProxy(sb.base_url, methods=("GET",), only=("/ed-fi/students?",)) as proxy:
        config = through(proxy, sb, tmp_path / "log.db", max_tries=2, max_backoff_seconds=0.05)
        first = run_target(config, b"".join([*district(1), record("studentSchoolAssociations", enrollment("LATE"))]))
        assert first.exit_code == 1 and first.totals["failed_all"] == 1
        assert api_for(sb).post("/ed-fi/students", student("LATE")).status_code == 201  # written by someone else

        proxy.set(drop=1.0)
        with caplog.at_level("WARNING"):
            run = run_target(config, schema("studentSchoolAssociations")
                             + record("studentSchoolAssociations", enrollment("GHOST")))
        assert run.exit_code == 1, run.results  # GHOST's enrollment is rejected (409); nothing crashed
        assert run.totals["retried_failed"] == 0 and run.totals["failed_all"] == 1
        # one lookup (LATE's, for its dead letter), each of its tries dropped; GHOST's reference was not looked up
        assert proxy.spoiled and all("studentUniqueId=LATE" in p for p in proxy.spoiled), proxy.spoiled
        warnings = [r.getMessage() for r in caplog.records if "cannot look items up" in r.getMessage()]
        assert len(warnings) == 1 and "no response" in warnings[0] and "LATE" not in warnings[0], warnings
        (ghost,) = run.resource("/ed-fi/studentSchoolAssociations")["failures"]
        assert ghost["message"] == "unresolved reference: not in the target: studentReference (student)", ghost
        assert {d["key"]["studentUniqueId"] for d in failed_listing(config, tmp_path)} == {"LATE", "GHOST"}

        proxy.set(drop=0.0)
        again = run_target(config, b"")  # lookups answered: LATE is found in the API, its enrollment sent
        assert again.exit_code == 0, again.results
        assert again.totals["retried_failed"] == 1 and again.totals["created"] == 1
        assert {d["key"]["studentUniqueId"] for d in failed_listing(config, tmp_path)} == {"GHOST"}
