"""Singer streams built from the Ed-Fi API model: one per resource, descriptor, deletes and key changes.

Names: the resource name for the ``ed-fi`` namespace (``studentSchoolAssociations``),
``<namespace>_<resource>`` for the others (``tpdm_candidates``, ``sample_student_transcript_x``),
``<stream>_deletes`` and ``<stream>_key_changes`` for change-query streams. Names never contain
``-``: SQL targets cut table names at the last ``-``.

Schemas come from the spec with every ``$ref`` resolved; ``id`` is the key property and every
other field is nullable (the API omits empty fields). The natural key (identity) of each resource
is published in the stream's catalog metadata (``edfi-natural-key``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from singer_sdk import Stream
from singer_sdk.singerlib.catalog import MetadataMapping, StreamMetadata

from edfi_core.openapi import Resource

if TYPE_CHECKING:
    from tap_edfi.tap import TapEdFi

logger = logging.getLogger(__name__)

ITEMS, DELETES, KEY_CHANGES = "items", "deletes", "keyChanges"
DELETED_AT = "_sdc_deleted_at"
#: Formats JSON Schema validators and SQL targets understand; Ed-Fi's int32/int64/double/time are dropped.
KEPT_FORMATS = frozenset({"date", "date-time"})
#: Fields the API adds to every item (not always declared in the spec).
SERVER_FIELDS: dict[str, dict[str, Any]] = {
    "_etag": {"type": ["string", "null"]},
    "_lastModifiedDate": {"type": ["string", "null"], "format": "date-time"},
}


def base_name(res: Resource) -> str:
    """``studentSchoolAssociations`` for ed-fi, ``tpdm_candidates`` for other namespaces."""
    name = res.name if res.namespace == "ed-fi" else f"{res.namespace}_{res.name}"
    return re.sub(r"[^A-Za-z0-9_]+", "_", name)


def stream_name(res: Resource, kind: str = ITEMS) -> str:
    name = base_name(res)
    if kind == DELETES:
        return name + "_deletes"
    if kind == KEY_CHANGES:
        return name + "_key_changes"
    return name


# -- schemas ------------------------------------------------------------------------------------------
def _nullable(types: Any) -> list[str]:
    out = [t for t in types if t != "null"] if isinstance(types, list) else [types]
    return [*out, "null"]


def singer_schema(node: Any) -> dict[str, Any]:
    """An OpenAPI schema node (``$ref``s resolved) as a nullable JSON Schema for Singer."""
    if not isinstance(node, dict):
        return {}
    for combo in ("allOf", "oneOf", "anyOf"):
        if combo in node and isinstance(node[combo], list) and len(node[combo]) == 1:
            merged = {**node[combo][0], **{k: v for k, v in node.items() if k != combo}}
            return singer_schema(merged)
    typ = node.get("type")
    if typ is None:
        if "properties" in node:
            typ = "object"
        elif "items" in node:
            typ = "array"
        else:
            return {}  # anything
    out: dict[str, Any] = {"type": _nullable(typ)}
    base = typ[0] if isinstance(typ, list) else typ
    if node.get("description"):
        out["description"] = str(node["description"])
    if base == "object":
        props = node.get("properties")
        if isinstance(props, dict):
            out["properties"] = {name: singer_schema(spec) for name, spec in props.items()}
    elif base == "array":
        out["items"] = singer_schema(node.get("items") or {})
    elif base == "string":
        if node.get("format") in KEPT_FORMATS:
            out["format"] = node["format"]
        if isinstance(node.get("maxLength"), int):
            out["maxLength"] = node["maxLength"]
    return out


def item_schema(res: Resource, inline_deletes: bool) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name, spec in (res.schema.get("properties") or {}).items():
        props[name] = singer_schema(spec)
    props["id"] = {"type": "string", "description": "The resource's unique identifier (GUID)."}
    for name, spec in SERVER_FIELDS.items():
        props.setdefault(name, dict(spec))
    if inline_deletes:
        props[DELETED_AT] = {
            "type": ["string", "null"], "format": "date-time",
            "description": "Set on records of items deleted in the API: when the tap saw the delete.",
        }
    # id first, then the spec's order
    ordered = {"id": props.pop("id"), **props}
    return {"type": "object", "properties": ordered}


def key_values_schema(res: Resource) -> dict[str, Any]:
    """Flattened natural key values, as ``keyValues`` of /deletes and /keyChanges name them."""
    props: dict[str, Any] = {}
    for flat, path in res.key_paths.items():
        node: Any = res.schema
        for part in path:
            node = ((node or {}).get("properties") or {}).get(part) if isinstance(node, dict) else None
        spec = singer_schema(node) if node else {}
        spec.pop("description", None)
        props[flat] = spec
    return {"type": ["object", "null"], "properties": props}


def deletes_schema(res: Resource) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "The id of the deleted item."},
            "changeVersion": {"type": ["integer", "null"]},
            "keyValues": key_values_schema(res),
        },
    }


def key_changes_schema(res: Resource) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "The id of the item whose natural key changed."},
            "changeVersion": {"type": "integer"},
            "oldKeyValues": key_values_schema(res),
            "newKeyValues": key_values_schema(res),
        },
    }


# -- catalog metadata -----------------------------------------------------------------------------------
@dataclass(slots=True)
class EdFiStreamMetadata(StreamMetadata):
    """Stream metadata with what the tap knows about the Ed-Fi resource behind the stream."""

    edfi_resource: str | None = None
    edfi_kind: str | None = None
    edfi_natural_key: list[str] | None = None
    edfi_identity: list[str] | None = None
    edfi_descriptor: bool | None = None


# -- streams --------------------------------------------------------------------------------------------
class EdFiStream(Stream):
    """One Ed-Fi collection as a Singer stream.

    Records come from the tap's sync engine (``tap_edfi.sync``), which reads every selected
    stream concurrently, writes records itself and sets bookmarks per completed change-version
    window. :meth:`get_records` serves the SDK's own per-stream path (``--test``, dry runs,
    the SDK's standard tests) with the same paging code, one stream at a time.
    """

    def __init__(self, tap: TapEdFi, resource: Resource, kind: str, schema: dict[str, Any],
                 *, inline_deletes: bool = False) -> None:
        self.resource = resource
        self.kind = kind
        self.inline_deletes = inline_deletes
        super().__init__(tap, schema=schema, name=stream_name(resource, kind))
        self.primary_keys = ["id", "changeVersion"] if kind == KEY_CHANGES else ["id"]
        self.replication_key = None
        self.forced_replication_method = "INCREMENTAL"

    @property
    def is_sorted(self) -> bool:
        return False

    @property
    def metadata(self) -> MetadataMapping:
        if self._metadata is not None:
            return self._metadata
        mapping = super().metadata
        root = mapping.root
        res = self.resource
        mapping[()] = EdFiStreamMetadata(
            inclusion=root.inclusion,
            selected=root.selected,
            selected_by_default=root.selected_by_default,
            table_key_properties=root.table_key_properties,
            replication_key=root.replication_key,
            forced_replication_method=root.forced_replication_method,
            valid_replication_keys=root.valid_replication_keys,
            schema_name=root.schema_name,
            edfi_resource=res.path,
            edfi_kind=self.kind,
            edfi_natural_key=[".".join(p) for p in res.key_paths.values()],
            edfi_identity=list(res.identity),
            edfi_descriptor=res.is_descriptor,
        )
        self._metadata = mapping
        return mapping

    def _increment_stream_state(self, latest_record: dict, *, context: dict | None = None) -> None:
        """Bookmarks are change versions of completed windows, set by the sync engine.

        Ed-Fi items carry no change version, so there is no replication key field to take a
        bookmark from: the SDK's per-record bookmarking is switched off.
        """

    def get_records(self, context: dict | None) -> Iterable[dict[str, Any]]:
        from tap_edfi.sync import iter_stream_records

        yield from iter_stream_records(self._tap, self)  # type: ignore[arg-type]
