"""tap-edfi on the Ed-Fi Data Management Service (8.0 = DMS v8.0.0, 8.1 = DMS main): URLs from discovery,
capabilities from the OpenAPI documents and answers, the partitions-first rule, and the same streams and STATE as
on an ODS/API (the full, incremental, churn and kill -9 suites run on 8.0 and 8.1 too: test_tap_sync.py,
test_tap_resilience.py)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from edfi_sandbox.server import Sandbox
from tap_edfi.sync import SettingsError
from tests.tap_support import Warehouse, assert_matches, run_tap, standard_changes, tap_config


def record_reads(sb: Sandbox) -> list[tuple[str, dict[str, str], list[str]]]:
    """(kind, query, tokens answered) of every collection read and /partitions request the sandbox answers."""
    seen: list[tuple[str, dict[str, str], list[str]]] = []
    app: Any = sb.app
    collection, change_query = app._get_collection, app._change_query

    def get_collection(res, req, snapshot):
        query = dict(req.query)
        reply = collection(res, req, snapshot)
        token = reply.headers.get("Next-Page-Token")
        seen.append(("items", query, [token] if token else []))
        return reply

    def changes(res, sub, req, snapshot):
        query = dict(req.query)
        reply = change_query(res, sub, req, snapshot)
        tokens = orjson.loads(reply.body)["pageTokens"] if sub == "partitions" else []
        seen.append((sub, query, tokens))
        return reply

    app._get_collection, app._change_query = get_collection, changes
    return seen


@pytest.mark.parametrize("version", ["8.0", "8.1"])
def test_capabilities_come_from_the_documents(version: str) -> None:
    with Sandbox(version, seed=10) as sb:
        out = run_tap(tap_config(sb, resources=["students"]))
        run = out.tap.run_context
        # 8.1's documents show /partitions: cursor paging; 8.0's do not: reverse offset paging
        assert run.paging == ("cursor" if version == "8.1" else "reverse")
        assert run.snapshot_headers == {}  # DMS ignores Use-Snapshot: never trusted
        assert out.tap.client.info.is_dms
        assert out.tap.client.urls.data == sb.data_url  # .../data, from discovery
        if version == "8.0":
            with pytest.raises(SettingsError, match="no /partitions"):
                run_tap(tap_config(sb, resources=["students"], paging="cursor"))


@pytest.mark.parametrize("version", ["8.0", "8.1"])
def test_dms_snapshots_are_never_trusted(version: str, caplog: pytest.LogCaptureFixture) -> None:
    """A DMS answers Use-Snapshot: true with live data; use_snapshot always must refuse, not read unisolated."""
    with Sandbox(version, seed=5) as sb:
        with pytest.raises(SettingsError, match="no snapshot"):
            run_tap(tap_config(sb, use_snapshot="always"))
        with caplog.at_level(logging.INFO):
            out = run_tap(tap_config(sb, resources=["students"]))
        assert len(out.stream_records("students")) == 5
        assert "ignores them" in caplog.text


def test_bounded_windows_start_from_partitions() -> None:
    """CURSOR-PAGING.md: a walk whose first request carries maxChangeVersion can end early. Every cursor walk of
    the tap starts from a /partitions token carrying the same window, and repeats the window on every page."""
    with Sandbox("8.1", seed=30, maximum_page_size=10) as sb:
        seen = record_reads(sb)
        config = tap_config(sb, page_size=10, resources=["students", "studentSchoolAttendanceEvents"])
        out = run_tap(config)
        for path, stream in (("/ed-fi/students", "students"),
                             ("/ed-fi/studentSchoolAttendanceEvents", "studentSchoolAttendanceEvents")):
            assert {r["id"] for r in out.stream_records(stream)} == {d["id"] for d in sb.store.iter_docs(path)}
        assert out.tap.run_context.paging == "cursor"
        partitions = [(q, t) for kind, q, t in seen if kind == "partitions"]
        walks = [(q, t) for kind, q, t in seen if kind == "items" and "pageToken" in q]
        assert partitions and walks
        assert all("maxChangeVersion" in q for q, _ in partitions + walks)
        # every token sent came from /partitions or from a cursor page: never from an ordinary page (one with
        # maxChangeVersion may end a walk early; the tap reads those only as counted single pages and probes)
        trusted = {t for _, ts in partitions + walks for t in ts}
        assert all(q["pageToken"] in trusted for q, _ in walks)
        plain = [(q, t) for kind, q, t in seen if kind == "items" and "pageToken" not in q]
        assert not {t for _, ts in plain for t in ts} & {q["pageToken"] for q, _ in walks}
        # the attendance events (more than 5 pages of 10) were cut into several partitions
        assert len(sb.store.partitions("/ed-fi/studentSchoolAttendanceEvents", 10)) > 1


def test_same_streams_and_state_as_the_ods_api() -> None:
    """A district moving from 7.3 to DMS keeps its stream names and its STATE's shape."""
    shapes = {}
    for version in ("7.3", "8.0", "8.1"):
        with Sandbox(version, seed=10) as sb:
            out = run_tap(tap_config(sb))
            state = out.last_state
            assert state is not None
            shapes[version] = (sorted(out.schemas), {name: sorted(b) for name, b in state["bookmarks"].items()})
    streams, bookmarks = shapes["7.3"]
    for version in ("8.0", "8.1"):
        dms_streams, dms_bookmarks = shapes[version]
        # DMS has the change queries of schoolYearTypes (a regular resource there, change-queries.md
        # "SchoolYearType"): one more stream; every ODS/API stream and bookmark is the same
        assert set(dms_streams) - set(streams) == {"schoolYearTypes_key_changes"}
        assert set(streams) <= set(dms_streams)
        assert {k: v for k, v in dms_bookmarks.items() if k in bookmarks and k != "schoolYearTypes"} == {
            k: v for k, v in bookmarks.items() if k != "schoolYearTypes"}
        # and its bookmark adds the deletes' keys to the ODS/API's
        assert set(bookmarks["schoolYearTypes"]) < set(dms_bookmarks["schoolYearTypes"])


def test_tenant_and_route_qualifiers() -> None:
    """base_url at /{tenant}/{qualifiers}: data, token and change queries from discovery; the metadata DMS names
    under the prefix is served at the server root only, and the tap reads it there."""
    with Sandbox("8.1", seed=8, tenant="DistrictA", route_qualifiers=("255901", "2024")) as sb:
        config = tap_config(sb)
        assert config["base_url"].endswith("/DistrictA/255901/2024")
        wh = Warehouse().apply(first := run_tap(config))
        assert_matches(wh, sb)
        standard_changes(sb, 1)
        wh.apply(run_tap(config, state=first.last_state))
        assert_matches(wh, sb)
