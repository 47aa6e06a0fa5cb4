"""tap-edfi against the sandbox: full and incremental syncs reproduce the API exactly, every version."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edfi_sandbox.server import Sandbox
from tests.tap_support import (
    ODS_VERSIONS,
    VERSIONS,
    Warehouse,
    assert_matches,
    run_tap,
    standard_changes,
    tap_config,
)

STUDENTS = 60


@pytest.fixture(params=VERSIONS)
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    with Sandbox(request.param, seed=STUDENTS) as sb:
        yield sb


def test_full_then_incremental_runs_match_the_api(sandbox: Sandbox) -> None:
    # small pages and windows so that every run has many windows and pages
    config = tap_config(sandbox, page_size=40, max_window_rows=400)
    wh = Warehouse()
    out = run_tap(config)
    wh.apply(out)
    assert_matches(wh, sandbox)
    assert out.last_state is not None
    newest = sandbox.store.change_version
    bookmarks = out.last_state["bookmarks"]
    assert bookmarks["students"]["change_version"] == newest
    assert bookmarks["students"]["deletes_change_version"] == newest

    state = out.last_state
    for round_no in (1, 2):
        mutator = standard_changes(sandbox, round_no)
        out = run_tap(config, state=state)
        wh.apply(out)
        assert_matches(wh, sandbox)
        state = out.last_state
        assert state["bookmarks"]["students"]["change_version"] == sandbox.store.change_version
        deleted = {i for kind, _, i in mutator.log if kind == "delete"}
        tombstones = {r["id"] for r in out.records if r["record"].get("_sdc_deleted_at")
                      for r in [r["record"]]}
        assert deleted <= tombstones
        # an incremental run reads the changes, not the district
        assert len(out.records) < 2000

    # nothing new: the last change_version_lookback versions are read once more (writes that committed late),
    # the same items again; after that no data request at all (the bound equals every bookmark)
    out = run_tap(config, state=state)
    wh.apply(out)
    assert_matches(wh, sandbox)
    before = sandbox.app.requests_by_area.get("data", 0)
    out = run_tap(config, state=out.last_state)
    assert out.records == []
    assert sandbox.app.requests_by_area.get("data", 0) == before


def test_key_changes_and_deletes_streams(sandbox: Sandbox) -> None:
    config = tap_config(sandbox, deletes="streams", page_size=100)
    wh = Warehouse()
    out = run_tap(config)
    wh.apply(out)
    assert_matches(wh, sandbox)
    assert "students_deletes" in out.schemas
    mutator = standard_changes(sandbox, 1)
    out2 = run_tap(config, state=out.last_state)
    wh.apply(out2)
    assert_matches(wh, sandbox)
    deleted = {(p, i) for kind, p, i in mutator.log if kind == "delete"}
    got = {r["id"] for r in out2.stream_records("studentSectionAttendanceEvents_deletes")}
    assert {i for p, i in deleted if p.endswith("studentSectionAttendanceEvents")} == got
    keyed = {i for kind, p, i in mutator.log if kind == "key" and p.endswith("studentSchoolAssociations")}
    changes = out2.stream_records("studentSchoolAssociations_key_changes")
    if sandbox.config.api_version >= "6":
        assert keyed == {c["id"] for c in changes}
        for change in changes:
            assert change["oldKeyValues"]["entryDate"] != change["newKeyValues"]["entryDate"]
    else:  # 5.3 has no /keyChanges: the stream exists but stays empty
        assert changes == []
        deletes = out2.stream_records("grades_deletes")
        assert deletes and all("keyValues" not in d for d in deletes)


@pytest.mark.parametrize("version", ["7.3"])
@pytest.mark.parametrize("paging", ["offset", "cursor"])
def test_paging_modes_agree(version: str, paging: str) -> None:
    with Sandbox(version, seed=40) as sb:
        config = tap_config(sb, paging=paging, page_size=30, max_window_rows=300, max_workers=4)
        wh = Warehouse().apply(run_tap(config))
        assert_matches(wh, sb)


# not on DMS: v8 ignores Use-Snapshot (test_dms_snapshots_are_never_trusted in test_tap_dms.py)
@pytest.mark.parametrize("version", ODS_VERSIONS)
def test_snapshot_reads_are_isolated(version: str) -> None:
    with Sandbox(version, seed=30) as sb:
        with pytest.raises(Exception, match="no snapshot"):
            run_tap(tap_config(sb, use_snapshot="always"))
        sb.take_snapshot()
        expected = {doc["id"] for doc in sb.store.iter_docs("/ed-fi/students")}
        standard_changes(sb, 1)  # after the snapshot: not in this run
        config = tap_config(sb, use_snapshot="always", page_size=20)
        out = run_tap(config)
        assert {r["id"] for r in out.stream_records("students")} == expected
        # the next run (live data, no snapshot) picks up what changed after the snapshot
        sb.store.drop_snapshots()
        wh = Warehouse().apply(out)
        wh.apply(run_tap(tap_config(sb, page_size=20), state=out.last_state))
        assert_matches(wh, sb)


def test_filters_and_descriptors() -> None:
    with Sandbox("7.3", seed=20) as sb:
        out = run_tap(tap_config(sb, resources=["students", "ed-fi/schools", "*Descriptors"],
                                 include_descriptors=False, key_changes=False))
        assert set(out.schemas) == {"students", "schools"}
        out = run_tap(tap_config(sb, resources=["sexDescriptors"], deletes="off"))
        assert set(out.schemas) == {"sexDescriptors"}
        assert "_sdc_deleted_at" not in out.schemas["sexDescriptors"]["schema"]["properties"]


def test_profile_reads_through_the_readable_content_type() -> None:
    with Sandbox("7.3", seed=10, profiles={"Directory": {"/ed-fi/students": ["firstName", "lastSurname"]}}) as sb:
        out = run_tap(tap_config(sb, resources=["students"], profile="Directory"))
        records = out.stream_records("students")
        assert len(records) == 10
        fields = {k for r in records for k in r if not k.startswith("_sdc")}
        assert fields == {"id", "studentUniqueId", "firstName", "lastSurname", "_etag", "_lastModifiedDate"}
        with pytest.raises(Exception, match="406"):
            run_tap(tap_config(sb, resources=["students"], profile="Unknown"))
