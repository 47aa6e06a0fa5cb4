"""The spooling sink: every record of a stream, made ready and written to the transaction log's spool.

A record becomes one spool row: an upsert (cleaned payload, natural key, hashes), a delete (a record with
``_sdc_deleted_at``, or a row of tap-edfi's ``<stream>_deletes``) or a key change (a row of
``<stream>_key_changes``). Rows are buffered and written in batches (``batch_size_rows``, shared by all
streams, so memory stays bounded however many streams there are); nothing is sent until the end of the
input (:meth:`target_edfi.target.TargetEdFi.process_endofpipe`), when every record and its dependencies are
known.

The *source key* of a record is its stream's ``key_properties`` values (tap-edfi: the source API's ``id``),
or the natural key when the stream declares none. A later record of the same source key replaces an earlier
one still in the spool. A record that cannot be sent (unknown stream, schema violations, a descriptor value
that is not ``uri://...#...``, an incomplete natural key) is logged with its stream, source key and field
paths, recorded as failed in the transaction log, and never spooled.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from singer_sdk.sinks import Sink

from edfi_core.keys import canonical
from target_edfi.mapping import DELETES, ITEMS, KEY_CHANGES, Route
from target_edfi.payloads import DELETED_AT, Shaped, Shaper
from target_edfi.results import redact_values
from target_edfi.txlog import DELETE, KEY_CHANGE, UPSERT, TransactionLog

if TYPE_CHECKING:
    from target_edfi.results import Results
    from target_edfi.target import TargetEdFi

logger = logging.getLogger(__name__)

LOG_INVALID = 1000  # invalid records logged one by one per stream


def outline(value: Any, limit: int = 20) -> str:
    """What a message holds, without the values (source values are student data): its field names, or its type."""
    if isinstance(value, dict):
        names = [str(k) for k in list(value)[:limit]]
        more = f", ... {len(value) - limit} more" if len(value) > limit else ""
        return f"an object with fields {', '.join(names) or '(none)'}{more}"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    return f"a {type(value).__name__}"


def _short(value: Any, limit: int = 300) -> str:
    try:
        text = orjson.dumps(value, default=str).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class Spooler:
    """Buffered writes to the spool (and failure rows to the log), in one transaction per batch."""

    def __init__(self, log: TransactionLog, target: str, run_id: str, batch_rows: int) -> None:
        self.log = log
        self.target = target
        self.run_id = run_id
        self.batch_rows = max(1, batch_rows)
        self.rows: list[tuple] = []
        self.failures: list[tuple] = []
        self.superseded: list[tuple[str, str, str]] = []
        self.dead: list[tuple] = []  # dead letters of invalid records (FAILED_COLUMNS order)
        self.next_seq = log.max_seq(target) + 1
        self.first_seq = self.next_seq + 1  # rows spooled by this run have seq >= first_seq
        self.spooled = 0
        #: (resource, key hash) of records that failed validation in this run -> the record, named
        self.failed_keys: dict[tuple[str, str], str] = {}
        self._last_log = time.monotonic()

    def seq(self) -> int:
        self.next_seq += 1
        return self.next_seq

    def add(self, row: tuple) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch_rows:
            self.flush()

    def fail(self, row: tuple | None, spool_key: tuple[str, str, str] | None, dead: tuple | None = None) -> None:
        """A record that will not be sent: its log row (when it has a natural key), the spool row it replaces and
        its dead letter (payload and reason)."""
        if row is not None:
            self.failures.append(row)
        if spool_key is not None:
            self.superseded.append(spool_key)
        if dead is not None:
            self.dead.append(dead)
        if len(self.failures) >= self.batch_rows or len(self.superseded) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if not (self.rows or self.failures or self.superseded or self.dead):
            return
        if self.superseded:
            self.log.unspool(self.superseded)
        self.log.spool(self.rows)
        self.log.upsert_log(self.failures)
        if self.dead:
            self.log.dead_letter_rows(self.dead)
        self.log.commit()
        self.spooled += len(self.rows)
        self.rows, self.failures, self.superseded, self.dead = [], [], [], []
        now = time.monotonic()
        if now - self._last_log >= 15:
            self._last_log = now
            logger.info("spooled %d records", self.spooled)


class EdFiSink(Sink):
    """Spools the records of one stream for the Ed-Fi resource it maps to."""

    target: TargetEdFi

    def __init__(self, target: TargetEdFi, stream_name: str, schema: dict, key_properties: list[str] | None) -> None:
        self.target = target
        super().__init__(target, stream_name, schema, key_properties)
        self.route: Route | None = None
        self.shaper: Shaper | None = None
        #: the columns of the source key: ``source_keys`` of the target's config, else the stream's key_properties
        self.source_columns: list[str] = list(self.key_properties)
        self.source_only: frozenset[str] = frozenset()
        self.invalid = 0
        self._warned_unknown: set[str] = set()
        self._hinted_unknown = False

    # -- SDK hooks -------------------------------------------------------------------------------------
    def get_validator(self) -> None:
        """Records are checked against the Ed-Fi resource's schema (``validate``), not the stream's."""
        return None

    @property
    def max_size(self) -> int:
        return self.target.spooler.batch_rows

    def setup(self) -> None:
        self.route = self.target.routes.route(self.stream_name)
        if self.route is None:
            logger.error("stream %r maps to no resource of the Ed-Fi API: its records will not be sent. Name the "
                         "stream after a resource (students, student_school_associations, ed-fi/students) or set "
                         "resource_map", self.stream_name)
            return
        self.shaper = self.target.shaper(self.route.resource)
        configured = self.target.source_key_columns(self.stream_name)
        if configured is not None:
            if self.key_properties and list(self.key_properties) != configured:
                logger.info("stream %s: source key %s from source_keys (the tap says %s)", self.stream_name,
                            configured, list(self.key_properties))
            self.source_columns = configured
            columns = self.schema.get("properties") or {}
            absent = [c for c in configured if columns and c not in columns]
            if absent:
                logger.warning("stream %s: source_keys names %s, which the stream's schema does not have: records "
                               "without them are keyed by their natural key", self.stream_name, ", ".join(absent))
        # source identifiers that are not Ed-Fi fields (a vendor's row id) are not sent; a key column that is one
        # (``student_unique_id`` from tap-csv) is, renamed like any other column
        self.source_only = frozenset(k for k in self.source_columns if self.shaper.property_for(k) is None)
        logger.info("stream %s -> %s (%s%s)", self.stream_name, self.route.resource.path, self.route.how,
                    "" if self.route.kind == ITEMS else f", {self.route.kind}")

    def process_record(self, record: dict, context: dict) -> None:
        self.spool(record, None)

    def process_batch(self, context: dict) -> None:
        self.target.spooler.flush()

    # -- spooling ---------------------------------------------------------------------------------------
    @property
    def results(self) -> Results:
        return self.target.results

    def source_key(self, record: dict[str, Any], fallback: str | None) -> str | None:
        keys = self.source_columns
        if keys:
            values = {k: record.get(k) for k in keys}
            if all(v is not None for v in values.values()):
                return canonical(values).decode()
        return fallback

    def spool(self, record: dict[str, Any], version: int | None) -> None:
        route = self.route
        if route is None or self.shaper is None:
            self.results.unmapped_record(self.stream_name)
            return
        path = route.resource.path
        self.tally_record_read()
        self.record_counter_metric.increment()
        self.results.stream_record(self.stream_name, path)
        self.results.add(path, "records")
        if route.kind == ITEMS:
            if record.get(DELETED_AT):
                self._delete(record, self.shaper.key_only(record), version)
            else:
                self._upsert(record, version)
        elif route.kind == DELETES:
            self._delete(record, self.shaper.key_from_values(record.get("keyValues")), version)
        elif route.kind == KEY_CHANGES:
            self._key_change(record)

    def _spool_row(self, kind: str, source_key: str, item_key: str, key_hash: str | None, key_text: str | None,
                   payload_hash: str | None, payload: bytes | None, version: int | None,
                   descriptors: str | None = None) -> tuple:
        spooler = self.target.spooler
        assert self.route is not None
        return (spooler.target, self.stream_name, source_key, spooler.seq(), kind, self.route.resource.path,
                self.route.base_stream, item_key, key_hash, key_text, payload_hash, payload, descriptors, version, 0,
                self.target.log.now())

    def _upsert(self, record: dict[str, Any], version: int | None) -> None:
        assert self.shaper is not None
        source_key = self.source_key(record, None)
        if self.source_only:
            record = {k: v for k, v in record.items() if k not in self.source_only}
        shaped = self.shaper.shape(record)
        if shaped.problems.unknown:
            self._warn_unknown(shaped.problems.unknown)
        source_key = source_key or shaped.key_text
        if not shaped.ok or source_key is None:
            self._invalid(record, shaped, source_key, version)
            return
        self.target.spooler.add(self._spool_row(UPSERT, source_key, source_key, shaped.key_hash, shaped.key_text,
                                                shaped.body_hash(), shaped.body(), version,
                                                shaped.descriptor_text()))

    def _warn_unknown(self, paths: list[str]) -> None:
        """``unknown_fields: drop``: one warning per stream and field (the field's path, never its values)."""
        for path in paths:
            if path not in self._warned_unknown and len(self._warned_unknown) < 1000:
                self._warned_unknown.add(path)
                assert self.route is not None
                logger.warning("stream %s: field %s is not a property of %s: left out of every record "
                               "(unknown_fields: drop; `fail` fails such records instead)", self.stream_name, path,
                               self.route.resource.path)

    def _delete(self, record: dict[str, Any], shaped: Shaped, version: int | None) -> None:
        source_key = self.source_key(record, shaped.key_text)
        if source_key is None:
            self._invalid(record, shaped, None, version, deleting=True)
            return
        self.target.spooler.add(self._spool_row(DELETE, source_key, source_key, shaped.key_hash, shaped.key_text,
                                                None, None, version))

    def _key_change(self, record: dict[str, Any]) -> None:
        assert self.shaper is not None
        old = self.shaper.key_from_values(record.get("oldKeyValues"))
        new = self.shaper.key_from_values(record.get("newKeyValues"))
        item_id = record.get("id")
        source_key = self.source_key(record, None)
        if not item_id or source_key is None or not old.key_complete or not new.key_complete:
            self._invalid(record, old, source_key, None, note="a key change needs id and complete old and new keys")
            return
        item_key = canonical({"id": item_id}).decode()
        payload = orjson.dumps({"new": record.get("newKeyValues")})
        self.target.spooler.add(self._spool_row(KEY_CHANGE, source_key, item_key, old.key_hash, old.key_text, None,
                                                payload, None))

    def _invalid(self, record: dict[str, Any], shaped: Shaped, source_key: str | None, version: int | None,
                 deleting: bool = False, note: str = "") -> None:
        assert self.route is not None
        path = self.route.resource.path
        if deleting:
            message = "a delete record needs the stream's key properties or a complete natural key"
        else:
            message = note or shaped.error_text()
        example = shaped.natural_key if any(v is not None for v in shaped.natural_key.values()) else \
            {"source_key": source_key}
        self.results.fail(path, "invalid", _group(message), example)
        self.invalid += 1
        if not self._hinted_unknown and "is not a property of this resource" in message:
            self._hinted_unknown = True
            fields = [p for p, m in shaped.problems.items if m == "is not a property of this resource"]
            logger.error("stream %s: %s not a property of %s (unknown_fields: fail): set unknown_fields: drop to "
                         "leave such fields out, or name a row id column in source_keys", self.stream_name,
                         ", ".join(fields[:10]) + (" is" if len(fields) == 1 else " are"), path)
        if self.invalid <= LOG_INVALID:
            logger.error("stream %s, record %s: not sent: %s", self.stream_name, source_key or outline(record),
                         message)
            if logger.isEnabledFor(logging.DEBUG):  # the values only at DEBUG: they are source data
                logger.debug("stream %s, record %s: values: %s", self.stream_name, source_key or _short(record),
                             shaped.problems.values_text() or "-")
        elif self.invalid == LOG_INVALID + 1:
            logger.error("stream %s: more invalid records are not logged one by one: see the results and the "
                         "transaction log", self.stream_name)
        spooler = self.target.spooler
        row = None
        if shaped.key_complete and shaped.key_hash:
            row = (spooler.target, path, shaped.key_hash, shaped.key_text, None, None, None, None, False,
                   "invalid", None, message[:2000], 0, version, spooler.run_id, None, None, None,
                   self.target.log.now())
            if not deleting and len(spooler.failed_keys) < 100_000:
                spooler.failed_keys[(path, shaped.key_hash)] = (f"stream {self.stream_name}, source key "
                                                                f"{source_key}: invalid")
        dead = None
        if source_key and not deleting and not note:  # a record the API may judge: kept with its payload
            try:
                body, body_hash = shaped.body(), shaped.body_hash()
            except TypeError:  # not JSON-encodable (too deep): nothing to resend
                body = body_hash = None
            if body is not None:
                dead = (spooler.target, self.stream_name, source_key, UPSERT, path, self.route.base_stream,
                        source_key, shaped.key_hash, shaped.key_text, body_hash, body,
                        shaped.descriptor_text(), version, "invalid", None, message[:2000], None, 1, spooler.run_id,
                        self.target.log.now())
        spooler.fail(row, (spooler.target, self.stream_name, source_key) if source_key else None, dead)


def _group(message: str) -> str:
    """Validation messages grouped by field and problem, without the values."""
    return redact_values(message)[:300]


__all__ = ["EdFiSink", "Spooler"]
