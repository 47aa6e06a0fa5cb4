"""Progress a person can follow: rows expected (Total-Count), rows done, rate, and a final summary."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

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

    def expect(self, name: str, rows: int) -> None:
        sp = self.stream(name)
        with self._lock:
            sp.expected += rows

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
        elapsed = max(1e-6, time.monotonic() - self.started)
        total = self.total_rows
        expected = sum(s.expected for s in self.streams.values())
        cur = ""
        if current and current in self.streams:
            sp = self.streams[current]
            pct = f" ({100 * sp.rows / sp.expected:.0f}%)" if sp.expected else ""
            cur = f"; {current}: {sp.rows:,}/{sp.expected:,}{pct}"
        req = ""
        if client_stats:
            req = f", {client_stats.get('requests', 0):,} requests, {client_stats.get('retries', 0):,} retries"
        logger.info("progress: %s/%s rows planned so far, %s rows/s%s%s", f"{total:,}", f"{expected:,}",
                    f"{total / elapsed:,.0f}", req, cur)

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
            "sync complete: %s rows from %d of %d streams in %.1fs (%s rows/s), %s requests, %s retries%s\n%s",
            f"{total:,}", len(active), len(self.streams), elapsed, f"{total / elapsed:,.0f}",
            f"{stats.get('requests', 0):,}", f"{stats.get('retries', 0):,}",
            f", {len(skipped)} streams skipped" if skipped else "", "\n".join(lines),
        )
        return {
            "rows": total, "seconds": round(elapsed, 3), "rows_per_second": round(total / elapsed, 1),
            "streams": len(self.streams), "streams_with_rows": len(active),
            "skipped": {s.name: s.skipped for s in skipped}, **{f"http_{k}": v for k, v in stats.items()},
        }
