"""The sync engine: every selected stream read concurrently, written in a fixed order, STATE per window.

A run reads ``newestChangeVersion`` once (:func:`resolve_run`); it is the upper bound of every
stream in the run. Each stream has one or two **sources** (its items, its inline deletes, or the
``/deletes`` / ``/keyChanges`` it stands for), each read from its bookmark + 1 to that bound.

Work flows through one bounded thread pool (``max_workers``):

1. *planning* a source (counting, cutting windows, asking for partitions) is submitted a fixed
   number of sources ahead of the writer, so many small streams (descriptors) cost one round
   trip each, all in parallel;
2. every *chunk* of every window (a reverse offset chain, a partition, a group of snapshot pages)
   is submitted as soon as it is planned, while at most ``2 * max_workers`` chunks are in flight or
   waiting to be written (bounded memory);
3. the main thread writes chunks in plan order (streams by name, windows by change version), so
   the output is deterministic, and after the last chunk of a window sets the source's bookmark to
   the window's upper change version and writes STATE. A run killed at any point resumes from
   the last STATE and re-reads at most the windows that were not finished.

A window is complete only when what was read accounts for what was counted (:meth:`SyncEngine.complete`):
the distinct ids read equal the window's end as one answer showed it (:attr:`Window.end`: the last page's
items reach exactly to that answer's own ``Total-Count``), or else the API is asked again (the count now, and
whether an item lies past what was read; docs/window-completeness.md). Items that left the window while it
was read (changed: their new change version is above the run's bound, the next run reads them) are honest;
items that are there and were never read are a shortfall: the window is read again (careful paging, new
items only), and if the shortfall persists after ``max_tries`` reads the run fails naming the stream, URL
and window, and that stream's bookmark stays before the window.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from singer_sdk import metrics

from edfi_core.session import EdFiClient, EdFiHTTPError
from tap_edfi.edu import EDU_SCHEMA, table_name
from tap_edfi.output import SingerOutput
from tap_edfi.paging import Endpoint, PageReader, Planner, Window, fetch_chunk, full_url, record_ids
from tap_edfi.progress import Progress
from tap_edfi.streams import DELETED_AT, DELETES, ITEMS, KEY_CHANGES, EdFiStream

if TYPE_CHECKING:
    from tap_edfi.tap import TapEdFi

logger = logging.getLogger(__name__)


#: a reconciliation without a snapshot reads the changes made while it ran in at most this many passes
CATCH_UP_PASSES = 8


class SyncError(RuntimeError):
    """A fatal error while syncing: names the stream, and through the cause the URL and status."""


class SettingsError(ValueError):
    """Settings the API cannot honour (snapshot required but absent, cursor paging on < 7.3)."""


# -- the run ---------------------------------------------------------------------------------------------
@dataclass
class RunContext:
    """What one run reads: the change-version bound, snapshot headers and the paging strategy."""

    newest: int | None  # None: the API has no change queries: every run reads everything
    oldest: int
    paging: str  # reverse | forward | cursor
    snapshot_headers: dict[str, str] = field(default_factory=dict)
    snapshot: str | None = None  # what snapshot is read, for logs
    started_at: str = ""

    @property
    def change_queries(self) -> bool:
        return self.newest is not None


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def resolve_run(client: EdFiClient, use_snapshot: str = "auto", paging: str = "auto",
                documents_partitions: bool | None = None) -> RunContext:
    """Read the run's upper bound once, choosing a snapshot and a paging strategy (WIRE.md 3, 8).

    ``documents_partitions``: whether the API's OpenAPI documents show ``/partitions`` paths (None: unknown, what
    the version says decides); cursor paging is used only where the API offers it (ODS/API 7.3, DMS after 8.0.0).
    """
    info = client.info
    has_partitions = info.has_partitions if documents_partitions is None else documents_partitions
    headers: dict[str, str] = {}
    label: str | None = None
    versions: tuple[int, int] | None = None
    if use_snapshot != "never":
        if info.is_dms:
            # DMS v8 silently ignores Use-Snapshot (change-queries.md, "Snapshot support is deferred")
            logger.log(logging.WARNING if use_snapshot == "always" else logging.INFO,
                       "this API (%s, a Data Management Service) accepts snapshot headers but ignores them: reads are "
                       "not isolated, so the tap pages without a snapshot", info.root.get("applicationName") or "DMS")
        elif info.snapshot_style == "use-snapshot":
            try:
                versions = client.available_change_versions({"Use-Snapshot": "true"})
                headers = {"Use-Snapshot": "true"}
                label = "the API's snapshot (Use-Snapshot: true)"
            except EdFiHTTPError as exc:
                if exc.status not in (404, 410):
                    raise
                logger.info("the API has no snapshot (%s)", exc.server_message or exc.status)
        elif info.snapshot_style == "identifier":
            snaps = [s for s in client.snapshots() if s.get("snapshotIdentifier")]
            if snaps:
                latest = max(snaps, key=lambda s: str(s.get("snapshotDateTime") or ""))
                ident = str(latest["snapshotIdentifier"])
                try:
                    versions = client.available_change_versions({"Snapshot-Identifier": ident})
                    headers = {"Snapshot-Identifier": ident}
                    label = f"snapshot {ident} of {latest.get('snapshotDateTime')}"
                except EdFiHTTPError as exc:
                    if exc.status not in (404, 410):
                        raise
                    logger.warning("snapshot %s is not available (%s)", ident, exc.server_message)
            else:
                logger.info("the API lists no snapshots at %s/snapshots", client.urls.change_queries)
        else:
            logger.info("ODS/API %s has no snapshots", info.version_text)
        if not headers and use_snapshot == "always":
            raise SettingsError(
                f"use_snapshot is 'always' but the API at {client.base_url} (ODS/API {info.informational_version}) "
                "has no snapshot to read: ask the host to create one, or set use_snapshot to auto or never"
            )
    if versions is None:
        try:
            versions = client.available_change_versions()
        except EdFiHTTPError as exc:
            if exc.status not in (404, 405):
                raise
            logger.warning("the API has no change queries (%s): every run reads every item, without bookmarks",
                           exc)
    if paging == "cursor" and not has_partitions:
        raise SettingsError(f"paging is 'cursor' but the API at {client.base_url} ({info.informational_version}) has "
                            "no cursor paging (its OpenAPI documents show no /partitions: ODS/API 7.3 and DMS after "
                            "8.0.0 have it): use paging auto or offset")
    if headers and paging != "cursor":
        mode = "forward"
    elif paging == "cursor" or (paging == "auto" and has_partitions):
        mode = "cursor"
    else:
        mode = "reverse"
    oldest, newest = versions if versions is not None else (0, None)
    run = RunContext(newest=newest, oldest=oldest, paging=mode, snapshot_headers=headers, snapshot=label,
                     started_at=utc_now_iso())
    how = {"forward": "offset paging inside the snapshot", "cursor": "cursor paging over partitions",
           "reverse": "reverse offset paging over change-version windows"}[mode]
    logger.info("run bound: newestChangeVersion %s (oldest %s); reading %s with %s",
                newest, oldest, label or "live data", how)
    return run


# -- sources ----------------------------------------------------------------------------------------------
@dataclass
class Source:
    """A sequence of windows that writes to one stream and keeps one bookmark."""

    stream: EdFiStream
    endpoint: Endpoint
    kind: str  # items | deletes | keyChanges
    state_key: str
    lo: int | None
    hi: int | None
    tombstones: bool = False  # inline deletes: /deletes entries become records with _sdc_deleted_at
    mark: int | None = None  # the bookmark when the run started
    version: int | None = None  # a reconciliation: every live item read, as this table version (ACTIVATE_VERSION)

    @property
    def label(self) -> str:
        return f"{self.stream.name} ({self.kind} of {self.stream.resource.path})"


@dataclass
class _Chunk:
    source: Source
    window: Window
    index: int
    future: Future | None
    records: list[Any] | None = None


@dataclass
class _Marker:
    what: str  # schema | window_end | source_end
    source: Source | None = None
    stream: EdFiStream | None = None
    window: Window | None = None
    last: bool = False  # source_end: the stream's last source


class SyncEngine:
    def __init__(self, tap: TapEdFi, streams: list[EdFiStream], run: RunContext,
                 output: SingerOutput | None = None, progress: Progress | None = None) -> None:
        self.tap = tap
        self.client: EdFiClient = tap.client
        self.streams = streams
        self.run = run
        self.settings = tap.settings
        self.output = output or SingerOutput()
        self.progress = progress or Progress(interval=float(self.settings.get("progress_interval", 10)))
        self.max_workers = max(1, int(self.settings["max_workers"]))
        page_size = int(self.settings["page_size"])
        self.reader = PageReader(self.client, page_size, self.client.info.min_limit, self.max_workers)
        self.reader.until_no_token = self.client.info.is_dms
        step = int(self.settings.get("change_version_step_size") or 0)
        rows = int(self.settings.get("max_window_rows") or 0)
        self.planner = Planner(self.reader, run.paging, rows or page_size * (10 if run.paging == "reverse" else 50),
                               step)
        self.deletes_planner = Planner(self.reader, "reverse", rows or page_size * 10, step)
        self.plan_ahead = max(8, 4 * self.max_workers)
        self.lookahead = max(2, 2 * self.max_workers)
        self.fail_on_forbidden = bool(self.settings.get("fail_on_forbidden"))
        self.lookback = max(0, int(self.settings.get("change_version_lookback") or 0))
        self._warned: set[str] = set()
        #: the SDK's meters of the streams being written (record_count, sync_duration): METRIC lines in its format
        self._counters: dict[str, metrics.Counter] = {}
        self._timers: dict[str, metrics.Timer] = {}
        self._metered: dict[str, EdFiStream] = {}
        self._state_dirty = False
        self._last_state_write = 0.0
        #: the server's identity changed since the state was written (another database): why, else None
        self.switched: str | None = self.record_server()
        #: streams reconciled this run whatever reconcile_interval says: name -> why (resync, purged changes)
        self.forced: dict[str, str] = self.forced_reconciliations()

    # -- state --------------------------------------------------------------------------------------
    @property
    def state(self) -> dict[str, Any]:
        return self.tap.state

    def bookmark(self, stream: str, key: str) -> int | None:
        value = (self.state.get("bookmarks") or {}).get(stream, {}).get(key)
        return int(value) if isinstance(value, (int, str)) and str(value).lstrip("-").isdigit() else None

    def set_bookmark(self, stream: str, key: str, value: int) -> None:
        entry = self.state.setdefault("bookmarks", {}).setdefault(stream, {})
        if entry.get(key) != value:
            entry[key] = value
            self._state_dirty = True

    def clear_bookmark(self, stream: str, key: str) -> None:
        entry = (self.state.get("bookmarks") or {}).get(stream)
        if entry and entry.pop(key, None) is not None:
            self._state_dirty = True

    def server_identity(self) -> dict[str, str]:
        """What the state's bookmarks are change versions of: the product (ODS/API or DMS, from discovery), its
        version, and the data URL from discovery's ``dataManagementApi`` (host, tenant, instance and year included).
        Change versions are numbered by one database: they mean nothing on another server."""
        info = self.client.info
        return {"product": "DMS" if info.is_dms else "ODS/API", "version": info.version_text,
                "data_url": self.client.urls.data}

    def record_server(self) -> str | None:
        """Record the server's identity in the state (``server``); when the state's bookmarks were written against
        another server (another product or data URL), say how it changed: every item stream is reconciled then.
        A version upgrade of the same product at the same URL keeps its database and its change versions."""
        current = self.server_identity()
        previous = self.state.get("server")
        self.state["server"] = current
        if previous != current:
            self._state_dirty = True
        if not isinstance(previous, dict) or not self.state.get("bookmarks"):
            return None  # a first run, or a state of an earlier tap-edfi: nothing to compare with
        before = (previous.get("product"), previous.get("data_url"))
        if before == (current["product"], current["data_url"]):
            return None
        return (f"server changed from {previous.get('product')} {previous.get('version')} at "
                f"{previous.get('data_url')} to {current['product']} {current['version']} at {current['data_url']}")

    def write_state(self, force: bool = False) -> None:
        if self._state_dirty or force:
            self.output.write_state(self.state)
            self._state_dirty = False
            self._last_state_write = time.monotonic()

    # -- planning sources ---------------------------------------------------------------------------
    def start_for(self, stream: EdFiStream, key: str) -> int | None:
        """The first change version to read for a source (None when the API has no change queries).

        That is the bookmark + 1, or lower: ``<key>_recheck`` in the state is where the last run's
        ``change_version_lookback`` began (a write takes its change version before it commits, so a write
        still open while its window was read appears later with a version at or below the bookmark:
        docs/change-versions.md). A state without it re-reads the lookback below the bookmark."""
        if not self.run.change_queries:
            return None
        start = int(self.settings.get("start_change_version") or 0)
        if stream.replication_method == "FULL_TABLE":
            return start
        mark = self.bookmark(stream.name, key)
        if mark is None:
            return start
        if self.run.newest is not None and mark > self.run.newest:
            logger.warning("%s: bookmark %s is above the API's newest change version %s (database restored?); "
                           "reading the stream again from %s", stream.name, mark, self.run.newest, start)
            return start
        recheck = self.bookmark(stream.name, f"{key}_recheck")
        if not self.lookback:
            lo = mark + 1
        elif recheck is not None:
            lo = min(mark + 1, recheck)
        else:
            lo = max(start, mark + 1 - self.lookback)
        if lo < self.run.oldest and key != "change_version" and stream.name not in self.forced:
            logger.warning("%s: the API keeps changes from %s only; deletes before that are lost", stream.name,
                           self.run.oldest)
        return lo

    def advance(self, source: Source, value: int) -> None:
        """The source is completely read up to ``value``: its bookmark, and where the next run starts re-reading
        (the last ``change_version_lookback`` versions below this run's bound that this run read first)."""
        name, key = source.stream.name, source.state_key
        self.set_bookmark(name, key, value)
        if self.run.newest is None:
            return
        floor = source.mark + 1 if source.mark is not None else 0  # read once before, and now again: settled
        self.set_bookmark(name, f"{key}_recheck", min(value + 1, max(self.run.newest + 1 - self.lookback, floor)))

    def endpoint(self, stream: EdFiStream, kind: str) -> Endpoint:
        res = stream.resource
        url = self.client.data_url(res.path)
        if kind == ITEMS:
            headers = dict(self.run.snapshot_headers)
            profile = self.settings.get("profile")
            if profile:
                headers["Accept"] = f"application/vnd.ed-fi.{res.entity.lower()}.{profile.lower()}.readable+json"
            return Endpoint(stream.name, url, ITEMS, headers, cursor=self.run.paging == "cursor")
        # /deletes and /keyChanges fail with snapshot headers on some 7.x builds: read them live,
        # bounded by the same change version
        return Endpoint(stream.name, f"{url}/{kind}", kind, {})

    def sources_for(self, stream: EdFiStream) -> list[Source]:
        hi = self.run.newest
        if stream.kind == ITEMS:
            version = self.reconcile_version(stream)
            lo = self.start_for(stream, "change_version")
            if version is not None:
                lo = int(self.settings.get("start_change_version") or 0)
                logger.info("%s: reconciling (%s): every live item is read again, then ACTIVATE_VERSION %s",
                            stream.name, self.forced.get(stream.name, "reconcile_interval"), version)
            out = [Source(stream, self.endpoint(stream, ITEMS), ITEMS, "change_version", lo, hi,
                          mark=self.bookmark(stream.name, "change_version"), version=version)]
            if stream.inline_deletes and self.run.change_queries:
                out.append(Source(stream, self.endpoint(stream, DELETES), DELETES, "deletes_change_version",
                                  self.start_for(stream, "deletes_change_version"), hi, tombstones=True,
                                  mark=self.bookmark(stream.name, "deletes_change_version")))
            return out
        if not self.run.change_queries:
            return []
        if stream.kind == KEY_CHANGES and not self.client.info.has_key_changes:
            if "key_changes" not in self._warned:
                self._warned.add("key_changes")
                logger.info("ODS/API %s has no key changes: *_key_changes streams stay empty",
                            self.client.info.version_text)
            return []
        return [Source(stream, self.endpoint(stream, stream.kind), stream.kind, "change_version",
                       self.start_for(stream, "change_version"), hi, mark=self.bookmark(stream.name, "change_version"))]

    def forced_reconciliations(self) -> dict[str, str]:
        """The item streams this run reconciles whatever ``reconcile_interval`` says, and why.

        * ``resync`` names them (patterns as ``resources``);
        * their tracked changes were purged: the API's ``oldestChangeVersion`` is above the stream's bookmark + 1,
          so the deletes between them can no longer be read (one WARNING names every such stream);
        * the bookmark is above ``newestChangeVersion`` (the database was restored: start_for warns);
        * a forced reconciliation of an earlier run did not end with ACTIVATE_VERSION (``resync_pending`` in the
          stream's bookmarks);
        * the state's bookmarks are another server's change versions (``server`` in the state: a district moved
          from the ODS/API to DMS, or to another host): every item stream with a bookmark."""
        if not self.run.change_queries:
            return {}
        from tap_edfi.tap import _matches

        patterns = list(self.settings.get("resync") or [])
        oldest = self.run.oldest
        out: dict[str, str] = {}
        purged: list[str] = []
        for stream in self.streams:
            if stream.kind != ITEMS or stream.replication_method == "FULL_TABLE":
                continue
            name = stream.name
            marks = [m for m in (self.bookmark(name, "change_version"), self.bookmark(name, "deletes_change_version")
                                 if stream.inline_deletes else None) if m is not None]
            if patterns and _matches(stream.resource, name, patterns):
                out[name] = "resync setting"
            elif marks and self.switched:
                out[name] = self.switched
            elif marks and self.run.newest is not None and max(marks) > self.run.newest:
                # start_for warns (database restored?) and reads from start_change_version: as a reconciliation,
                # so that rows the restored database no longer has are dropped too
                out[name] = f"bookmark {max(marks)} above newestChangeVersion {self.run.newest}"
            elif marks and oldest > min(marks) + 1:
                out[name] = f"tracked changes purged (bookmark {min(marks)}, oldestChangeVersion {oldest})"
                purged.append(f"{name} (bookmark {min(marks)})")
            elif self.bookmark(name, "resync_pending") is not None:
                out[name] = "a forced reconciliation of an earlier run did not complete"
        if self.switched and out:
            logger.warning("%s: the state's bookmarks are change versions of the other server, so %s are "
                           "reconciled this run (every live item read, then ACTIVATE_VERSION: rows the new server "
                           "does not have are dropped or marked deleted) and bookmarked at its change versions",
                           self.switched, ", ".join(out))
        if purged:
            logger.warning("tracked changes purged: the API's oldestChangeVersion is %s, above the bookmark + 1 of "
                           "%s: deletes between the bookmark and %s can no longer be read, so these streams are "
                           "reconciled this run (every live item read, then ACTIVATE_VERSION) instead of read "
                           "incrementally", oldest, ", ".join(purged), oldest)
        if patterns:
            named = [n for n, why in out.items() if why == "resync setting"]
            if named:
                logger.info("resync setting %s: reconciling %s", patterns, ", ".join(named))
            else:
                logger.warning("resync setting %s matches no selected item stream: nothing is resynchronized this "
                               "run (names or globs as in the resources setting)", patterns)
        if self.switched and out and (self.tap.edu is not None or self.tap.slice is not None):
            raise SettingsError(f"{self.switched}: the state's bookmarks are change versions of the other server, and "
                                "with record_format edu or tenant_code/api_year this tap writes no table versions to "
                                "reconcile the tables with: delete this tap's rows of "
                                f"{', '.join(out)} and run it with --full-refresh (or without state)")
        if out and self.tap.edu is not None:
            # raw tables keep every pull and hold several tenants and years: no table versions to replace them by
            logger.warning("record_format edu writes no table versions, so %s cannot be reconciled: replace their raw "
                           "rows with a full refresh (meltano run --full-refresh, or a run without state) of these "
                           "streams", ", ".join(f"{n} ({why})" for n, why in out.items()))
            return {}
        if out and self.tap.slice is not None:
            # tables shared by tenants and years: target-postgres's ACTIVATE_VERSION applies to a whole table
            logger.warning("tenant_code/api_year are set (tables shared by tenants and years), so no table versions "
                           "are written and %s cannot be reconciled (ACTIVATE_VERSION would drop the other tenants' "
                           "and years' rows too): delete this tap's rows of these tables (WHERE %s) and run it "
                           "with --full-refresh", ", ".join(f"{n} ({why})" for n, why in out.items()),
                           " AND ".join(f"{k} = {v!r}" for k, v in self.tap.slice.values.items()))
            return {}
        return out

    def reconcile_version(self, stream: EdFiStream) -> int | None:
        """The table version of a reconciliation of this stream when one is due, else None.

        Due when the stream has been read incrementally before (a bookmark) and its last reconciliation (or its
        first complete read) is ``reconcile_interval`` seconds old; a stream without ``reconciled_at`` starts
        counting now."""
        if stream.name in self.forced:
            self.set_bookmark(stream.name, "resync_pending", 1)  # until its ACTIVATE_VERSION is written
            return int(time.time() * 1000)
        interval = int(self.settings.get("reconcile_interval") or 0)
        if not interval or not self.run.change_queries or stream.replication_method == "FULL_TABLE":
            return None
        if self.bookmark(stream.name, "change_version") is None:
            return None
        last = self.bookmark(stream.name, "reconciled_at")
        if last is None or time.time() - last < interval:
            return None
        return int(time.time() * 1000)

    def catch_up(self, source: Source) -> bool:
        """Before a reconciliation's ACTIVATE_VERSION: also write, with the same table version, every item that
        changed after the run's bound; True when nothing is left out (ACTIVATE_VERSION may be written).

        Without a snapshot, an item updated while the stream was read takes a change version above the bound and
        the bounded read does not have it: ACTIVATE_VERSION alone would mark that live item deleted. So the
        changes since the bound are read in passes: the first from bound + 1 to a fresh ``newestChangeVersion``,
        each next one from there on. A pass is needed only while the stream has an item beyond the last pass's
        upper bound (asked with ``minChangeVersion`` and no maximum). Once none is, every live item was read:
        an item whose change version is at or below that bound now stayed in the window of its version while
        that window was read (change versions only grow, and a version at or below a bound was taken before the
        bound was read, so nothing enters a window after it is counted). When items keep changing for
        ``CATCH_UP_PASSES`` passes the reconciliation is skipped (a warning names the stream): no
        ACTIVATE_VERSION, ``reconciled_at`` unchanged, so the next run reconciles again. Inside a snapshot the
        read is exact: nothing to catch up. The bookmark stays at the bound (what was read past it is read
        again by the next run, harmlessly: rows are keyed by ``id``)."""
        if self.run.snapshot_headers or source.hi is None:
            return True
        ep = source.endpoint
        name = source.stream.name
        bound = source.hi
        read = 0
        try:
            for passes in range(CATCH_UP_PASSES + 1):
                if self.reader.count(ep, bound + 1, None) == 0:
                    if passes:
                        logger.info("%s: reconciliation caught up with %d item(s) changed after change version "
                                    "%s (%d pass(es), to change version %s)", name, read, source.hi, passes,
                                    bound)
                    return True
                if passes == CATCH_UP_PASSES:
                    break
                with self.reader.slot():  # the pool's threads may hold every other slot: max_workers in all
                    newest = self.client.available_change_versions()[1]
                for window in self.planner.plan(ep, bound + 1, newest):
                    for index in range(len(window.chunks)):
                        records, ids = self.fetch_with_ids(source, window, index)
                        self.emit_new(source, window, records, ids)
                    self.complete(source, window)
                    read += len(window.seen)
                    window.seen = set()
                bound = max(bound, newest)
        except EdFiHTTPError as exc:
            raise SyncError(f"stream '{name}', reconciliation: reading the changes after change version "
                            f"{bound}: {exc}") from exc
        logger.warning("%s: not reconciled this run: its items kept changing while the tap read the changes after "
                       "the run's bound (change version %s, %d passes, to change version %s; no snapshot to read "
                       "them in). No ACTIVATE_VERSION was written, so the target marks none of its rows deleted; "
                       "the next run reconciles again (use_snapshot: auto on an API with snapshots makes the read "
                       "exact)", name, source.hi, CATCH_UP_PASSES, bound)
        return False

    def plan(self, source: Source) -> list[Window] | None:
        """The windows of a source (in a worker); None when the client may not read it."""
        planner = self.planner if source.kind == ITEMS else self.deletes_planner
        try:
            windows = planner.plan(source.endpoint, source.lo, source.hi)
        except EdFiHTTPError as exc:
            if exc.status in (403, 404):
                self.progress.planned(source.stream.name, [])
            if exc.status == 403 and not self.fail_on_forbidden:
                # one warning per resource, however many of its streams (items, deletes, key changes) fail
                self.skip(source, f"not authorized (HTTP 403: {exc.server_message})",
                          key=f"403:{source.stream.resource.path}")
                return None
            if exc.status == 404 and source.kind != ITEMS:
                self.skip(source, f"the API has no {source.kind} for {source.stream.resource.path}")
                return None
            raise SyncError(f"stream '{source.stream.name}', planning change versions {source.lo}..{source.hi}: "
                            f"{exc}") from exc
        self.progress.planned(source.stream.name, [w.count for w in windows])
        return windows

    def skip(self, source: Source, reason: str, key: str | None = None) -> None:
        key = key or f"{source.stream.name}:{source.kind}"
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("skipping %s: %s", source.label, reason)
        self.progress.skip(source.stream.name, reason)

    def fetch(self, source: Source, window: Window, index: int) -> list[Any]:
        try:
            return fetch_chunk(self.reader, source.endpoint, window, window.chunks[index])
        except EdFiHTTPError as exc:
            raise SyncError(f"stream '{source.stream.name}', {window_label(window)}: {exc}") from exc

    def fetch_with_ids(self, source: Source, window: Window, index: int) -> tuple[list[Any], list[str]]:
        """A chunk and the ids of its items (in a worker)."""
        records = self.fetch(source, window, index)
        return records, record_ids(records)

    def complete(self, source: Source, window: Window) -> None:
        """Make sure what was read of ``window`` accounts for what is in it (see the module docstring)."""
        ep = source.endpoint
        planner = self.planner if source.kind == ITEMS else self.deletes_planner
        tries = max(1, int(self.client.max_tries))
        reads = 1
        while True:
            n = len(window.seen)
            if window.end is not None and n == window.end:
                return  # one answer showed the window's end, and that many distinct items were read
            try:
                total, beyond = self.reader.probe_end(ep, window.lo, window.hi, n)
            except EdFiHTTPError as exc:
                raise SyncError(f"stream '{source.stream.name}', {window_label(window)}: {exc}") from exc
            if not beyond and (total is None or total <= n):
                if window.count is not None and n < window.count:
                    logger.debug("%s, %s: %d of %d counted items left the window while it was read (changed "
                                 "since: the next run reads them)", source.label, window_label(window), n,
                                 window.count)
                return
            url = full_url(ep.url, {k: v for k, v in (("minChangeVersion", window.lo),
                                                      ("maxChangeVersion", window.hi)) if v is not None})
            found = f"{total if total is not None else 'no count'}{', and an item past them' if beyond else ''}"
            if reads >= tries:
                raise SyncError(
                    f"stream '{source.stream.name}': {url} ({window_label(window)}) is incomplete after {reads} "
                    f"reads: {n} distinct items read, the API now says {found}. The bookmark stays before this "
                    "window; run the tap again, and if it persists check what answers for the API (a proxy or "
                    "gateway that truncates or rewrites responses)")
            reads += 1
            logger.warning("%s: %s read %d distinct items but the API now says %s (counted %s); reading the "
                           "window again (%d/%d)", source.label, url, n, found, window.count, reads, tries)
            self.client.stats.count_retry("incomplete window")
            count = max(total or 0, n + (1 if beyond else 0))
            try:
                again = planner.window(ep, window.lo, window.hi, count, careful=True)
                for index in range(len(again.chunks)):
                    records, ids = self.fetch_with_ids(source, again, index)
                    self.emit_new(source, window, records, ids)
            except EdFiHTTPError as exc:
                raise SyncError(f"stream '{source.stream.name}', {window_label(window)}: {exc}") from exc
            # the count a re-read was planned with may itself be too low (it is what an answer said), and the ids
            # read so far include items that may have left before the re-read's answers: the end of a re-read
            # window is always probed
            window.count, window.end = count, None

    # -- running ------------------------------------------------------------------------------------------
    def run_all(self) -> dict[str, Any]:
        sources: list[Source] = []
        first_source: dict[str, int] = {}
        self._last_source: dict[str, int] = {}
        for stream in self.streams:
            own = self.sources_for(stream)
            self.progress.register(stream.name, len(own))
            for src in own:
                first_source.setdefault(stream.name, len(sources))
                self._last_source[stream.name] = len(sources)
                sources.append(src)
            if stream.name not in first_source:  # nothing to read (no change queries): schema only
                self.emit_schema(stream)
        if self.state:
            self.write_state(force=True)
        pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="tap-edfi")
        pending: deque[_Chunk | _Marker] = deque()
        self._in_flight = 0
        ok = False
        try:
            plans: dict[int, Future] = {}
            next_plan = 0
            for i, src in enumerate(sources):
                while next_plan < len(sources) and next_plan <= i + self.plan_ahead:
                    plans[next_plan] = pool.submit(self.plan, sources[next_plan])
                    next_plan += 1
                if first_source.get(src.stream.name) == i:
                    pending.append(_Marker("schema", stream=src.stream))
                windows = plans.pop(i).result()
                if windows is None:
                    if self._last_source[src.stream.name] == i:
                        pending.append(_Marker("source_end", source=None, last=True, stream=src.stream))
                    continue
                for window in windows:
                    for j, chunk in enumerate(window.chunks):
                        fut = None if chunk.mode == "ready" else pool.submit(self.fetch_with_ids, src, window, j)
                        pending.append(_Chunk(src, window, j, fut, chunk.records if fut is None else None))
                        self._in_flight += 1
                        self._drain(pending, self.lookahead)
                    pending.append(_Marker("window_end", source=src, window=window))
                pending.append(_Marker("source_end", source=src, last=self._last_source[src.stream.name] == i))
                self._drain(pending, self.lookahead)
            self._drain(pending, 0)
            ok = True
        finally:
            pool.shutdown(wait=ok, cancel_futures=not ok)
            self.planner.close()
            self.deletes_planner.close()
            for name in list(self._timers):  # streams cut short: their counts so far, and a failed sync_duration
                self._stream_metrics(name, failed=True)
            if not ok:
                # whatever was completely written stays bookmarked
                try:
                    self.output.flush()
                except Exception:  # pragma: no cover - stdout gone
                    logger.debug("could not flush output", exc_info=True)
        self.write_state(force=True)
        self.output.flush()
        return self.progress.summary(self.client.stats.as_dict())

    def _drain(self, pending: deque, keep: int) -> None:
        """Write finished work at the head of the queue while more than ``keep`` chunks wait."""
        while pending and (self._in_flight > keep or isinstance(pending[0], _Marker)):
            item = pending.popleft()
            if isinstance(item, _Marker):
                self._marker(item)
                continue
            if item.future is None:
                records = item.records or []
                ids = record_ids(records)
            else:
                records, ids = item.future.result()
            self._in_flight -= 1
            self.emit_new(item.source, item.window, records, ids)

    def _marker(self, marker: _Marker) -> None:
        if marker.what == "schema":
            assert marker.stream is not None
            self.emit_schema(marker.stream)
            self.progress.start(marker.stream.name)
            self._start_metrics(marker.stream)
        elif marker.what == "window_end":
            assert marker.source is not None and marker.window is not None
            self.complete(marker.source, marker.window)
            marker.window.seen = set()  # done with: free the ids
            if marker.window.hi is not None:
                self.advance(marker.source, marker.window.hi)
            self.progress.window_done(marker.source.stream.name)
            self.write_state()
        elif marker.what == "source_end" and marker.source is None:  # a skipped stream's end
            assert marker.stream is not None
            self.progress.finish(marker.stream.name)
            self._stream_metrics(marker.stream.name)
        elif marker.what == "source_end":
            src = marker.source
            assert src is not None
            if src.hi is not None:
                self.advance(src, src.hi)
            if src.kind == ITEMS and src.hi is not None:
                activate = src.version is not None and self.catch_up(src)
                if activate:
                    # every item live now was written with this version: older rows are gone
                    self.output.write_message({"type": "ACTIVATE_VERSION", "stream": src.stream.name,
                                               "version": src.version})
                if activate or (src.version is None and self.bookmark(src.stream.name, "reconciled_at") is None):
                    self.set_bookmark(src.stream.name, "reconciled_at", int(time.time()))
                if activate:
                    self.clear_bookmark(src.stream.name, "resync_pending")
            if marker.last:
                self.progress.finish(src.stream.name)
                self._stream_metrics(src.stream.name)
            if time.monotonic() - self._last_state_write > 1.0:
                self.write_state()

    # -- metrics (the SDK's METRIC lines, per stream, never per record) -----------------------------------------
    def _start_metrics(self, stream: EdFiStream) -> None:
        """The SDK's record counter (logs every ``metrics.DEFAULT_LOG_INTERVAL`` seconds and at the stream's end)
        and sync timer of a stream, from the stream's own SDK hooks."""
        counter = stream.get_record_counter(endpoint=stream.resource.path)
        counter.__enter__()
        timer = stream.get_sync_timer()
        timer.__enter__()
        self._counters[stream.name] = counter
        self._timers[stream.name] = timer
        self._metered[stream.name] = stream

    def _count(self, stream: EdFiStream, n: int) -> None:
        counter = self._counters.get(stream.name)
        if counter is not None and n:
            counter.increment(n)

    def _stream_metrics(self, name: str, failed: bool = False) -> None:
        """The stream is done (or cut short): its last record_count, its requests (``http_request_count`` and the
        mean ``http_request_duration`` per endpoint and status, aggregated: not one line per request) and its
        ``sync_duration``."""
        counter = self._counters.pop(name, None)
        timer = self._timers.pop(name, None)
        if counter is None or timer is None:
            return
        counter.exit()
        stream = self._metered.pop(name)
        log = metrics.get_metrics_logger()
        for path in self._endpoint_paths(stream):
            for status, (n, seconds) in sorted(self.client.stats.endpoint_times(path).items()):
                tags: dict[str, Any] = {metrics.Tag.STREAM: name, metrics.Tag.ENDPOINT: path,
                                        metrics.Tag.HTTP_STATUS_CODE: status, metrics.Tag.PID: os.getpid()}
                metrics.log(log, metrics.Point("counter", metrics.Metric.HTTP_REQUEST_COUNT, n, dict(tags)))
                metrics.log(log, metrics.Point(
                    "timer", metrics.Metric.HTTP_REQUEST_DURATION, round(seconds / max(n, 1), 6),
                    {**tags, metrics.Tag.STATUS: metrics.Status.SUCCEEDED if status < 400 else metrics.Status.FAILED,
                     "aggregate": "mean", "requests": n}))
        if failed:
            timer.tags[metrics.Tag.STATUS] = metrics.Status.FAILED
        timer.__exit__(None, None, None)

    def _endpoint_paths(self, stream: EdFiStream) -> list[str]:
        base = urllib.parse.urlsplit(self.client.data_url(stream.resource.path)).path.rstrip("/")
        if stream.kind == ITEMS:
            return [base, f"{base}/partitions"] + ([f"{base}/{DELETES}"] if stream.inline_deletes else [])
        return [f"{base}/{stream.kind}"]

    # -- writing ------------------------------------------------------------------------------------------
    def emit_new(self, source: Source, window: Window, records: list[Any], ids: list[str]) -> None:
        """Emit the records of a window not emitted yet (reverse paging reads an item that moved twice)."""
        seen = window.seen
        fresh = []
        for record, ident in zip(records, ids, strict=True):
            if ident not in seen:
                seen.add(ident)
                fresh.append(record)
        self.emit(source, fresh)

    def emit_schema(self, stream: EdFiStream) -> None:
        if self.tap.edu is not None:  # record_format edu: the raw table's columns (tap_edfi/edu.py)
            self.output.write_schema(table_name(stream.resource, stream.kind), EDU_SCHEMA, [])
            return
        for msg in stream._generate_schema_messages():
            self.output.write_schema(msg.stream, msg.schema, msg.key_properties or [], msg.bookmark_properties)

    def emit(self, source: Source, records: list[Any]) -> None:
        stream = source.stream
        if not records:
            return
        ts = utc_now_iso()
        if self.tap.edu is not None:  # record_format edu: raw rows around the response bytes (tap_edfi/edu.py)
            data, n = self.tap.edu.lines(stream.resource, source.kind, records, ts, source.version)
            self.output.write_lines(data, n)
            self._count(stream, n)
            self.progress.add(stream.name, 0 if source.kind == DELETES else n, n if source.kind == DELETES else 0)
            self.progress.maybe_log(self.client.stats.as_dict(), stream.name)
            return
        fast = self.tap.fast_path(stream)
        sliced = self.tap.slice  # tenant_code/api_year columns (tap_edfi/slices.py)
        if source.kind != ITEMS:
            entries = [normalize_change(orjson.loads(bytes(r))) for r in records]
            if sliced is not None:
                entries = [sliced.add(e) for e in entries]
            if not source.tombstones:
                if fast:
                    for rec in entries:
                        self.output.write_record(stream.name, rec, ts)
                    self._count(stream, len(entries))
                else:
                    self._emit_sdk(stream, entries)
                self.progress.add(stream.name, 0 if source.kind == DELETES else len(entries),
                                  len(entries) if source.kind == DELETES else 0)
                self.progress.maybe_log(self.client.stats.as_dict(), stream.name)
                return
            tombs = [tombstone(stream, item, self.run.started_at) for item in entries]
            if sliced is not None:
                tombs = [sliced.add(t) for t in tombs]
            if fast:
                for rec in tombs:
                    self.output.write_record(stream.name, rec, ts)
                self._count(stream, len(tombs))
            else:
                self._emit_sdk(stream, tombs)
            self.progress.add(stream.name, 0, len(tombs))
        else:
            if fast:
                raw = records if sliced is None else [sliced(r) for r in records]
                self._count(stream, self.output.write_raw_records(stream.name, raw, ts, version=source.version))
            else:
                docs = [orjson.loads(bytes(r)) for r in records]
                self._emit_sdk(stream, docs if sliced is None else [sliced.add(d) for d in docs], source.version)
            self.progress.add(stream.name, len(records))
        self.progress.maybe_log(self.client.stats.as_dict(), stream.name)

    def _emit_sdk(self, stream: EdFiStream, records: list[dict[str, Any]], version: int | None = None) -> None:
        """Stream maps, flattening or deselected fields: the SDK's own record processing."""
        n = 0
        for record in records:
            for msg in stream._generate_record_messages(record):
                message = msg.to_dict()
                if version is not None and message.get("type") == "RECORD":
                    message["version"] = version
                self.output.write_message(message)
                n += 1
        self._count(stream, n)


