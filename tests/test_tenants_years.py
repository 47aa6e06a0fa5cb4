"""``tenant_code`` and ``api_year`` on native records (tap_edfi/slices.py): columns, records and keys of every stream.

The end-to-end run of four inherited taps into one target-postgres table set is tests/test_tenants_meltano.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest

from edfi_sandbox.server import Sandbox
from tap_edfi.slices import RawSlice
from tests.tap_support import Mutator, next_day, run_tap, tap_config

SLICE = {"tenant_code": "north", "api_year": 2025}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox("7.3", seed=6, tenant="north", context="2025") as sb:
        yield sb


def test_without_the_settings_nothing_changes(sandbox: Sandbox) -> None:
    out = run_tap(tap_config(sandbox, deletes="streams"))
    for name, msg in out.schemas.items():
        assert not {"tenant_code", "api_year"} & set(msg["schema"]["properties"]), name
        assert msg["key_properties"] == (["id", "changeVersion"] if name.endswith("_key_changes") else ["id"]), name
    assert out.records
    assert not [r for r in out.records if {"tenant_code", "api_year"} & set(r["record"])]


def test_every_stream_has_the_columns_first_and_in_its_key(sandbox: Sandbox) -> None:
    out = run_tap(tap_config(sandbox, deletes="streams", **SLICE))
    kinds = {"items": 0, "descriptors": 0, "deletes": 0, "key_changes": 0}
    for name, msg in out.schemas.items():
        props = msg["schema"]["properties"]
        assert list(props)[:2] == ["tenant_code", "api_year"], name
        assert (props["tenant_code"]["type"], props["api_year"]["type"]) == ("string", "integer"), name
        own = ["id", "changeVersion"] if name.endswith("_key_changes") else ["id"]
        assert msg["key_properties"] == ["tenant_code", "api_year", *own], name
        kind = ("deletes" if name.endswith("_deletes") else "key_changes" if name.endswith("_key_changes")
                else "descriptors" if name.endswith("Descriptors") else "items")
        kinds[kind] += 1
    assert all(kinds.values()), kinds
    assert out.records
    assert all({k: r["record"].get(k) for k in SLICE} == SLICE for r in out.records)
    docs = {d["id"]: d for d in sandbox.store.iter_docs("/ed-fi/students")}
    got = {r["id"]: r for r in out.stream_records("students")}
    assert {i: {k: v for k, v in r.items() if k not in SLICE} for i, r in got.items()} == docs

    # deletes and key changes streams carry them too
    m = Mutator(sandbox)
    assert m.delete("/ed-fi/studentSchoolAttendanceEvents", 2) == 2
    assert m.change_key("/ed-fi/studentSchoolAssociations", 1, "entryDate", lambda d: next_day(d["entryDate"])) == 1
    out2 = run_tap(tap_config(sandbox, deletes="streams", **SLICE), state=out.last_state)
    deletes = out2.stream_records("studentSchoolAttendanceEvents_deletes")
    changes = out2.stream_records("studentSchoolAssociations_key_changes")
    assert {r["id"] for r in deletes} == {i for op, _, i in m.log if op == "delete"}
    assert {r["id"] for r in changes} == {i for op, _, i in m.log if op == "key"}
    assert all({k: r[k] for k in SLICE} == SLICE for r in deletes + changes)


def test_inline_deletes_only_api_year(make_sandbox: object) -> None:
    """One setting alone is one column; the inline delete record of an item carries it."""
    sb: Sandbox = make_sandbox("6.1", seed=4, api_mode="year", school_year=2024)  # type: ignore[operator]
    config = tap_config(sb, school_year=2024, api_year=2024)
    out = run_tap(config)
    schema = out.schemas["studentSchoolAttendanceEvents"]
    assert list(schema["schema"]["properties"])[:2] == ["api_year", "id"]
    assert "tenant_code" not in schema["schema"]["properties"]
    assert schema["key_properties"] == ["api_year", "id"]
    m = Mutator(sb)
    assert m.delete("/ed-fi/studentSchoolAttendanceEvents", 2) == 2
    out2 = run_tap(config, state=out.last_state)
    tombs = [r for r in out2.stream_records("studentSchoolAttendanceEvents") if r.get("_sdc_deleted_at")]
    assert {r["id"] for r in tombs} == {i for _, _, i in m.log}
    assert all(r["api_year"] == 2024 and "tenant_code" not in r for r in tombs)


def test_records_through_the_sdk_carry_them(sandbox: Sandbox) -> None:
    """Flattening: records go through the SDK's record processing, which drops undeclared fields."""
    out = run_tap(tap_config(sandbox, resources=["studentSchoolAssociations"], flattening_enabled=True,
                             flattening_max_depth=1, **SLICE))
    rows = out.stream_records("studentSchoolAssociations")
    assert len(rows) == sum(1 for _ in sandbox.store.iter_docs("/ed-fi/studentSchoolAssociations"))
    assert all({k: r[k] for k in SLICE} == SLICE and "studentReference__studentUniqueId" in r for r in rows)
    assert out.schemas["studentSchoolAssociations"]["key_properties"] == ["tenant_code", "api_year", "id"]


def test_a_catalog_without_the_columns_in_its_keys_gets_them(sandbox: Sandbox) -> None:
    from tap_edfi.tap import TapEdFi

    """A catalog made before the settings were set (no columns, keys ``id``): the columns are added to it."""
    catalog = TapEdFi(config=tap_config(sandbox, resources=["students"])).catalog_dict
    out = run_tap(tap_config(sandbox, resources=["students"], **SLICE), catalog=catalog)
    assert out.schemas["students"]["key_properties"] == ["tenant_code", "api_year", "id"]
    assert list(out.schemas["students"]["schema"]["properties"])[:3] == ["tenant_code", "api_year", "id"]
    rows = out.stream_records("students")
    assert len(rows) == 6 and all({k: r[k] for k in SLICE} == SLICE for r in rows)


def test_no_table_versions_in_shared_tables(sandbox: Sandbox, caplog: pytest.LogCaptureFixture) -> None:
    """target-postgres applies ACTIVATE_VERSION to a whole table: it would mark the other slices' rows deleted."""
    config = tap_config(sandbox, resources=["students"], **SLICE)
    out = run_tap(config)
    state = out.last_state
    assert state is not None
    state["bookmarks"]["students"]["reconciled_at"] = 1  # a reconciliation long due
    with caplog.at_level(logging.WARNING):
        out2 = run_tap({**config, "resync": ["students"]}, state=state)
    assert not [m for m in out2.messages if m["type"] == "ACTIVATE_VERSION"]
    assert not [r for r in out2.records if "version" in r]
    assert "resync_pending" not in (out2.last_state or state)["bookmarks"]["students"]
    warning = [r.getMessage() for r in caplog.records if "cannot be reconciled" in r.getMessage()]
    assert len(warning) == 1 and "tenant_code = 'north' AND api_year = 2025" in warning[0]


def test_raw_items_get_the_columns_without_parsing() -> None:
    add = RawSlice(SLICE)
    assert orjson.loads(add(b'{"id":"a","x":{"y":1}}')) == {"id": "a", "x": {"y": 1}, **SLICE}
    assert orjson.loads(add(b"{}")) == SLICE
    assert orjson.loads(add(b'{ "id" : "a" }  ')) == {"id": "a", **SLICE}
    assert orjson.loads(add(memoryview(b'{"id":"a"}'))) == {"id": "a", **SLICE}
    # a document field of the same name gives way to the setting (the last of duplicate names wins)
    assert orjson.loads(add(b'{"id":"a","api_year":1999}'))["api_year"] == 2025
