"""What target-edfi guarantees when the world is hostile: nothing is counted as written without the API's own
answer, nothing transient is dropped, rejected records are kept (dead letters), one poison record fails alone,
and bad credentials fail before any input is read. Everything runs against sandboxes over real HTTP on loopback;
hostile intermediaries are the loopback proxies of :mod:`tests.proxies`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.target_support import content, run_target, target_config
from tests.test_target_bad_input import descriptor, enrollment, record, schema, school, student

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
