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
with little or nothing new costs one request.

Nothing an API answers is taken on trust (tap_edfi.sync checks every window): a 200 whose body is
not a JSON array (empty, an object, HTML, truncated) is a named error, tried again like a 5xx
(:class:`BadPage`); a page shorter than the count says is asked for again; the pages of a window
always reach past its count, so a count that is too low shows as items beyond it; and when the
API gives no ``Total-Count`` at all, counts are found by probing offsets (:meth:`PageReader.probe_count`),
so the same windows and reverse paging lose nothing without counts either. Pages are kept as raw JSON (``msgspec.Raw``)
slices of the response: records are written out without being parsed into Python objects.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import urllib.parse
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


class BadPage(ValueError):
    """A successful response whose body is not the JSON array a collection page must be."""


class _Ident(msgspec.Struct):
    id: str | None = None
    Id: str | None = None  # 5.x /deletes


_IDENT = msgspec.json.Decoder(_Ident)


def record_ids(records: Iterable[Any]) -> list[str]:
    """The ``id`` of each raw item (``Id`` in 5.x /deletes), for counting what a window read."""
    out = []
    for raw in records:
        try:
            ident = _IDENT.decode(raw)
            key = ident.id or ident.Id
        except msgspec.ValidationError:  # not an object
            key = None
        out.append(key or bytes(raw).decode("utf-8", "replace"))  # no id: the item itself
    return out


def decode_page(body: bytes) -> list[Any]:
    """The items of a JSON array response as raw JSON slices (one line each); :class:`BadPage` for
    anything else (an empty body, an object, HTML, truncated or malformed JSON)."""
    head = body.lstrip()[:1] if body else b""
    if not head:
        raise BadPage("an empty body")
    if head != b"[":
        what = {b"{": "a JSON object", b"<": "HTML"}.get(head, "not JSON")
        raise BadPage(f"{what} instead of a JSON array")
    try:
        if b"\n" in body or b"\r" in body:  # pretty-printed: re-encode each item on one line
            items = orjson.loads(body)
            if not isinstance(items, list):
                raise BadPage("not a JSON array")
            return [orjson.dumps(item) for item in items]
        return _RAW_LIST.decode(body)
    except (msgspec.DecodeError, orjson.JSONDecodeError):
        raise BadPage(f"a truncated or malformed JSON array ({len(body)} bytes)") from None


def _total(resp: Any) -> int | None:
    value = resp.headers.get("Total-Count")
    return int(value) if value is not None and value.strip().isdigit() else None


def full_url(url: str, params: dict[str, Any]) -> str:
    return f"{url}?{urllib.parse.urlencode(params)}" if params else url


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

    mode: str  # ready | reverse | offsets | cursor
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
    #: whether reading the chunks shows by itself that nothing lies beyond ``count`` (a page past the
    #: count, or a short last page of a counted window); otherwise the end is probed after reading
    exact_end: bool = True
    #: ids read so far (the sync engine's: duplicates are dropped, completeness is checked against it)
    seen: set[str] = field(default_factory=set)


