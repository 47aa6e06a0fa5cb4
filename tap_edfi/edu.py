"""``record_format: edu``: the raw tables edu_edfi_airflow loads and edu_edfi_source reads (docs/edu-format.md).

Every resource becomes a stream named like edu_edfi_airflow's raw table (the resource in snake case,
``student_school_associations``); its rows carry the Ed-Fi document as one JSON object column ``v`` next to
``tenant_code``, ``api_year``, ``pull_date``, ``pull_timestamp``, ``file_row_number``, ``filename``,
``name``, ``ods_version`` and ``data_model_version``. Deletes of every resource go to the one ``_deletes``
stream and key changes to ``_key_changes``, with the same columns (``v`` is the /deletes or /keyChanges
entry as the API sent it, ``name`` the resource). Rows are made from the response bytes: the document is
never parsed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from edfi_core.openapi import Resource

NATIVE, EDU = "native", "edu"
DELETES_TABLE, KEY_CHANGES_TABLE = "_deletes", "_key_changes"
#: the columns of edu_edfi_airflow's raw tables, in its COPY INTO order (docs/edu-format.md)
EDU_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "tenant_code": {"type": "string", "description": "The `tenant_code` setting."},
        "api_year": {"type": "integer", "description": "The `api_year` setting."},
        "pull_date": {"type": "string", "format": "date", "description": "The day of pull_timestamp (UTC)."},
        "pull_timestamp": {"type": "string", "format": "date-time", "description": "When the run started (UTC)."},
        "file_row_number": {"type": "integer", "description": "The row's number in its stream this run (from 1)."},
        "filename": {"type": "string", "description": "Where the row came from: "
                     "tap-edfi/<tenant>/<year>/<YYYYMMDD>/<YYYYMMDDTHHMMSS>/<kind>/<name>.jsonl."},
        "name": {"type": "string", "description": "The resource (snake case), also for deletes and key changes."},
        "ods_version": {"type": ["string", "null"], "description": "The API's version (root document)."},
        "data_model_version": {"type": ["string", "null"], "description": "The Ed-Fi data standard version."},
        "v": {"type": "object", "description": "The document (or /deletes, /keyChanges entry) as JSON."},
    },
}
_FOLDERS = {"items": "resources", "deletes": "resource_deletes", "keyChanges": "resource_key_changes"}


def snake(name: str) -> str:
    """``studentSchoolAssociations`` -> ``student_school_associations`` (edfi_api_client's camel_to_snake)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def resource_name(res: Resource) -> str:
    """The raw table of a resource: the snake-case name; other namespaces than ed-fi are prefixed."""
    name = snake(res.name)
    if res.namespace != "ed-fi":
        name = f"{re.sub(r'[^A-Za-z0-9]+', '_', res.namespace).lower()}_{name}"
    return re.sub(r"[^a-z0-9_]+", "_", name)


def table_name(res: Resource, kind: str) -> str:
    if kind == "deletes":
        return DELETES_TABLE
    if kind == "keyChanges":
        return KEY_CHANGES_TABLE
    return resource_name(res)


@dataclass
class EduFormat:
    """The constant part of every row of a run, and the row counters (``file_row_number``)."""

    tenant_code: str
    api_year: int
    pull_timestamp: str  # ISO 8601, UTC
    ods_version: str | None
    data_model_version: str | None
    rows: dict[tuple[str, str], int] = field(default_factory=dict)

    def lines(self, res: Resource, kind: str, items: Iterable[Any], time_extracted: str,
              version: int | None = None) -> tuple[bytes, int]:
        """RECORD lines for raw JSON items (bytes-like) of one resource and kind, and how many."""
        stamp = dt.datetime.fromisoformat(self.pull_timestamp).astimezone(dt.timezone.utc)
        name = resource_name(res)
        filename = (f"tap-edfi/{self.tenant_code}/{self.api_year}/{stamp:%Y%m%d}/{stamp:%Y%m%dT%H%M%S}/"
                    f"{_FOLDERS.get(kind, kind)}/{name}.jsonl")
        fixed = orjson.dumps({"tenant_code": self.tenant_code, "api_year": self.api_year,
                              "pull_date": stamp.date().isoformat(), "pull_timestamp": stamp.isoformat(),
                              "filename": filename, "name": name, "ods_version": self.ods_version,
                              "data_model_version": self.data_model_version})
        head = (b'{"type":"RECORD","stream":' + orjson.dumps(table_name(res, kind)) + b',"record":'
                + fixed[:-1] + b',"file_row_number":')
        tail = (b'},"time_extracted":"' + time_extracted.encode() + b'"'
                + (b',"version":' + str(int(version)).encode() if version is not None else b"") + b"}\n")
        key = (name, kind)
        start = self.rows.get(key, 0)
        out = [head + str(start + i).encode() + b',"v":' + bytes(item) + tail for i, item in enumerate(items, 1)]
        self.rows[key] = start + len(out)
        return b"".join(out), len(out)
