"""Helpers for the target-edfi tests: run the target against a sandbox and compare what the sandbox holds.

* :func:`run_target` runs target-edfi in this process on Singer messages (bytes) and returns its STATE lines and
  results; :func:`run_target_process` runs the ``target-edfi`` console script (kill -9, CLI, exit codes).
* :func:`content` is what a sandbox holds, per resource and natural key, without what the server adds (ids,
  etags, dates, links, a descriptor's integer id): two sandboxes with equal content hold the same data.
* :func:`singer_messages` turns payloads per stream into SCHEMA and RECORD lines, the way a vendor's tap would.
* :class:`RequestCounter` counts the data requests a sandbox served, by method.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from edfi_core.keys import canonical
from edfi_core.openapi import Resource, without_server_fields
from edfi_sandbox.app import HttpError
from edfi_sandbox.server import Sandbox
from edfi_sandbox.store import StoreError
from target_edfi.target import TargetEdFi
from tests.tap_support import PLUGIN_WARNINGS

REPO = Path(__file__).resolve().parents[1]
TARGET = str(REPO / ".venv" / "bin" / "target-edfi") if (REPO / ".venv" / "bin" / "target-edfi").exists() \
    else "target-edfi"


def target_config(sb: Sandbox, log: Path | str, **extra: Any) -> dict[str, Any]:
    return {"base_url": sb.api_root, "client_id": sb.client_id, "client_secret": sb.client_secret,
            "transaction_log": str(log), "progress_interval": 60, **extra}


class Run:
    """What one target run produced."""

    def __init__(self, stdout: str, target: TargetEdFi | None, exit_code: int) -> None:
        self.stdout = stdout
        self.target = target
        self.exit_code = exit_code
        self.states = [json.loads(line) for line in stdout.splitlines() if line.strip()]

    @property
    def results(self) -> dict[str, Any]:
        assert self.target is not None
        return self.target.results.summary()

    @property
    def totals(self) -> dict[str, int]:
        return self.results["totals"]

    def resource(self, path: str) -> dict[str, Any]:
        return self.results["resources"].get(path, {})


def run_target(config: dict[str, Any], messages: bytes) -> Run:
    """Run target-edfi in this process on ``messages`` (Singer lines); STATE lines are captured."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    target = TargetEdFi(config=config)
    for sig, handler in handlers.items():  # the SDK installs its own: keep pytest's
        signal.signal(sig, handler)
    out = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out):
        try:
            target.listen(io.BytesIO(messages))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return Run(out.getvalue(), target, code)


def run_target_process(config: dict[str, Any], messages: bytes, tmp: Path, timeout: float = 300,
                       env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cfg = tmp / "target-config.json"
    cfg.write_text(json.dumps(config))
    proc = subprocess.run([TARGET, "--config", str(cfg)], input=messages, capture_output=True, timeout=timeout,
                          env={**os.environ, **PLUGIN_WARNINGS, **(env or {})})
    assert b"ResourceWarning" not in proc.stderr, proc.stderr.decode("utf-8", "replace")[-3000:]
    return proc


# -- content -------------------------------------------------------------------------------------------------
def payload_of(res: Resource, item: dict[str, Any]) -> dict[str, Any]:
    """An item as a client would POST it: no server fields, no descriptor's integer ``{name}DescriptorId``."""
    body = without_server_fields(item)
    if res.is_descriptor:
        body.pop(f"{res.entity}Id", None)
    return body


def content(sb: Sandbox, paths: Iterable[str] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """Resource path -> canonical natural key -> the item without server fields."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for res in sb.model:
        if paths is not None and res.path not in paths:
            continue
        items: dict[str, dict[str, Any]] = {}
        for doc in sb.store.iter_docs(res.path):
            body = payload_of(res, doc)
            items[canonical(res.natural_key(doc)).decode()] = body
        out[res.path] = items
    return out


def without_empty_collections(c: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`content` without empty arrays at any level: an ODS/API returns every collection (``[]`` when
    empty), DMS (8.x) drops empty collections, so the same data compares equal across the two only this way."""

    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if v != []}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    return {path: {key: clean(doc) for key, doc in items.items()} for path, items in c.items()}


def diff_content(a: dict[str, dict[str, dict]], b: dict[str, dict[str, dict]]) -> list[str]:
    """Human-readable differences between two :func:`content` results (empty when equal)."""
    problems = []
    for path in sorted(set(a) | set(b)):
        left, right = a.get(path, {}), b.get(path, {})
        only_a, only_b = set(left) - set(right), set(right) - set(left)
        changed = [k for k in set(left) & set(right) if left[k] != right[k]]
        if only_a:
            problems.append(f"{path}: {len(only_a)} only in the first, e.g. {sorted(only_a)[0]}")
        if only_b:
            problems.append(f"{path}: {len(only_b)} only in the second, e.g. {sorted(only_b)[0]}")
        if changed:
            k = changed[0]
            problems.append(f"{path}: {len(changed)} differ, e.g. {k}: {left[k]} != {right[k]}")
    return problems


# -- input ----------------------------------------------------------------------------------------------------
def singer_messages(streams: Iterable[tuple[str, dict[str, Any]]], *, key_properties: dict[str, list[str]] | None =
                    None, state: Any = None, versions: dict[str, int] | None = None) -> bytes:
    """SCHEMA before the first record of each stream, then RECORD lines in the given (possibly shuffled) order."""
    lines: list[bytes] = []
    seen: set[str] = set()
    for stream, record in streams:
        if stream not in seen:
            seen.add(stream)
            lines.append(orjson.dumps({"type": "SCHEMA", "stream": stream, "schema": {"type": "object",
                                       "properties": {}}, "key_properties": (key_properties or {}).get(stream, [])}))
        msg: dict[str, Any] = {"type": "RECORD", "stream": stream, "record": record}
        if versions and stream in versions:
            msg["version"] = versions[stream]
        lines.append(orjson.dumps(msg))
    if state is not None:
        lines.append(orjson.dumps({"type": "STATE", "value": state}))
    return b"\n".join(lines) + b"\n"


class RequestCounter:
    """Counts the data management requests a sandbox serves, by method and by (method, status) (wraps its ASGI
    app)."""

    def __init__(self, sb: Sandbox) -> None:
        self.counts: Counter = Counter()
        self.statuses: Counter = Counter()
        app = sb.app
        original = app._dispatch

        async def counting(route: Any, req: Any, base: str) -> Any:
            if route.area != "data":
                return await original(route, req, base)
            self.counts[req.method] += 1
            try:
                reply = await original(route, req, base)
            except (HttpError, StoreError) as exc:
                self.statuses[(req.method, exc.status)] += 1
                raise
            self.statuses[(req.method, reply.status)] += 1
            return reply

        app._dispatch = counting  # type: ignore[method-assign]

    def reset(self) -> None:
        self.counts.clear()
        self.statuses.clear()

    @property
    def writes(self) -> int:
        return self.counts["POST"] + self.counts["PUT"] + self.counts["DELETE"]

    @contextlib.contextmanager
    def fresh(self) -> Iterator[RequestCounter]:
        self.reset()
        yield self


__all__ = [
    "RequestCounter",
    "Run",
    "content",
    "diff_content",
    "payload_of",
    "run_target",
    "run_target_process",
    "singer_messages",
    "target_config",
    "without_empty_collections",
]
