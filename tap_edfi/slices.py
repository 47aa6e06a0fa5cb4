"""``tenant_code`` and ``api_year`` columns on native records: many tenants and school years in one table set.

A state or a district runs one tap per tenant and school year (Meltano: inherited taps, each with its own state).
With either setting set, every record of every stream (resources, descriptors, inline deletes, ``_deletes`` and
``_key_changes`` streams) carries the set columns, the schemas declare them and the key properties start with them:
an upserting target keeps the rows of different tenants and years apart in one table, also when the same ``id``
exists in two of them (an ODS made for a new school year from a copy of the last keeps its ids). Without either
setting nothing changes: no column, key properties ``id`` (``id`` and ``changeVersion`` for key changes).

target-postgres applies ``ACTIVATE_VERSION`` to the whole table (rows of every tenant and year with an older
table version are deleted or marked), so a tap writing slice columns writes no table versions: no
reconciliation (``tap_edfi.sync``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

#: the columns, in this order, and their schemas
SLICE_COLUMNS: dict[str, dict[str, Any]] = {
    "tenant_code": {"type": "string", "description": "The `tenant_code` setting: the tenant the row came from."},
    "api_year": {"type": "integer", "description": "The `api_year` setting: the school year the row came from."},
}


def slice_values(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The columns to add (only the settings that are set); ``{}`` when neither is."""
    out: dict[str, Any] = {}
    if settings.get("tenant_code") not in (None, ""):
        out["tenant_code"] = str(settings["tenant_code"])
    if settings.get("api_year") not in (None, ""):
        out["api_year"] = int(settings["api_year"])
    return out


def with_slice_columns(schema: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The schema with the slice columns first (a document field of the same name gives way to them)."""
    if not values:
        return schema
    props = {k: v for k, v in (schema.get("properties") or {}).items() if k not in values}
    return {**schema, "properties": {**{k: dict(SLICE_COLUMNS[k]) for k in values}, **props}}


def slice_keys(values: Mapping[str, Any], keys: list[str]) -> list[str]:
    """Key properties: the slice columns, then the stream's own."""
    return [*values, *(k for k in keys if k not in values)]


class RawSlice:
    """Adds the slice columns to raw JSON objects (response bytes) without parsing them: the columns go last, so
    that they win over a document field of the same name (JSON readers keep the last of duplicate names)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)
        self._fields = orjson.dumps(self.values)[1:]  # b'"tenant_code":"a","api_year":2025}'

    def __call__(self, item: Any) -> bytes:
        raw = bytes(item).rstrip()
        if raw.endswith(b"}"):
            body = raw[:-1].rstrip()
            return body + (b"," if not body.endswith(b"{") else b"") + self._fields
        return raw  # not an object: left for the target to reject as it would without the columns

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        record.update(self.values)
        return record
