"""The transaction log: what target-edfi has sent to which API, and the spool of what it has yet to send.

Its tables (the same on SQLite and PostgreSQL):

``transaction_log``
    One row per (target API, resource, natural key): the natural key and its hash, the source stream and
    source key that last wrote it, the Ed-Fi ``id`` from ``Location``, the hash of the last payload the API
    accepted, whether the item is deleted, the last status and message, how many requests were made for it,
    the stream version (``ACTIVATE_VERSION``) it was last seen in, and timestamps. Users may query it.

``spool``
    Every incoming record, written as it arrives (batched inserts, no per-record fsync), keyed by
    (target, stream, source key) so a later record of the same source item replaces an earlier one. A row is
    removed once it has been applied or recorded as failed; a run killed at any point leaves what it had not
    settled, and the next run applies it.

``failed``
    The dead letters: the last rejected payload of every source item (a spool row's columns), with its status
    (``failed`` or ``invalid``), HTTP status, message, what it waits for (``depends``: items it references that the
    target lacked, descriptor values it did not know), how often it was tried, the run and the time. A row goes
    when its source item lands; later runs put it back into the spool when what it waits for has been written.

``runs`` keeps one row per run with its summary.

Only one run at a time writes to a given target API through one log: the run holds a lock for its target
(an advisory lock on PostgreSQL, a lock file next to a SQLite log). Runs to different targets may share a
PostgreSQL log.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: spool kinds
UPSERT, DELETE, KEY_CHANGE = "upsert", "delete", "key_change"

LOG_COLUMNS = (
    "target", "resource", "key_hash", "natural_key", "source_stream", "source_key", "edfi_id", "payload_hash",
    "deleted", "status", "http_status", "message", "attempts", "stream_version", "run_id", "first_sent_at",
    "last_sent_at", "accepted_at", "updated_at",
)
SPOOL_COLUMNS = (
    "target", "stream", "source_key", "seq", "kind", "resource", "source_stream", "item_key", "key_hash",
    "natural_key", "payload_hash", "payload", "descriptors", "version", "passes", "received_at",
)
#: dead letters: the spool columns of a rejected record (no seq, passes, received_at), and why it was rejected
FAILED_COLUMNS = (
    "target", "stream", "source_key", "kind", "resource", "source_stream", "item_key", "key_hash", "natural_key",
    "payload_hash", "payload", "descriptors", "version", "status", "http_status", "message", "depends", "tries",
    "run_id", "failed_at",
)


@dataclass
class LogRow:
    log_id: int
    key_hash: str
    natural_key: str
    edfi_id: str | None
    payload_hash: str | None
    deleted: bool
    source_stream: str | None
    source_key: str | None
    status: str | None
    stream_version: int | None

    @property
    def live(self) -> bool:
        return not self.deleted and bool(self.edfi_id)


@dataclass
class WorkRow:
    """A spooled record joined with the log rows it may concern."""

    stream: str
    source_key: str
    seq: int
    kind: str
    source_stream: str
    item_key: str
    key_hash: str | None
    natural_key: str | None
    payload_hash: str | None
    payload: bytes | None  # None when the row is unchanged (not read)
    descriptors: str | None  # "path<TAB>value" lines of the payload's descriptor values
    version: int | None
    passes: int
    by_key: LogRow | None  # the log row of the record's natural key
    by_source: LogRow | None  # the log row last written by the same source item

    @property
    def unchanged(self) -> bool:
        k = self.by_key
        return (self.kind == UPSERT and k is not None and k.live and k.payload_hash == self.payload_hash
                and (self.by_source is None or self.by_source.log_id == k.log_id))

    @property
    def key_changed(self) -> bool:
        p = self.by_source
        return (self.kind == UPSERT and p is not None and p.live and self.key_hash is not None
                and p.key_hash != self.key_hash)


def _log_row(values: Sequence[Any]) -> LogRow | None:
    if values[0] is None:
        return None
    return LogRow(values[0], values[1], values[2], values[3], values[4], bool(values[5]), values[6], values[7],
                  values[8], values[9])


#: what ``transaction_log_schema`` may be: a plain PostgreSQL identifier
SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_schema_name(schema: str) -> None:
    if not isinstance(schema, str) or not SCHEMA_NAME.match(schema):
        raise ValueError(f"transaction_log_schema {schema!r} is not a plain PostgreSQL schema name (letters, digits "
                         "and _, not starting with a digit, at most 63 characters)")


def safe_location(url: str) -> str:
    """Host, port and database of a PostgreSQL URL, without user, password or other parameters."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(url)
    except Exception:  # a URL psycopg cannot read: say nothing of it but its scheme
        return "postgresql://(unreadable URL)"
    host, port, db = parts.get("host") or "localhost", parts.get("port") or "5432", parts.get("dbname") or ""
    return f"postgresql://{host}:{port}/{db}"


