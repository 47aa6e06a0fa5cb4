"""Turning a Singer record into the payload an Ed-Fi API accepts, and checking it before it is sent.

One walk over the record, guided by the resource's schema (:class:`Shaper`):

* **drops** what the API must not receive: ``id``, ``_etag``, ``_lastModifiedDate``, ``link`` objects at any
  depth, ``_sdc_*`` metadata, a descriptor's integer ``<name>DescriptorId``, and ``null`` values (the API
  treats them as absent);
* **conforms** values from flat sources (``tap-csv``, SQL taps) to the schema: ``"42"`` for an integer,
  ``"true"`` for a boolean, a JSON string for an object or array, ``2024-08-20T00:00:00+00:00`` for a date,
  ``studentReference__studentUniqueId`` (the SDK's flattening separator) and ``snake_case`` names for
  camelCase properties; an empty string is no value, like ``null``;
* with ``validate``, **checks** types, required properties, lengths, ``date`` formats, unknown properties and
  the ``uri://namespace/Name#code`` form of descriptor values, and reports each problem with its field path
  (``$.studentReference.studentUniqueId``), the way the API's own validation errors name them.

A record that fails is never sent. The natural key of the cleaned payload (:meth:`Resource.natural_key`) and
its hash (:func:`edfi_core.keys.payload_hash`) are what the transaction log keys and compares on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson

from edfi_core.keys import canonical, payload_hash, split_descriptor_uri
from edfi_core.openapi import SERVER_FIELDS, ApiModel, Resource

#: Fields the API adds to items; never sent (``link`` is dropped at any depth).
SDC_PREFIX = "_sdc_"
DELETED_AT = "_sdc_deleted_at"
FLATTEN_SEPARATOR = "__"

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_PREFIX = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ]00:00(?::00(?:\.0+)?)?(?:Z|[+-]00:?00)?$")
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})
_DROP = object()
#: deepest nesting of a value the schema says nothing about (Ed-Fi resources nest about 5 levels): deeper records
#: fail, named, instead of exhausting the interpreter's stack
MAX_DEPTH = 64


class TooDeep(ValueError):
    """A record nested deeper than :data:`MAX_DEPTH` levels."""


def snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


@dataclass
class Node:
    """A compiled schema node."""

    kind: str = "any"  # object | array | string | integer | number | boolean | any
    props: dict[str, Node] | None = None
    aliases: dict[str, str] = field(default_factory=dict)  # snake_case / lower-case name -> property
    required: tuple[str, ...] = ()
    items: Node | None = None
    max_length: int | None = None
    min_length: int | None = None
    fmt: str | None = None
    descriptor: bool = False
    enum: tuple[Any, ...] | None = None
    plain: bool = True  # a string with nothing to check


_KINDS = ("object", "array", "string", "integer", "number", "boolean")


def compile_schema(schema: Any, name: str = "") -> Node:
    if not isinstance(schema, dict):
        return Node()
    for combo in ("allOf", "oneOf", "anyOf"):
        if isinstance(schema.get(combo), list) and len(schema[combo]) == 1:
            merged = {**schema[combo][0], **{k: v for k, v in schema.items() if k != combo}}
            return compile_schema(merged, name)
    typ = schema.get("type")
    if typ is None:
        typ = "object" if "properties" in schema else ("array" if "items" in schema else None)
    types = [t for t in (typ if isinstance(typ, list) else [typ]) if t and t != "null"]
    kind = next((k for k in _KINDS if k in types), "any")
    node = Node(kind=kind)
    if kind == "object" and isinstance(schema.get("properties"), dict):
        node.props = {p: compile_schema(s, p) for p, s in schema["properties"].items() if p not in SERVER_FIELDS}
        node.required = tuple(r for r in schema.get("required") or [] if r in node.props)
        for prop in node.props:
            node.aliases[prop.lower()] = prop
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", prop).lower()
            node.aliases[snake] = prop
    elif kind == "array":
        node.items = compile_schema(schema.get("items") or {})
    elif kind == "string":
        node.max_length = schema.get("maxLength") if isinstance(schema.get("maxLength"), int) else None
        node.min_length = schema.get("minLength") if isinstance(schema.get("minLength"), int) else None
        node.fmt = schema.get("format") if schema.get("format") in ("date", "date-time") else None
        node.descriptor = name.endswith("Descriptor")
    if isinstance(schema.get("enum"), list):
        node.enum = tuple(schema["enum"])
    node.plain = not (node.max_length is not None or node.min_length is not None or node.fmt or node.descriptor
                      or node.enum is not None)
    return node


_NO_VALUE: Any = object()


class Problems:
    """Field path -> messages, collected during one walk.

    Messages name the field path and the problem, never the value (source values are student data); the values
    are kept beside them for :meth:`values_text`, which is for DEBUG logging only.
    """

    def __init__(self, enabled: bool, drop_unknown: bool = False, drop_empty: bool = False) -> None:
        self.enabled = enabled
        #: DMS (API v8) targets: empty arrays (and empty objects in arrays) are not sent; DMS drops them, so a
        #: payload that has them would never compare equal to what the API holds (docs/dms.md, Writes)
        self.drop_empty = drop_empty
        #: ``unknown_fields: drop``: a field the resource's schema does not have is left out (its path kept in
        #: :attr:`unknown`, for one warning per stream and field), not reported as a problem
        self.drop_unknown = drop_unknown
        self.unknown: list[str] = []
        self.items: list[tuple[str, str]] = []
        self.values: dict[str, Any] = {}  # field path -> the offending value (DEBUG only)
        self.descriptors: list[tuple[str, str]] = []  # (field path, value) of well-formed descriptor values

    def add(self, path: str, message: str, value: Any = _NO_VALUE) -> None:
        if self.enabled:
            self.items.append((path, message))
            if value is not _NO_VALUE:
                self.values[path] = value

    def __bool__(self) -> bool:
        return bool(self.items)

    def text(self, limit: int = 10) -> str:
        parts = [f"{p}: {m}" for p, m in self.items[:limit]]
        if len(self.items) > limit:
            parts.append(f"... and {len(self.items) - limit} more")
        return "; ".join(parts)

    def values_text(self, limit: int = 10) -> str:
        """The offending values by field path: for DEBUG logs only (they are source data)."""
        return "; ".join(f"{p}: {v!r}"[:300] for p, v in list(self.values.items())[:limit])


def _maybe_json(value: str) -> Any:
    text = value.strip()
    if text[:1] in ("{", "["):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return value
    return value


def _clean_any(value: Any, depth: int = 0) -> Any:
    """Drop links and nulls from a value the schema says nothing about (at most :data:`MAX_DEPTH` levels)."""
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise TooDeep(f"a value is nested more than {MAX_DEPTH} levels deep")
        return {k: _clean_any(v, depth + 1) for k, v in value.items() if v is not None and k != "link"}
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            raise TooDeep(f"a value is nested more than {MAX_DEPTH} levels deep")
        return [_clean_any(v, depth + 1) for v in value if v is not None]
    return value


def _unflatten(record: dict[str, Any]) -> dict[str, Any]:
    """``{"a__b": 1}`` -> ``{"a": {"b": 1}}`` (the SDK's flattening, undone)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if FLATTEN_SEPARATOR in key and not key.startswith("_"):
            parts = key.split(FLATTEN_SEPARATOR)
            node = out
            for part in parts[:-1]:
                nxt = node.get(part)
                if not isinstance(nxt, dict):
                    nxt = node[part] = {}
                node = nxt
            node[parts[-1]] = value
        else:
            out[key] = value
    return out


def _path(parent: str, key: str | int) -> str:
    return f"{parent}[{key}]" if isinstance(key, int) else f"{parent}.{key}"


def shape(value: Any, node: Node, parent: str, key: str | int, problems: Problems) -> Any:
    """``value`` (found at ``parent`` + ``key``) conformed to ``node``; ``_DROP`` for nothing.

    Problems are collected, not raised; field paths are only built for problems and nested values.
    """
    if value is None:
        return _DROP
    kind = node.kind
    if kind == "string":
        if type(value) is str:
            if not value:
                return _DROP  # an empty cell of a flat source: nothing
            if node.plain or (not problems.enabled and node.fmt != "date"):
                return value
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (int, float)):
            value = str(value)
        elif isinstance(value, (dt.date, dt.datetime)):
            value = value.isoformat()
        else:
            problems.add(_path(parent, key), f"expected a string, got {type(value).__name__}")
            return value
        return _check_string(value, node, parent, key, problems)
    if kind == "object":
        if type(value) is dict:
            return _shape_object(value, node, _path(parent, key), problems) if node.props is not None else \
                _clean_any(value)
        if isinstance(value, str):
            parsed = _maybe_json(value)
            if isinstance(parsed, dict):
                return shape(parsed, node, parent, key, problems)
        problems.add(_path(parent, key), f"expected an object, got {type(value).__name__}")
        return value
    if kind == "array":
        if type(value) is not list:
            parsed = _maybe_json(value) if isinstance(value, str) else value
            if not isinstance(parsed, list):
                problems.add(_path(parent, key), f"expected an array, got {type(value).__name__}")
                return value
            value = parsed
        items = node.items or Node()
        here = _path(parent, key)
        out = []
        for i, item in enumerate(value):
            shaped = shape(item, items, here, i, problems)
            if shaped is not _DROP and not (problems.drop_empty and shaped == {}):
                out.append(shaped)
        return _DROP if problems.drop_empty and not out else out
    if kind == "integer":
        if type(value) is int:
            return value
        return _to_integer(value, parent, key, problems)
    if kind == "number":
        if type(value) in (float, int):
            return value
        return _to_number(value, parent, key, problems)
    if kind == "boolean":
        if type(value) is bool:
            return value
        return _to_boolean(value, parent, key, problems)
    return _clean_any(value)


