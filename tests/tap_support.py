"""Helpers for the tap-edfi tests: run the tap against a sandbox and check its output.

* :func:`run_tap` runs the tap in this process (fast) and returns its Singer messages;
  :func:`run_tap_process` runs the ``tap-edfi`` console script (kill -9 tests).
* :class:`Warehouse` applies Singer messages the way an upserting target does (by ``id``;
  records with ``_sdc_deleted_at`` mark a row deleted; ``*_deletes`` streams mark too).
* :func:`sandbox_content` and :func:`assert_matches` compare the warehouse with what the sandbox
  holds, item for item.
* :class:`Mutator` makes inserts, updates, key changes and deletes through the API.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
from collections.abc import Iterable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import orjson
import requests

from edfi_core.openapi import Resource
from edfi_sandbox.server import Sandbox
from tap_edfi.streams import stream_name
from tap_edfi.tap import TapEdFi

REPO = Path(__file__).resolve().parents[1]
OPENAPI = REPO.parent / "shared" / "edfi" / "openapi"
DS5_SPECS = [str(OPENAPI / "standards_resources-ds-5.0.oas3.yml"),
             str(OPENAPI / "standards_descriptors-ds-5.0.oas3.yml")]
#: every ODS/API version, and DMS 8.0 (v8.0.0) and 8.1 (DMS main: cursor paging)
VERSIONS = ("5.3", "6.1", "7.1", "7.3", "8.0", "8.1")
ODS_VERSIONS = ("5.3", "6.1", "7.1", "7.3")
TAP = str(REPO / ".venv" / "bin" / "tap-edfi") if (REPO / ".venv" / "bin" / "tap-edfi").exists() else "tap-edfi"
#: plugins run as processes show an unclosed socket or file (as Meltano's PYTHONWARNINGS=once does), and fail on it
PLUGIN_WARNINGS = {"PYTHONWARNINGS": "error::ResourceWarning"}


def tap_config(sb: Sandbox, **extra: Any) -> dict[str, Any]:
    return {"base_url": sb.api_root or sb.base_url, "client_id": sb.client_id, "client_secret": sb.client_secret,
            "progress_interval": 60, **extra}


# -- running the tap -------------------------------------------------------------------------------------
class Output:
    """The messages of one run."""

    def __init__(self, data: bytes, tap: TapEdFi | None = None) -> None:
        self.raw = data
        self.messages = []
        for n, line in enumerate(data.splitlines()):
            if not line.strip():
                continue
            try:
                self.messages.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise AssertionError(f"line {n} of the tap's output is not JSON: {line[:300]!r}") from exc
        self.tap = tap

    @property
    def records(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "RECORD"]

    def stream_records(self, stream: str) -> list[dict[str, Any]]:
        return [m["record"] for m in self.records if m["stream"] == stream]

    @property
    def states(self) -> list[dict[str, Any]]:
        return [m["value"] for m in self.messages if m["type"] == "STATE"]

    @property
    def last_state(self) -> dict[str, Any] | None:
        states = self.states
        return states[-1] if states else None

    @property
    def schemas(self) -> dict[str, dict[str, Any]]:
        return {m["stream"]: m for m in self.messages if m["type"] == "SCHEMA"}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.records:
            out[m["stream"]] = out.get(m["stream"], 0) + 1
        return out


def run_tap(config: dict[str, Any], state: dict[str, Any] | None = None,
            catalog: dict[str, Any] | None = None) -> Output:
    """Run a sync in this process and capture stdout."""
    tap = TapEdFi(config=config, state=state, catalog=catalog)
    buf = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    with redirect_stdout(buf):
        tap.sync_all()
        buf.flush()
    return Output(buf.buffer.getvalue(), tap)  # type: ignore[attr-defined]


def run_tap_process(config: dict[str, Any], tmp: Path, state: dict[str, Any] | None = None,
                    args: Iterable[str] = (), timeout: float = 120,
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cfg = tmp / "config.json"
    cfg.write_text(json.dumps(config))
    cmd = [TAP, "--config", str(cfg), *args]
    if state is not None:
        st = tmp / "state.json"
        st.write_text(json.dumps(state))
        cmd += ["--state", str(st)]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **PLUGIN_WARNINGS, **(env or {})})
    assert b"ResourceWarning" not in proc.stderr, proc.stderr.decode("utf-8", "replace")[-3000:]
    return proc


# -- the target side -------------------------------------------------------------------------------------
class Warehouse:
    """Rows by stream and id, as an upserting SQL target keeps them."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, dict[str, Any]]] = {}

    def apply(self, output: Output) -> Warehouse:
        for m in output.messages:
            if m["type"] == "SCHEMA":
                self.tables.setdefault(m["stream"], {})
            elif m["type"] == "RECORD":
                rec = m["record"]
                stream = m["stream"]
                if stream.endswith("_deletes"):
                    base = self.tables.setdefault(stream[: -len("_deletes")], {})
                    if rec["id"] in base:
                        base[rec["id"]] = {**base[rec["id"]], "_sdc_deleted_at": "deleted"}
                    self.tables.setdefault(stream, {})[rec["id"]] = rec
                    continue
                table = self.tables.setdefault(stream, {})
                key = rec["id"] if not stream.endswith("_key_changes") else f"{rec['id']}:{rec['changeVersion']}"
                table[key] = rec
        return self

    def live(self, stream: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.tables.get(stream, {}).items() if not v.get("_sdc_deleted_at")}