def lock_number(target: str) -> int:
    return int.from_bytes(hashlib.sha1(target.encode()).digest()[:8], "big", signed=True)


class TransactionLog:
    """The SQL both backends share; subclasses connect and say how their dialect differs."""

    placeholder = "?"
    blob_type = "BLOB"
    time_type = "TEXT"
    id_column = "log_id INTEGER PRIMARY KEY"
    description = "transaction log"

    def __init__(self) -> None:
        self.conn: Any = None
        self.prefix = ""  # schema prefix for table names
        self._now_at = -1.0
        self._now_value: Any = None

    # -- dialect ---------------------------------------------------------------------------------------
    def now(self) -> Any:
        """The current time as the log stores it (recomputed at most every 50 ms: it is asked for per record)."""
        mono = time.monotonic()
        if mono - self._now_at > 0.05:
            self._now_at, self._now_value = mono, self._timestamp()
        return self._now_value

    def _timestamp(self) -> Any:
        return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")

    def sql(self, text: str) -> str:
        text = text.replace("{p}", self.prefix)
        return text.replace("?", self.placeholder) if self.placeholder != "?" else text

    def execute(self, text: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self.sql(text), params)

    def executemany(self, text: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            cur = self.conn.cursor()
            cur.executemany(self.sql(text), rows)

    def commit(self) -> None:
        self.conn.commit()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.commit()
        with contextlib.suppress(Exception):
            self.conn.close()

    # -- schema ----------------------------------------------------------------------------------------
    def create_tables(self) -> None:
        t, b = self.time_type, self.blob_type
        statements = [
            f"""CREATE TABLE IF NOT EXISTS {{p}}transaction_log (
                {self.id_column},
                target TEXT NOT NULL,
                resource TEXT NOT NULL,
                key_hash TEXT NOT NULL,
                natural_key TEXT NOT NULL,
                source_stream TEXT,
                source_key TEXT,
                edfi_id TEXT,
                payload_hash TEXT,
                deleted BOOLEAN NOT NULL DEFAULT FALSE,
                status TEXT,
                http_status INTEGER,
                message TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                stream_version BIGINT,
                run_id TEXT,
                first_sent_at {t},
                last_sent_at {t},
                accepted_at {t},
                updated_at {t} NOT NULL,
                UNIQUE (target, resource, key_hash))""",
            "CREATE INDEX IF NOT EXISTS {p}ix_transaction_log_source ON {p}transaction_log "
            "(target, resource, source_stream, source_key)",
            "CREATE INDEX IF NOT EXISTS {p}ix_transaction_log_stream ON {p}transaction_log "
            "(target, source_stream, stream_version)",
            f"""CREATE TABLE IF NOT EXISTS {{p}}spool (
                target TEXT NOT NULL,
                stream TEXT NOT NULL,
                source_key TEXT NOT NULL,
                seq BIGINT NOT NULL,
                kind TEXT NOT NULL,
                resource TEXT NOT NULL,
                source_stream TEXT NOT NULL,
                item_key TEXT NOT NULL,
                key_hash TEXT,
                natural_key TEXT,
                payload_hash TEXT,
                payload {b},
                descriptors TEXT,
                version BIGINT,
                passes INTEGER NOT NULL DEFAULT 0,
                received_at {t},
                PRIMARY KEY (target, stream, source_key))""",
            "CREATE INDEX IF NOT EXISTS {p}ix_spool_work ON {p}spool (target, resource, kind, seq)",
            f"""CREATE TABLE IF NOT EXISTS {{p}}failed (
                target TEXT NOT NULL,
                stream TEXT NOT NULL,
                source_key TEXT NOT NULL,
                kind TEXT NOT NULL,
                resource TEXT NOT NULL,
                source_stream TEXT NOT NULL,
                item_key TEXT NOT NULL,
                key_hash TEXT,
                natural_key TEXT,
                payload_hash TEXT,
                payload {b},
                descriptors TEXT,
                version BIGINT,
                status TEXT NOT NULL,
                http_status INTEGER,
                message TEXT,
                depends TEXT,
                tries INTEGER NOT NULL DEFAULT 1,
                run_id TEXT,
                failed_at {t},
                PRIMARY KEY (target, stream, source_key))""",
            f"""CREATE TABLE IF NOT EXISTS {{p}}runs (
                run_id TEXT PRIMARY KEY,
                target TEXT,
                started_at {t},
                finished_at {t},
                status TEXT,
                summary TEXT)""",
            # spooled records by natural key: duplicates, old keys taken by another record, pending deletes
            "CREATE INDEX IF NOT EXISTS {p}ix_spool_key ON {p}spool (target, resource, kind, key_hash)",
        ]
        for stmt in statements:
            self.execute(self._index_name_fix(stmt))
        self.commit()

    def _index_name_fix(self, stmt: str) -> str:
        return stmt

    # -- locking ---------------------------------------------------------------------------------------
    def lock(self, target: str) -> None:  # pragma: no cover - backends override
        raise NotImplementedError

    def unlock(self) -> None:  # pragma: no cover - backends override
        raise NotImplementedError

    # -- spool -------------------------------------------------------------------------------------------
    _SPOOL_UPSERT = (
        "INSERT INTO {p}spool (" + ", ".join(SPOOL_COLUMNS) + ") VALUES (" + ", ".join("?" * len(SPOOL_COLUMNS))
        + ") ON CONFLICT (target, stream, source_key) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in SPOOL_COLUMNS[3:])
    )

    def spool(self, rows: Sequence[Sequence[Any]]) -> None:
        """Add or replace spool rows (tuples in ``SPOOL_COLUMNS`` order)."""
        self.executemany(self._SPOOL_UPSERT, rows)

    def unspool(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """Remove spool rows by (target, stream, source key)."""
        self.executemany("DELETE FROM {p}spool WHERE target = ? AND stream = ? AND source_key = ?", keys)

    def bump_passes(self, keys: Iterable[tuple[str, str, str]]) -> None:
        self.executemany("UPDATE {p}spool SET passes = passes + 1 WHERE target = ? AND stream = ? AND source_key = ?",
                         keys)

    def spooled_payload(self, target: str, stream: str, source_key: str) -> bytes | None:
        row = self.execute("SELECT payload FROM {p}spool WHERE target = ? AND stream = ? AND source_key = ?",
                           (target, stream, source_key)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def max_seq(self, target: str) -> int:
        row = self.execute("SELECT MAX(seq) FROM {p}spool WHERE target = ?", (target,)).fetchone()
        return int(row[0] or 0)

    def pending(self, target: str) -> dict[str, dict[str, int]]:
        """resource -> kind -> spooled rows."""
        out: dict[str, dict[str, int]] = {}
        for resource, kind, n in self.execute(
                "SELECT resource, kind, COUNT(*) FROM {p}spool WHERE target = ? GROUP BY resource, kind", (target,)):
            out.setdefault(resource, {})[kind] = int(n)
        return out

    _LOG_FIELDS = "log_id, key_hash, natural_key, edfi_id, payload_hash, deleted, source_stream, source_key, " \
                  "status, stream_version"

    def _work_sql(self, outer_filter: str = "", limit: bool = True, inner_filter: str = "") -> str:
        k = ", ".join(f"k.{c.strip()}" for c in self._LOG_FIELDS.split(","))
        p = ", ".join(f"p.{c.strip()}" for c in self._LOG_FIELDS.split(","))
        unchanged = ("s.kind = 'upsert' AND k.log_id IS NOT NULL AND NOT k.deleted AND k.edfi_id IS NOT NULL "
                     "AND k.payload_hash = s.payload_hash AND (s.prev_id IS NULL OR s.prev_id = k.log_id)")
        return (
            "SELECT s.stream, s.source_key, s.seq, s.kind, s.source_stream, s.item_key, s.key_hash, s.natural_key, "
            f"s.payload_hash, CASE WHEN {unchanged} THEN NULL ELSE s.payload END, s.descriptors, s.version, "
            f"s.passes, {k}, {p} "
            "FROM (SELECT sp.target, sp.stream, sp.source_key, sp.seq, sp.kind, sp.resource, sp.source_stream, "
            "sp.item_key, sp.key_hash, sp.natural_key, sp.payload_hash, sp.payload, sp.descriptors, sp.version, "
            "sp.passes, "
            "(SELECT l.log_id FROM {p}transaction_log l WHERE l.target = sp.target AND l.resource = sp.resource "
            "AND l.source_stream = sp.source_stream AND l.source_key = sp.item_key "
            "ORDER BY l.deleted, (l.edfi_id IS NULL), l.updated_at DESC LIMIT 1) AS prev_id "
            "FROM {p}spool sp WHERE sp.target = ? AND sp.resource = ? AND sp.kind = ? AND sp.seq > ? "
            + (f"AND {inner_filter} " if inner_filter else "")
            + "ORDER BY sp.seq" + (" LIMIT ?" if limit else "") + ") s "
            "LEFT JOIN {p}transaction_log k ON k.target = s.target AND k.resource = s.resource "
            "AND k.key_hash = s.key_hash "
            "LEFT JOIN {p}transaction_log p ON p.log_id = s.prev_id "
            + (f"WHERE {outer_filter} " if outer_filter else "")
            + "ORDER BY s.seq"
        )

    @staticmethod
    def _work_row(r: Sequence[Any]) -> WorkRow:
        payload = r[9]
        if payload is not None and not isinstance(payload, bytes):
            payload = bytes(payload)
        return WorkRow(r[0], r[1], int(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], payload, r[10],
                       r[11], int(r[12]), _log_row(r[13:23]), _log_row(r[23:33]))

    def work(self, target: str, resource: str, kind: str, after_seq: int, limit: int) -> list[WorkRow]:
        """The next spooled rows of one resource and kind, after ``after_seq``, with their log rows."""
        rows = self.execute(self._work_sql(), (target, resource, kind, after_seq, limit)).fetchall()
        return [self._work_row(r) for r in rows]

    def key_change_work(self, target: str, resource: str) -> list[WorkRow]:
        """Spooled upserts whose source item is logged under another natural key (key changes)."""
        flt = "p.log_id IS NOT NULL AND NOT p.deleted AND p.edfi_id IS NOT NULL AND p.key_hash <> s.key_hash"
        # rows keyed by their natural key cannot change it: only rows with their own source key are looked at
        keyed = "sp.item_key <> COALESCE(sp.natural_key, '')"
        rows = self.execute(self._work_sql(flt, limit=False, inner_filter=keyed),
                            (target, resource, UPSERT, -1)).fetchall()
        return [self._work_row(r) for r in rows]

    def has_key_change_candidates(self, target: str, resource: str) -> bool:
        """Whether any log row of the resource has a source key (else no key change can be detected)."""
        row = self.execute("SELECT 1 FROM {p}transaction_log WHERE target = ? AND resource = ? "
                           "AND source_key IS NOT NULL AND NOT deleted LIMIT 1", (target, resource)).fetchone()
        return row is not None

    # -- dead letters: the last rejected payload of every source item, with its reason ----------------------------
    _FAILED_UPDATE = (" ON CONFLICT (target, stream, source_key) DO UPDATE SET "
                      + ", ".join(f"{c} = excluded.{c}" for c in FAILED_COLUMNS[3:] if c != "tries")
                      + ", tries = f.tries + 1")

    def dead_letter(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Copy spool rows to ``failed`` before they leave the spool: (status, http_status, message, depends,
        run_id, failed_at, target, stream, source_key) each."""
        copied = ", ".join(SPOOL_COLUMNS[:3] + SPOOL_COLUMNS[4:14])
        self.executemany(
            "INSERT INTO {p}failed AS f (" + ", ".join(FAILED_COLUMNS) + ") SELECT " + copied
            + ", ?, ?, ?, ?, 1, ?, ? FROM {p}spool WHERE target = ? AND stream = ? AND source_key = ?"
            + self._FAILED_UPDATE, rows)

    def dead_letter_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Records that never reached the spool (invalid): tuples in ``FAILED_COLUMNS`` order."""
        self.executemany("INSERT INTO {p}failed AS f (" + ", ".join(FAILED_COLUMNS) + ") VALUES ("
                         + ", ".join("?" * len(FAILED_COLUMNS)) + ")" + self._FAILED_UPDATE, rows)

    def clear_failed(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """Forget dead letters by (target, stream, source key): the source item landed since."""
        self.executemany("DELETE FROM {p}failed WHERE target = ? AND stream = ? AND source_key = ?", keys)

    def failed_keys(self, target: str) -> set[tuple[str, str]]:
        return {(r[0], r[1]) for r in self.execute("SELECT stream, source_key FROM {p}failed WHERE target = ?",
                                                   (target,))}

    def failed_depends(self, target: str) -> list[tuple[str, str, str]]:
        """(stream, source key, depends) of dead letters that wait for something to be written."""
        return [tuple(r) for r in self.execute("SELECT stream, source_key, depends FROM {p}failed WHERE target = ? "
                                               "AND depends IS NOT NULL", (target,))]

    def list_failed(self, target: str) -> list[tuple[Any, ...]]:
        """(resource, stream, source_key, natural_key, status, http_status, message, tries, failed_at)."""
        return [tuple(r) for r in self.execute(
            "SELECT resource, stream, source_key, natural_key, status, http_status, message, tries, failed_at "
            "FROM {p}failed WHERE target = ? ORDER BY resource, failed_at, stream, source_key", (target,))]

    def revive(self, target: str, keys: Sequence[tuple[str, str]] | None, first_seq: int, received_at: Any) -> int:
        """Put dead letters back into the spool (all of the target's, or those of ``keys``: (stream, source key)),
        unless a newer record of the same source item is spooled. Their spool rows get sequence numbers from
        ``first_seq`` on. How many were spooled."""
        if keys is None:
            keys = [(r[0], r[1]) for r in self.execute(
                "SELECT stream, source_key FROM {p}failed WHERE target = ? ORDER BY failed_at", (target,))]
        copied = ", ".join(SPOOL_COLUMNS[:3]) + ", ?, " + ", ".join(SPOOL_COLUMNS[4:14])
        before = self.execute("SELECT COUNT(*) FROM {p}spool WHERE target = ?", (target,)).fetchone()[0]
        self.executemany(
            "INSERT INTO {p}spool (" + ", ".join(SPOOL_COLUMNS) + ") SELECT " + copied
            + ", 0, ? FROM {p}failed WHERE target = ? AND stream = ? AND source_key = ? "
            "ON CONFLICT (target, stream, source_key) DO NOTHING",
            [(first_seq + i, received_at, target, stream, key) for i, (stream, key) in enumerate(keys)])
        after = self.execute("SELECT COUNT(*) FROM {p}spool WHERE target = ?", (target,)).fetchone()[0]
        return int(after) - int(before)

    def spooled_upsert(self, target: str, resource: str, key_hash: str) -> bool:
        """Whether an upsert of this natural key waits in the spool."""
        row = self.execute("SELECT 1 FROM {p}spool WHERE target = ? AND resource = ? AND key_hash = ? "
                           "AND kind = 'upsert' LIMIT 1", (target, resource, key_hash)).fetchone()
        return row is not None

    # -- the log -------------------------------------------------------------------------------------------
    _LOG_UPSERT = (
        "INSERT INTO {p}transaction_log AS t (" + ", ".join(LOG_COLUMNS) + ") VALUES ("
        + ", ".join("?" * len(LOG_COLUMNS)) + ") ON CONFLICT (target, resource, key_hash) DO UPDATE SET "
        "natural_key = excluded.natural_key, "
        "source_stream = COALESCE(excluded.source_stream, t.source_stream), "
        "source_key = COALESCE(excluded.source_key, t.source_key), "
        "edfi_id = COALESCE(excluded.edfi_id, t.edfi_id), "
        "payload_hash = COALESCE(excluded.payload_hash, t.payload_hash), "
        "deleted = CASE WHEN excluded.status IN ('failed', 'invalid') THEN t.deleted ELSE excluded.deleted END, "
        "status = excluded.status, http_status = excluded.http_status, "
        "message = excluded.message, attempts = t.attempts + excluded.attempts, "
        "stream_version = COALESCE(excluded.stream_version, t.stream_version), "
        "run_id = excluded.run_id, "
        "first_sent_at = COALESCE(t.first_sent_at, excluded.first_sent_at), "
        "last_sent_at = COALESCE(excluded.last_sent_at, t.last_sent_at), "
        "accepted_at = COALESCE(excluded.accepted_at, t.accepted_at), "
        "updated_at = excluded.updated_at"
    )

    def upsert_log(self, rows: Sequence[Sequence[Any]]) -> None:
        """Insert or update log rows (tuples in ``LOG_COLUMNS`` order; ``None`` keeps what is there)."""
        self.executemany(self._LOG_UPSERT, rows)

    def remove_log(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """Forget log rows by (target, resource, key hash): a natural key that no longer exists."""
        self.executemany("DELETE FROM {p}transaction_log WHERE target = ? AND resource = ? AND key_hash = ?", keys)

    def release_source(self, rows: Iterable[tuple[int, str | None, str | None]]) -> None:
        """(log_id, source_stream, source_key): the source item moved to another natural key, so the old row no
        longer speaks for it; a row another source item has taken over since is left alone."""
        self.executemany("UPDATE {p}transaction_log SET source_key = NULL WHERE log_id = ? AND source_stream = ? "
                         "AND source_key = ?", rows)

    def remove_moved(self, rows: Iterable[tuple[str, str, str, str | None]]) -> None:
        """(target, resource, key hash, Ed-Fi id): an item moved to another natural key (a PUT): its old key's row
        goes, unless the old key holds another item by now."""
        self.executemany("DELETE FROM {p}transaction_log WHERE target = ? AND resource = ? AND key_hash = ? "
                         "AND edfi_id = ?", rows)

    def claimed_keys(self, target: str, resource: str, key_hashes: Iterable[str]) -> set[str]:
        """The natural keys (hashes) among ``key_hashes`` that a spooled upsert of the resource takes."""
        hashes, out = sorted(set(key_hashes)), set()
        for i in range(0, len(hashes), 500):
            chunk = hashes[i:i + 500]
            marks = ", ".join("?" * len(chunk))
            for (khash,) in self.execute(
                    f"SELECT DISTINCT key_hash FROM {{p}}spool WHERE target = ? AND resource = ? AND kind = ? "
                    f"AND key_hash IN ({marks})", (target, resource, UPSERT, *chunk)):
                out.add(khash)
        return out

    def duplicate_keys(self, target: str, resource: str) -> list[tuple[str, list[tuple[str, str, int, str | None]]]]:
        """Spooled upserts of the resource that share a natural key: (key hash, [(stream, source key, seq, natural
        key)] in input order (seq))."""
        rows = self.execute(
            "SELECT s.stream, s.source_key, s.seq, s.natural_key, s.key_hash FROM {p}spool s JOIN "
            "(SELECT key_hash FROM {p}spool WHERE target = ? AND resource = ? AND kind = ? AND key_hash IS NOT NULL "
            "GROUP BY key_hash HAVING COUNT(*) > 1) d ON d.key_hash = s.key_hash "
            "WHERE s.target = ? AND s.resource = ? AND s.kind = ? ORDER BY s.key_hash, s.seq",
            (target, resource, UPSERT, target, resource, UPSERT)).fetchall()
        out: dict[str, list[tuple[str, str, int, str | None]]] = {}
        for stream, source_key, seq, natural_key, khash in rows:
            out.setdefault(khash, []).append((stream, source_key, int(seq), natural_key))
        return list(out.items())

    def spool_counts(self, target: str, first_seq: int) -> dict[str, tuple[int, int]]:
        """resource -> (records spooled from ``first_seq`` on, those spooled before it by an earlier run), leaving
        out the rows the sender made itself (``stream#...``)."""
        out: dict[str, tuple[int, int]] = {}
        for resource, now, before in self.execute(
                "SELECT resource, SUM(CASE WHEN seq >= ? THEN 1 ELSE 0 END), SUM(CASE WHEN seq < ? THEN 1 ELSE 0 END) "
                "FROM {p}spool WHERE target = ? AND stream NOT LIKE ? GROUP BY resource",
                (first_seq, first_seq, target, "%#%")):
            out[resource] = (int(now or 0), int(before or 0))
        return out

    def touch(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """(source_stream, source_key, stream_version, run_id, updated_at, log_id): an unchanged item seen again."""
        self.executemany("UPDATE {p}transaction_log SET source_stream = ?, source_key = ?, "
                         "stream_version = COALESCE(?, stream_version), run_id = ?, updated_at = ? WHERE log_id = ?",
                         rows)

    def log_row(self, target: str, resource: str, key_hash: str) -> LogRow | None:
        row = self.execute(f"SELECT {self._LOG_FIELDS} FROM {{p}}transaction_log WHERE target = ? AND resource = ? "
                           "AND key_hash = ?", (target, resource, key_hash)).fetchone()
        return _log_row(row) if row else None

    def live_keys(self, target: str, resource: str) -> Iterator[str]:
        """Natural keys (canonical JSON) of the items of a resource the log says the target has."""
        for (key,) in self.execute("SELECT natural_key FROM {p}transaction_log WHERE target = ? AND resource = ? "
                                   "AND NOT deleted AND edfi_id IS NOT NULL", (target, resource)):
            yield key

    def is_live(self, target: str, resource: str, key_hash: str) -> bool:
        row = self.log_row(target, resource, key_hash)
        return row is not None and row.live

    def stale(self, target: str, stream: str, version: int, after: int = 0, limit: int = 1000
              ) -> list[tuple[int, str, str, str, str]]:
        """(log_id, resource, key_hash, natural_key, edfi_id) of live items a stream sent before ``version``."""
        rows = self.execute(
            "SELECT log_id, resource, key_hash, natural_key, edfi_id FROM {p}transaction_log l "
            "WHERE target = ? AND source_stream = ? AND NOT deleted AND edfi_id IS NOT NULL "
            "AND (stream_version IS NULL OR stream_version < ?) AND log_id > ? "
            # an item a spooled delete already concerns (the old item of a key change, a deleted record) is
            # deleted by that one
            "AND NOT EXISTS (SELECT 1 FROM {p}spool d WHERE d.target = l.target AND d.resource = l.resource "
            "AND d.kind = ? AND d.key_hash = l.key_hash) ORDER BY log_id LIMIT ?",
            (target, stream, version, after, DELETE, limit)).fetchall()
        return [tuple(r) for r in rows]

    # -- runs --------------------------------------------------------------------------------------------
    def start_run(self, run_id: str, target: str) -> None:
        self.execute("INSERT INTO {p}runs (run_id, target, started_at, status) VALUES (?, ?, ?, 'running')",
                     (run_id, target, self.now()))
        self.commit()

    def finish_run(self, run_id: str, status: str, summary: str) -> None:
        self.execute("UPDATE {p}runs SET finished_at = ?, status = ?, summary = ? WHERE run_id = ?",
                     (self.now(), status, summary, run_id))
        self.commit()


class SQLiteLog(TransactionLog):
    """A transaction log in a local SQLite file (WAL, synchronous=NORMAL: durable when the process dies)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), timeout=60, isolation_level="DEFERRED")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA temp_store=MEMORY")
        self.conn.execute("PRAGMA cache_size=-8192")  # 8 MB: memory stays flat however big the log grows
        self.description = f"SQLite transaction log {self.path}"
        self._lock_fh: Any = None
        self.create_tables()

    def lock(self, target: str) -> None:
        import fcntl

        lock_path = self.path.with_name(f"{self.path.name}.{lock_number(target) & 0xFFFFFFFF:08x}.lock")
        fh = open(lock_path, "w")  # noqa: SIM115 - held for the whole run
        waited = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if not waited:
                    logger.warning("another target-edfi run is writing to %s through %s; waiting for it", target,
                                   self.path)
                    waited = True
                time.sleep(0.5)
        self._lock_fh = fh

    def unlock(self) -> None:
        if self._lock_fh is not None:
            with contextlib.suppress(OSError):
                self._lock_fh.close()
            self._lock_fh = None

    def close(self) -> None:
        self.unlock()
        super().close()


class PostgresLog(TransactionLog):
    """A transaction log in PostgreSQL (``postgresql://user@host:port/db``), tables in ``schema``."""

    placeholder = "%s"
    blob_type = "BYTEA"
    time_type = "TIMESTAMPTZ"
    id_column = "log_id BIGSERIAL PRIMARY KEY"

    def __init__(self, url: str, schema: str = "target_edfi") -> None:
        super().__init__()
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("a postgresql:// transaction_log needs psycopg: pip install 'psycopg[binary]'") \
                from exc
        from psycopg import sql

        check_schema_name(schema)
        self.schema = schema
        self.conn = psycopg.connect(url, autocommit=False)
        self.prefix = sql.Identifier(schema).as_string(self.conn) + "."
        self.description = f"PostgreSQL transaction log {safe_location(url)} schema {schema}"
        # first use by several loaders at once: the DDL runs under a transaction-level advisory lock (released
        # by the commit at the end of create_tables), so one creates and the others find the tables there
        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_number(f"target-edfi DDL {schema}"),))
        self.conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        self.create_tables()
        self._locked: int | None = None

    def _timestamp(self) -> Any:
        return dt.datetime.now(dt.timezone.utc)

    def _index_name_fix(self, stmt: str) -> str:
        # index names take no schema prefix in PostgreSQL (they live in their table's schema)
        return stmt.replace(f"INDEX IF NOT EXISTS {self.prefix}", "INDEX IF NOT EXISTS ")

    def execute(self, text: str, params: Sequence[Any] = ()) -> Any:
        sql = self.sql(text)
        if text.lstrip().upper().startswith("CREATE"):
            sql = self._index_name_fix(sql)
        return self.conn.execute(sql, params)

    def lock(self, target: str) -> None:
        key = lock_number(target)
        got = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
        if not got:
            logger.warning("another target-edfi run is writing to %s through this log; waiting for it", target)
            self.conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        self.conn.commit()
        self._locked = key

    def unlock(self) -> None:
        if self._locked is not None:
            with contextlib.suppress(Exception):
                self.conn.rollback()
                self.conn.execute("SELECT pg_advisory_unlock(%s)", (self._locked,))
                self.conn.commit()
            self._locked = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.commit()
        self.unlock()
        super().close()


def open_log(location: str, schema: str = "target_edfi") -> TransactionLog:
    """A SQLite file path (default) or a ``postgresql://`` URL."""
    if location.startswith(("postgresql://", "postgres://")):
        return PostgresLog(location, schema)
    path = location[len("sqlite:///"):] if location.startswith("sqlite:///") else location
    return SQLiteLog(os.path.expanduser(path))


__all__ = [
    "DELETE",
    "FAILED_COLUMNS",
    "KEY_CHANGE",
    "LOG_COLUMNS",
    "SPOOL_COLUMNS",
    "UPSERT",
    "LogRow",
    "PostgresLog",
    "SQLiteLog",
    "TransactionLog",
    "WorkRow",
    "open_log",
]