def _check_string(value: str, node: Node, parent: str, key: str | int, problems: Problems) -> str:
    fmt = node.fmt
    if fmt == "date" and not _DATE.match(value):
        m = _DATE_PREFIX.match(value)
        if m:
            value = m.group(1)
        else:
            problems.add(_path(parent, key), "is not a date (YYYY-MM-DD)", value)
    elif fmt == "date-time" and problems.enabled:
        try:
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            problems.add(_path(parent, key), "is not a date-time", value)
    if problems.enabled:
        if node.max_length is not None and len(value) > node.max_length:
            problems.add(_path(parent, key), f"is {len(value)} characters long, at most {node.max_length} are allowed")
        if node.min_length is not None and len(value) < node.min_length:
            problems.add(_path(parent, key),
                         f"is {len(value)} characters long, at least {node.min_length} are required")
        if node.descriptor:
            parts = split_descriptor_uri(value)
            if parts is None or not parts[0].startswith("uri://"):
                problems.add(_path(parent, key), "is not a descriptor value (uri://namespace/Name#codeValue)", value)
            else:
                problems.descriptors.append((_path(parent, key), value))
        if node.enum is not None and value not in node.enum:
            problems.add(_path(parent, key), f"is not one of {list(node.enum)}", value)
    return value


def _to_integer(value: Any, parent: str, key: str | int, problems: Problems) -> Any:
    if isinstance(value, bool):
        problems.add(_path(parent, key), "expected an integer, got a boolean")
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return _DROP
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
    problems.add(_path(parent, key), "is not an integer", value)
    return value


