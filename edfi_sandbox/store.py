"""SQLite storage of the sandbox: one table per resource, one global change-version sequence.

Each resource table keeps the item as the API serves it (``doc``: JSON with ``id``, reference
``link``s, ``_etag`` and ``_lastModifiedDate``), its natural-key hash (unique), its change version
(indexed, like the real ODS) and an ``aggregate_id`` primary key that orders collections and
defines 7.3 cursor partitions. A ``refs`` table records every reference between items so that
deletes of referenced items fail with 409 and key changes cascade to dependent items, as in the
real ODS/API. ``tracked_changes`` holds deletes and key changes for ``/deletes`` and
``/keyChanges``.

Writes are serialized by one lock on one connection; reads use a connection per thread (WAL), so
many clients read while one writes. Snapshots are full copies of the database made with SQLite's
backup API: reads in a snapshot see the data as it was when it was taken.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from edfi_core.keys import canonical, split_descriptor_uri
from edfi_core.openapi import SERVER_FIELDS, ApiModel, Reference, Resource

#: authorization hook (edfi_sandbox.authorization.AuthFilter): (reader connection, tracked) -> SQL condition over
#: ``doc`` (tracked=False) or ``old_key`` of tracked_changes (tracked=True), and its arguments
AuthHook = Callable[[sqlite3.Connection, bool], tuple[str, list[Any]]]


def _and_auth(where: str, args: list[Any], auth: AuthHook | None, conn: sqlite3.Connection) -> tuple[str, list[Any]]:
    """``where`` narrowed to what the client may read (authorization hook; None: unchanged)."""
    if auth is None:
        return where, args
    sql, extra = auth(conn, False)
    return (where + " AND" if where else " WHERE") + f" ({sql})", [*args, *extra]

logger = logging.getLogger(__name__)

JSON = dict[str, Any]


# -- errors the API layer turns into HTTP responses ------------------------------------------------
class StoreError(Exception):
    status = 400
    kind = "bad-request"

    def __init__(self, message: str, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or {}


class ValidationFailed(StoreError):
    status = 400
    kind = "bad-request:data-validation-failed"


class KeyChangeNotSupported(StoreError):
    status = 400
    kind = "bad-request:data-validation-failed:key-change-not-supported"


class NotFound(StoreError):
    status = 404
    kind = "not-found"


class UnresolvedReference(StoreError):
    status = 409
    kind = "data-conflict:unresolved-reference"


class DependentItemExists(StoreError):
    status = 409
    kind = "data-conflict:dependent-item-exists"


class NonUniqueIdentity(StoreError):
    status = 409
    kind = "data-conflict:non-unique-identity"


class OptimisticLockFailed(StoreError):
    status = 412
    kind = "optimistic-lock-failed"


@dataclass
class WriteResult:
    id: str
    etag: str
    created: bool
    change_version: int


@dataclass
class Snapshot:
    identifier: str
    taken_at: str
    path: str
    change_version: int


def key_hash(path: str, values: dict[str, Any]) -> int:
    """64-bit hash of a resource path and natural key values: the store's internal item key."""
    digest = hashlib.blake2b(path.encode() + b"\0" + canonical(values), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def table_name(path: str) -> str:
    return "r_" + re.sub(r"[^A-Za-z0-9]", "_", path.strip("/"))


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _reference_objects(doc: JSON, path: tuple[str, ...]) -> Iterator[JSON]:
    """Every object found at a reference path; ``[]`` steps into arrays."""
    nodes: list[Any] = [doc]
    for part in path:
        nxt: list[Any] = []
        for node in nodes:
            if part == "[]":
                if isinstance(node, list):
                    nxt.extend(node)
            elif isinstance(node, dict) and part in node:
                nxt.append(node[part])
        nodes = nxt
    for node in nodes:
        if isinstance(node, dict):
            yield node


def _values_at(doc: JSON, path: tuple[str, ...]) -> Iterator[Any]:
    nodes: list[Any] = [doc]
    for part in path:
        nxt: list[Any] = []
        for node in nodes:
            if part == "[]":
                if isinstance(node, list):
                    nxt.extend(node)
            elif isinstance(node, dict) and part in node:
                nxt.append(node[part])
        nodes = nxt
    yield from nodes


class Store:
    """All items of one sandbox API."""

    def __init__(self, model: ApiModel, path: str | None = None) -> None:
        self.model = model
        self._tmpdir: str | None = None
        if path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="edfi-sandbox-")
            path = os.path.join(self._tmpdir, "sandbox.db")
        self.path = path
        self._lock = threading.RLock()
        self._local = threading.local()
        self._writer = self._connect(path)
        self._snapshots: list[Snapshot] = []
        self._tables = {res.path: table_name(res.path) for res in model}
        # reverse references: target path -> [(source resource, reference)]
        self._dependents: dict[str, list[tuple[Resource, Reference]]] = {}
        for res in model:
            for ref in res.references:
                for target in model.reference_targets(ref):
                    self._dependents.setdefault(target.path, []).append((res, ref))
        self._arrays = {res.path: _array_defaults(res.schema) for res in model}
        self._descriptor_id = {res.path: res.entity + "Id" for res in model if res.is_descriptor}
        self._create_schema()
        row = self._writer.execute("SELECT v FROM meta WHERE k = 'change_version'").fetchone()
        self._change_version = int(row[0]) if row else 0
        self._connections: list[sqlite3.Connection] = [self._writer]
        #: seconds a write holds its change version before it commits (the ``commit_delay_ms`` fault)
        self.commit_delay: Callable[[], float] = lambda: 0.0
        #: the ODS/API version served (set by the app): person key changes and refusal texts depend on it
        self.api_version = "7.3"
        #: whether stored items get every collection (``[]`` when empty), as the ODS/API returns them; DMS drops
        #: empty collections (docs/dms.md)
        self.fill_arrays = True

    # -- connections ---------------------------------------------------------------------------
    @staticmethod
    def _connect(path: str, writer: bool = True) -> sqlite3.Connection:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA temp_store=MEMORY")
        if writer:
            conn.execute("PRAGMA cache_size=-1000000")  # up to ~1 GB: the indexes a bulk load updates stay hot
        else:
            # many reader threads: share the OS page cache through a memory map, keep private caches small
            conn.execute("PRAGMA mmap_size=17179869184")
            conn.execute("PRAGMA cache_size=-32000")
        return conn

    def reader(self, snapshot: Snapshot | None = None) -> sqlite3.Connection:
        """This thread's read connection (to the live database or to a snapshot)."""
        key = snapshot.path if snapshot else self.path
        conns: dict[str, sqlite3.Connection] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(key)
        if conn is None:
            conn = conns[key] = self._connect(key, writer=False)
            if snapshot:
                conn.execute("PRAGMA query_only=ON")
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover - closing from another thread
                    pass
            self._connections.clear()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        for snap in self._snapshots:
            if os.path.exists(snap.path) and not self._tmpdir:
                os.remove(snap.path)

    def _create_schema(self) -> None:
        w = self._writer
        w.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
        w.execute(
            "CREATE TABLE IF NOT EXISTS tracked_changes (seq INTEGER PRIMARY KEY, resource TEXT NOT NULL,"
            " kind TEXT NOT NULL, id TEXT NOT NULL, change_version INTEGER NOT NULL,"
            " old_key BLOB, new_key BLOB)"
        )
        w.execute(
            "CREATE INDEX IF NOT EXISTS ix_tracked ON tracked_changes (resource, kind, change_version)"
        )
        # old_hash: the store's key hash of old_key, so that /deletes can leave out keys that exist again
        if "old_hash" not in {row[1] for row in w.execute("PRAGMA table_info(tracked_changes)")}:
            w.execute("ALTER TABLE tracked_changes ADD COLUMN old_hash INTEGER")
        # refs: which item (source table number, aggregate id) refers to which item (key hash)
        w.execute(
            "CREATE TABLE IF NOT EXISTS refs (source INTEGER NOT NULL, source_agg INTEGER NOT NULL,"
            " target_key INTEGER NOT NULL, PRIMARY KEY (source, source_agg, target_key)) WITHOUT ROWID"
        )
        w.execute("CREATE TABLE IF NOT EXISTS resources (num INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE)")
        w.executemany("INSERT OR IGNORE INTO resources (path) VALUES (?)", [(p,) for p in sorted(self._tables)])
        self._num = dict((p, n) for n, p in w.execute("SELECT num, path FROM resources"))
        self._path_of = {n: p for p, n in self._num.items()}
        for table in self._tables.values():
            w.execute(
                f'CREATE TABLE IF NOT EXISTS "{table}" (aggregate_id INTEGER PRIMARY KEY,'
                " id TEXT NOT NULL, key_hash INTEGER NOT NULL UNIQUE,"
                " change_version INTEGER NOT NULL, doc BLOB NOT NULL)"
            )
        self._create_secondary_indexes()

    def _secondary_indexes(self) -> list[tuple[str, str]]:
        """(name, CREATE statement) of the indexes a bulk load may drop and rebuild."""
        out = [("ix_refs_target", "CREATE INDEX IF NOT EXISTS ix_refs_target ON refs (target_key)")]
        for table in self._tables.values():
            out.append((f"ix_{table}_id", f'CREATE UNIQUE INDEX IF NOT EXISTS "ix_{table}_id" ON "{table}" (id)'))
            out.append((f"ix_{table}_cv",
                        f'CREATE INDEX IF NOT EXISTS "ix_{table}_cv" ON "{table}" (change_version)'))
            # narrow key index: offset paging walks it instead of the wide rows (as the ODS pages ids)
            out.append((f"ix_{table}_page", f'CREATE INDEX IF NOT EXISTS "ix_{table}_page" ON "{table}"'
                        " (aggregate_id, change_version)"))
        return out

    def _create_secondary_indexes(self) -> None:
        for _, sql in self._secondary_indexes():
            self._writer.execute(sql)

    @contextlib.contextmanager
    def bulk_mode(self) -> Iterator[None]:
        """Drop the indexes bulk loading does not need, and build them once at the end (seeding)."""
        with self._lock:
            for name, _ in self._secondary_indexes():
                self._writer.execute(f'DROP INDEX IF EXISTS "{name}"')
            try:
                yield
            finally:
                self._create_secondary_indexes()
                self._writer.execute("ANALYZE")

    # -- helpers -------------------------------------------------------------------------------
    def resource(self, path: str) -> Resource:
        res = self.model.get(path)
        if res is None:
            raise NotFound(f"Resource {path} not found.")
        return res

    def table(self, path: str) -> str:
        return self._tables[path]

    @property
    def change_version(self) -> int:
        return self._change_version

    def _next_change_version(self) -> int:
        reserved = getattr(self._local, "reserved", None)
        if reserved is not None:  # taken before the write waited (commit delay)
            self._local.reserved = None
            return reserved
        self._change_version += 1
        return self._change_version

    @contextlib.contextmanager
    def _late_commit(self) -> Iterator[None]:
        """With a commit delay: take the write's change version now, visible as the newest at once (the
        sequence's current value, which ``availableChangeVersions`` reports), and commit the write only after
        the delay. A reader meanwhile sees the newest change version but not the item that has it."""
        delay = self.commit_delay()
        if delay <= 0:
            yield
            return
        with self._lock:
            self._change_version += 1
            reserved = self._change_version
            self._save_change_version()
        time.sleep(delay)
        self._local.reserved = reserved
        try:
            yield
        finally:
            self._local.reserved = None

    def _save_change_version(self) -> None:
        self._writer.execute(
            "INSERT OR REPLACE INTO meta (k, v) VALUES ('change_version', ?)", (str(self._change_version),)
        )

    def _lookup_key(self, conn: sqlite3.Connection, path: str, hashed: int) -> tuple[int, str] | None:
        row = conn.execute(
            f'SELECT aggregate_id, id FROM "{self._tables[path]}" WHERE key_hash = ?', (hashed,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    # -- descriptors and references --------------------------------------------------------------
    def _check_descriptors(self, res: Resource, doc: JSON) -> None:
        errors: dict[str, list[str]] = {}
        for dpath in res.descriptor_paths:
            desc = self.model.descriptor_for(dpath[-1])
            for value in _values_at(doc, dpath):
                if value is None:
                    continue
                parts = split_descriptor_uri(value)
                found = False
                if parts and desc is not None:
                    hashed = key_hash(desc.path, {"namespace": parts[0], "codeValue": parts[1]})
                    found = self._lookup_key(self._writer, desc.path, hashed) is not None
                if not found:
                    name = (desc.entity[0].upper() + desc.entity[1:]) if desc else dpath[-1]
                    field = "$." + ".".join(p for p in dpath if p != "[]")
                    errors.setdefault(field, []).append(f"{name} value '{value}' does not exist.")
        if errors:
            raise ValidationFailed(
                "Data validation failed. See 'validationErrors' for details.", errors
            )

    def _resolve_references(self, res: Resource, doc: JSON) -> list[int]:
        """Check every reference of ``doc`` exists and add its ``link``; return the targets' key hashes."""
        found: list[int] = []
        for ref in res.references:
            targets = self.model.reference_targets(ref)
            if not targets:
                continue
            for obj in _reference_objects(doc, ref.path):
                values = {f: obj.get(f) for f in ref.fields}
                if any(v is None for v in values.values()):
                    continue  # incomplete optional reference: schema validation reports it
                hit = None
                for target in targets:
                    if len(targets) > 1 or target.schema_name != ref.target_schema:
                        # abstract reference: one id field mapped onto the member's id field
                        if len(target.key_fields) != 1 or len(values) != 1:
                            continue
                        tvalues = {target.key_fields[0]: next(iter(values.values()))}
                    else:
                        tvalues = values
                    hashed = key_hash(target.path, tvalues)
                    row = self._lookup_key(self._writer, target.path, hashed)
                    if row:
                        hit = (target, hashed, row[1])
                        break
                if hit is None:
                    entity = ref.target_schema.split("_", 1)[-1]
                    entity = entity[0].upper() + entity[1:]
                    raise UnresolvedReference(f"The referenced '{entity}' item does not exist.")
                target, hashed, target_id = hit
                obj["link"] = {
                    "rel": target.entity[0].upper() + target.entity[1:],
                    "href": f"{target.path}/{target_id}",
                }
                found.append(hashed)
        return found

    def _dependents_of(self, conn: sqlite3.Connection, hashed: int) -> list[tuple[str, int]]:
        rows = conn.execute("SELECT source, source_agg FROM refs WHERE target_key = ?", (hashed,)).fetchall()
        return [(self._path_of[num], agg) for num, agg in rows]

    # -- writes --------------------------------------------------------------------------------
    def upsert(self, path: str, body: JSON) -> WriteResult:
        """POST: insert or update by natural key."""
        res = self.resource(path)
        doc = self._prepare(res, body)
        key = res.natural_key(doc)
        hashed = key_hash(path, key)
        with self._late_commit(), self._lock:
            self._check_descriptors(res, doc)
            refs = self._resolve_references(res, doc)
            existing = self._writer.execute(
                f'SELECT aggregate_id, id, doc FROM "{self._tables[path]}" WHERE key_hash = ?', (hashed,)
            ).fetchone()
            if existing is None:
                with self._transaction():
                    return self._write(res, doc, uuid.uuid4().hex, hashed, None, refs, created=True)
            agg, item_id, old_blob = existing
            old = orjson.loads(old_blob)
            etag = old.pop("_etag")
            for name in ("id", "_lastModifiedDate", self._descriptor_id.get(path)):
                old.pop(name, None)
            if old == doc:  # nothing changed: no update, no new change version
                return WriteResult(item_id, etag, False, self._change_version)
            with self._transaction():
                return self._write(res, doc, item_id, hashed, agg, refs, created=False)

    def update(self, path: str, item_id: str, body: JSON, if_match: str | None = None) -> WriteResult:
        """PUT by id: update, with a key change where the resource allows it."""
        res = self.resource(path)
        doc = self._prepare(res, body)
        with self._late_commit(), self._lock:
            agg, old_hash, old_doc = self._item(path, item_id, if_match, "update")
            new_key = res.natural_key(doc)
            new_hash = key_hash(path, new_key)
            key_changed = new_hash != old_hash
            # 6.x: a person's unique id is a plain column beside its USI key, so a PUT may change it (the
            # HandleKeyChanges trigger tracks it); references hold the USI and follow (docs/change-queries.md)
            person_key = key_changed and res.is_person and self.api_version.startswith("6")
            if key_changed and not res.key_updatable and not person_key:
                if self.api_version >= "7.3":
                    entity = res.entity[:1].upper() + res.entity[1:]
                    raise KeyChangeNotSupported(
                        f"Identifying values for the {entity} data cannot be changed. Delete and recreate the"
                        " item instead."
                    )
                # 7.1: EntityMapper.mustache's BadRequestException (docs/change-queries.md); 5.3/6.1 keep the
                # sandbox's older wording (not traced in their source)
                ending = "." if self.api_version.startswith("7") else " instead."
                raise KeyChangeNotSupported(
                    "Key values for this resource cannot be changed. Delete and recreate the resource item" + ending
                )
            if key_changed and self._lookup_key(self._writer, path, new_hash):
                raise NonUniqueIdentity(
                    "The identifying value(s) of the item are the same as another item that already exists."
                )
            self._check_descriptors(res, doc)
            refs = self._resolve_references(res, doc)
            with self._transaction():
                result = self._write(res, doc, item_id, new_hash, agg, refs, created=False)
                if key_changed:
                    old_key = res.natural_key(old_doc)
                    self._track(res.path, "key", item_id, result.change_version, old_key, new_key)
                    self._cascade_key_change(res.path, old_hash, new_hash, old_key, new_key, surrogate=person_key)
        return result

    def delete(self, path: str, item_id: str, if_match: str | None = None, *, track: bool = True) -> int:
        """Delete an item (its change version). ``track=False`` (the sandbox admin's untracked delete) removes
        the row without a change version or a ``/deletes`` entry: a row that vanished as after a restore or a
        purge, which only a reconciliation finds."""
        res = self.resource(path)
        if not track:
            with self._lock:
                agg, _, _ = self._item(path, item_id, if_match, "delete")
                with self._transaction():
                    self._writer.execute(f'DELETE FROM "{self._tables[path]}" WHERE aggregate_id = ?', (agg,))
                    self._writer.execute("DELETE FROM refs WHERE source = ? AND source_agg = ?",
                                         (self._num[path], agg))
            return self._change_version
        with self._late_commit(), self._lock:
            agg, hashed, doc = self._item(path, item_id, if_match, "delete")
            deps = self._dependents_of(self._writer, hashed)
            if deps:
                src = self.model.get(deps[0][0])
                name = src.entity if src else deps[0][0]
                raise DependentItemExists(
                    f"The requested action cannot be performed because this item is referenced by an"
                    f" existing '{name[0].upper() + name[1:]}' item."
                )
            with self._transaction():
                cv = self._next_change_version()
                self._writer.execute(f'DELETE FROM "{self._tables[path]}" WHERE aggregate_id = ?', (agg,))
                self._writer.execute("DELETE FROM refs WHERE source = ? AND source_agg = ?", (self._num[path], agg))
                self._track(path, "delete", item_id, cv, res.natural_key(doc), None)
        return cv

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction (the caller holds the lock); the change-version counter is saved in it."""
        self._writer.execute("BEGIN")
        try:
            yield
            self._save_change_version()
            self._writer.execute("COMMIT")
        except BaseException:
            self._writer.execute("ROLLBACK")
            raise

    def _item(self, path: str, item_id: str, if_match: str | None, action: str) -> tuple[int, int, JSON]:
        """(aggregate id, key hash, document) of an item addressed by id, checking ``If-Match``."""
        row = self._writer.execute(
            f'SELECT aggregate_id, key_hash, doc FROM "{self._tables[path]}" WHERE id = ?', (item_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"Resource to {action} was not found.")
        doc = orjson.loads(row[2])
        if if_match is not None and if_match.strip('"') != doc.get("_etag"):
            raise OptimisticLockFailed("The item has been modified by another user.")
        return row[0], row[1], doc

    def _prepare(self, res: Resource, body: JSON) -> JSON:
        """The payload as stored: server fields dropped, empty collections present."""
        doc = _strip_server_fields(body)
        desc_id = self._descriptor_id.get(res.path)
        if desc_id:
            doc.pop(desc_id, None)
        if self.fill_arrays:
            _fill_arrays(doc, self._arrays[res.path])
        return doc

    def _stored(self, res: Resource, item_id: str, agg: int, doc: JSON, etag: str, stamp: str) -> JSON:
        head: JSON = {"id": item_id}
        desc_id = self._descriptor_id.get(res.path)
        if desc_id:
            head[desc_id] = agg
        return {**head, **doc, "_etag": etag, "_lastModifiedDate": stamp}

    def _write(
        self,
        res: Resource,
        doc: JSON,
        item_id: str,
        hashed: int,
        agg: int | None,
        refs: list[int],
        created: bool,
    ) -> WriteResult:
        cv = self._next_change_version()
        etag = str(5_250_000_000_000_000_000 + cv * 7919)
        table = self._tables[res.path]
        if agg is None:
            agg = self._writer.execute(f'SELECT COALESCE(MAX(aggregate_id), 0) + 1 FROM "{table}"').fetchone()[0]
            blob = orjson.dumps(self._stored(res, item_id, agg, doc, etag, now_iso()))
            self._writer.execute(
                f'INSERT INTO "{table}" (aggregate_id, id, key_hash, change_version, doc) VALUES (?, ?, ?, ?, ?)',
                (agg, item_id, hashed, cv, blob),
            )
        else:
            blob = orjson.dumps(self._stored(res, item_id, agg, doc, etag, now_iso()))
            self._writer.execute(
                f'UPDATE "{table}" SET key_hash = ?, change_version = ?, doc = ? WHERE aggregate_id = ?',
                (hashed, cv, blob, agg),
            )
            self._writer.execute("DELETE FROM refs WHERE source = ? AND source_agg = ?", (self._num[res.path], agg))
        num = self._num[res.path]
        self._writer.executemany(
            "INSERT OR IGNORE INTO refs (source, source_agg, target_key) VALUES (?, ?, ?)",
            [(num, agg, h) for h in refs],
        )
        return WriteResult(item_id, etag, created, cv)

    def _track(
        self, path: str, kind: str, item_id: str, cv: int, old_key: JSON | None, new_key: JSON | None
    ) -> None:
        self._writer.execute(
            "INSERT INTO tracked_changes (resource, kind, id, change_version, old_key, new_key, old_hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                path,
                kind,
                item_id,
                cv,
                orjson.dumps(old_key) if old_key is not None else None,
                orjson.dumps(new_key) if new_key is not None else None,
                key_hash(path, old_key) if old_key is not None else None,
            ),
        )

    def _cascade_key_change(
        self, path: str, old_hash: int, new_hash: int, old_key: JSON, new_key: JSON, surrogate: bool = False
    ) -> None:
        """Rewrite the references of dependent items, like the ODS/API's cascading key updates.

        ``surrogate`` (a 6.x person's unique id): the dependents' rows hold the person's USI, which did not
        change, so they show the new unique id without a new change version, etag or tracked key change."""
        for source, source_agg in self._dependents_of(self._writer, old_hash):
            src = self.model.get(source)
            if src is None:
                continue
            table = self._tables[source]
            row = self._writer.execute(
                f'SELECT id, key_hash, doc FROM "{table}" WHERE aggregate_id = ?', (source_agg,)
            ).fetchone()
            if row is None:
                continue
            item_id, src_old_hash, blob = row
            doc = orjson.loads(blob)
            src_old_key = src.natural_key(doc)
            for ref in src.references:
                if path not in [t.path for t in self.model.reference_targets(ref)]:
                    continue
                for obj in _reference_objects(doc, ref.path):
                    if all(obj.get(f) == old_key.get(f) for f in ref.fields if f in old_key):
                        for f in ref.fields:
                            if f in new_key:
                                obj[f] = new_key[f]
            body = {k: v for k, v in doc.items()
                    if k not in ("id", "_etag", "_lastModifiedDate", self._descriptor_id.get(source))}
            src_new_key = src.natural_key(body)
            src_new_hash = key_hash(source, src_new_key)
            refs = [
                new_hash if h == old_hash else h
                for (h,) in self._writer.execute(
                    "SELECT target_key FROM refs WHERE source = ? AND source_agg = ?",
                    (self._num[source], source_agg),
                ).fetchall()
            ]
            if surrogate:
                doc.update(body)
                self._writer.execute(
                    f'UPDATE "{table}" SET key_hash = ?, doc = ? WHERE aggregate_id = ?',
                    (src_new_hash, orjson.dumps(doc), source_agg),
                )
                self._writer.execute("DELETE FROM refs WHERE source = ? AND source_agg = ?",
                                     (self._num[source], source_agg))
                self._writer.executemany(
                    "INSERT OR IGNORE INTO refs (source, source_agg, target_key) VALUES (?, ?, ?)",
                    [(self._num[source], source_agg, h) for h in refs],
                )
                if src_new_hash != src_old_hash:
                    self._cascade_key_change(source, src_old_hash, src_new_hash, src_old_key, src_new_key,
                                             surrogate=True)
                continue
            result = self._write(src, body, item_id, src_new_hash, source_agg, refs, created=False)
            if src_new_hash != src_old_hash:
                self._track(source, "key", item_id, result.change_version, src_old_key, src_new_key)
                self._cascade_key_change(source, src_old_hash, src_new_hash, src_old_key, src_new_key)

    # -- bulk loading (seeding) --------------------------------------------------------------------
    def bulk_load(self, path: str, docs: Iterable[JSON], batch: int = 20000) -> int:
        """Load trusted payloads fast: no validation; ids, etags, links and change versions assigned.

        References must point to items already loaded (the caller loads in dependency order); a
        reference that does not resolve is stored without a link. Reference lookups are cached by
        value, so a million rows that point to a few thousand parents cost a few thousand lookups.
        """
        res = self.resource(path)
        table = self._tables[path]
        num = self._num[path]
        plan = self._ref_plan(res)
        key_paths = list(res.key_paths.items())
        arrays = self._arrays[path]
        desc_id = self._descriptor_id.get(path)
        stamp = now_iso()
        cache: dict[tuple, tuple[int, dict] | None] = {}
        count = 0
        rows: list[tuple] = []
        ref_rows: list[tuple] = []
        dumps = orjson.dumps
        blake = hashlib.blake2b
        id_salt = path.encode() + b"\0id\0"
        with self._lock, self._transaction():
            agg = self._writer.execute(f'SELECT COALESCE(MAX(aggregate_id), 0) FROM "{table}"').fetchone()[0]
            cv = self._change_version
            for doc in docs:
                agg += 1
                cv += 1
                for ref_path, fields, targets in plan:
                    if len(ref_path) == 1:  # fast path: a top-level reference
                        top = doc.get(ref_path[0])
                        objs: Iterable[JSON] = (top,) if isinstance(top, dict) else ()
                    else:
                        objs = _reference_objects(doc, ref_path)
                    for obj in objs:
                        values = tuple([obj.get(f) for f in fields])
                        ck = (ref_path, values)
                        hit = cache.get(ck, False)
                        if hit is False:
                            hit = cache[ck] = self._find_target(targets, fields, values)
                        if hit is not None:
                            obj["link"] = hit[1]
                            ref_rows.append((num, agg, hit[0]))
                key = {}
                for name, kpath in key_paths:
                    node = doc
                    for part in kpath:
                        node = node.get(part) if isinstance(node, dict) else None
                    key[name] = node
                if arrays and self.fill_arrays:
                    _fill_arrays(doc, arrays)
                # the same district gets the same ids: derived from the resource and natural key
                item_id = blake(id_salt + dumps(key), digest_size=16).hexdigest()
                head: JSON = {"id": item_id, desc_id: agg} if desc_id else {"id": item_id}
                stored = {**head, **doc, "_etag": str(5_250_000_000_000_000_000 + cv * 7919),
                          "_lastModifiedDate": stamp}
                rows.append((agg, item_id, key_hash(path, key), cv, dumps(stored)))
                if len(rows) >= batch:
                    self._flush(table, rows, ref_rows)
                count += 1
            self._flush(table, rows, ref_rows)
            self._change_version = cv
        return count

    def _find_target(
        self, targets: list[tuple[Resource, bool, str]], fields: tuple[str, ...], values: tuple
    ) -> tuple[int, dict] | None:
        for target, abstract, rel in targets:
            tvalues = {target.key_fields[0]: values[0]} if abstract else dict(zip(fields, values, strict=True))
            hashed = key_hash(target.path, tvalues)
            row = self._lookup_key(self._writer, target.path, hashed)
            if row:
                return hashed, {"rel": rel, "href": f"{target.path}/{row[1]}"}
        return None

    def _ref_plan(self, res: Resource) -> list[tuple[tuple[str, ...], tuple[str, ...], list]]:
        plan = []
        for ref in res.references:
            targets = self.model.reference_targets(ref)
            if targets:
                plan.append((ref.path, ref.fields, [
                    (t, t.schema_name != ref.target_schema, t.entity[0].upper() + t.entity[1:]) for t in targets
                ]))
        return plan

    def _flush(self, table: str, rows: list[tuple], ref_rows: list[tuple]) -> None:
        if rows:
            self._writer.executemany(
                f'INSERT INTO "{table}" (aggregate_id, id, key_hash, change_version, doc) VALUES (?, ?, ?, ?, ?)',
                rows,
            )
            rows.clear()
        if ref_rows:
            self._writer.executemany(
                "INSERT OR IGNORE INTO refs (source, source_agg, target_key) VALUES (?, ?, ?)", ref_rows
            )
            ref_rows.clear()

    # -- reads ---------------------------------------------------------------------------------
    def _where(
        self, res: Resource, min_cv: int | None, max_cv: int | None, filters: dict[str, Any] | None
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if min_cv is not None:
            clauses.append("change_version >= ?")
            args.append(min_cv)
        if max_cv is not None:
            clauses.append("change_version <= ?")
            args.append(max_cv)
        for name, value in (filters or {}).items():
            fpath = res.field_paths.get(name) or (name,)
            clauses.append(f"json_extract(doc, '$.{'.'.join(fpath)}') = ?")
            args.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def count(
        self,
        path: str,
        min_cv: int | None = None,
        max_cv: int | None = None,
        filters: dict[str, Any] | None = None,
        snapshot: Snapshot | None = None,
        auth: AuthHook | None = None,
    ) -> int:
        res = self.resource(path)
        where, args = self._where(res, min_cv, max_cv, filters)
        conn = self.reader(snapshot)
        where, args = _and_auth(where, args, auth, conn)
        return conn.execute(f'SELECT COUNT(*) FROM "{self._tables[path]}"{where}', args).fetchone()[0]

    def page(
        self,
        path: str,
        offset: int = 0,
        limit: int = 25,
        min_cv: int | None = None,
        max_cv: int | None = None,
        filters: dict[str, Any] | None = None,
        snapshot: Snapshot | None = None,
        auth: AuthHook | None = None,
        by_change_version: bool = False,
    ) -> list[tuple[int, bytes]]:
        """(aggregate_id, doc) rows of one offset page, in aggregate-id order; ``by_change_version``: the page is
        selected in change-version order (DMS with a maxChangeVersion), its items still in aggregate-id order."""
        res = self.resource(path)
        where, args = self._where(res, min_cv, max_cv, filters)
        conn = self.reader(snapshot)
        where, args = _and_auth(where, args, auth, conn)
        table = self._tables[path]
        hint = self._page_index(conn, table, min_cv, max_cv) if not filters else ""
        # like the ODS/API: find the page's keys on a narrow index, then read those items
        return conn.execute(
            f'SELECT t.aggregate_id, t.doc FROM "{table}" t JOIN (SELECT aggregate_id FROM "{table}"{hint}{where}'
            f" ORDER BY {'change_version, ' if by_change_version else ''}aggregate_id LIMIT ? OFFSET ?) p"
            " ON p.aggregate_id = t.aggregate_id ORDER BY t.aggregate_id",
            [*args, limit, offset],
        ).fetchall()

    @staticmethod
    def _page_index(conn: sqlite3.Connection, table: str, min_cv: int | None, max_cv: int | None) -> str:
        """Which index a page query walks: the narrow key index in key order for wide windows, the
        change-version index for narrow ones (SQLite's planner cannot tell the two apart)."""
        if min_cv is None and max_cv is None:
            return f' INDEXED BY "ix_{table}_page"'
        # two queries: SQLite answers MIN() and MAX() from the index only one at a time
        low = conn.execute(f'SELECT MIN(change_version) FROM "{table}"').fetchone()[0]
        high = conn.execute(f'SELECT MAX(change_version) FROM "{table}"').fetchone()[0]
        if low is None:
            return ""
        span = max(1, high - low)
        covered = min(high, max_cv if max_cv is not None else high) - max(low, min_cv or low)
        return f' INDEXED BY "ix_{table}_page"' if covered / span > 0.05 else f' INDEXED BY "ix_{table}_cv"'

    def range_page(
        self,
        path: str,
        low: int,
        high: int,
        size: int,
        min_cv: int | None = None,
        max_cv: int | None = None,
        filters: dict[str, Any] | None = None,
        snapshot: Snapshot | None = None,
        auth: AuthHook | None = None,
    ) -> list[tuple[int, bytes]]:
        """Rows with ``low <= aggregate_id <= high`` (7.3 cursor paging)."""
        res = self.resource(path)
        where, args = self._where(res, min_cv, max_cv, filters)
        conn = self.reader(snapshot)
        where, args = _and_auth(where, args, auth, conn)
        where = (where + " AND" if where else " WHERE") + " aggregate_id BETWEEN ? AND ?"
        return conn.execute(
            f'SELECT aggregate_id, doc FROM "{self._tables[path]}"{where} ORDER BY aggregate_id LIMIT ?',
            [*args, low, high, size],
        ).fetchall()

    def partitions(
        self,
        path: str,
        number: int,
        min_cv: int | None = None,
        max_cv: int | None = None,
        filters: dict[str, Any] | None = None,
        snapshot: Snapshot | None = None,
        auth: AuthHook | None = None,
    ) -> list[tuple[int, int]]:
        """Split the matching items into at most ``number`` aggregate-id ranges of similar size."""
        res = self.resource(path)
        where, args = self._where(res, min_cv, max_cv, filters)
        conn = self.reader(snapshot)
        where, args = _and_auth(where, args, auth, conn)
        table = self._tables[path]
        hint = self._page_index(conn, table, min_cv, max_cv) if not filters else ""
        total = conn.execute(f'SELECT COUNT(*) FROM "{table}"{hint}{where}', args).fetchone()[0]
        if total == 0:
            return []
        number = max(1, min(number, total))
        after = (where + " AND" if where else " WHERE") + " aggregate_id > ?"
        # each range's first id, walking the narrow index once: every query starts after the last bound
        bounds: list[int] = []
        position = 0  # index of the row after the last bound
        for i in range(number):
            target = (total * i) // number
            sql, params = (after, [*args, bounds[-1]]) if bounds else (where, list(args))
            row = conn.execute(
                f'SELECT aggregate_id FROM "{table}"{hint}{sql} ORDER BY aggregate_id LIMIT 1 OFFSET ?',
                [*params, target - position],
            ).fetchone()
            if row is None:
                break
            bounds.append(row[0])
            position = target + 1
        last = conn.execute(f'SELECT MAX(aggregate_id) FROM "{table}"{where}', args).fetchone()[0]
        # contiguous ranges: each runs up to the next one's first id, the last to the last matching id
        return [(low, bounds[i + 1] - 1 if i + 1 < len(bounds) else last) for i, low in enumerate(bounds)]

    def get(self, path: str, item_id: str, snapshot: Snapshot | None = None) -> bytes:
        self.resource(path)
        row = self.reader(snapshot).execute(
            f'SELECT doc FROM "{self._tables[path]}" WHERE id = ?', (item_id,)
        ).fetchone()
        if row is None:
            raise NotFound("Resource not found.")
        return row[0]

    def get_by_key(self, path: str, key: JSON) -> JSON | None:
        res = self.resource(path)
        row = self.reader().execute(
            f'SELECT doc FROM "{self._tables[path]}" WHERE key_hash = ?', (key_hash(path, res.natural_key(key)),)
        ).fetchone()
        return orjson.loads(row[0]) if row else None

    def iter_docs(self, path: str) -> Iterator[JSON]:
        """Every item of a resource, in aggregate-id order (for tests and churn)."""
        for (blob,) in self.reader().execute(
            f'SELECT doc FROM "{self._tables[path]}" ORDER BY aggregate_id'
        ):
            yield orjson.loads(blob)

    def deletes(
        self,
        path: str,
        offset: int = 0,
        limit: int = 25,
        min_cv: int | None = None,
        max_cv: int | None = None,
        with_keys: bool = True,
        snapshot: Snapshot | None = None,
        auth: AuthHook | None = None,
        exclude_live: bool = False,
    ) -> list[JSON]:
        """Deleted items in a change-version window. ``exclude_live`` (6.x and 7.x): an item whose natural key
        exists again (deleted and re-created) is left out, as the ODS/API's deleted-items query does by joining
        the live table (docs/change-queries.md)."""
        self.resource(path)
        conn = self.reader(snapshot)
        extra, extra_args = auth(conn, True) if auth is not None else ("1", [])
        rows = conn.execute(
            "SELECT id, change_version, old_key FROM tracked_changes t WHERE resource = ? AND kind = 'delete'"
            f" AND change_version >= ? AND change_version <= ? AND ({extra})" + self._live_exclusion(path, exclude_live)
            + " ORDER BY change_version LIMIT ? OFFSET ?",
            (path, min_cv or 0, max_cv if max_cv is not None else 2**62, *extra_args, limit, offset),
        ).fetchall()
        out = []
        for item_id, cv, old_key in rows:
            item: JSON = {"id": item_id, "changeVersion": cv}
            if with_keys:
                item["keyValues"] = orjson.loads(old_key)
            out.append(item)
        return out

    def count_deletes(self, path: str, min_cv: int | None = None, max_cv: int | None = None,
                      snapshot: Snapshot | None = None, auth: AuthHook | None = None,
                      exclude_live: bool = False) -> int:
        conn = self.reader(snapshot)
        extra, extra_args = auth(conn, True) if auth is not None else ("1", [])
        return conn.execute(
            "SELECT COUNT(*) FROM tracked_changes t WHERE resource = ? AND kind = 'delete'"
            f" AND change_version >= ? AND change_version <= ? AND ({extra})"
            + self._live_exclusion(path, exclude_live),
            (path, min_cv or 0, max_cv if max_cv is not None else 2**62, *extra_args),
        ).fetchone()[0]

    def _live_exclusion(self, path: str, exclude_live: bool) -> str:
        if not exclude_live:
            return ""
        return f' AND NOT EXISTS (SELECT 1 FROM "{self._tables[path]}" s WHERE s.key_hash = t.old_hash)'


    def key_changes(
        self,
        path: str,
        offset: int = 0,
        limit: int = 25,
        min_cv: int | None = None,
        max_cv: int | None = None,
        snapshot: Snapshot | None = None,
        auth: AuthHook | None = None,
    ) -> list[JSON]:
        """One entry per item changed in the window: its first old key and its last new key."""
        self.resource(path)
        conn = self.reader(snapshot)
        extra, extra_args = auth(conn, True) if auth is not None else ("1", [])
        extra = _numbered(extra, 6)
        rows = conn.execute(
            "SELECT id, MAX(change_version) AS cv,"
            " (SELECT old_key FROM tracked_changes t2 WHERE t2.resource = t.resource AND t2.kind = 'key'"
            "   AND t2.id = t.id AND t2.change_version >= ?1 AND t2.change_version <= ?2"
            "   ORDER BY change_version ASC LIMIT 1),"
            " (SELECT new_key FROM tracked_changes t3 WHERE t3.resource = t.resource AND t3.kind = 'key'"
            "   AND t3.id = t.id AND t3.change_version >= ?1 AND t3.change_version <= ?2"
            "   ORDER BY change_version DESC LIMIT 1)"
            " FROM tracked_changes t WHERE resource = ?3 AND kind = 'key'"
            f" AND change_version >= ?1 AND change_version <= ?2 AND ({extra})"
            " GROUP BY id ORDER BY cv LIMIT ?4 OFFSET ?5",
            (min_cv or 0, max_cv if max_cv is not None else 2**62, path, limit, offset, *extra_args),
        ).fetchall()
        return [
            {"id": i, "changeVersion": cv, "oldKeyValues": orjson.loads(o), "newKeyValues": orjson.loads(n)}
            for i, cv, o, n in rows
        ]

    def count_key_changes(self, path: str, min_cv: int | None = None, max_cv: int | None = None,
                          snapshot: Snapshot | None = None, auth: AuthHook | None = None) -> int:
        conn = self.reader(snapshot)
        extra, extra_args = auth(conn, True) if auth is not None else ("1", [])
        return conn.execute(
            "SELECT COUNT(DISTINCT id) FROM tracked_changes WHERE resource = ? AND kind = 'key'"
            f" AND change_version >= ? AND change_version <= ? AND ({extra})",
            (path, min_cv or 0, max_cv if max_cv is not None else 2**62, *extra_args),
        ).fetchone()[0]

    def oldest_change_version(self) -> int:
        """The lowest change version whose tracked changes (/deletes, /keyChanges) are still kept: 0 until the
        sandbox admin purges them (:meth:`purge_changes`)."""
        row = self._writer.execute("SELECT v FROM meta WHERE k = 'oldest_change_version'").fetchone()
        return int(row[0]) if row else 0

    def purge_changes(self, below: int) -> int:
        """Forget the tracked deletes and key changes with a change version below ``below`` (what a host's
        change-tracking retention does); ``oldestChangeVersion`` is then ``below``. The number purged."""
        with self._lock, self._transaction():
            n = self._writer.execute("DELETE FROM tracked_changes WHERE change_version < ?", (below,)).rowcount
            oldest = max(below, self.oldest_change_version())
            self._writer.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('oldest_change_version', ?)",
                                 (str(oldest),))
        return int(n)

    # -- snapshots -------------------------------------------------------------------------------
    def take_snapshot(self) -> Snapshot:
        """Copy the whole database; reads that ask for this snapshot see it as it is now."""
        ident = uuid.uuid4().hex
        folder = self._tmpdir or os.path.dirname(os.path.abspath(self.path))
        target = os.path.join(folder, f"snapshot-{ident}.db")
        with self._lock:
            dest = sqlite3.connect(target)
            try:
                self._writer.backup(dest)
            finally:
                dest.close()
            snap = Snapshot(ident, now_iso(), target, self._change_version)
            self._snapshots.append(snap)
        logger.info("snapshot %s taken at change version %s", ident, snap.change_version)
        return snap

    @property
    def snapshots(self) -> list[Snapshot]:
        return list(self._snapshots)

    def find_snapshot(self, identifier: str | None = None) -> Snapshot | None:
        if not self._snapshots:
            return None
        if identifier is None:
            return self._snapshots[-1]
        return next((s for s in self._snapshots if s.identifier == identifier), None)

    def drop_snapshots(self) -> None:
        with self._lock:
            self._snapshots.clear()


def _numbered(sql: str, first: int) -> str:
    """``sql`` with its ``?`` placeholders numbered from ``first`` (to join a query with ``?N`` ones)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"?{first + i}{rest}" for i, rest in enumerate(parts[1:]))


def _array_defaults(schema: JSON) -> list[tuple[str, list[str]]]:
    """Top-level array properties, each with the array properties of its items.

    The API returns every collection, as ``[]`` when it is empty.
    """
    out = []
    for name, spec in (schema.get("properties") or {}).items():
        if spec.get("type") == "array" and not name.startswith("_"):
            items = spec.get("items") or {}
            nested = [n for n, s in (items.get("properties") or {}).items() if s.get("type") == "array"]
            out.append((name, nested))
    return out


def _fill_arrays(doc: JSON, defaults: list[tuple[str, list[str]]]) -> None:
    for name, nested in defaults:
        value = doc.get(name)
        if value is None:
            doc[name] = []
        elif nested:
            for item in value:
                if isinstance(item, dict):
                    for n in nested:
                        item.setdefault(n, [])


def _strip_server_fields(body: JSON) -> JSON:
    """The payload as stored: no server fields, no links, no nulls."""

    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: clean(v)
                for k, v in node.items()
                if v is not None and k not in SERVER_FIELDS
            }
        if isinstance(node, list):
            return [clean(v) for v in node if v is not None]
        return node

    return clean(body)


__all__ = [
    "DependentItemExists",
    "KeyChangeNotSupported",
    "NonUniqueIdentity",
    "NotFound",
    "OptimisticLockFailed",
    "Snapshot",
    "Store",
    "StoreError",
    "UnresolvedReference",
    "ValidationFailed",
    "WriteResult",
]