class PageReader:
    """The requests of the paging strategies, for one client and page size."""

    def __init__(self, client: EdFiClient, page_size: int, min_limit: int = 0, max_in_flight: int = 8) -> None:
        self.client = client
        self.transport = Transport(client)  # pages over keep-alive http.client connections, one per thread
        self.max_in_flight = max(1, max_in_flight)
        # however many threads plan and read, at most max_in_flight requests are at the API at once
        self._slots = threading.BoundedSemaphore(self.max_in_flight)
        self.page_size = page_size
        self.count_limit = max(0, min_limit)  # 5.x/6.x refuse limit=0 (counts read one item everywhere now)
        # DMS: a cursor walk ends only where a page has no Next-Page-Token, never on a short or empty page (a page
        # selects its items before reading them: concurrent deletes can empty a page with more after it,
        # CURSOR-PAGING.md "Repeat until the header is absent")
        self.until_no_token = False
        self._lock = threading.Lock()
        self._warned_no_count: set[str] = set()

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

    def _retry_wait(self, n: int) -> float:
        client = self.client
        delay = min(float(client.backoff_max), float(client.backoff_factor) * (2**n))
        return delay / 2 + random.uniform(0, delay / 2)

    def _bad(self, url: str, params: dict[str, Any], status: int, problem: str, attempt: int) -> None:
        """A response that cannot be used: tried again like a 5xx, then :class:`EdFiHTTPError` naming it."""
        tries = max(1, int(self.client.max_tries))
        if attempt >= tries:
            raise EdFiHTTPError("GET", full_url(url, params), status, problem, tries=attempt)
        wait = self._retry_wait(attempt - 1)
        self.client.stats.count_retry("bad body")
        logger.warning("GET %s: HTTP %s with %s; retry %d/%d in %.1fs", full_url(url, params), status, problem,
                       attempt, tries - 1, wait)
        time.sleep(wait)

    def get(self, ep: Endpoint, params: dict[str, Any]) -> tuple[list[Any], Any]:
        """One page: its items (raw JSON) and the response; a body that is not a JSON array is tried again."""
        attempt = 0
        while True:
            attempt += 1
            resp = self._request(ep, ep.url, params)
            try:
                return decode_page(resp.content), resp
            except BadPage as exc:
                self._bad(ep.url, params, resp.status_code, f"{exc} (expected a JSON array of items)", attempt)

    def count_and_first(self, ep: Endpoint, lo: int | None, hi: int | None) -> tuple[int, list[Any], bool]:
        """(the count, the first page, whether the count is exact) in one request when the API counts."""
        params = {**self._range(lo, hi), "offset": 0, "limit": self.page_size, "totalCount": "true"}
        records, resp = self.get(ep, params)
        total = _total(resp)
        if total is None:
            self.no_count(ep)
            return self.probe_count(ep, lo, hi, len(records)), records, False
        if len(records) > total:  # a count below what one page holds: not to be trusted
            logger.warning("GET %s: Total-Count %s but the page has %s items; probing the window's end",
                           full_url(ep.url, params), total, len(records))
            return len(records), records, False
        return total, records, True

    def count(self, ep: Endpoint, lo: int | None, hi: int | None) -> int:
        """The items of a range (one item is read along: a count of 0 with an item is not believed)."""
        params = {**self._range(lo, hi), "offset": 0, "limit": 1, "totalCount": "true"}
        records, resp = self.get(ep, params)
        total = _total(resp)
        if total is None:
            self.no_count(ep)
            return self.probe_count(ep, lo, hi, len(records), limit=1)
        return max(total, len(records))

    def no_count(self, ep: Endpoint) -> None:
        with self._lock:
            if ep.kind in self._warned_no_count:
                return
            self._warned_no_count.add(ep.kind)
        logger.warning("the API gives no Total-Count for %s (first seen on %s): counting windows by probing "
                       "offsets (a few more requests per window)", "items" if ep.kind == "items" else
                       f"/{ep.kind}", ep.url)

    def _at(self, ep: Endpoint, lo: int | None, hi: int | None, offset: int, limit: int) -> int:
        params = {**self._range(lo, hi), "offset": offset, "limit": limit}
        return len(self.get(ep, params)[0])

    def probe_count(self, ep: Endpoint, lo: int | None, hi: int | None, first: int, limit: int | None = None) -> int:
        """Count a range without ``Total-Count``: ``first`` items were found at offset 0 (asked with ``limit``,
        a page by default). Offsets a page apart are probed (one item each), doubling until one is empty, then
        halving down to the last page, which is read to count its items. Items only leave a window while it is
        read (a change gives them a version above the run's bound), so the count over-estimates, never misses."""
        size = self.page_size
        limit = limit or size
        if first < limit:
            return first
        if limit < size:
            head = self._at(ep, lo, hi, 0, size)
            if head < size:  # fits one page
                return head
        full, empty = 0, 1  # pages: an item at full*size; none at empty*size (to be found)
        while self._at(ep, lo, hi, empty * size, 1):
            full, empty = empty, empty * 2
        while empty - full > 1:
            mid = (full + empty) // 2
            if self._at(ep, lo, hi, mid * size, 1):
                full = mid
            else:
                empty = mid
        return full * size + self._at(ep, lo, hi, full * size, size)

    def probe_end(self, ep: Endpoint, lo: int | None, hi: int | None, offset: int) -> tuple[int | None, bool]:
        """(the range's count now, whether an item lies at ``offset``): after ``offset`` items were read, an
        item there or a higher count means items were never read."""
        params = {**self._range(lo, hi), "offset": offset, "limit": 1, "totalCount": "true"}
        records, resp = self.get(ep, params)
        return _total(resp), bool(records)

    def page(self, ep: Endpoint, lo: int | None, hi: int | None, offset: int) -> list[Any]:
        params = {**self._range(lo, hi), "offset": offset, "limit": self.page_size}
        return self.get(ep, params)[0]

    def counted_page(self, ep: Endpoint, lo: int | None, hi: int | None, offset: int, expect: int) -> list[Any]:
        """The page at ``offset``, asked again (at most twice) while it has fewer than the ``expect`` items the
        count promises: a truncated page is answered honestly next time; items that left the window (churn) stay
        gone and a second answer as short as the first ends it. Every answer is kept (duplicates are dropped
        later): reading the same offset again can only add items."""
        page = self.page(ep, lo, hi, offset)
        best = len(page)
        out = list(page)
        for _ in range(2):
            if best >= expect:
                break
            again = self.page(ep, lo, hi, offset)
            out.extend(again)
            if len(again) <= best:
                break
            best = len(again)
        return out

    def reverse(self, ep: Endpoint, lo: int | None, hi: int | None, count: int) -> list[Any]:
        """Every item of the window, read from the last page to the first; returned in offset order.
        The last page read starts at or before ``count`` and reaches past it: a count that was too low shows
        as items beyond it."""
        pages: list[list[Any]] = []
        size = self.page_size
        last = (max(count, 0) // size) * size
        for offset in range(last, -1, -size):
            pages.append(self.counted_page(ep, lo, hi, offset, max(0, min(size, count - offset))))
        out: list[Any] = []
        for page in reversed(pages):
            out.extend(page)
        return out

    def partitions(self, ep: Endpoint, lo: int | None, hi: int | None, number: int) -> list[str]:
        params = {**self._range(lo, hi), "number": max(1, min(MAX_PARTITIONS, number))}
        url = ep.url + "/partitions"
        attempt = 0
        while True:
            attempt += 1
            resp = self._request(ep, url, params)
            try:
                body = orjson.loads(resp.content)
            except orjson.JSONDecodeError:
                body = None
            tokens = body.get("pageTokens") if isinstance(body, dict) else None
            if isinstance(tokens, list):
                return [str(t) for t in tokens]
            self._bad(url, params, resp.status_code, "a body without pageTokens (expected {\"pageTokens\": [...]})",
                      attempt)

    def cursor(self, ep: Endpoint, lo: int | None, hi: int | None, token: str, careful: bool = False) -> list[Any]:
        """One partition, page after page following ``Next-Page-Token``. A short page is the end, except when
        ``careful`` (a window read again): then a short page is asked for again once, and paging goes on until an
        empty page or no token, so a truncated page cannot end the partition."""
        out: list[Any] = []
        next_token: str | None = token
        while next_token:
            params = {**self._range(lo, hi), "pageToken": next_token, "pageSize": self.page_size}
            page, resp = self.get(ep, params)
            if careful and 0 < len(page) < self.page_size:
                again, resp2 = self.get(ep, params)
                if len(again) > len(page):
                    page, resp = again, resp2
            out.extend(page)
            if not self.until_no_token and (not page or (len(page) < self.page_size and not careful)):
                break  # nothing can enter the window: a short page is the end
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
        size = self.reader.page_size
        for (a, b), (count, first, exact) in zip(ranges, firsts, strict=True):
            if count == 0:
                continue  # counted 0 and the page (read along) is empty
            if count <= size and len(first) >= count:
                # the first page is the window: it shows its own end when it is short and the count exact
                windows.append(Window(a, b, count, [Chunk("ready", count, first)],
                                      exact_end=exact and len(first) < size))
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
            # items only ever leave a window (a change gives them a version above the run's bound), so
            # count - left over-estimates the right half; when it comes to nothing or less, the right half is
            # counted itself (the count of the whole may have been too low)
            rights = self._map(lambda r: self.reader.count(ep, (r[0][0] + r[0][1]) // 2 + 1, r[0][1]),
                               [(h, left) for h, left in zip(halve, lefts, strict=True) if left >= h[2]])
            counted = iter(rights)
            level = []
            for (lo, hi, count), left in zip(halve, lefts, strict=True):
                assert lo is not None and hi is not None
                mid = (lo + hi) // 2
                right = count - left if left < count else next(counted)
                if left:
                    level.append((lo, mid, left))
                if right:
                    level.append((mid + 1, hi, right))
        return self._map(lambda r: self.window(ep, r[0], r[1], r[2]), leaves)

    def window(self, ep: Endpoint, lo: int | None, hi: int | None, count: int, careful: bool = False) -> Window:
        """The chunks that read a window of ``count`` items (``careful``: a window read again)."""
        size = self.reader.page_size
        if self.mode == "forward":
            # pages up to and past the count: a count that was too low shows as items beyond it
            offsets = list(range(0, (count // size) * size + 1, size))
            per = self.pages_per_chunk
            chunks = [Chunk("offsets", count, offsets=tuple(offsets[i:i + per])) for i in range(0, len(offsets), per)]
            # the count is what an answer said: short pages can add up to exactly a count that was too low, so
            # the end of a forward window is always probed (one request a window of up to 50 pages)
            return Window(lo, hi, count, chunks, exact_end=False)
        if self.mode == "cursor" and ep.cursor:
            number = max(1, min(MAX_PARTITIONS, math.ceil(count / (size * self.pages_per_chunk))))
            tokens = self.reader.partitions(ep, lo, hi, number)
            if tokens:
                per = math.ceil(count / len(tokens))
                mode = "cursor_careful" if careful else "cursor"
                return Window(lo, hi, count, [Chunk(mode, per, token=t) for t in tokens])
            return Window(lo, hi, count, [], exact_end=False)
        return Window(lo, hi, count, [Chunk("reverse", count)])


def fetch_chunk(reader: PageReader, ep: Endpoint, window: Window, chunk: Chunk) -> list[Any]:
    """Read one chunk (in a worker thread)."""
    if chunk.mode == "ready":
        return chunk.records or []
    if chunk.mode == "reverse":
        return reader.reverse(ep, window.lo, window.hi, chunk.expected or 0)
    if chunk.mode == "offsets":
        out: list[Any] = []
        size = reader.page_size
        for offset in chunk.offsets:
            expect = max(0, min(size, (chunk.expected or 0) - offset))
            out.extend(reader.counted_page(ep, window.lo, window.hi, offset, expect))
        return out
    if chunk.mode in ("cursor", "cursor_careful"):
        assert chunk.token is not None
        return reader.cursor(ep, window.lo, window.hi, chunk.token, careful=chunk.mode == "cursor_careful")
    raise ValueError(f"unknown chunk mode {chunk.mode!r}")


__all__ = ["BadPage", "Chunk", "EdFiHTTPError", "Endpoint", "PageReader", "Planner", "Window", "decode_page",
           "fetch_chunk", "record_ids"]