def _to_number(value: Any, parent: str, key: str | int, problems: Problems) -> Any:
    if isinstance(value, bool):
        problems.add(_path(parent, key), "expected a number, got a boolean")
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return _DROP
        try:
            return float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            pass
    problems.add(_path(parent, key), "is not a number", value)
    return value


def _to_boolean(value: Any, parent: str, key: str | int, problems: Problems) -> Any:
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        if low == "":
            return _DROP
    problems.add(_path(parent, key), "is not a boolean", value)
    return value


def _shape_object(value: dict[str, Any], node: Node, path: str, problems: Problems) -> dict[str, Any]:
    props = node.props or {}
    out: dict[str, Any] = {}
    marks = (len(problems.items), len(problems.unknown), len(problems.descriptors))
    for key, item in value.items():
        sub = props.get(key)
        if sub is None:
            if key in SERVER_FIELDS or key.startswith(SDC_PREFIX):
                continue
            if FLATTEN_SEPARATOR in key and not key.startswith("_"):
                # flattened columns: undo, redo (forgetting what the first pass found, so nothing is found twice)
                del problems.items[marks[0]:], problems.unknown[marks[1]:], problems.descriptors[marks[2]:]
                return _shape_object(_unflatten(value), node, path, problems)
            alias = node.aliases.get(key) or node.aliases.get(key.lower()) or node.aliases.get(
                snake_to_camel(key).lower())
            if alias is not None and alias not in value:
                key, sub = alias, props[alias]
            else:
                if key != "_ext":
                    if problems.drop_unknown:
                        problems.unknown.append(f"{path}.{key}")
                        continue
                    problems.add(f"{path}.{key}", "is not a property of this resource")
                if item is not None:
                    out[key] = _clean_any(item)
                continue
        shaped = shape(item, sub, path, key, problems)
        if shaped is not _DROP:
            out[key] = shaped
    if problems.enabled:
        for name in node.required:
            if name not in out:
                problems.add(f"{path}.{name}", "is required")
    return out


