"""The migration every district will make: ODS/API 7.3 into DMS (API v8) with ``meltano run tap-edfi target-edfi``.

A 7.3 sandbox with a seeded district is copied into an empty DMS sandbox by the project's meltano.yml; the DMS then
holds what the 7.3 holds. Two incremental runs follow, each after inserts, updates, key changes (cascading on
classPeriods and sessions) and deletes on the 7.3 side, and the two stay equal. "Equal" is by natural key and
fields; empty collections aside, which the ODS/API returns as ``[]`` and DMS does not keep (docs/dms.md, Writes).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from edfi_sandbox.server import Sandbox
from tests.tap_support import Mutator, next_day
from tests.target_support import content, diff_content, without_empty_collections
from tests.test_target_edfi_to_edfi import MELTANO, _meltano, edfi_to_edfi_env, install_edfi_plugins


def _equal(a: Sandbox, b: Sandbox) -> list[str]:
    return diff_content(without_empty_collections(content(a)), without_empty_collections(content(b)))


def _changes(sb: Sandbox, n: int) -> None:
    """Inserts, updates, key changes (studentSchoolAssociations; classPeriods and sessions cascade) and deletes
    (tests/tap_support.py ``standard_changes``, except that only descriptors no grade uses are deleted: the sandbox
    deletes a descriptor that is still in use, and the grades naming it could not be sent again)."""
    m = Mutator(sb)
    m.insert_copies("/ed-fi/students", 3, "studentUniqueId", f"m{n}")
    m.update("/ed-fi/students", 5, "firstName", lambda d: f"{d.get('firstName', 'x')}-m{n}")
    m.update("/ed-fi/staffs", 2, "firstName", lambda d: f"Staff{n}")
    m.change_key("/ed-fi/studentSchoolAssociations", 2, "entryDate", lambda d: next_day(d["entryDate"]))
    m.change_key("/ed-fi/classPeriods", 1, "classPeriodName", lambda d: f"{d['classPeriodName']}-{n}"[:60])
    m.change_key("/ed-fi/sessions", 1, "sessionName", lambda d: d["sessionName"] + f" (r{n})")
    m.delete("/ed-fi/studentSectionAttendanceEvents", 4)
    m.delete("/ed-fi/grades", 2)
    used = {g["gradeTypeDescriptor"] for g in sb.store.iter_docs("/ed-fi/grades")}
    unused = [d for d in sb.store.iter_docs("/ed-fi/gradeTypeDescriptors")
              if f"{d['namespace']}#{d['codeValue']}" not in used][:2]
    for d in unused:
        assert m.http.delete(m.url(f"/ed-fi/gradeTypeDescriptors/{d['id']}"), timeout=30).status_code == 204


@pytest.mark.skipif(MELTANO is None, reason="meltano is not installed")
def test_meltano_migration_from_ods_7_3_into_dms(tmp_path: Path) -> None:
    install_edfi_plugins()
    # 8.1 is DMS main (cursor paging); 8.0.0 takes writes through the same code (edfi_sandbox/dms_writes.py), and
    # tests/test_target_edfi_to_edfi.py replicates into both in process
    with Sandbox("7.3", seed=6) as a, Sandbox("8.1") as b:
        env = edfi_to_edfi_env(a, b, tmp_path)
        suffix = ["--state-id-suffix", uuid.uuid4().hex[:8]]
        proc = _meltano(["run", *suffix, "tap-edfi", "target-edfi"], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert b.store.count("/ed-fi/students") == a.store.count("/ed-fi/students") > 0
        assert _equal(a, b) == []
        written = b.store.change_version

        for round_no in (1, 2):
            _changes(a, round_no)
            proc = _meltano(["run", *suffix, "tap-edfi", "target-edfi"], env)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert _equal(a, b) == [], f"round {round_no}"
            assert "skipped unchanged" in proc.stderr  # incremental: the state was kept, unchanged items skipped
        assert b.store.change_version > written