def sandbox_content(sb: Sandbox, resources: Iterable[Resource] | None = None) -> dict[str, dict[str, dict]]:
    """Stream name -> id -> item, for every resource of the sandbox."""
    out: dict[str, dict[str, dict]] = {}
    for res in resources if resources is not None else sb.model:
        out[stream_name(res)] = {doc["id"]: doc for doc in sb.store.iter_docs(res.path)}
    return out


def assert_matches(wh: Warehouse, sb: Sandbox, *, exact: bool = True) -> None:
    """Every live row equals the sandbox's item, and (``exact``) nothing more or less."""
    expected = sandbox_content(sb)
    problems: list[str] = []
    for stream, items in expected.items():
        live = wh.live(stream)
        missing = set(items) - set(live)
        extra = set(live) - set(items)
        changed = [i for i in set(items) & set(live) if live[i] != items[i]]
        if missing:
            problems.append(f"{stream}: {len(missing)} missing, e.g. {sorted(missing)[:2]}")
        if exact and extra:
            problems.append(f"{stream}: {len(extra)} rows the API no longer has, e.g. {sorted(extra)[:2]}")
        if exact and changed:
            problems.append(f"{stream}: {len(changed)} stale rows, e.g. {changed[0]}")
    assert not problems, "warehouse differs from the sandbox:\n" + "\n".join(problems)


# -- changing the sandbox through the API ----------------------------------------------------------------
SERVER_FIELDS = ("id", "_etag", "_lastModifiedDate")


def payload(doc: dict[str, Any]) -> dict[str, Any]:
    body = {k: copy.deepcopy(v) for k, v in doc.items() if k not in SERVER_FIELDS}
    return body


class Mutator:
    """Inserts, updates, key changes and deletes through the sandbox's HTTP API."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.http = requests.Session()
        self.http.headers["Authorization"] = "Bearer " + sb.token()
        self.log: list[tuple[str, str, str]] = []

    def url(self, path: str) -> str:
        return self.sb.data_url + path

    def docs(self, path: str) -> list[dict[str, Any]]:
        return list(self.sb.store.iter_docs(path))

    def _put(self, path: str, item_id: str, body: dict[str, Any]) -> requests.Response:
        """A PUT; DMS (8.x) requires the item's id in the body (ValidateMatchingDocumentUuidsMiddleware)."""
        if self.sb.config.is_dms:
            body = {"id": item_id, **body}
        return self.http.put(self.url(f"{path}/{item_id}"), json=body, timeout=30)

    def update(self, path: str, n: int, field: str, value_fn: Any) -> int:
        done = 0
        for doc in self.docs(path)[:n]:
            body = payload(doc)
            body[field] = value_fn(doc)
            resp = self._put(path, doc["id"], body)
            assert resp.status_code == 204, resp.text
            self.log.append(("update", path, doc["id"]))
            done += 1
        return done

    def insert_copies(self, path: str, n: int, key_field: str, suffix: str) -> list[str]:
        """POST copies of existing items with a changed scalar key field."""
        created = []
        for doc in self.docs(path)[:n]:
            body = payload(doc)
            body[key_field] = f"{body[key_field]}{suffix}"[:32]
            resp = self.http.post(self.url(path), json=body, timeout=30)
            assert resp.status_code in (200, 201), resp.text
            created.append(resp.headers["Location"].rsplit("/", 1)[-1])
            self.log.append(("insert", path, created[-1]))
        return created

    def change_key(self, path: str, n: int, field: str, value_fn: Any) -> int:
        done = 0
        for doc in self.docs(path)[:n]:
            body = payload(doc)
            body[field] = value_fn(doc)
            resp = self._put(path, doc["id"], body)
            assert resp.status_code == 204, resp.text
            self.log.append(("key", path, doc["id"]))
            done += 1
        return done

    def delete(self, path: str, n: int) -> int:
        done = 0
        for doc in self.docs(path):
            if done >= n:
                break
            resp = self.http.delete(self.url(f"{path}/{doc['id']}"), timeout=30)
            if resp.status_code == 204:
                self.log.append(("delete", path, doc["id"]))
                done += 1
        return done


def next_day(value: str) -> str:
    import datetime as dt

    return (dt.date.fromisoformat(value) + dt.timedelta(days=1)).isoformat()


def standard_changes(sb: Sandbox, round_no: int) -> Mutator:
    """A mix of every kind of change a nightly run sees."""
    m = Mutator(sb)
    m.insert_copies("/ed-fi/students", 3, "studentUniqueId", f"n{round_no}")
    m.update("/ed-fi/students", 5, "firstName", lambda d: f"{d.get('firstName', 'x')}-r{round_no}")
    m.update("/ed-fi/staffs", 2, "firstName", lambda d: f"Staff{round_no}")
    # key changes (studentSchoolAssociations and classPeriods are key-updatable; classPeriods cascade)
    m.change_key("/ed-fi/studentSchoolAssociations", 2, "entryDate", lambda d: next_day(d["entryDate"]))
    m.change_key("/ed-fi/classPeriods", 1, "classPeriodName", lambda d: f"{d['classPeriodName']}-{round_no}"[:60])
    m.delete("/ed-fi/studentSectionAttendanceEvents", 4)
    m.delete("/ed-fi/grades", 2)
    m.delete("/ed-fi/gradeTypeDescriptors", 5)  # only unused descriptors can go
    return m


__all__ = [
    "DS5_SPECS",
    "ODS_VERSIONS",
    "VERSIONS",
    "Mutator",
    "Output",
    "Warehouse",
    "assert_matches",
    "run_tap",
    "run_tap_process",
    "sandbox_content",
    "standard_changes",
    "tap_config",
]