# -- per resource --------------------------------------------------------------------------------------
@dataclass
class Shaped:
    """A record made ready: the payload, its natural key and hashes, or the problems that stop it."""

    payload: dict[str, Any]
    natural_key: dict[str, Any]
    key_complete: bool
    problems: Problems

    @property
    def ok(self) -> bool:
        return not self.problems and self.key_complete

    @cached_property
    def _canonical_key(self) -> bytes | None:
        return canonical(self.natural_key) if self.key_complete else None

    @property
    def key_hash(self) -> str | None:
        key = self._canonical_key
        return hashlib.sha1(key, usedforsecurity=False).hexdigest() if key is not None else None

    @property
    def key_text(self) -> str | None:
        key = self._canonical_key
        return key.decode() if key is not None else None

    def body(self) -> bytes:
        return orjson.dumps(self.payload)

    def body_hash(self) -> str:
        return payload_hash(self.payload)

    def descriptor_text(self) -> str | None:
        """The record's descriptor values, ``path<TAB>value`` per line (checked against the target before sending)."""
        found = self.problems.descriptors
        return "\n".join(f"{p}\t{v}" for p, v in found) if found else None

    def error_text(self) -> str:
        parts = []
        if self.problems:
            parts.append(self.problems.text())
        if not self.key_complete:
            missing = [k for k, v in self.natural_key.items() if v is None]
            parts.append(f"natural key incomplete: {', '.join(missing)} missing")
        return "; ".join(parts)


