"""Progress a person can follow: rows done, rate, and a percentage and an ETA once the totals are known.

A stream's total is known when every one of its sources (items, deletes) has been planned (counted with
``Total-Count``); until then, and for a stream whose windows could not be counted, no percentage is shown. The run's
percentage and ETA need every stream's total. Retries are summed by kind (``12 retries (429: 9, 503: 3)``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from edfi_core.session import retry_summary

logger = logging.getLogger("tap_edfi.progress")


@dataclass
class StreamProgress:
    name: str
    expected: int = 0
    rows: int = 0
    deletes: int = 0
    windows: int = 0
    started: float | None = None
    finished: float | None = None
    skipped: str | None = None
    sources: int = 0  # sources (items, deletes) the stream reads in this run
    planned: int = 0  # of them planned (their windows counted)
    uncounted: bool = False  # a window without a count: the total is not known

    @property
    def done(self) -> int:
        return self.rows + self.deletes

    @property
    def total_known(self) -> bool:
        return self.planned >= self.sources and not self.uncounted

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started


@dataclass
class Progress:
    """Counters fed by the sync engine; logs a line every ``interval`` seconds."""

    interval: float = 10.0
    streams: dict[str, StreamProgress] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _last_log: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stream(self, name: str) -> StreamProgress:
        with self._lock:
            sp = self.streams.get(name)
            if sp is None:
                sp = self.streams[name] = StreamProgress(name)
            return sp

    def register(self, name: str, sources: int) -> None:
        """A stream of the run and how many sources it reads (its total is known when all are planned)."""
        self.stream(name).sources = sources

    def expect(self, name: str, rows: int) -> None:
        sp = self.stream(name)
        with self._lock:
            sp.expected += rows

    def planned(self, name: str, counts: list[int | None]) -> None:
        """One source of ``name`` is planned: the counts of its windows (None: not counted)."""
        sp = self.stream(name)
        with self._lock:
            sp.expected += sum(c or 0 for c in counts)
            sp.uncounted = sp.uncounted or any(c is None for c in counts)
            sp.planned += 1

    def start(self, name: str) -> None:
        sp = self.stream(name)
        if sp.started is None:
            sp.started = time.monotonic()

    def add(self, name: str, rows: int, deletes: int = 0) -> None:
        sp = self.stream(name)
        sp.rows += rows
        sp.deletes += deletes

    def window_done(self, name: str) -> None:
        self.stream(name).windows += 1

    def finish(self, name: str) -> None:
        sp = self.stream(name)
        sp.finished = time.monotonic()
        with self._lock:  # read completely: its total is what it had
            if sp.uncounted or sp.planned < sp.sources:
                sp.expected = max(sp.expected, sp.done)
            sp.uncounted, sp.planned = False, max(sp.planned, sp.sources)
        if sp.rows or sp.deletes:
            extra = f", {sp.deletes:,} deletes" if sp.deletes else ""
            logger.info("%s: %s rows%s (expected %s) in %.1fs", name, f"{sp.rows:,}", extra,
                        f"{sp.expected:,}", sp.seconds)

    def skip(self, name: str, reason: str) -> None:
        self.stream(name).skipped = reason

    @property
    def total_rows(self) -> int:
        return sum(s.rows + s.deletes for s in self.streams.values())

    def maybe_log(self, client_stats: dict[str, Any] | None = None, current: str | None = None) -> None:
        now = time.monotonic()
        if now - self._last_log < self.interval:
            return
        self._last_log = now
        self.log_line(client_stats, current)

    def log_line(self, client_stats: dict[str, Any] | None = None, current: str | None = None) -> None:
        logger.info("progress: %s", self.line(client_stats, current))

    def line(self, client_stats: dict[str, Any] | None = None, current: str | None = None) -> str:
        """The progress line: a percentage only where the total is known, never above 100 %."""
        now = time.monotonic()
        elapsed = max(1e-6, now - self.started)
        with self._lock:
            streams = list(self.streams.values())
        done = sum(s.done for s in streams)
        rate = done / elapsed
        text = f"{done:,} rows"
        known = [s for s in streams if s.total_known]
        if streams and len(known) == len(streams):
            total = max(sum(max(s.expected, s.done) for s in streams), 1)
            text += f" of {total:,} ({_pct(done, total)}), {rate:,.0f} rows/s, ETA {_eta(total - done, rate)}"
        else:
            text += f", {rate:,.0f} rows/s (totals of {len(known)} of {len(streams)} streams known)"
        if client_stats:
            text += f"; {client_stats.get('requests', 0):,} requests, {retry_summary(client_stats)}"
        if current and current in self.streams:
            sp = self.streams[current]
            if sp.total_known:
                total = max(sp.expected, sp.done)
                text += f"; {current}: {sp.done:,} of {total:,} ({_pct(sp.done, total)})"
            else:
                text += f"; {current}: {sp.done:,} (total not known yet)"
        return text

    def summary(self, client_stats: dict[str, Any] | None = None) -> dict[str, Any]:
        elapsed = max(1e-6, time.monotonic() - self.started)
        total = self.total_rows
        active = [s for s in self.streams.values() if s.rows or s.deletes]
        skipped = [s for s in self.streams.values() if s.skipped]
        lines = [f"{'stream':<50} {'rows':>10} {'deletes':>8} {'expected':>10} {'seconds':>8}"]
        for s in sorted(active, key=lambda s: -s.rows)[:40]:
            lines.append(f"{s.name:<50} {s.rows:>10,} {s.deletes:>8,} {s.expected:>10,} {s.seconds:>8.1f}")
        if len(active) > 40:
            lines.append(f"... and {len(active) - 40} more streams with rows")
        stats = client_stats or {}
        logger.info(
            "sync complete: %s rows from %d of %d streams in %.1fs (%s rows/s), %s requests, %s%s\n%s",
            f"{total:,}", len(active), len(self.streams), elapsed, f"{total / elapsed:,.0f}",
            f"{stats.get('requests', 0):,}", retry_summary(stats),
            f", {len(skipped)} streams skipped" if skipped else "", "\n".join(lines),
        )
        return {
            "rows": total, "seconds": round(elapsed, 3), "rows_per_second": round(total / elapsed, 1),
            "streams": len(self.streams), "streams_with_rows": len(active),
            "skipped": {s.name: s.skipped for s in skipped}, **{f"http_{k}": v for k, v in stats.items()},
        }


def _pct(done: int, total: int) -> str:
    return f"{min(100.0, 100.0 * done / total) if total else 100.0:.0f}%"


def _eta(remaining: int, rate: float) -> str:
    if remaining <= 0:
        return "0s"
    if rate <= 0:
        return "unknown"
    seconds = int(remaining / rate + 0.5)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
