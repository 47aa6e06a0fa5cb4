"""Ghost rows: an item deleted and re-created under the same natural key before the tap read the delete.

The ODS/API's deleted-items query leaves out keys that exist again (6.x and 7.x, docs/change-queries.md), so the
old ``id`` is never reported deleted and a warehouse keyed by ``id`` would keep its row live forever. tap-edfi
reconciles each stream every ``reconcile_interval`` seconds: it reads the live items completely as a table version
and ends with ``ACTIVATE_VERSION``, and target-postgres marks the rows it did not get deleted. Proven end to end
with ``meltano run tap-edfi target-postgres`` on the real PostgreSQL.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
import uuid
from typing import Any

import psycopg
import pytest

from edfi_sandbox.server import Sandbox
from tests.conftest import Api
from tests.proxies import FaultProxy
from tests.tap_support import run_tap, tap_config
from tests.test_tap_meltano import _meltano, _postgres_up, installed  # noqa: F401 - the fixture

PG = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def _add_contact(sb: Sandbox) -> None:
    body = {"contactUniqueId": "CDE123", "firstName": "Grace", "lastSurname": "Hopper"}
    assert Api(sb).post("/ed-fi/contacts", body).status_code == 201


def _recreate_one_contact(sb: Sandbox) -> tuple[str, str]:
    """Delete contact CDE123 and POST it again (same contactUniqueId, new id): (old id, new id)."""
    api = Api(sb)
    [doc] = api.get("/ed-fi/contacts", params={"contactUniqueId": "CDE123"}).json()
    assert api.delete(f"/ed-fi/contacts/{doc['id']}").status_code == 204
    body = {k: v for k, v in doc.items() if k not in ("id", "_etag", "_lastModifiedDate")}
    assert api.post("/ed-fi/contacts", body).status_code == 201
    [again] = api.get("/ed-fi/contacts", params={"contactUniqueId": doc["contactUniqueId"]}).json()
    assert again["id"] != doc["id"]
    # what the real API does: the re-created key is not a delete
    assert api.get("/ed-fi/contacts/deletes").json() == []
    return doc["id"], again["id"]


def test_the_tap_reconciles_a_stream_with_activate_version(make_sandbox) -> None:
    sb = make_sandbox("7.3", seed=5)
    config = tap_config(sb, resources=["contacts"], include_descriptors=False, reconcile_interval=1)
    _add_contact(sb)
    first = run_tap(config)
    assert not [m for m in first.messages if m.get("type") == "ACTIVATE_VERSION"]  # a first read needs none
    old_id, new_id = _recreate_one_contact(sb)
    time.sleep(1.5)  # reconcile_interval is 1 second
    second = run_tap(config, state=first.last_state)
    [activate] = [m for m in second.messages if m.get("type") == "ACTIVATE_VERSION"]
    assert activate["stream"] == "contacts"
    records = [m for m in second.messages if m.get("type") == "RECORD" and m["stream"] == "contacts"]
    live = {d["id"] for d in sb.store.iter_docs("/ed-fi/contacts")}
    assert {m["record"]["id"] for m in records} == live and new_id in live and old_id not in live
    assert {m.get("version") for m in records} == {activate["version"]}
    assert second.messages.index(activate) > max(second.messages.index(m) for m in records)
    # not due again: the next run is incremental (nothing changed: no records, no ACTIVATE_VERSION)
    third = run_tap({**config, "reconcile_interval": 604800, "change_version_lookback": 0}, state=second.last_state)
    assert [m for m in third.messages if m.get("type") in ("RECORD", "ACTIVATE_VERSION")] == []
    assert third.last_state["bookmarks"]["contacts"]["reconciled_at"] == \
        second.last_state["bookmarks"]["contacts"]["reconciled_at"]


class UpdatingProxy(FaultProxy):
    """A loopback proxy that, once armed, updates items of one resource right before the tap reads it.

    Before the first GET of the items from change version 0 (the reconciliation's full read) it updates the first
    ``count`` items: their new change versions are above the run's bound, so the bounded read does not have them.
    Then, ``churn_passes`` times, before the first GET of a window above the bound (a catch-up pass) it updates
    those items again, so they leave that window too. Updates go to the sandbox's store, as its churn does."""

    def __init__(self, sb: Sandbox, path: str, count: int, churn_passes: int) -> None:
        super().__init__(sb.base_url)
        self.sb, self.path, self.count, self.churn_passes = sb, path, count, churn_passes
        self.armed = False
        self.updated: list[str] = []
        self.windows: list[int] = []  # the minChangeVersion of each catch-up window the tap asked for
        self._hook_lock = threading.Lock()

    def root(self) -> str:
        return (self.sb.api_root or self.sb.base_url).replace(self.sb.base_url, self.url)

    def _update(self, ids: list[str]) -> None:
        docs = {d["id"]: d for d in self.sb.store.iter_docs(self.path)}
        for item_id in ids:
            doc = {k: v for k, v in docs[item_id].items() if k not in ("id", "_etag", "_lastModifiedDate")}
            doc["firstName"] = f"{doc['firstName'].split('~')[0]}~{time.monotonic_ns()}"
            self.sb.store.update(self.path, item_id, doc)

    def _before(self, target: str) -> None:
        url = urllib.parse.urlsplit(target)
        if not self.armed or not url.path.endswith(self.path):
            return
        query = dict(urllib.parse.parse_qsl(url.query))
        lo = int(query.get("minChangeVersion", -1))
        with self._hook_lock:
            if lo == 0 and not self.updated:
                self.updated = [d["id"] for d in self.sb.store.iter_docs(self.path)][: self.count]
                self._update(self.updated)
            elif lo > 0 and "maxChangeVersion" in query and lo not in self.windows:
                self.windows.append(lo)
                if len(self.windows) <= self.churn_passes:
                    self._update(self.updated)

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes
                 ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        if method == "GET":
            self._before(path)
        return super()._forward(method, path, headers, body)


def _reconciling_run(sb: Sandbox, churn_passes: int, paging: str) -> tuple[UpdatingProxy, Any, Any]:
    """A first run, then a reconciling run through an :class:`UpdatingProxy`: (proxy, first, second)."""
    proxy = UpdatingProxy(sb, "/ed-fi/students", count=3, churn_passes=churn_passes).start()
    config = {**tap_config(sb, resources=["students"], include_descriptors=False, reconcile_interval=1,
                           use_snapshot="never", paging=paging), "base_url": proxy.root()}
    first = run_tap(config)
    time.sleep(1.5)  # reconcile_interval is 1 second
    proxy.armed = True
    second = run_tap(config, state=first.last_state)
    proxy.armed = False
    return proxy, first, second


NO_SNAPSHOT = [("6.1", "offset"), ("7.3", "offset"), ("7.3", "cursor")]


@pytest.mark.parametrize(("version", "paging"), NO_SNAPSHOT)
def test_items_updated_while_reconciling_are_not_marked_deleted(make_sandbox, version: str, paging: str) -> None:
    """Without a snapshot, items updated during the reconciliation (and again during its catch-up) are written
    with the table version before ACTIVATE_VERSION: a target honouring it marks no live item deleted."""
    sb = make_sandbox(version, seed=5)
    before = {d["id"] for d in sb.store.iter_docs("/ed-fi/students")}
    proxy, first, second = _reconciling_run(sb, churn_passes=2, paging=paging)
    try:
        assert len(proxy.updated) == 3
        [activate] = [m for m in second.messages if m.get("type") == "ACTIVATE_VERSION"]
        records = [m for m in second.messages if m.get("type") == "RECORD" and m["stream"] == "students"]
        versioned = {m["record"]["id"] for m in records if m.get("version") == activate["version"]}
        live = {d["id"]: d for d in sb.store.iter_docs("/ed-fi/students")}
        assert set(live) == before and len(before) > 3
        # every live item has a row of the activated version: nothing live is marked deleted
        assert set(live) - versioned == set()
        assert len(proxy.windows) == 3  # 2 catch-up passes whose items changed again, and the one that caught up
        assert {m.get("version") for m in records} == {activate["version"]}
        assert second.messages.index(activate) > max(second.messages.index(m) for m in records)
        # the updated items were written as they are now (their last record is their last update)
        last = {m["record"]["id"]: m["record"] for m in records}
        for item_id in proxy.updated:
            assert last[item_id]["firstName"] == live[item_id]["firstName"]
        # the bookmark is the run's bound: the changes after it are read again by the next run
        bound = second.tap.run_context.newest
        marks = second.last_state["bookmarks"]["students"]
        assert marks["change_version"] == bound
        assert marks["reconciled_at"] > first.last_state["bookmarks"]["students"]["reconciled_at"]
    finally:
        proxy.stop()


def test_a_reconciliation_that_does_not_catch_up_writes_no_activate_version(
        make_sandbox, caplog: pytest.LogCaptureFixture) -> None:
    """Items that keep changing through every catch-up pass: no ACTIVATE_VERSION (a false delete is worse than a
    skipped reconciliation), a warning naming the stream, and the next run reconciles again."""
    sb = make_sandbox("6.1", seed=5)
    with caplog.at_level(logging.WARNING):
        proxy, first, second = _reconciling_run(sb, churn_passes=1000, paging="offset")
    try:
        assert [m for m in second.messages if m.get("type") == "ACTIVATE_VERSION"] == []
        [warning] = [r for r in caplog.records if "not reconciled" in r.getMessage()]
        assert warning.levelno == logging.WARNING and warning.getMessage().startswith("students:")
        marks = second.last_state["bookmarks"]["students"]
        assert marks["reconciled_at"] == first.last_state["bookmarks"]["students"]["reconciled_at"]
        assert marks["change_version"] == second.tap.run_context.newest
        # quiet again: the next run reconciles
        config = {**tap_config(sb, resources=["students"], include_descriptors=False, reconcile_interval=1,
                               use_snapshot="never", paging="offset"), "base_url": proxy.root()}
        third = run_tap(config, state=second.last_state)
        [activate] = [m for m in third.messages if m.get("type") == "ACTIVATE_VERSION"]
        versioned = {m["record"]["id"] for m in third.messages
                     if m.get("type") == "RECORD" and m.get("version") == activate["version"]}
        assert versioned == {d["id"] for d in sb.store.iter_docs("/ed-fi/students")}
    finally:
        proxy.stop()


class ChurningProxy(FaultProxy):
    """A loopback proxy that runs the sandbox's churn (updates and deletes of one resource) from the tap's first
    GET of its items from change version 0 (the reconciliation's full read) until its ``stop_at``-th question
    for items above a bound without an upper one (each catch-up pass asks that first)."""

    def __init__(self, sb: Sandbox, path: str, rate: float, stop_at: int) -> None:
        super().__init__(sb.base_url)
        self.sb, self.path, self.rate, self.stop_at = sb, path, rate, stop_at
        self.armed = False
        self.churn: Any = None
        self.tails = 0
        self._hook_lock = threading.Lock()

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes
                 ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        url = urllib.parse.urlsplit(path)
        if self.armed and method == "GET" and url.path.endswith(self.path):
            query = dict(urllib.parse.parse_qsl(url.query))
            with self._hook_lock:
                if query.get("minChangeVersion") == "0" and self.churn is None:
                    self.churn = self.sb.start_churn(self.rate, resources=[self.path], delete_fraction=0.2, seed=7)
                elif "maxChangeVersion" not in query and self.churn is not None and self.tails < self.stop_at:
                    self.tails += 1
                    if self.tails == self.stop_at:
                        self.sb.stop_churn()
        return super()._forward(method, path, headers, body)


@pytest.mark.parametrize(("version", "paging"), [("6.1", "offset"), ("7.3", "cursor")])
def test_churn_while_reconciling_marks_no_live_item_deleted(version: str, paging: str) -> None:
    """The sandbox's churn updates items while the stream is read in full and during the first catch-up pass (the
    second pass reads quietly): every item live before and after the run is written with the activated version
    (only items deleted during the run may be missing), and the bookmark is the run's bound."""
    path = "/ed-fi/students"
    with Sandbox(version, seed=60) as sb:
        sb.set_faults(latency_ms=10)  # 12 pages of 5 items: the full read lasts long enough to be churned
        proxy = ChurningProxy(sb, path, rate=150, stop_at=2).start()
        try:
            config = tap_config(sb, resources=["students"], include_descriptors=False, page_size=5, max_workers=2,
                                reconcile_interval=1, use_snapshot="never", paging=paging)
            config["base_url"] = (sb.api_root or sb.base_url).replace(sb.base_url, proxy.url)
            first = run_tap(config)
            time.sleep(1.5)  # reconcile_interval is 1 second
            before = {d["id"] for d in sb.store.iter_docs(path)}
            proxy.armed = True
            second = run_tap(config, state=first.last_state)
            sb.stop_churn()
        finally:
            proxy.stop()
        assert proxy.churn is not None and proxy.churn.updates > 5, "the churn did not change items during the run"
        after = {d["id"] for d in sb.store.iter_docs(path)}
        [activate] = [m for m in second.messages if m.get("type") == "ACTIVATE_VERSION"]
        versioned = {m["record"]["id"] for m in second.messages if m.get("type") == "RECORD"
                     and m["stream"] == "students" and m.get("version") == activate["version"]}
        assert (before & after) - versioned == set()  # no live item would be marked deleted
        assert after <= versioned  # churn creates nothing: every live item was written with the version
        # churned through the full read and the first catch-up pass, stopped when the second pass began
        assert proxy.tails == 2
        assert second.last_state["bookmarks"]["students"]["change_version"] == \
            second.tap.run_context.newest


def test_meltano_run_into_postgres_drops_ghost_rows(installed: None) -> None:  # noqa: F811 - the fixture
    assert _postgres_up(), "PostgreSQL is not running on 127.0.0.1:5432"
    schema = f"edfi_ghost_{uuid.uuid4().hex[:8]}"

    def rows(query: str) -> list[tuple]:
        with psycopg.connect(PG, autocommit=True) as conn:
            return conn.execute(query).fetchall()

    with Sandbox("7.3", seed=5) as sb:
        env = {"TAP_EDFI_BASE_URL": sb.base_url, "TAP_EDFI_CLIENT_ID": sb.client_id,
               "TAP_EDFI_CLIENT_SECRET": sb.client_secret, "TAP_EDFI_RESOURCES": '["contacts", "students"]',
               "TAP_EDFI_INCLUDE_DESCRIPTORS": "false", "TAP_EDFI_RECONCILE_INTERVAL": "1",
               "TARGET_POSTGRES_PASSWORD": "postgres", "TARGET_POSTGRES_DATABASE": "postgres",
               "TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": schema}
        suffix = ["--state-id-suffix", schema]
        _add_contact(sb)
        try:
            proc = _meltano(["run", *suffix, "tap-edfi", "target-postgres"], env)
            assert proc.returncode == 0, proc.stderr[-3000:]
            old_id, new_id = _recreate_one_contact(sb)
            proc = _meltano(["run", *suffix, "tap-edfi", "target-postgres"], env)
            assert proc.returncode == 0, proc.stderr[-3000:]
            live = {r[0] for r in rows(f'SELECT id FROM "{schema}"."contacts" WHERE _sdc_deleted_at IS NULL')}
            assert live == {d["id"] for d in sb.store.iter_docs("/ed-fi/contacts")}
            assert new_id in live and old_id not in live
            [(deleted_at,)] = rows(f'SELECT _sdc_deleted_at FROM "{schema}"."contacts" WHERE id = \'{old_id}\'')
            assert deleted_at is not None
            students = {r[0] for r in rows(f'SELECT id FROM "{schema}"."students" WHERE _sdc_deleted_at IS NULL')}
            assert students == {d["id"] for d in sb.store.iter_docs("/ed-fi/students")}
        finally:
            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
