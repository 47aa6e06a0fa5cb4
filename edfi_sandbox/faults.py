"""Injected latency, errors, dropped connections and background churn, for tests and benchmarks."""

from __future__ import annotations

import logging
import random
import string
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import orjson

from edfi_sandbox.store import Store, StoreError

logger = logging.getLogger(__name__)


@dataclass
class FaultConfig:
    latency_ms: float = 0.0  # fixed delay added to every API request
    jitter_ms: float = 0.0  # plus a uniform random delay in [0, jitter_ms]
    rate_429: float = 0.0  # fraction of requests answered 429 with Retry-After
    rate_500: float = 0.0
    rate_502: float = 0.0
    rate_503: float = 0.0
    rate_drop: float = 0.0  # fraction of requests whose connection is dropped mid-response
    retry_after: int = 1  # seconds, in the Retry-After header of injected 429s
    seed: int | None = None  # random seed for reproducible faults
    # a write takes its change version, then holds it this long before it commits and becomes visible (as on
    # a real ODS/API, where the version comes from a sequence inside the write's transaction: docs/change-versions.md)
    commit_delay_ms: float = 0.0

    def update(self, values: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        for key, value in values.items():
            if key not in names:
                raise ValueError(f"unknown fault setting {key!r}")
            if key == "seed":
                setattr(self, key, None if value is None else int(value))
            elif key == "retry_after":
                setattr(self, key, int(value))
            else:
                number = float(value)
                if key.startswith("rate_") and not 0.0 <= number <= 1.0:
                    raise ValueError(f"{key} must be between 0 and 1")
                if number < 0:
                    raise ValueError(f"{key} must not be negative")
                setattr(self, key, number)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def any_error(self) -> bool:
        return any((self.rate_429, self.rate_500, self.rate_502, self.rate_503, self.rate_drop))


class FaultInjector:
    def __init__(self, config: FaultConfig | None = None) -> None:
        self.config = config or FaultConfig()
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()
        self.injected: dict[str, int] = {}

    def configure(self, values: dict[str, Any]) -> None:
        with self._lock:
            self.config.update(values)
            if "seed" in values:
                self._rng = random.Random(self.config.seed)

    def delay(self) -> float:
        c = self.config
        if not c.latency_ms and not c.jitter_ms:
            return 0.0
        with self._lock:
            jitter = self._rng.uniform(0, c.jitter_ms) if c.jitter_ms else 0.0
        return (c.latency_ms + jitter) / 1000.0

    def pick(self) -> str | None:
        """The fault to inject into this request, if any: "429", "500", "502", "503" or "drop"."""
        c = self.config
        if not c.any_error:
            return None
        with self._lock:
            x = self._rng.random()
        for name, rate in (
            ("429", c.rate_429),
            ("500", c.rate_500),
            ("502", c.rate_502),
            ("503", c.rate_503),
            ("drop", c.rate_drop),
        ):
            if x < rate:
                with self._lock:
                    self.injected[name] = self.injected.get(name, 0) + 1
                return name
            x -= rate
        return None


class Churn:
    """Updates and deletes random items at a given rate while clients read.

    Updates change a plain (non-key, non-reference, non-descriptor) field, which gives the item a
    new change version: an item updated while a change-version window is being paged leaves the
    window, and forward offset paging skips an item. Deletes only remove items nothing refers to.
    """

    def __init__(
        self,
        store: Store,
        rate: float,
        resources: list[str] | None = None,
        delete_fraction: float = 0.2,
        seed: int | None = None,
    ) -> None:
        self.store = store
        self.rate = rate
        self.delete_fraction = delete_fraction
        self._rng = random.Random(seed)
        self.resources = resources or self._default_resources()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.updates = 0
        self.deletes = 0

    def _default_resources(self) -> list[str]:
        # resources nothing refers to, with a field churn can change
        targets = {t.path for r in self.store.model for ref in r.references
                   for t in self.store.model.reference_targets(ref)}
        return [
            r.path for r in self.store.model
            if not r.is_descriptor and r.path not in targets and self._mutable_field(r.path)
        ]

    def _mutable_field(self, path: str) -> tuple[str, dict] | None:
        res = self.store.model.get(path)
        if res is None:
            return None
        key_props = set(res.identity)
        for name, spec in (res.schema.get("properties") or {}).items():
            if name in key_props or name.startswith("_") or name == "id" or name.endswith("Descriptor"):
                continue
            if spec.get("type") == "string" and not spec.get("format") and not spec.get("enum"):
                return name, spec
            if spec.get("type") in ("integer", "number"):
                return name, spec
        return None

    def start(self) -> None:
        if self._thread is not None or self.rate <= 0 or not self.resources:
            return
        self._thread = threading.Thread(target=self._run, name="sandbox-churn", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # keep churning: one bad step must not stop the thread
                logger.exception("churn step failed")
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def step(self) -> str | None:
        """One random change; returns "update", "delete" or None."""
        path = self._rng.choice(self.resources)
        conn = self.store.reader()
        table = self.store.table(path)
        row = conn.execute(f'SELECT MAX(aggregate_id) FROM "{table}"').fetchone()
        if not row or not row[0]:
            return None
        agg = self._rng.randint(1, row[0])
        hit = conn.execute(
            f'SELECT id, doc FROM "{table}" WHERE aggregate_id >= ? ORDER BY aggregate_id LIMIT 1', (agg,)
        ).fetchone()
        if hit is None:
            return None
        item_id, blob = hit
        try:
            if self._rng.random() < self.delete_fraction:
                self.store.delete(path, item_id)
                self.deletes += 1
                return "delete"
            doc = orjson.loads(blob)
            field = self._mutable_field(path)
            if field is None:
                return None
            name, spec = field
            if spec.get("type") == "string":
                size = max(1, min(int(spec.get("maxLength") or 20), 20))
                doc[name] = "".join(self._rng.choices(string.ascii_letters, k=size))
            else:
                doc[name] = self._rng.randint(1, 9)
            self.store.update(path, item_id, doc)
            self.updates += 1
            return "update"
        except StoreError:
            return None
