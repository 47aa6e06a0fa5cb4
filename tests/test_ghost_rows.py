"""Ghost rows: an item deleted and re-created under the same natural key before the tap read the delete.

The ODS/API's deleted-items query leaves out keys that exist again (6.x and 7.x, docs/change-queries.md), so the
old ``id`` is never reported deleted and a warehouse keyed by ``id`` would keep its row live forever. tap-edfi
reconciles each stream every ``reconcile_interval`` seconds: it reads the live items completely as a table version
and ends with ``ACTIVATE_VERSION``, and target-postgres marks the rows it did not get deleted. Proven end to end
with ``meltano run tap-edfi target-postgres`` on the real PostgreSQL.
"""

from __future__ import annotations

import time
import uuid

import psycopg

from edfi_sandbox.server import Sandbox
from tests.conftest import Api
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
