"""Reading one Ed-Fi collection completely: change-version windows, pages and partitions.

Every run reads each collection between two change versions: the stream's bookmark + 1 and the
``newestChangeVersion`` read once at the start of the run. That range is cut into **windows**
(``minChangeVersion``..``maxChangeVersion``, both inclusive) small enough to re-read after a crash
(``max_window_rows``), found by counting (``totalCount=true``) and bisecting. A window is read
in one of three ways, each of which loses no item that changes while it is read:

* ``reverse`` offset paging, from the highest offset down to 0, one page after the other. An
  item updated during the pull leaves the window (its new change version is above the run's
  upper bound) and the items after it shift down by one; reading from the end means a shifted
  item is read twice, never skipped.
* ``cursor`` paging on 7.3+: ``/partitions`` splits the window into aggregate-id ranges, each read
  with ``pageToken``/``pageSize`` following ``Next-Page-Token``; partitions are read concurrently
  and nothing shifts.
* ``forward`` offset paging inside a snapshot (``Use-Snapshot`` / ``Snapshot-Identifier``):
  the data cannot change, so every page is independent and pages are read concurrently.

A window whose count fits in one page is read by the counting request itself, so a collection
with little or nothing new costs one request. Pages are kept as raw JSON (``msgspec.Raw``)
slices of the response: records are written out without being parsed into Python objects.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from edfi_core.session import EdFiClient, EdFiHTTPError, check
from edfi_core.transport import Transport

logger = logging.getLogger(__name__)

_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])
MAX_PARTITIONS = 200

Records = Sequence[Any]  # raw JSON objects (msgspec.Raw or bytes)


def decode_page(body: bytes) -> list[Any]:
    """The items of a JSON array response as raw JSON slices (one line each)."""
    if not body or not body.strip():
        return []
    if b"\n" in body or b"\r" in body:  # pretty-printed: re-encode each item on one line
        items = orjson.loads(body)
        return [orjson.dumps(item) for item in items] if isinstance(items, list) else []
    return _RAW_LIST.decode(body)


@dataclass(frozen=True)
class Endpoint:
    """One readable collection: the items, ``/deletes`` or ``/keyChanges`` of a resource."""

    stream: str
    url: str
    kind: str  # items | deletes | keyChanges
    headers: dict[str, str] = field(default_factory=dict)
    cursor: bool = False  # cursor paging for this endpoint (7.3+ items only)


@dataclass
class Chunk:
    """A part of a window read by one worker: the unit of concurrency and of ordered output."""

    mode: str  # ready | reverse | offsets | cursor | scan
    expected: int | None = None
    records: list[Any] | None = None  # mode "ready": already read
    offsets: tuple[int, ...] = ()
    token: str | None = None


@dataclass
class Window:
    lo: int | None
    hi: int | None
    count: int | None
    chunks: list[Chunk]


class PageReader:
    """The requests of the paging strategies, for one client and page size."""

    def __init__(self, client: EdFiClient, page_size: int, min_limit: int = 0, max_in_flight: int = 8) -> None:
        self.client = client
        self.transport = Transport(client)  # pages over keep-alive http.client connections, one per thread
        self.max_in_flight = max(1, max_in_flight)
        # however many threads plan and read, at most max_in_flight requests are at the API at once
        self._slots = threading.BoundedSemaphore(self.max_in_flight)
        self.page_size = page_size
        self.count_limit = max(0, min_limit)  # 5.x/6.x refuse limit=0: a count then reads one item

    @staticmethod
    def _range(lo: int | None, hi: int | None) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if lo is not None:
            params["minChangeVersion"] = lo
        if hi is not None:
            params["maxChangeVersion"] = hi
        return params

    def _request(self, ep: Endpoint, url: str, params: dict[str, Any]) -> Any:
        """One GET (in one of the ``max_in_flight`` slots); :class:`EdFiHTTPError` unless it succeeded."""
        with self._slots:
            resp = self.transport.request("GET", url, params=params, headers=ep.headers or None)
        check(resp, "GET", url, params)  # type: ignore[arg-type]
        return resp

    def get(self, ep: Endpoint, params: dict[str, Any]) -> tuple[list[Any], Any]:
        resp = self._request(ep, ep.url, params)
        return decode_page(resp.content), resp

    def count_and_first(self, ep: Endpoint, lo: int | None, hi: int | None) -> tuple[int | None, list[Any]]:
        """(Total-Count or None, the first page) in one request."""
        params = {**self._range(lo, hi), "offset": 0, "limit": self.page_size, "totalCount": "true"}
        records, resp = self.get(ep, params)
        total = resp.headers.get("Total-Count")
        return (int(total) if total is not None and total.strip().isdigit() else None), records

    def count(self, ep: Endpoint, lo: int | None, hi: int | None) -> int | None:
        params = {**self._range(lo, hi), "offset": 0, "limit": self.count_limit, "totalCount": "true"}
        _, resp = self.get(ep, params)
        total = resp.headers.get("Total-Count")
        return int(total) if total is not None and total.strip().isdigit() else None

    def page(self, ep: Endpoint, lo: int | None, hi: int | None, offset: int) -> list[Any]:
        params = {**self._range(lo, hi), "offset": offset, "limit": self.page_size}
        return self.get(ep, params)[0]

    def reverse(self, ep: Endpoint, lo: int | None, hi: int | None, count: int) -> list[Any]:
        """Every item of the window, read from the last page to the first; returned in offset order."""
        pages: list[list[Any]] = []
        last = ((max(count, 1) - 1) // self.page_size) * self.page_size
        for offset in range(last, -1, -self.page_size):
            pages.append(self.page(ep, lo, hi, offset))
        out: list[Any] = []
        for page in reversed(pages):
            out.extend(page)
        return out

    def scan(self, ep: Endpoint, lo: int | None, hi: int | None) -> list[Any]:
        """Forward paging until a short page: for servers that give no ``Total-Count``."""
        out: list[Any] = []
        offset = 0
        while True:
            page = self.page(ep, lo, hi, offset)
            out.extend(page)
            if len(page) < self.page_size:
                return out
            offset += self.page_size

    def partitions(self, ep: Endpoint, lo: int | None, hi: int | None, number: int) -> list[str]:
        params = {**self._range(lo, hi), "number": max(1, min(MAX_PARTITIONS, number))}
        resp = self._request(ep, ep.url + "/partitions", params)
        body = orjson.loads(resp.content or b"{}")
        tokens = body.get("pageTokens") if isinstance(body, dict) else None
        return [str(t) for t in tokens or []]

    def cursor(self, ep: Endpoint, lo: int | None, hi: int | None, token: str) -> list[Any]:
        """One partition, page after page following ``Next-Page-Token``."""
        out: list[Any] = []
        next_token: str | None = token
        while next_token:
            params = {**self._range(lo, hi), "pageToken": next_token, "pageSize": self.page_size}
            page, resp = self.get(ep, params)
            out.extend(page)
            if len(page) < self.page_size:  # nothing can enter the window: a short page is the end
                break
            next_token = resp.headers.get("Next-Page-Token")
        return out


class Planner:
    """Cuts a change-version range into windows and windows into chunks."""

    def __init__(self, reader: PageReader, mode: str, max_window_rows: int, step_size: int = 0,
                 pages_per_chunk: int = 2) -> None:
        if mode not in ("reverse", "forward", "cursor"):
            raise ValueError(f"unknown paging mode {mode!r}")
        self.reader = reader
        self.mode = mode
        self.max_window_rows = max(reader.page_size, max_window_rows)
        self.step_size = max(0, step_size)
        self.pages_per_chunk = max(1, pages_per_chunk)
        self._warned_no_count: set[str] = set()
        # the counts and partitions of one plan are independent requests: sent together, not one by one
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        todo = list(items)
        if len(todo) <= 1:
            return [fn(x) for x in todo]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.reader.max_in_flight, thread_name_prefix="tap-edfi-plan")
        return list(self._pool.map(fn, todo))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def plan(self, ep: Endpoint, lo: int | None, hi: int | None) -> list[Window]:
        if lo is not None and hi is not None and lo > hi:
            return []
        if lo is None or hi is None or self.step_size <= 0:
            ranges: list[tuple[int | None, int | None]] = [(lo, hi)]
        else:
            ranges = [(a, min(a + self.step_size - 1, hi)) for a in range(lo, hi + 1, self.step_size)]
        windows: list[Window] = []
        firsts = self._map(lambda r: self.reader.count_and_first(ep, r[0], r[1]), ranges)
        to_split: list[tuple[int | None, int | None, int]] = []
        for (a, b), (count, first) in zip(ranges, firsts, strict=True):
            if count is None:
                if len(first) < self.reader.page_size:
                    if first:
                        windows.append(Window(a, b, len(first), [Chunk("ready", len(first), first)]))
                    continue
                if ep.kind not in self._warned_no_count:
                    self._warned_no_count.add(ep.kind)
                    logger.warning("the API gives no Total-Count for %s (first seen on %s): reading them forward "
                                   "page by page", "items" if ep.kind == "items" else f"/{ep.kind}", ep.url)
                windows.append(Window(a, b, None, [Chunk("scan")]))
                continue
            if count == 0:
                continue
            if count <= self.reader.page_size and len(first) >= count:
                windows.append(Window(a, b, count, [Chunk("ready", count, first)]))
                continue
            to_split.append((a, b, count))
        windows.extend(self._split(ep, to_split))
        return sorted(windows, key=lambda w: -1 if w.lo is None else w.lo)

    def _split(self, ep: Endpoint, ranges: list[tuple[int | None, int | None, int]]) -> list[Window]:
        """Halve ranges of more than ``max_window_rows`` items until none is, a level at a time (the counts of
        one level in parallel); then the windows of the leaves."""
        leaves: list[tuple[int | None, int | None, int]] = []
        level = ranges
        while level:
            halve = []
            for lo, hi, count in level:
                if count <= self.max_window_rows or lo is None or hi is None or lo >= hi:
                    leaves.append((lo, hi, count))
                else:
                    halve.append((lo, hi, count))
            lefts = self._map(lambda r: self.reader.count(ep, r[0], (r[0] + r[1]) // 2), halve)
            level = []
            for (lo, hi, count), left in zip(halve, lefts, strict=True):
                assert lo is not None and hi is not None
                if left is None:
                    leaves.append((lo, hi, count))
                    continue
                mid = (lo + hi) // 2
                # items only ever leave a window (a change gives them a version above the run's bound),
                # so count - left over-estimates the right half and 0 means empty
                right = max(0, count - left)
                if left:
                    level.append((lo, mid, left))
                if right:
                    level.append((mid + 1, hi, right))
        return self._map(lambda r: self._window(ep, r[0], r[1], r[2]), leaves)

    def _window(self, ep: Endpoint, lo: int | None, hi: int | None, count: int) -> Window:
        size = self.reader.page_size
        if self.mode == "forward":
            per = size * self.pages_per_chunk
            chunks = [
                Chunk("offsets", min(per, count - start), offsets=tuple(range(start, min(start + per, count), size)))
                for start in range(0, count, per)
            ]
            return Window(lo, hi, count, chunks)
        if self.mode == "cursor" and ep.cursor:
            number = max(1, min(MAX_PARTITIONS, math.ceil(count / (size * self.pages_per_chunk))))
            tokens = self.reader.partitions(ep, lo, hi, number)
            if tokens:
                per = math.ceil(count / len(tokens))
                return Window(lo, hi, count, [Chunk("cursor", per, token=t) for t in tokens])
            return Window(lo, hi, count, [])
        return Window(lo, hi, count, [Chunk("reverse", count)])


def fetch_chunk(reader: PageReader, ep: Endpoint, window: Window, chunk: Chunk) -> list[Any]:
    """Read one chunk (in a worker thread)."""
    if chunk.mode == "ready":
        return chunk.records or []
    if chunk.mode == "reverse":
        return reader.reverse(ep, window.lo, window.hi, chunk.expected or 0)
    if chunk.mode == "offsets":
        out: list[Any] = []
        for offset in chunk.offsets:
            out.extend(reader.page(ep, window.lo, window.hi, offset))
        return out
    if chunk.mode == "cursor":
        assert chunk.token is not None
        return reader.cursor(ep, window.lo, window.hi, chunk.token)
    if chunk.mode == "scan":
        return reader.scan(ep, window.lo, window.hi)
    raise ValueError(f"unknown chunk mode {chunk.mode!r}")


__all__ = ["Chunk", "EdFiHTTPError", "Endpoint", "PageReader", "Planner", "Window", "decode_page", "fetch_chunk"]