def window_label(window: Window) -> str:
    if window.lo is None and window.hi is None:
        return "all items"
    return f"change versions {window.lo}..{window.hi}"


_CHANGE_FIELDS = {"id": "id", "changeversion": "changeVersion", "keyvalues": "keyValues",
                  "oldkeyvalues": "oldKeyValues", "newkeyvalues": "newKeyValues"}


def normalize_change(item: dict[str, Any]) -> dict[str, Any]:
    """A /deletes or /keyChanges entry with camelCase names (5.x answers ``{"Id", "ChangeVersion"}``)."""
    return {_CHANGE_FIELDS.get(str(k).lower(), k): v for k, v in item.items()}


def tombstone(stream: EdFiStream, item: dict[str, Any], deleted_at: str) -> dict[str, Any]:
    """A /deletes entry as a record of the item stream: id, _sdc_deleted_at and the key values."""
    record: dict[str, Any] = {"id": item.get("id"), DELETED_AT: deleted_at}
    key_paths = stream.resource.key_paths
    for name, value in (item.get("keyValues") or {}).items():
        path = key_paths.get(name)
        if path is None:
            continue
        node = record
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = value
    return record


# -- the SDK's per-stream path ---------------------------------------------------------------------------
class _Collecting(SyncEngine):
    """An engine that keeps what it would write (the SDK's per-stream path)."""

    collected: list[Any]

    def emit(self, source: Source, records: list[Any]) -> None:
        self.collected.extend(records)


def iter_stream_records(tap: TapEdFi, stream: EdFiStream) -> Iterator[dict[str, Any]]:
    """Records of one stream, read sequentially (``--test``, dry runs, the SDK's standard tests), each window
    checked for completeness like a sync's."""
    engine = _Collecting(tap, [stream], tap.run_context, output=SingerOutput())
    for source in engine.sources_for(stream):
        windows = engine.plan(source)
        for window in windows or []:
            engine.collected = []
            for index in range(len(window.chunks)):
                records, ids = engine.fetch_with_ids(source, window, index)
                engine.emit_new(source, window, records, ids)
            engine.complete(source, window)
            for raw in engine.collected:
                item = orjson.loads(bytes(raw))
                if source.kind != ITEMS:
                    item = normalize_change(item)
                record = tombstone(stream, item, tap.run_context.started_at) if source.tombstones else item
                yield tap.slice.add(record) if tap.slice is not None else record


__all__ = ["RunContext", "SettingsError", "SyncEngine", "SyncError", "iter_stream_records", "resolve_run",
           "tombstone"]