class Shaper:
    """Cleans, conforms and (optionally) validates records of one resource."""

    def __init__(self, resource: Resource, validate: bool = True, unknown_fields: str = "fail",
                 drop_empty: bool = False) -> None:
        self.resource = resource
        self.validate = validate
        #: leave out empty arrays (a DMS target: :class:`Problems`)
        self.drop_empty = drop_empty
        #: ``drop``: fields the resource does not have are left out; ``fail``: with ``validate``, they fail the record
        self.drop_unknown = unknown_fields == "drop"
        self.node = compile_schema(resource.schema)
        self.dropped = {f"{resource.entity}Id"} if resource.is_descriptor else set()

    def property_for(self, column: str) -> str | None:
        """The resource property a top-level column of a record fills (``student_unique_id`` -> ``studentUniqueId``,
        ``studentReference__studentUniqueId`` -> ``studentReference``), the way :meth:`shape` renames it; None for a
        column that is not an Ed-Fi field (a vendor's row id)."""
        props = self.node.props or {}
        if column in props:
            return column
        if FLATTEN_SEPARATOR in column and not column.startswith("_"):
            column = column.split(FLATTEN_SEPARATOR, 1)[0]
            if column in props:
                return column
        aliases = self.node.aliases
        return aliases.get(column) or aliases.get(column.lower()) or aliases.get(snake_to_camel(column).lower())

    def shape(self, record: dict[str, Any]) -> Shaped:
        record = {k: v for k, v in record.items() if k not in self.dropped} if self.dropped else record
        problems = Problems(self.validate, self.drop_unknown, self.drop_empty)
        payload = _shape_object(record, self.node, "$", problems)
        key = self.resource.natural_key(payload)
        complete = all(v is not None for v in key.values())
        return Shaped(payload, key, complete, problems)

    def key_only(self, record: dict[str, Any]) -> Shaped:
        """The natural key of a delete record (``id``, ``_sdc_deleted_at`` and whatever key values it has)."""
        problems = Problems(False)
        payload = _shape_object(record, self.node, "$", problems)
        key = self.resource.natural_key(payload)
        return Shaped(payload, key, all(v is not None for v in key.values()), problems)

    def key_from_values(self, values: dict[str, Any] | None) -> Shaped:
        """A natural key from flattened key values (``keyValues`` of /deletes and /keyChanges)."""
        doc: dict[str, Any] = {}
        for name, value in (values or {}).items():
            path = self.resource.key_paths.get(name)
            if path is None:
                continue
            node = doc
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
        return self.key_only(doc)


# -- walking payloads ----------------------------------------------------------------------------------
def values_at(doc: Any, path: tuple[str, ...]) -> Iterator[Any]:
    """Every value at a path with ``[]`` array steps (``gradeLevels.[].gradeLevelDescriptor``)."""
    if not path:
        yield doc
        return
    head, rest = path[0], path[1:]
    if head == "[]":
        if isinstance(doc, list):
            for item in doc:
                yield from values_at(item, rest)
        return
    if isinstance(doc, dict) and head in doc:
        yield from values_at(doc[head], rest)


def descriptor_values(model: ApiModel, resource: Resource, payload: dict[str, Any],
                      paths: list[tuple[tuple[str, ...], Resource]] | None = None) -> Iterator[
        tuple[str, Resource, str]]:
    """(field path, descriptor resource, value) of every descriptor value in a payload.

    ``paths``: the resource's (descriptor path, descriptor resource) pairs, when the caller has them already.
    """
    if paths is None:
        paths = [(p, d) for p in resource.descriptor_paths if (d := model.descriptor_for(p[-1])) is not None]
    for dpath, desc in paths:
        for value in values_at(payload, dpath):
            if isinstance(value, str):
                yield "$." + ".".join(p for p in dpath if p != "[]"), desc, value


def reference_keys(model: ApiModel, resource: Resource, payload: dict[str, Any]) -> Iterator[
        tuple[str, list[tuple[Resource, dict[str, Any]]]]]:
    """(reference property, [(target resource, its natural key)]) of every complete reference in a payload.

    An abstract reference (``educationOrganizationReference``) lists every concrete resource it may point to.
    """
    for ref in resource.references:
        targets = model.reference_targets(ref)
        if not targets:
            continue
        for obj in values_at(payload, ref.path):
            if not isinstance(obj, dict):
                continue
            values = {f: obj.get(f) for f in ref.fields}
            if any(v is None for v in values.values()):
                continue
            options: list[tuple[Resource, dict[str, Any]]] = []
            for target in targets:
                if len(targets) > 1 or target.schema_name != ref.target_schema:
                    if len(target.key_fields) != 1 or len(values) != 1:
                        continue
                    options.append((target, {target.key_fields[0]: next(iter(values.values()))}))
                else:
                    options.append((target, values))
            if options:
                yield ".".join(p for p in ref.path if p != "[]"), options


__all__ = [
    "DELETED_AT",
    "MAX_DEPTH",
    "SERVER_FIELDS",
    "Node",
    "Problems",
    "Shaped",
    "Shaper",
    "TooDeep",
    "compile_schema",
    "descriptor_values",
    "reference_keys",
    "snake_to_camel",
    "values_at",
]
