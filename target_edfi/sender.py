"""Applying the spool to the API: ordered, concurrent, deferred, with deletes and key changes.

The order (:func:`send_order`) is the target's own ``/metadata/data/v3/dependencies`` (people de-duplicated to
their Create entry), or, when the API does not publish it, the order computed from the spec's references;
descriptors always come first. One apply (:meth:`Sender.apply`) then does:

1. **upserts, group by group** in that order. Inside a group, resources do not depend on each other, so their
   requests run concurrently on one bounded thread pool (``max_workers``; at most twice that many requests
   are queued, so memory stays flat however large the spool is). Per resource:

   a. ``key_change`` rows (tap-edfi's ``<stream>_key_changes``) tell the log which item a source item was
      before its key changed, fetching the old item's id from the API when the log does not know it;
   b. key changes are sent first: a source item (same source key) whose natural key differs from the one
      logged for it gets a PUT to its Ed-Fi id when the resource is key-updatable, else a POST of the new key
      and, when the API made a new item, a DELETE of the old one (in the delete phase);
   c. every other upsert: skipped without a request when the same payload was already accepted under the same
      natural key by this target, else POSTed (the API upserts by natural key: 201 created, 200 updated).

   A ``409`` unresolved reference is **deferred**: the row stays in the spool and is retried in the next pass
   over all groups, at most ``deferred_passes`` passes; what is left is then reported with the reference that
   could not be found.

   **Authorization order** (a client with relationship-based authorization, docs/authorization.md): a person
   (student, contact, parent, staff) whose upsert is an update is authorized through the person's associations
   (``StudentSchoolAssociation``, ...), which come later in the order; the dependencies document lists people
   twice for this (Create first, Update after the associations). A person's ``403`` is therefore sent once more
   in the next pass, after the associations; a second ``403``, and every other ``403``, is reported with the
   API's message and not sent again.
2. **delete_missing**: after a full-table stream's ``ACTIVATE_VERSION``, items this target sent for that
   stream before and did not see in this version become deletes.
3. **deletes, in reverse group order**: by the Ed-Fi id the log has for the source item (or natural key), else
   found by natural key through a GET. ``404`` counts as done; ``409`` (the item is still referenced) is
   reported.

A write counts as accepted only with the evidence the API gives (:func:`write_evidence`: ``Location`` on a POST,
``ETag``/``Location`` on a PUT, 204 on a DELETE, never an HTML body); a 2xx without it is sent again. An outcome
that says nothing about the record (no answer, 429, 5xx, such a 2xx, after every try) is *transient*: the row
stays in the spool (so do the rows that reference it), the run ends with status 3, and the next run sends it. A
rejected record (4xx, or invalid) leaves a dead letter (the ``failed`` table: payload, reason, and what it waits
for); :meth:`Sender._revive` puts dead letters back into the spool when that has been written, or with
``retry_failed``.

Every outcome is written to the transaction log and removed from the spool in batches (one transaction per
100 outcomes or 0.2 seconds, whichever comes first; no fsync per record): a run killed at any point resends at
most what was in flight or not yet committed, and a resent upsert of an unchanged payload changes nothing in the
API.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from singer_sdk import metrics

from edfi_core.auth import AuthError
from edfi_core.dependencies import (
    dependency_graph,
    dependency_items,
    load_order,
    parse_dependencies_json,
)
from edfi_core.keys import canonical, key_hash
from edfi_core.openapi import ApiModel, Resource
from edfi_core.session import EdFiClient, EdFiHTTPError, retry_summary, server_message
from edfi_core.transport import Reply, Transport
from target_edfi.payloads import Shaper, reference_keys
from target_edfi.results import EXAMPLES, Results, redact_values
from target_edfi.txlog import DELETE, KEY_CHANGE, UPSERT, LogRow, TransactionLog, WorkRow

logger = logging.getLogger(__name__)

PAGE = 1000  # spool rows read at a time
FLUSH_OUTCOMES = 100
FLUSH_SECONDS = 0.2
LOG_FAILURES = 100  # failures logged one by one per resource
LOOKUPS = 200  # dependencies of dead letters looked up in the target API per run (the log and spool are free)
#: natural keys of failed records (their dependents fail at once), and ids moved or deleted, remembered per run
MAX_FAILED_KEYS = 100_000
JSON_HEADERS = {"Content-Type": "application/json"}


# -- order -----------------------------------------------------------------------------------------------
def computed_order(model: ApiModel, known: dict[str, int] | None = None) -> dict[str, int]:
    """Order of every resource of the model: ``known`` orders kept, the others computed from references."""
    graph = dependency_graph(model, person_retry=False)
    known = dict(known or {})
    level: dict[str, int] = {}

    def visit(node: str, trail: frozenset[str]) -> int:
        if node in known:
            return known[node]
        if node in level:
            return level[node]
        deps = [d for d in graph.get(node, ()) if d in graph and d not in trail]
        value = 1 + max((visit(d, trail | {node}) for d in deps), default=0)
        level[node] = value
        return value

    return {res.path: visit(res.path, frozenset()) for res in model}


def send_order(client: EdFiClient, model: ApiModel) -> tuple[list[list[str]], str]:
    """Groups of resource paths in sending order, descriptors first; and where the order came from."""
    source = "the API's dependencies"
    try:
        body = client.get_json(client.urls.dependencies, auth=False)
        order = load_order(parse_dependencies_json(body))
        if not order:
            raise ValueError("empty dependency list")
    except (EdFiHTTPError, ValueError, KeyError, TypeError) as exc:
        logger.warning("no usable dependency order from %s (%s): computing it from the spec's references",
                       client.urls.dependencies, exc)
        order = load_order(dependency_items(model, person_retry=False))
        source = "the spec's references"
    missing = [res.path for res in model if res.path not in order]
    if missing:
        full = computed_order(model, {p: o for p, o in order.items() if model.get(p) is not None})
        for path in missing:
            order[path] = full[path]
        logger.info("%d resources not in %s placed by their references: %s", len(missing), source,
                    ", ".join(sorted(missing)[:10]))
    descriptors = sorted(r.path for r in model if r.is_descriptor)
    rest: dict[int, list[str]] = {}
    for path, o in order.items():
        res = model.get(path)
        if res is None or res.is_descriptor:
            continue
        rest.setdefault(o, []).append(path)
    groups = [descriptors] if descriptors else []
    groups += [sorted(rest[o]) for o in sorted(rest)]
    return groups, source


# -- operations --------------------------------------------------------------------------------------------
@dataclass
class Op:
    """One thing to do for one spool row (run in a worker thread)."""

    row: WorkRow
    resource: Resource
    action: str  # post | put | delete | lookup_delete
    body: bytes | None = None
    edfi_id: str | None = None
    natural_key: dict[str, Any] | None = None
    replaces: LogRow | None = None  # key change: the log row of the old natural key
    log_row: LogRow | None = None  # delete: the log row of what is deleted


@dataclass
class Outcome:
    op: Op
    action: str  # what was finally done: post | put | delete | lookup
    status: int | None
    kind: str  # ok | not_found | unresolved | dependent | conflict | failed | transient (kept in the spool)
    edfi_id: str | None = None
    message: str = ""
    requests: int = 1
    created: bool = False


def id_from_location(resp: Reply) -> str | None:
    location = resp.headers.get("Location") or resp.headers.get("location")
    if not location:
        return None
    return location.rstrip("/").rsplit("/", 1)[-1] or None


def write_evidence(resp: Reply, method: str) -> str | None:
    """``None`` when a 2xx answer to a write carries the evidence an Ed-Fi API gives, else what is missing.

    ODS/API 5.3, 6.1 and 7.3 (``DataManagementControllerBase``, see docs/write-answers.md) answer a POST with 201
    (created) or 200 (updated), a PUT with 204 (or 201), both with ``Location`` (the item's URL) and ``ETag`` and
    no body; a DELETE with 204 and no body. A 2xx without that (a proxy's ``200 text/html`` login page, a
    maintenance page) is not the API's answer: the write may not have happened.
    """
    status = resp.status_code
    if resp.content:  # the API's successful writes have no body: only then is the content type read
        content_type = (resp.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if content_type and "json" not in content_type:
            return f"HTTP {status} {content_type}, not the API's answer"
    if method == "POST":
        if status in (200, 201) and id_from_location(resp):
            return None
        return f"HTTP {status} without the Location of the item, not the API's answer"
    if method == "PUT":
        if status in (200, 201, 204) and (resp.headers.get("ETag") or resp.headers.get("Location")):
            return None
        return f"HTTP {status} without ETag or Location, not the API's answer"
    if method == "DELETE":
        if status == 204 or (status == 200 and not resp.content):
            return None
        return f"HTTP {status} with a body, not the API's answer to a DELETE"
    return None


def transient_status(status: int | None) -> bool:
    """A failure that says nothing about the record: no answer, 429, or a server error."""
    return status is None or status == 429 or status >= 500


def classify(resp: Reply, method: str | None = None) -> tuple[str, str]:
    """(kind, server message) of a final response; with ``method``, a 2xx must carry the API's evidence."""
    status = resp.status_code
    if 200 <= status < 300:
        if method is not None:
            missing = write_evidence(resp, method)
            if missing is not None:
                return "transient", missing
        return "ok", ""
    message = server_message(resp)  # type: ignore[arg-type]
    if transient_status(status):
        return "transient", message
    if status == 404:
        return "not_found", message
    if status == 409:
        low = message.lower()
        if "unresolved-reference" in low or "does not exist" in low:
            return "unresolved", message
        if "dependent-item-exists" in low or "referenced by" in low or "dependency of" in low:
            return "dependent", message
        return "conflict", message
    if status == 400 and "key-change-not-supported" in message.lower():
        return "key_change_not_supported", message
    return "failed", message


@dataclass
class _Pending:
    """Log writes waiting for the next flush."""

    log: list[tuple] = field(default_factory=list)
    removes: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    releases: list[tuple[int, str | None, str | None]] = field(default_factory=list)
    touches: list[tuple] = field(default_factory=list)
    unspool: list[tuple[str, str, str]] = field(default_factory=list)
    bumps: list[tuple[str, str, str]] = field(default_factory=list)
    spool: list[tuple] = field(default_factory=list)
    dead: list[tuple] = field(default_factory=list)  # failures: their spool rows are copied to the dead letters

    def __len__(self) -> int:
        return len(self.log) + len(self.unspool) + len(self.bumps) + len(self.touches)


class Sender:
    """Applies the spool of one target through one client."""

    def __init__(
        self,
        client: EdFiClient,
        model: ApiModel,
        log: TransactionLog,
        target: str,
        results: Results,
        run_id: str,
        groups: list[list[str]],
        *,
        max_workers: int = 8,
        deferred_passes: int = 3,
        validate: bool = True,
        shapers: Callable[[Resource], Shaper] | None = None,
        progress_interval: float = 15.0,
        retry_failed: bool = False,
        duplicate_keys: str = "last_wins",
        failed_keys: dict[tuple[str, str], str] | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.log = log
        self.target = target
        self.results = results
        self.run_id = run_id
        self.groups = groups
        self.max_workers = max(1, int(max_workers))
        self.max_inflight = 2 * self.max_workers
        self.deferred_passes = max(1, int(deferred_passes))
        self.validate = validate
        self.shaper_for = shapers or (lambda res: Shaper(res, validate))
        self.progress_interval = progress_interval
        self.http = Transport(client)
        #: the target is DMS (API v8): PUT bodies carry the id, a POST refused as a Create becomes a PUT
        self.dms = bool(client.info.is_dms)
        self._workers: Workers | None = None
        self._pending = _Pending()
        self._last_flush = time.monotonic()
        self._last_progress = time.monotonic()
        self._done = 0
        self._total = 0
        self._requests = 0
        self._started = time.monotonic()
        self._descriptors: dict[str, set[tuple[str, str]]] = {}
        self._descriptor_names: dict[tuple[str, str], Resource | None] = {}
        self._verified: set[str] = set()  # descriptor values found in the log or the target
        self._descriptors_fetched: set[str] = set()
        self._next_seq = log.max_seq(target) + 1
        self._deferred_rows = 0
        self._pass = 1
        self._authorization_waits: set[tuple[str, str]] = set()  # people sent again after their associations
        self._handled: set[tuple[str, str]] = set()
        self._failures_logged: dict[str, int] = {}
        self._waiting: set[tuple[str, str]] = set()  # (stream, source key) kept in the spool after transient outcomes
        self._held_keys: set[tuple[str, str]] = set()  # (resource, key hash) of upserts kept in the spool
        self.retry_failed = retry_failed
        self._dead: set[tuple[str, str]] = set()  # (stream, source key) of the target's dead letters
        #: (resource, key hash) -> whether the item is in the target, as far as this run found (_in_target)
        self._present: dict[tuple[str, str], bool] = {}
        self._lookups = 0  # dead letters' dependencies looked up in the target API in this run
        self._lookups_failed = ""  # why lookups in the target API stopped this run (no response)
        self.duplicate_keys = duplicate_keys
        #: (resource, key hash) of records that failed in this run -> the record, named (its dependents fail at once)
        self._failed_keys: dict[tuple[str, str], str] = dict(failed_keys or {})
        self._failed_paths = {path for path, _ in self._failed_keys}
        #: (resource, key hash) of old keys of key changes that another spooled record takes (their items stay)
        self._reclaimed: set[tuple[str, str]] = set()
        self._moved_ids: set[str] = set()  # Ed-Fi ids a PUT moved to another natural key in this run
        self._deleted_ids: set[str] = set()  # Ed-Fi ids deleted in this run
        self._unresolved: dict[tuple[str, str], str] = {}  # the API's message of a deferred record's last 409
        self._deferred_now: set[tuple[str, str]] = set()  # records deferred (409) while key changes are planned
        self._blocked: dict[tuple[str, str], str] = {}  # key changes waiting for another item to leave their key
        self._referenced: dict[str, set[str]] = {}  # resource -> the resources it references
        #: per resource of the group being sent: when its last outcome settled, and the streams it came from (the
        #: SDK's batch_processing_time timer of the sending, one METRIC line per resource and group)
        self._settled_at: dict[str, float] = {}
        self._settled_streams: dict[str, set[str]] = {}

    # -- driving -------------------------------------------------------------------------------------
    def apply(self, activations: dict[str, int] | None = None) -> None:
        self._revive()
        pending = self.log.pending(self.target)
        self._total = sum(sum(kinds.values()) for kinds in pending.values())
        if not self._total and not activations:
            logger.info("nothing to send")
            return
        logger.info("sending %d spooled records to %s", self._total, self.target)
        self._workers = Workers(self.max_workers, self._run)
        ok = False
        try:
            for n in range(1, self.deferred_passes + 1):
                self._deferred_rows = 0
                self._pass = n
                pending = self.log.pending(self.target)
                for group in self.groups:
                    todo = [p for p in group if pending.get(p, {}).get(UPSERT) or pending.get(p, {}).get(KEY_CHANGE)]
                    if todo:
                        self._upsert_group(todo)
                if not self._deferred_rows:
                    break
                if n < self.deferred_passes:
                    logger.info("pass %d: %d records wait for references; trying them again", n, self._deferred_rows)
            if self._deferred_rows:
                self._fail_deferred()
            if activations:
                self._delete_missing(activations)
            pending = self.log.pending(self.target)
            for group in reversed(self.groups):
                todo = [p for p in group if pending.get(p, {}).get(DELETE)]
                if todo:
                    self._delete_group(todo)
            leftovers = {p: k for p, k in self.log.pending(self.target).items() if k}
            waiting = self.results.waiting_by_resource()
            for path, kinds in leftovers.items():  # a resource outside the order (should not happen)
                if sum(kinds.values()) > waiting.get(path, 0):
                    logger.error("%s: %s spooled rows were not applied (resource not in the send order, or "
                                 "waiting after transient failures: %d)", path, kinds, waiting.get(path, 0))
            ok = True
        finally:
            for outcome in self._workers.stop(abort=not ok):  # what finished is kept; what did not start stays
                self._settle(outcome)                           # in the spool
            self.http.close()
            self._flush()
            self._log_progress(force=True)

    # -- dead letters ---------------------------------------------------------------------------------------
    def _revive(self) -> None:
        """Rejected records of earlier runs go back into the spool: all of them with ``retry_failed``, else those
        that waited for something (a referenced item, a descriptor value) that has been written since or is
        spooled now. A newer record of the same source item, spooled already, wins."""
        self._dead = self.log.failed_keys(self.target)
        if not self._dead:
            return
        if self.retry_failed:
            keys = sorted(self._dead)
        else:
            keys = [(stream, key) for stream, key, depends in self.log.failed_depends(self.target)
                    if self._written(depends)]
        if not keys:
            return
        first = self._next_seq + 1
        self._next_seq += len(keys) + 1
        revived = self.log.revive(self.target, keys, first, self.log.now())
        self.log.commit()
        if not revived:
            return
        by_resource = self.log.execute("SELECT resource, COUNT(*) FROM {p}spool WHERE target = ? AND seq >= ? "
                                       "AND seq < ? GROUP BY resource", (self.target, first, self._next_seq)).fetchall()
        for resource, n in by_resource:
            self.results.add(resource, "retried_failed", int(n))
        logger.info("%d rejected records of earlier runs are sent again (%s)", revived,
                    "retry_failed" if self.retry_failed else "what they reference was written since")

    def _written(self, depends: str) -> bool:
        """Whether every item a dead letter waited for is there now (:meth:`_in_target`, with the spool and at most
        ``LOOKUPS`` API lookups a run). ``depends`` has one line per item, alternatives joined by ``|``, each
        ``resource<TAB>key hash<TAB>natural key``."""
        for line in depends.split("\n"):
            found = False
            for part in line.split("|"):
                path, _, rest = part.partition("\t")
                khash, _, natural = rest.partition("\t")
                try:
                    values = orjson.loads(natural) if natural else None
                except ValueError:
                    values = None
                if self._in_target(path, khash, values if isinstance(values, dict) else None, spool=True,
                                   capped=True):
                    found = True
                    break
            if not found:
                return False
        return True

    def _in_target(self, path: str, khash: str, natural_key: dict[str, Any] | None, *, spool: bool = False,
                   capped: bool = False) -> bool:
        """Whether the item of ``path`` with key hash ``khash`` is in the target: live in the log (written by this
        target), with ``spool`` also upserted in the spool (about to be sent), else found by ``natural_key`` in the
        target API (written by someone else). The log and spool are asked each time until the item is found (this
        run may write it); the API once per item and run (``_present``), and with ``capped`` only while fewer than
        ``LOOKUPS`` capped lookups were made this run. A lookup that fails counts as not found: an error answer is
        logged at DEBUG; no response at all (the API unreachable) is a WARNING once, and no more lookups are made
        this run (each would wait through every retry)."""
        key = (path, khash)
        if self._present.get(key):
            return True
        if self.log.is_live(self.target, path, khash) or (spool and self.log.spooled_upsert(self.target, path, khash)):
            self._present[key] = True
            return True
        if key in self._present:
            return False  # looked up in the API this run: not there
        res = self.model.get(path)
        if not natural_key or res is None or self._lookups_failed or (capped and self._lookups >= LOOKUPS):
            return False
        if capped:
            self._lookups += 1
        self._requests += 1
        try:
            found = self._find(res, natural_key) is not None
        except EdFiHTTPError as exc:
            if exc.status is None and exc.response is None:
                # the URL carries the natural key (student data): only the path and the reason are logged
                self._lookups_failed = f"GET {self.client.data_url(path)}: no response: {exc.server_message}"
                logger.warning("cannot look items up by natural key in the target API (%s, after %d tries): no "
                               "more lookups this run; dead letters waiting for items written by others stay "
                               "rejected, and unresolved references are reported as not in the target",
                               self._lookups_failed, exc.tries)
                return False
            logger.debug("cannot look up %s %s: %s", path, natural_key, exc)
            found = False
        except ValueError as exc:  # a JSON answer that does not parse
            logger.debug("cannot look up %s %s: %s", path, natural_key, exc)
            found = False
        self._present[key] = found
        return found

    def _depends(self, res: Resource, row: WorkRow, status: int | str | None) -> str | None:
        """What a rejected record waits for: the references the target does not have (409), the descriptor values
        it does not know (invalid); ``None`` when it waits for nothing that can be written."""
        lines: list[str] = []
        try:
            if status == 409 and row.kind == UPSERT:
                payload = row.payload or self.log.spooled_payload(self.target, row.stream, row.source_key)
                for _prop, options in reference_keys(self.model, res, orjson.loads(payload or b"{}")):
                    alts = [(target.path, key_hash(values), canonical(values).decode()) for target, values in options]
                    if not any(self.log.is_live(self.target, path, khash) for path, khash, _ in alts):
                        lines.append("|".join("\t".join(alt) for alt in alts))
            elif status == "invalid" and row.descriptors:
                for entry in row.descriptors.split("\n"):
                    field_path, _, value = entry.partition("\t")
                    desc = self._descriptor_of(value, field_path)
                    if desc is None or value in self._verified:
                        continue
                    namespace, _, code = value.partition("#")
                    values = {"codeValue": code, "namespace": namespace}
                    lines.append(f"{desc.path}\t{key_hash(values)}\t{canonical(values).decode()}")
        except (ValueError, TypeError):  # a payload that cannot be read: it waits for nothing in particular
            return None
        return "\n".join(lines) or None

    # -- concurrency -------------------------------------------------------------------------------------
    def _submit(self, op: Op) -> None:
        assert self._workers is not None
        while self._workers.pending >= self.max_inflight:
            self._collect(block=True)
        self._workers.submit(op)

    def _collect(self, block: bool) -> None:
        assert self._workers is not None
        for outcome in self._workers.results(block):
            self._settle(outcome)
        self._maybe_flush()

    def _barrier(self) -> None:
        assert self._workers is not None
        while self._workers.pending:
            self._collect(block=True)
        self._flush()

    # -- upserts ---------------------------------------------------------------------------------------------
    def _upsert_group(self, paths: list[str]) -> None:
        started = time.time()
        try:
            self._send_upsert_group(paths)
        finally:
            self._time_group(paths, started, "upsert")

    def _time_group(self, paths: list[str], started: float, phase: str) -> None:
        """One ``batch_processing_time`` timer (the SDK's format) per resource of a dependency group that sent
        something: from the group's start to the resource's last settled outcome."""
        log = metrics.get_metrics_logger()
        for path in paths:
            last = self._settled_at.pop(path, None)
            streams = self._settled_streams.pop(path, set())
            if last is None:
                continue
            metrics.log(log, metrics.Point("timer", metrics.Metric.BATCH_PROCESSING_TIME, round(last - started, 6), {
                metrics.Tag.STREAM: ",".join(sorted(streams)) or path, "resource": path, "phase": phase,
                metrics.Tag.STATUS: metrics.Status.SUCCEEDED, metrics.Tag.PID: os.getpid()}))

    def _send_upsert_group(self, paths: list[str]) -> None:
        resources = [r for p in paths if (r := self.model.get(p)) is not None]
        for res in resources:
            self._prime_key_changes(res)
        self._barrier()
        for res in resources:
            self._dedup(res)
        self._flush()
        self._handled = set()  # key changes sent in this pass: not planned again with the other upserts
        for res in resources:
            if self.log.has_key_change_candidates(self.target, res.path):
                moves = self.log.key_change_work(self.target, res.path)
                if moves:
                    self._plan_moves(res, moves)
        self._barrier()
        for res in resources:
            after = -1
            while True:
                rows = self.log.work(self.target, res.path, UPSERT, after, PAGE)
                if not rows:
                    break
                for row in rows:
                    self._plan_upsert(res, row)
                after = rows[-1].seq
                self._collect(block=False)
        self._barrier()

    def _dedup(self, res: Resource) -> None:
        """One natural key from several source items in this run: the last in input order is sent (the others
        count as ``duplicates``), or, with ``duplicate_keys: fail``, none of them (each a named failure)."""
        for khash, rows in self.log.duplicate_keys(self.target, res.path):
            natural_key = rows[-1][3]
            example = {"natural_key": orjson.loads(natural_key) if natural_key else None,
                       "source_keys": [f"{stream} {source_key}" for stream, source_key, _, _ in rows[-EXAMPLES:]],
                       "sent": None if self.duplicate_keys == "fail" else f"{rows[-1][0]} {rows[-1][1]}"}
            sources = ", ".join(f"{stream} {source_key}" for stream, source_key, _, _ in rows[:5])
            if self.duplicate_keys == "fail":
                for stream, source_key, seq, nkey in rows:
                    work = WorkRow(stream, source_key, seq, UPSERT, stream, source_key, khash, nkey, None, None,
                                   None, None, 0, None, None)
                    self._fail(res, work, "duplicate", f"{len(rows)} source items have this natural key in this "
                               f"run ({sources}): none is sent (duplicate_keys is fail)", work.key_hash, nkey,
                               group="several source items have this natural key in this run (duplicate_keys "
                                     "is fail)")
                    self._done += 1
                continue
            *losers, (w_stream, w_key, _, _) = rows
            for stream, source_key, _, _ in losers:
                self.results.add(res.path, "duplicates")
                self._pending.unspool.append((self.target, stream, source_key))
                self._done += 1
            self.results.duplicate(res.path, example)
            logged = self._failures_logged[res.path] = self._failures_logged.get(res.path, 0) + 1
            if logged <= LOG_FAILURES:
                logger.warning("%s: %d source items have one natural key in this run (%s): the last in input order "
                               "(stream %s, source key %s) is sent, the others are not (duplicate_keys is "
                               "last_wins)", res.path, len(rows), sources, w_stream, w_key)

    def _plan_moves(self, res: Resource, rows: list[WorkRow]) -> None:
        """Key changes of one resource, in an order in which no natural key is taken twice.

        The old key of a source item that moves may be taken by another record of this run (a swap, a chain, a new
        item): that old item is then overwritten in place by that record, never deleted. Where the resource is
        key-updatable, an item is PUT to its new key once the item holding that key (moving too) has left it:
        chains are sent from their end, one step after another; what is left are cycles (every new key still held
        by another moving item), whose records are POSTed in place (the API upserts by natural key).
        """
        for row in rows:
            self._handled.add((row.stream, row.source_key))
        olds = {row.by_source.key_hash for row in rows if row.by_source is not None}
        for khash in self.log.claimed_keys(self.target, res.path, olds):
            self._reclaimed.add((res.path, khash))
        if not self._key_updatable(res):
            for row in rows:
                self._plan_upsert(res, row, how="post")
            return
        pending = rows
        while pending:
            vacating = {row.by_source.key_hash for row in pending if row.by_source is not None}
            ready = [row for row in pending if row.key_hash not in vacating]
            if not ready:  # cycles: each new key is held by another item that moves
                for row in pending:
                    self._plan_upsert(res, row, how="post")
                return
            self._deferred_now = set()
            for row in ready:
                self._plan_upsert(res, row, how="put")
            self._barrier()
            sent = {id(row) for row in ready}
            pending = [row for row in pending if id(row) not in sent]
            # an item that could not move yet (deferred: a reference it needs is not there) still holds its old
            # key: what would move into that key waits for the next pass too
            held = {row.by_source.key_hash: row for row in ready
                    if row.by_source is not None and ((row.stream, row.source_key) in self._deferred_now
                                                   or (row.stream, row.source_key) in self._waiting)}
            while held:
                blocked = [row for row in pending if row.key_hash in held]
                for row in blocked:
                    holder = held[row.key_hash]
                    self._blocked[(row.stream, row.source_key)] = (
                        f"key change not sent: its new natural key is held by the item of stream {holder.stream}, "
                        f"source key {holder.source_key}, whose own key change waits for a reference")
                held = {row.by_source.key_hash: row for row in blocked if row.by_source is not None}
                for row in blocked:
                    self.results.add(res.path, "deferred")
                    self._pending.bumps.append((self.target, row.stream, row.source_key))
                    self._deferred_rows += 1
                gone = {id(row) for row in blocked}
                pending = [row for row in pending if id(row) not in gone]

    def _plan_upsert(self, res: Resource, row: WorkRow, how: str | None = None) -> None:
        if how is None and row.unchanged:
            k = row.by_key
            assert k is not None
            self.results.add(res.path, "skipped_unchanged")
            if (k.source_key != row.item_key or k.source_stream != row.source_stream
                    or (row.version is not None and k.stream_version != row.version)):
                self._pending.touches.append((row.source_stream, row.item_key, row.version, self.run_id,
                                              self.log.now(), k.log_id))
            self._pending.unspool.append((self.target, row.stream, row.source_key))
            self._done += 1
            return
        if how is None and (row.stream, row.source_key) in self._handled:
            return  # sent as a key change in this pass
        if (row.stream, row.source_key) in self._waiting:
            return  # a transient outcome in this run: it waits in the spool for the next run
        if row.payload is None:  # not expected: the query leaves out payloads of unchanged rows only
            row.payload = self.log.spooled_payload(self.target, row.stream, row.source_key)
            if row.payload is None:
                return
        if self.validate and row.descriptors:
            problem = self._check_descriptors(res, row)
            if problem:
                self._fail(res, row, "invalid", problem, row.key_hash, row.natural_key)
                return
        if self._failed_paths:
            parent = self._failed_parent(res, row)
            if parent is not None:
                self._fail(res, row, "not sent", parent[0], row.key_hash, row.natural_key, group=parent[1])
                self._done += 1
                return
        if how is not None or row.key_changed:
            p = row.by_source
            assert p is not None
            if how == "put" or (how is None and self._key_updatable(res)):
                self._submit(Op(row, res, "put", body=row.payload, edfi_id=p.edfi_id, replaces=p))
            else:
                self._submit(Op(row, res, "post", body=row.payload, replaces=p))
            return
        self._submit(Op(row, res, "post", body=row.payload))

    def _key_updatable(self, res: Resource) -> bool:
        """Whether a key change is a PUT to the item: key-updatable resources, and people on 6.x."""
        if res.key_updatable:
            return True
        return res.is_person and self.client.info.person_key_updates  # the root was read at start

    def _failed_parent(self, res: Resource, row: WorkRow) -> tuple[str, str] | None:
        """(message, group) when the record references an item whose record failed in this run and that the target
        does not have: it cannot land, so it fails at once as that record's dependent."""
        targets = self._referenced.get(res.path)
        if targets is None:
            targets = self._referenced[res.path] = {t.path for ref in res.references
                                                    for t in self.model.reference_targets(ref)}
        if not targets & self._failed_paths or row.payload is None:
            return None
        for prop, options in reference_keys(self.model, res, orjson.loads(row.payload)):
            hits = [(t, v) for t, v in options if (t.path, key_hash(v)) in self._failed_keys]
            if not hits or any(self.log.is_live(self.target, t.path, key_hash(v)) for t, v in options):
                continue
            t, values = hits[0]
            parent = self._failed_keys[(t.path, key_hash(values))]
            return (f"{prop}: the referenced {t.entity} {canonical(values).decode()} failed in this run ({parent}): "
                    "not sent", f"{prop}: the referenced {t.entity} failed in this run")
        return None

    # -- key changes (tap-edfi's <stream>_key_changes) ---------------------------------------------------------
    def _prime_key_changes(self, res: Resource) -> None:
        """Make the log know the old key of every source item whose key changed, before its upsert is planned."""
        shaper = self.shaper_for(res)
        after = -1
        while True:
            rows = self.log.work(self.target, res.path, KEY_CHANGE, after, PAGE)
            if not rows:
                break
            for row in rows:
                if (row.stream, row.source_key) in self._waiting:
                    continue  # kept in the spool after a transient outcome in this run
                try:
                    self._prime(res, shaper, row)
                except EdFiHTTPError as exc:
                    if transient_status(exc.status):  # no answer from the API: not a verdict
                        self._hold(res, row, exc.status, f"key change: {exc.server_message or exc}")
                        if self._has_upsert(row):  # the item's own record waits with its key change
                            self._waiting.add((row.source_stream, row.item_key))
                            self.results.wait(res.path, "waiting", "its key change waits in the spool")
                        continue
                    self._fail(res, row, exc.status, f"key change: {exc.server_message or exc}", row.key_hash,
                               row.natural_key)
                    continue
                self._pending.unspool.append((self.target, row.stream, row.source_key))
                self.results.add(res.path, "key_change_rows")
                self._done += 1
            after = rows[-1].seq
        self._flush()

    def _prime(self, res: Resource, shaper: Shaper, row: WorkRow) -> None:
        change = orjson.loads(row.payload or b"{}")
        new = shaper.key_from_values(change.get("new"))
        if not new.key_complete or row.key_hash is None:
            logger.debug("%s: key change without complete keys: %s", res.path, change)
            return
        new_row = self.log.log_row(self.target, res.path, new.key_hash or "")
        if new_row is not None and new_row.live and new_row.source_key == row.item_key:
            return  # already applied
        old = row.by_key
        if old is not None and old.live:
            if (old.source_key is not None and old.source_key != row.item_key
                    and old.source_stream == row.source_stream):
                return  # another item of the same source holds the old key by now: it is not this item's any more
            if old.source_key != row.item_key or old.source_stream != row.source_stream:
                self._pending.touches.append((row.source_stream, row.item_key, None, self.run_id, self.log.now(),
                                              old.log_id))
                self._flush()
            edfi_id = old.edfi_id
        else:
            old_key = orjson.loads(row.natural_key or "{}")
            edfi_id = self._find(res, old_key)
            if edfi_id is None:
                return  # the target never had the old key: the upsert of the new one is all there is to do
            self._pending.log.append(self._log_tuple(
                res, row.key_hash, row.natural_key or "{}", source_stream=row.source_stream, source_key=row.item_key,
                edfi_id=edfi_id, status="found", http_status=200, attempts=0))
            self._flush()
        if not self._has_upsert(row):
            self._synthesize_upsert(res, shaper, row, edfi_id, change.get("new") or {})

    def _has_upsert(self, row: WorkRow) -> bool:
        found = self.log.execute("SELECT 1 FROM {p}spool WHERE target = ? AND stream = ? AND source_key = ?",
                                 (self.target, row.source_stream, row.item_key)).fetchone()
        return found is not None

    def _synthesize_upsert(self, res: Resource, shaper: Shaper, row: WorkRow, edfi_id: str | None,
                           new_values: dict[str, Any]) -> None:
        """A key change without the item's record: the item as the target has it, with its new key values."""
        if not edfi_id:
            return
        resp = self.http.request("GET", f"{self.client.data_url(res.path)}/{edfi_id}")
        self._requests += 1
        if resp.status_code != 200:
            logger.warning("%s: key change of %s: the target has no item %s (HTTP %s)", res.path, row.item_key,
                           edfi_id, resp.status_code)
            return
        doc = orjson.loads(resp.content)
        for name, value in new_values.items():
            path = res.key_paths.get(name)
            if not path:
                continue
            node = doc
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
        shaped = shaper.shape(doc)
        if not shaped.key_complete:
            return
        self._pending.spool.append((
            self.target, row.source_stream, row.item_key, self._seq(), UPSERT, res.path, row.source_stream,
            row.item_key, shaped.key_hash, shaped.key_text, shaped.body_hash(), shaped.body(),
            shaped.descriptor_text(), None, 0, self.log.now()))
        self._flush()

    # -- deletes -----------------------------------------------------------------------------------------------
    def _delete_group(self, paths: list[str]) -> None:
        started = time.time()
        try:
            self._send_delete_group(paths)
        finally:
            self._time_group(paths, started, "delete")

    def _send_delete_group(self, paths: list[str]) -> None:
        for path in paths:
            res = self.model.get(path)
            if res is None:
                continue
            after = -1
            while True:
                rows = self.log.work(self.target, path, DELETE, after, PAGE)
                if not rows:
                    break
                for row in rows:
                    self._plan_delete(res, row)
                after = rows[-1].seq
                self._collect(block=False)
        self._barrier()

    def _plan_delete(self, res: Resource, row: WorkRow) -> None:
        explicit = orjson.loads(row.payload) if row.payload else {}
        if explicit.get("edfi_id"):
            edfi_id, k = explicit["edfi_id"], row.by_key
            if self._keeps(row, edfi_id):
                logger.debug("%s: %s not deleted: a source item of this run holds it", res.path, edfi_id)
                self._pending.unspool.append((self.target, row.stream, row.source_key))
                self._done += 1
                return
            logged = k if k is not None and k.edfi_id == edfi_id else None
            self._submit(Op(row, res, "delete", edfi_id=edfi_id, log_row=logged))
            return
        p, k = row.by_source, row.by_key
        target: LogRow | None = None
        if p is not None and p.live:
            target = p
        elif k is not None and k.live:
            if k.source_key and k.source_key != row.item_key and k.source_stream == row.source_stream:
                # another source item holds this natural key now (deleted and re-created in the source)
                self.results.add(res.path, "superseded")
                self._pending.unspool.append((self.target, row.stream, row.source_key))
                self._done += 1
                return
            target = k
        elif (p is not None and p.deleted) or (k is not None and k.deleted):
            self.results.add(res.path, "already_deleted")
            self._pending.unspool.append((self.target, row.stream, row.source_key))
            self._done += 1
            return
        if target is not None:
            self._submit(Op(row, res, "delete", edfi_id=target.edfi_id, log_row=target))
        elif row.natural_key is not None:
            self._submit(Op(row, res, "lookup_delete", natural_key=orjson.loads(row.natural_key)))
        else:
            self._fail(res, row, "not sent", "cannot find the item to delete: the log has no item for this source "
                       "key and the record has no complete natural key", None, None)

    def _keeps(self, row: WorkRow, edfi_id: str) -> bool:
        """Whether a delete the sender planned itself (the old item of a key change, delete_missing) concerns an
        item a live source item holds: never deleted."""
        if edfi_id in self._moved_ids or edfi_id in self._deleted_ids:
            return True  # moved to another key by a PUT in this run, or deleted already
        k = row.by_key
        if k is None or not k.live or k.edfi_id != edfi_id or k.source_key is None:
            return False
        if _internal(row) == "replaced":
            return True  # the old key was taken over by another source item after its own moved away
        # delete_missing: a row that was seen in this version (or later) since
        return row.version is not None and k.stream_version is not None and k.stream_version >= row.version

    def _delete_missing(self, activations: dict[str, int]) -> None:
        """Items a full-table stream sent earlier and did not send in its latest version become deletes."""
        for stream, version in activations.items():
            after, found = 0, 0
            while True:
                stale = self.log.stale(self.target, stream, version, after)
                if not stale:
                    break
                for log_id, resource, khash, natural_key, edfi_id in stale:
                    self._pending.spool.append((
                        self.target, f"{stream}#missing", edfi_id, self._seq(), DELETE, resource, stream, "",
                        khash, natural_key, None, orjson.dumps({"edfi_id": edfi_id}), None, version, 0,
                        self.log.now()))
                    after = log_id
                found += len(stale)
                self._total += len(stale)
                self._flush()
            if found:
                logger.info("delete_missing: %d items stream %s sent before version %s are gone from the source",
                            found, stream, version)

    # -- the worker side ---------------------------------------------------------------------------------------
    def _run(self, op: Op) -> Outcome:
        url = self.client.data_url(op.resource.path)
        try:
            if op.action == "post":
                return self._post(op, url)
            if op.action == "put":
                resp, tries = self._write("PUT", f"{url}/{op.edfi_id}", self._put_body(op.body, op.edfi_id))
                kind, message = classify(resp, "PUT")
                if kind in ("not_found", "conflict", "key_change_not_supported"):
                    # gone, or the new key is taken, or the API refuses key changes: post the new key
                    # (and delete the old item afterwards if it still exists)
                    outcome = self._post(op, url)
                    outcome.requests += tries
                    return outcome
                return Outcome(op, "put", resp.status_code, kind, op.edfi_id if kind == "ok" else None, message,
                               requests=tries)
            if op.action == "delete":
                resp, tries = self._write("DELETE", f"{url}/{op.edfi_id}", None)
                kind, message = classify(resp, "DELETE")
                return Outcome(op, "delete", resp.status_code, kind, op.edfi_id, message, requests=tries)
            if op.action == "lookup_delete":
                assert op.natural_key is not None
                edfi_id = self._find(op.resource, op.natural_key)
                if edfi_id is None:
                    return Outcome(op, "lookup", 404, "not_found", None, "not found by natural key")
                resp, tries = self._write("DELETE", f"{url}/{edfi_id}", None)
                kind, message = classify(resp, "DELETE")
                return Outcome(op, "delete", resp.status_code, kind, edfi_id, message, requests=1 + tries)
            raise ValueError(op.action)
        except EdFiHTTPError as exc:
            kind = "transient" if transient_status(exc.status) or 200 <= (exc.status or 0) < 300 else "failed"
            return Outcome(op, op.action, exc.status, kind, None,
                           f"{exc.server_message or 'no response'} (after {exc.tries} tries)")
        except AuthError:
            raise  # the credentials stopped working: the run stops, the spool keeps everything
        except Exception as exc:  # anything else is this record's problem: it fails, named, and the run goes on
            logger.debug("%s %s failed", op.action, op.resource.path, exc_info=True)
            return Outcome(op, op.action, None, "failed", None, f"{type(exc).__name__}: {str(exc)[:300]}")

    def _write(self, method: str, url: str, body: bytes | None) -> tuple[Reply, int]:
        """Send a write (the transport retries 429, 5xx, timeouts and drops); a 2xx that is not the API's answer
        (:func:`write_evidence`) is sent again, up to ``max_tries`` in all. The last answer and the tries made."""
        tries = max(1, int(self.client.max_tries))
        headers = JSON_HEADERS if body is not None else None
        resp = self.http.request(method, url, data=body, headers=headers)
        for attempt in range(1, tries):
            if not 200 <= resp.status_code < 300:
                return resp, attempt
            missing = write_evidence(resp, method)
            if missing is None:
                return resp, attempt
            delay = min(float(self.client.backoff_max), float(self.client.backoff_factor) * (2 ** (attempt - 1)))
            wait = delay / 2 + random.uniform(0, delay / 2)
            first = self.client.stats.count_retry("not the API's answer")  # one warning, then the progress lines
            logger.log(logging.WARNING if first else logging.DEBUG, "%s %s: %s; retry %d/%d in %.1fs", method, url,
                       missing, attempt, tries - 1, wait)
            time.sleep(wait)
            resp = self.http.request(method, url, data=body, headers=headers)
        return resp, tries

    def _post(self, op: Op, url: str) -> Outcome:
        resp, tries = self._write("POST", url, op.body)
        kind, message = classify(resp, "POST")
        if resp.status_code == 403 and self.dms:
            # DMS authorizes every POST as a Create, also one that updates an existing item: a client whose claim
            # set may update but not create the resource gets 403. The item exists: update it by id, with If-Match
            updated = self._update_existing(op, url)
            if updated is not None:
                updated.requests += tries
                return updated
        edfi_id = id_from_location(resp) if kind == "ok" else None
        return Outcome(op, "post", resp.status_code, kind, edfi_id, message, created=resp.status_code == 201,
                       requests=tries)

    def _put_body(self, body: bytes | None, edfi_id: str | None) -> bytes | None:
        """A PUT's body: DMS requires the item's ``id`` in it (ValidateMatchingDocumentUuidsMiddleware); the
        ODS/API gets the payload as it is."""
        if not self.dms or body is None or edfi_id is None:
            return body
        return orjson.dumps({"id": edfi_id, **orjson.loads(body)})

    def _update_existing(self, op: Op, url: str) -> Outcome | None:
        """The PUT (with ``If-Match``: the ``_etag`` just read) of a refused POST's payload to the item that has its
        natural key; None when there is no such item (the 403 stands). A 412 (changed in between) reads again."""
        known = op.row.by_key.edfi_id if op.row.by_key is not None else None
        edfi_id = known or self._find(op.resource, op.resource.natural_key(orjson.loads(op.body or b"{}")))
        if edfi_id is None:
            return None
        requests_made = 0 if known else 1
        for _ in range(2):
            got = self.http.request("GET", f"{url}/{edfi_id}")
            requests_made += 1
            if got.status_code != 200:
                return None
            etag = (orjson.loads(got.content) or {}).get("_etag")
            headers = {**JSON_HEADERS, **({"If-Match": f'"{etag}"'} if etag else {})}
            resp = self.http.request("PUT", f"{url}/{edfi_id}", data=self._put_body(op.body, edfi_id),
                                     headers=headers)
            requests_made += 1
            if resp.status_code != 412:
                break
        kind, message = classify(resp, "PUT")
        return Outcome(op, "post", resp.status_code, kind, edfi_id if kind == "ok" else None, message,
                       requests=requests_made)

    def _find(self, res: Resource, natural_key: dict[str, Any]) -> str | None:
        """The Ed-Fi id of an item, found by its natural key (a GET with the key as query parameters)."""
        params = {k: v for k, v in natural_key.items() if v is not None}
        if len(params) != len(res.key_paths):
            return None
        resp = self.http.request("GET", self.client.data_url(res.path), params=params)
        if resp.status_code == 404:
            return None
        if not resp.ok:
            raise EdFiHTTPError("GET", self.client.data_url(res.path), resp.status_code,
                                server_message(resp))  # type: ignore[arg-type]
        content_type = (resp.headers.get("Content-Type") or "").lower()
        if resp.content and "json" not in content_type:
            raise EdFiHTTPError("GET", self.client.data_url(res.path), None,
                                f"HTTP {resp.status_code} {content_type.split(';')[0] or 'without a content type'}, "
                                "not the API's answer", response=resp)
        items = orjson.loads(resp.content or b"[]")
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and key_hash(res.natural_key(item)) == key_hash(natural_key):
                return item.get("id")
        return None

    # -- settling outcomes (main thread) ---------------------------------------------------------------------
    def _settle(self, out: Outcome) -> None:
        op, row, res = out.op, out.op.row, out.op.resource
        self._settled_at[res.path] = time.time()
        self._settled_streams.setdefault(res.path, set()).add((row.source_stream or row.stream).split("#")[0])
        self._requests += out.requests
        self.results.add(res.path, "requests", out.requests)
        if out.action in ("post", "put"):
            self._settle_write(out)
        else:
            self._settle_delete(out)
        self._done += 0 if (out.kind == "unresolved" and op.action in ("post", "put")) else 1
        self._log_progress()

    def _settle_write(self, out: Outcome) -> None:
        op, row, res = out.op, out.op.row, out.op.resource
        if out.kind == "transient":
            self._hold(res, row, out.status, out.message)
            return
        if out.kind == "unresolved":
            self._unresolved[(row.stream, row.source_key)] = out.message[:500]
            self._deferred_now.add((row.stream, row.source_key))
            self.results.add(res.path, "deferred")
            self._pending.bumps.append((self.target, row.stream, row.source_key))
            self._deferred_rows += 1
            return
        if out.status == 403 and self._authorization_order(res, row):
            return
        if out.kind != "ok":
            self._fail(res, row, out.status, out.message, row.key_hash, row.natural_key, attempts=out.requests)
            return
        now = self.log.now()
        p = op.replaces
        if out.action == "put" or p is not None:
            self.results.add(res.path, "key_changes")
            status = "key_changed"
        else:
            self.results.add(res.path, "created" if out.created else "updated")
            status = "created" if out.created else "updated"
        if p is not None and p.key_hash != row.key_hash:
            if out.action == "put" or (out.edfi_id and out.edfi_id == p.edfi_id):
                # the same item, re-keyed: its old key's row goes (unless another item holds that key by now)
                self._pending.removes.append((self.target, res.path, p.key_hash, p.edfi_id))
                if p.edfi_id and len(self._moved_ids) < MAX_FAILED_KEYS:
                    self._moved_ids.add(p.edfi_id)
            else:
                # the record went to another item (new, or one that was under the new key): the old item no longer
                # speaks for this source item
                self._pending.releases.append((p.log_id, p.source_stream, p.source_key))
            if (out.action != "put" and not (out.edfi_id and out.edfi_id == p.edfi_id)
                    and (res.path, p.key_hash) not in self._reclaimed):
                # and nothing in this run takes the old key: the old item goes in the delete phase
                self._pending.spool.append((
                    self.target, f"{row.source_stream}#replaced", p.edfi_id or p.key_hash, self._seq(), DELETE,
                    res.path, row.source_stream, "", p.key_hash, p.natural_key, None,
                    orjson.dumps({"edfi_id": p.edfi_id}), None, None, 0, now))
                self._total += 1
        self._pending.log.append(self._log_tuple(
            res, row.key_hash or "", row.natural_key or "{}", source_stream=row.source_stream,
            source_key=row.item_key, edfi_id=out.edfi_id, payload_hash=row.payload_hash, status=status,
            http_status=out.status, attempts=out.requests, stream_version=row.version, sent=now, accepted=now))
        self._pending.unspool.append((self.target, row.stream, row.source_key))

    def _authorization_order(self, res: Resource, row: WorkRow) -> bool:
        """Whether a person's 403 waits for the next pass (the Update entry of the authorization order: after the
        person's associations are written); once per record and run, and only while a pass is left."""
        key = (row.stream, row.source_key)
        if not res.is_person or key in self._authorization_waits or self._pass >= self.deferred_passes:
            return False
        self._authorization_waits.add(key)
        self.results.add(res.path, "deferred")
        self._pending.bumps.append((self.target, row.stream, row.source_key))
        self._deferred_rows += 1
        self._done -= 1  # _settle counts this outcome as done: the record is not done yet
        logger.info("%s: an update refused (403) before the person's associations are written; sent again after "
                    "them (authorization order)", res.path)
        return True

    def _settle_delete(self, out: Outcome) -> None:
        op, row, res = out.op, out.op.row, out.op.resource
        logged = op.log_row
        internal = _internal(row)
        khash = logged.key_hash if logged is not None else ("" if internal else (row.key_hash or ""))
        nkey = logged.natural_key if logged is not None else (row.natural_key or "{}")
        now = self.log.now()
        if out.kind == "transient":
            self._hold(res, row, out.status, out.message, deleting=True)
            return
        if out.kind in ("ok", "not_found"):
            gone = out.kind == "not_found"
            if out.edfi_id and len(self._deleted_ids) < MAX_FAILED_KEYS:
                self._deleted_ids.add(out.edfi_id)
            if internal:  # not a record of the input: the old item of a key change, or delete_missing
                self.results.add(res.path, "missing_deleted" if internal == "missing" else "old_items_deleted")
            else:
                self.results.add(res.path, "already_deleted" if gone else "deleted")
            if khash:
                self._pending.log.append(self._log_tuple(
                    res, khash, nkey, edfi_id=out.edfi_id, deleted=True, status="not_found" if gone else "deleted",
                    http_status=out.status, attempts=out.requests, stream_version=row.version, sent=now,
                    accepted=now))
            self._pending.unspool.append((self.target, row.stream, row.source_key))
            return
        message = f"still referenced: {out.message}" if out.kind == "dependent" else out.message
        self._fail(res, row, out.status, message, khash or None, nkey, attempts=out.requests, deleting=True)

    def _hold(self, res: Resource, row: WorkRow, status: int | None, message: str, deleting: bool = False) -> None:
        """A transient outcome (no answer, 429, 5xx, a 2xx that is not the API's, after every try) says nothing
        about the record: it stays in the spool, is not tried again in this run, and the next run sends it."""
        self._waiting.add((row.stream, row.source_key))
        if row.key_hash and not deleting and row.kind == UPSERT:
            self._held_keys.add((res.path, row.key_hash))
        shown = status if status is not None else "no response"
        self.results.wait(res.path, shown, _group_message(message))
        logged = self._failures_logged[res.path] = self._failures_logged.get(res.path, 0) + 1
        if logged <= LOG_FAILURES:
            logger.warning("%s %s (stream %s, source key %s): %s %s: kept in the spool for the next run",
                           "delete of" if deleting else "upsert of", res.path, row.stream, row.source_key, shown,
                           redact_values(message))

    def _references_held(self, res: Resource, row: WorkRow) -> bool:
        """Whether a record references an item whose upsert waits in the spool after a transient outcome."""
        payload = row.payload or self.log.spooled_payload(self.target, row.stream, row.source_key)
        if payload is None:
            return False
        for _prop, options in reference_keys(self.model, res, orjson.loads(payload)):
            if any((target.path, key_hash(values)) in self._held_keys for target, values in options):
                return True
        return False

    def _fail(self, res: Resource, row: WorkRow, status: int | str | None, message: str, khash: str | None,
              natural_key: str | None, attempts: int = 0, deleting: bool = False, group: str | None = None,
              server_message: str | None = None) -> None:
        """A record that did not land: counted (grouped by status and ``group`` message), logged, kept in the log."""
        if (row.stream, row.source_key) in self._waiting:
            return  # waits in the spool after a transient outcome: not a verdict
        if status == 409 and self._held_keys and not deleting and self._references_held(res, row):
            # its parent waits in the spool after a transient outcome: so does it (the next run sends both)
            self._waiting.add((row.stream, row.source_key))
            self.results.wait(res.path, "waiting", "an item it references waits in the spool")
            return
        example = orjson.loads(natural_key) if natural_key else {"source_key": row.source_key}
        internal = deleting and _internal(row)
        self.results.fail(res.path, status, _group_message(group or message), example,
                          counter="failed_deletes" if internal else "failed", server_message=server_message)
        if khash and not deleting and len(self._failed_keys) < MAX_FAILED_KEYS:
            self._failed_keys[(res.path, khash)] = f"stream {row.stream}, source key {row.source_key}: {status}"
            self._failed_paths.add(res.path)
        logged = self._failures_logged[res.path] = self._failures_logged.get(res.path, 0) + 1
        if logged <= LOG_FAILURES:
            logger.warning("%s %s (stream %s, source key %s): %s %s", "delete of" if deleting else "upsert of",
                           res.path, row.stream, row.source_key, status, redact_values(message))
            logger.debug("%s: %s", res.path, message)  # the values, for whoever debugs the source
        elif logged == LOG_FAILURES + 1:
            logger.warning("%s: more failures are not logged one by one: see the results and the transaction log",
                           res.path)
        if khash:
            self._pending.log.append(self._log_tuple(
                res, khash, natural_key or "{}", source_stream=None, source_key=None,
                status="invalid" if status == "invalid" else "failed",
                http_status=status if isinstance(status, int) else None, message=message[:2000], attempts=attempts,
                stream_version=row.version, sent=self.log.now() if attempts else None, deleted=None))
        # the dead letter: the payload and why, kept until the source item lands (see _revive and --failed)
        self._pending.dead.append((
            "invalid" if status == "invalid" else "failed", status if isinstance(status, int) else None,
            message[:2000], self._depends(res, row, status), self.run_id, self.log.now(), self.target, row.stream,
            row.source_key))
        self._pending.unspool.append((self.target, row.stream, row.source_key))

    def _fail_deferred(self) -> None:
        """Rows still waiting for a reference after the last pass: report the reference that is missing."""
        for group in self.groups:
            for path in group:
                res = self.model.get(path)
                if res is None:
                    continue
                after = -1
                while True:
                    rows = self.log.work(self.target, path, UPSERT, after, PAGE)
                    if not rows:
                        break
                    for row in rows:
                        blocked = self._blocked.get((row.stream, row.source_key))
                        if blocked and (row.stream, row.source_key) not in self._unresolved:
                            self._fail(res, row, 409, blocked, row.key_hash, row.natural_key, attempts=row.passes,
                                       group="key change not sent: its new natural key is held by an item whose "
                                             "own key change waits for a reference")
                            self._done += 1
                            continue
                        detail, group = self._missing_reference(res, row)
                        said = self._unresolved.get((row.stream, row.source_key))
                        if said:
                            detail = f"{detail}; the API said: {said}"
                        self._fail(res, row, 409, detail, row.key_hash, row.natural_key, attempts=row.passes,
                                   group=group, server_message=said)
                        self._done += 1
                    after = rows[-1].seq
                    self._flush()

    def _missing_reference(self, res: Resource, row: WorkRow) -> tuple[str, str]:
        """(message with the missing reference's values, the same without values for grouping)."""
        if row.payload is None:
            return "unresolved reference", "unresolved reference"
        payload = orjson.loads(row.payload)
        missing, kinds = [], []
        for prop, options in reference_keys(self.model, res, payload):
            if not any(self._in_target(target.path, key_hash(values), values) for target, values in options):
                target, values = options[0]
                names = "/".join(t.entity for t, _ in options) if len(options) > 1 else target.entity
                missing.append(f"{prop} ({names} {canonical(values).decode()})")
                kinds.append(f"{prop} ({names})")
        if missing:
            head = "unresolved reference: not in the target: "
            return head + "; ".join(missing), head + "; ".join(kinds)
        text = ("unresolved reference, though every reference this target can check exists in the target (see the "
                "API's message)")
        return text, text

    # -- descriptors ---------------------------------------------------------------------------------------------
    def _check_descriptors(self, res: Resource, row: WorkRow) -> str | None:
        """Descriptor values of a payload that neither the log nor the target API knows (``validate``)."""
        if not row.descriptors:
            return None
        problems = []
        for entry in row.descriptors.split("\n"):
            field_path, _, value = entry.partition("\t")
            if value in self._verified:
                continue
            desc = self._descriptor_of(value, field_path)
            if desc is None:
                continue  # a descriptor the model does not know: the API decides
            namespace, _, code = value.partition("#")
            if (namespace, code) not in self._known_descriptors(desc) and desc.path not in self._descriptors_fetched:
                self._fetch_descriptors(desc)
            if (namespace, code) in self._known_descriptors(desc):
                self._verified.add(value)
                continue
            problems.append(f"{field_path}: {desc.entity[0].upper() + desc.entity[1:]} value '{value}' does not "
                            "exist in the target API")
        return "; ".join(problems) or None

    def _descriptor_of(self, value: str, field_path: str) -> Resource | None:
        """The descriptor resource of a value: named by its namespace (``uri://ed-fi.org/GradeLevelDescriptor``),
        else by the property it is in (``entryGradeLevelDescriptor``)."""
        namespace = value.partition("#")[0]
        name = namespace.rsplit("/", 1)[-1]
        key = (name, field_path.rsplit(".", 1)[-1])
        if key not in self._descriptor_names:
            desc = None
            if name.endswith("Descriptor"):
                candidate = self.model.descriptor_for(name)
                if candidate is not None and candidate.entity.lower() == name.lower():
                    desc = candidate
            if desc is None:
                prop = key[1].split("[", 1)[0]
                desc = self.model.descriptor_for(prop) if prop.endswith("Descriptor") else None
            self._descriptor_names[key] = desc
        return self._descriptor_names[key]

    def _known_descriptors(self, desc: Resource) -> set[tuple[str, str]]:
        known = self._descriptors.get(desc.path)
        if known is None:
            known = set()
            for key in self.log.live_keys(self.target, desc.path):
                values = orjson.loads(key)
                known.add((values.get("namespace"), values.get("codeValue")))
            self._descriptors[desc.path] = known
        return known

    def _fetch_descriptors(self, desc: Resource) -> None:
        """Read a descriptor's values from the target (once per run, and only when a value is not in the log)."""
        self._descriptors_fetched.add(desc.path)
        known = self._known_descriptors(desc)
        url = self.client.data_url(desc.path)
        offset = 0
        try:
            while True:
                page = self.client.get_json(url, params={"offset": offset, "limit": 500})
                self._requests += 1
                for item in page if isinstance(page, list) else []:
                    known.add((item.get("namespace"), item.get("codeValue")))
                if not isinstance(page, list) or len(page) < 500:
                    break
                offset += 500
        except EdFiHTTPError as exc:
            logger.warning("cannot read %s to check descriptor values (%s): values not in the log are sent "
                           "unchecked", desc.path, exc)
            known.add(("*", "*"))
            self._descriptors[desc.path] = _AnyValue(known)

    # -- the log ------------------------------------------------------------------------------------------------
    def _seq(self) -> int:
        self._next_seq += 1
        return self._next_seq

    def _log_tuple(self, res: Resource, khash: str, natural_key: str, *, source_stream: str | None = None,
                   source_key: str | None = None, edfi_id: str | None = None, payload_hash: str | None = None,
                   deleted: bool | None = False, status: str, http_status: int | None = None,
                   message: str | None = None, attempts: int = 0, stream_version: int | None = None,
                   sent: Any = None, accepted: Any = None) -> tuple:
        now = self.log.now()
        return (self.target, res.path, khash, natural_key, source_stream, source_key, edfi_id, payload_hash,
                bool(deleted), status, http_status, message, attempts, stream_version, self.run_id, sent, sent,
                accepted, now)

    def _maybe_flush(self) -> None:
        if len(self._pending) >= FLUSH_OUTCOMES or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self._flush()

    def _flush(self) -> None:
        pend = self._pending
        if not (len(pend) or pend.removes or pend.releases or pend.spool):
            self._last_flush = time.monotonic()
            return
        self._pending = _Pending()
        log = self.log
        log.remove_moved(pend.removes)
        log.release_source(pend.releases)
        log.upsert_log(pend.log)
        log.touch(pend.touches)
        if pend.dead:
            log.dead_letter(pend.dead)  # before the spool rows go
        if self._dead:  # a source item that had a dead letter and has landed now: the dead letter goes
            failed_now = {(d[7], d[8]) for d in pend.dead}
            landed = [k for k in pend.unspool if (k[1], k[2]) in self._dead and (k[1], k[2]) not in failed_now]
            if landed:
                log.clear_failed(landed)
                self._dead.difference_update((k[1], k[2]) for k in landed)
        self._dead.update((d[7], d[8]) for d in pend.dead)
        log.unspool(pend.unspool)
        log.bump_passes(pend.bumps)
        log.spool(pend.spool)
        log.commit()
        self._last_flush = time.monotonic()

    def _log_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < self.progress_interval:
            return
        self._last_progress = now
        elapsed = max(now - self._started, 1e-6)
        rate = self._done / elapsed
        remaining = max(0, self._total - self._done)
        eta = f", ETA {int(remaining / rate + 0.5)}s" if rate > 0 and remaining else ""
        pct = f" ({min(100.0, 100.0 * self._done / self._total):.0f}%)" if self._total else ""
        logger.info("progress: %d of %d spooled records settled%s%s, %d requests (%.0f/s), %s", self._done,
                    self._total, pct, eta, self._requests, self._requests / elapsed,
                    retry_summary(self.client.stats.as_dict()))

    @property
    def requests_made(self) -> int:
        return self._requests


class Workers:
    """A fixed set of sending threads fed through a queue (cheaper per request than futures)."""

    def __init__(self, count: int, run: Callable[[Op], Outcome]) -> None:
        self.run = run
        self.inbox: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue[tuple[Outcome | None, BaseException | None]] = queue.SimpleQueue()
        self.pending = 0  # submitted and not yet collected
        self.threads = [threading.Thread(target=self._loop, name=f"target-edfi-{i}", daemon=True)
                        for i in range(count)]
        for thread in self.threads:
            thread.start()

    def _loop(self) -> None:
        while True:
            op = self.inbox.get()
            if op is None:
                return
            try:
                self.outbox.put((self.run(op), None))
            except BaseException as exc:  # handed to the main thread, which raises it
                self.outbox.put((None, exc))

    def submit(self, op: Op) -> None:
        self.pending += 1
        self.inbox.put(op)

    def results(self, block: bool) -> list[Outcome]:
        """Outcomes ready now (at least one when ``block`` and something is pending); a worker's error is raised."""
        got: list[tuple[Outcome | None, BaseException | None]] = []
        if block and self.pending:
            got.append(self.outbox.get())
        while True:
            try:
                got.append(self.outbox.get_nowait())
            except queue.Empty:
                break
        self.pending -= len(got)
        outcomes = []
        for outcome, exc in got:
            if exc is not None:
                raise exc
            assert outcome is not None
            outcomes.append(outcome)
        return outcomes

    def stop(self, abort: bool) -> list[Outcome]:
        """Stop the threads; with ``abort``, ops not started are dropped. The outcomes not collected yet."""
        if abort:
            while True:
                try:
                    if self.inbox.get_nowait() is not None:
                        self.pending -= 1
                except queue.Empty:
                    break
        for _ in self.threads:
            self.inbox.put(None)
        for thread in self.threads:
            thread.join()
        done: list[Outcome] = []
        while self.pending > 0:
            outcome, exc = self.outbox.get()
            self.pending -= 1
            if outcome is not None and exc is None:
                done.append(outcome)
        return done


def _internal(row: WorkRow) -> str:
    """``replaced`` or ``missing`` for the deletes the sender spools itself, else ``""``."""
    _, mark, kind = row.stream.rpartition("#")
    return kind if mark and kind in ("replaced", "missing") else ""


class _AnyValue(set):
    """A descriptor whose values could not be read: every value passes."""

    def __contains__(self, item: object) -> bool:
        return True


def _group_message(message: str) -> str:
    """A failure message with per-record values left out, so failures group by their cause."""
    return redact_values(message)[:300]


__all__ = ["Op", "Outcome", "Sender", "Workers", "classify", "computed_order", "send_order", "transient_status",
           "write_evidence"]
