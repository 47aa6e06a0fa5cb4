"""What a run did, per resource: records, requests, created, updated, deleted, skipped unchanged, failed.

Failures are grouped by HTTP status (or ``invalid`` for records stopped before sending) and message, each group
with a count and a few example natural keys. The summary is logged at the end of a run and written as JSON to
``results_file``; ``failed`` counts what made the run exit non-zero when it passes ``max_failures``.

Every record of the input ends in exactly one of ``created``, ``updated``, ``key_changes``, ``deleted``,
``already_deleted``, ``superseded`` (replaced by a later record of the same source item in the input, or a delete
of an item another source item holds now), ``skipped_unchanged``, ``failed``, ``duplicates`` (a record whose
natural key a later record of another source item in the input has too) and ``key_change_rows`` (rows of tap-edfi's
``<stream>_key_changes``, applied to the log), so that per resource and in the totals ``records + resumed``
(records an earlier run spooled and this one applied) equals their sum; ``unaccounted`` in the totals is the
difference (0 once everything is settled). Not records, and counted apart: ``old_items_deleted`` (the old item of a
key change by POST and DELETE), ``missing_deleted`` (``delete_missing``) and ``failed_deletes`` (those of them
that failed).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Counters of one resource, in the order they are reported.
COUNTERS = ("records", "requests", "created", "updated", "key_changes", "deleted", "already_deleted",
            "superseded", "skipped_unchanged", "deferred", "failed", "waiting", "retried_failed", "duplicates",
            "resumed", "key_change_rows", "old_items_deleted", "missing_deleted", "failed_deletes")
#: where every record ends: records + resumed = their sum
OUTCOMES = ("created", "updated", "key_changes", "deleted", "already_deleted", "superseded", "skipped_unchanged",
            "failed", "waiting", "duplicates", "key_change_rows")
EXAMPLES = 3
MAX_GROUPS = 50  # failure groups per resource; more distinct messages are counted as "other messages"
#: bad input that counts as failed records (a line that is not JSON most likely was one)
FAILED_INPUT = ("malformed_json", "record_without_schema", "bad_record", "bad_message")


#: a quoted value (not an apostrophe: "caller's"), but not the names the ODS/API quotes in its messages ("the
#: referenced 'Student' item", "the resource item's 'StudentUniqueId' value")
_QUOTED = re.compile(r"(?<![A-Za-z])'[^']*'(?![A-Za-z])(?! (?:item|value|property|resource)\b)")


def redact_values(message: str) -> str:
    """A message with its single-quoted values (how this target's checks, jsonschema and the API quote a value
    they reject) left out: results and log lines at INFO and above carry no source values, which may be student
    data; the full text is logged at DEBUG only."""
    return _QUOTED.sub("'…'", message)


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class FailureGroup:
    status: str
    message: str
    count: int = 0
    examples: list[Any] = field(default_factory=list)
    api_messages: list[str] = field(default_factory=list)  # the API's own messages (as it wrote them)


@dataclass
class ResourceResults:
    counts: Counter = field(default_factory=Counter)
    failures: dict[tuple[str, str], FailureGroup] = field(default_factory=dict)
    waits: Counter = field(default_factory=Counter)  # (status, message) of records kept in the spool
    duplicates: list[Any] = field(default_factory=list)  # examples: natural key, source keys, which was sent

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: self.counts.get(name, 0) for name in COUNTERS}
        out["failures"] = [
            {"status": g.status, "message": g.message, "count": g.count, "examples": g.examples,
             **({"api_messages": g.api_messages} if g.api_messages else {})}
            for g in sorted(self.failures.values(), key=lambda g: -g.count)
        ]
        out["waiting_reasons"] = [{"status": status, "message": message, "count": n}
                                  for (status, message), n in self.waits.most_common(MAX_GROUPS)]
        if self.duplicates:
            out["duplicate_examples"] = self.duplicates
        return out


class Results:
    """Thread-safe tallies of one run."""

    def __init__(self, run_id: str, target: str | None = None) -> None:
        self.run_id = run_id
        self.target = target
        self.started_at = utc_now()
        self._started = time.monotonic()
        self.resources: dict[str, ResourceResults] = {}
        self.streams: dict[str, Counter] = {}
        self.stream_resources: dict[str, str] = {}
        self.unmapped: Counter = Counter()
        self.bad_input: Counter = Counter()
        self.bad_input_examples: list[str] = []
        self.requests: dict[str, Any] = {}
        self.state_messages_emitted = 0
        self.finished_at: str | None = None
        self.status = "running"
        self._lock = threading.Lock()

    # -- tallies -------------------------------------------------------------------------------------
    def _res(self, resource: str) -> ResourceResults:
        res = self.resources.get(resource)
        if res is None:
            res = self.resources[resource] = ResourceResults()
        return res

    def add(self, resource: str, counter: str, n: int = 1) -> None:
        with self._lock:
            self._res(resource).counts[counter] += n

    def fail(self, resource: str, status: int | str | None, message: str, example: Any = None, *,
             counter: str = "failed", server_message: str | None = None) -> None:
        status_text = str(status) if status is not None else "no response"
        message = redact_values(message or "")[:300]
        server_message = redact_values(server_message) if server_message else server_message
        with self._lock:
            res = self._res(resource)
            res.counts[counter] += 1
            key = (status_text, message)
            if key not in res.failures and len(res.failures) >= MAX_GROUPS:
                key = (status_text, "(other messages: see the transaction log)")
            group = res.failures.get(key)
            if group is None:
                group = res.failures[key] = FailureGroup(*key)
            group.count += 1
            if example is not None and len(group.examples) < EXAMPLES:
                group.examples.append(example)
            if server_message and server_message not in group.api_messages and len(group.api_messages) < EXAMPLES:
                group.api_messages.append(server_message)

    def duplicate(self, resource: str, example: Any) -> None:
        """An example of one natural key from several source items (the count is ``duplicates``)."""
        with self._lock:
            res = self._res(resource)
            if len(res.duplicates) < EXAMPLES:
                res.duplicates.append(example)

    def wait(self, resource: str, status: int | str | None, message: str) -> None:
        """A record kept in the spool after a transient outcome (sent again by the next run)."""
        with self._lock:
            res = self._res(resource)
            res.counts["waiting"] += 1
            res.waits[(str(status) if status is not None else "no response", redact_values(message or "")[:300])] += 1

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(r.counts.get("waiting", 0) for r in self.resources.values())

    def waiting_by_resource(self) -> dict[str, int]:
        with self._lock:
            return {path: r.counts["waiting"] for path, r in self.resources.items() if r.counts.get("waiting")}

    def waiting_reasons(self) -> Counter:
        """(status, message) -> records kept in the spool, over all resources."""
        with self._lock:
            total: Counter = Counter()
            for res in self.resources.values():
                total.update(res.waits)
            return total

    def stream_record(self, stream: str, resource: str | None, counter: str = "records") -> None:
        with self._lock:
            counts = self.streams.get(stream)
            if counts is None:
                counts = self.streams[stream] = Counter()
                if resource:
                    self.stream_resources[stream] = resource
            counts[counter] += 1

    def unmapped_record(self, stream: str) -> None:
        with self._lock:
            self.unmapped[stream] += 1

    def bad_line(self, kind: str, detail: str) -> None:
        with self._lock:
            self.bad_input[kind] += 1
            if len(self.bad_input_examples) < 20:
                self.bad_input_examples.append(detail[:500])

    # -- totals ----------------------------------------------------------------------------------------
    @property
    def failed(self) -> int:
        """Records that did not land: failed sends, invalid records, records of unmapped streams or without schema."""
        with self._lock:
            sent = sum(r.counts.get("failed", 0) + r.counts.get("failed_deletes", 0) for r in self.resources.values())
            unreadable = sum(self.bad_input.get(kind, 0) for kind in FAILED_INPUT)
            return sent + sum(self.unmapped.values()) + unreadable

    def totals(self) -> dict[str, int]:
        with self._lock:
            total: Counter = Counter()
            for res in self.resources.values():
                total.update(res.counts)
            out = {name: total.get(name, 0) for name in COUNTERS}
            out["unaccounted"] = out["records"] + out["resumed"] - sum(out[name] for name in OUTCOMES)
            return out

    def finish(self, status: str) -> None:
        self.status = status
        self.finished_at = utc_now()

    def as_dict(self) -> dict[str, Any]:
        totals = self.totals()
        with self._lock:
            return {
                "run_id": self.run_id,
                "target": self.target,
                "status": self.status,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
                "elapsed_seconds": round(time.monotonic() - self._started, 3),
                "totals": {**totals, "failed_all": 0},  # filled below
                "resources": {path: res.as_dict() for path, res in sorted(self.resources.items())},
                "streams": {name: {"resource": self.stream_resources.get(name), **dict(counts)}
                            for name, counts in sorted(self.streams.items())},
                "unmapped_streams": dict(self.unmapped),
                "bad_input": {**dict(self.bad_input), "examples": list(self.bad_input_examples)},
                "http": self.requests,
            }

    def summary(self) -> dict[str, Any]:
        out = self.as_dict()
        out["totals"]["failed_all"] = self.failed
        return out

    def write(self, path: str | Path) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(self.summary(), indent=2, default=str))
        tmp.replace(target)

    def log(self) -> None:
        """One line per resource that had anything, then the totals and every failure group."""
        summary = self.summary()
        for path, res in summary["resources"].items():
            counts = {k: v for k, v in res.items() if k != "failures" and v}
            if counts:
                logger.info("%s: %s", path, ", ".join(f"{k} {v}" for k, v in counts.items()))
            for group in res["failures"]:
                logger.error("%s: %d failed with %s: %s (e.g. %s)", path, group["count"], group["status"],
                             group["message"], json.dumps(group["examples"][:1], default=str))
        for stream, n in summary["unmapped_streams"].items():
            logger.error("stream %r maps to no Ed-Fi resource: %d records not sent", stream, n)
        totals = summary["totals"]
        logger.info(
            "target-edfi run %s: %d records, %d requests: %d created, %d updated, %d key changes, %d deleted, "
            "%d skipped unchanged, %d duplicates, %d failed, %d waiting in the spool (%s)", self.run_id,
            totals["records"], totals["requests"], totals["created"], totals["updated"], totals["key_changes"],
            totals["deleted"], totals["skipped_unchanged"], totals["duplicates"], totals["failed_all"],
            totals["waiting"], summary["status"])


__all__ = ["COUNTERS", "OUTCOMES", "Results", "redact_values", "utc_now"]
