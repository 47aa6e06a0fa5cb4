"""Request body validation against the resource schema, with field paths like the ODS/API's.

Most bodies are valid, and ``jsonschema`` spends a few hundred microseconds proving it; each resource's schema is
therefore also compiled into a plain-Python check of the keywords Ed-Fi schemas use (``type``, ``properties``,
``required``, ``items``, lengths, bounds, ``date`` formats). A body that passes it is valid; one that does not
(or any body of a schema with other keywords) is checked by ``jsonschema``, whose messages the API returns. The
compiled check is never more lenient than ``jsonschema``: where in doubt it says no and ``jsonschema`` decides.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from jsonschema import Draft7Validator

from edfi_core.openapi import SERVER_FIELDS, Resource


def _writable(schema: Any) -> Any:
    """The schema of what a client may send: server fields dropped, OpenAPI-only keywords removed."""
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key == "properties":
                out[key] = {k: _writable(v) for k, v in value.items() if k not in SERVER_FIELDS}
            elif key == "required":
                out[key] = [r for r in value if r not in SERVER_FIELDS]
            elif key.startswith("x-") or key in ("description", "example", "nullable"):
                continue
            elif key == "format" and value not in ("date", "date-time"):
                continue  # int32/int64/double: not jsonschema formats
            else:
                out[key] = _writable(value)
        return out
    if isinstance(schema, list):
        return [_writable(v) for v in schema]
    return schema


Check = Callable[[Any], bool]

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}
_KEYWORDS = {"type", "properties", "required", "items", "maxLength", "minLength", "minimum", "maximum", "format"}


class _Unsupported(Exception):
    pass


def _is_date(value: str) -> bool:
    if not _DATE.fullmatch(value):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def compile_check(schema: Any) -> Check | None:
    """A fast validity check of ``schema`` (a writable schema: nulls already dropped from the instance), or None
    when the schema uses keywords it does not cover."""
    try:
        return _compile(schema)
    except _Unsupported:
        return None


def _compile(schema: Any) -> Check:
    if not isinstance(schema, dict) or set(schema) - _KEYWORDS:
        raise _Unsupported
    checks: list[Check] = []
    kind = schema.get("type")
    if kind is not None:
        if kind not in _TYPES:
            raise _Unsupported
        checks.append(_TYPES[kind])
    if "format" in schema:
        if schema["format"] != "date":
            raise _Unsupported
        checks.append(lambda v: not isinstance(v, str) or _is_date(v))
    for word, test in (("maxLength", lambda n: lambda v: not isinstance(v, str) or len(v) <= n),
                       ("minLength", lambda n: lambda v: not isinstance(v, str) or len(v) >= n),
                       ("maximum", lambda n: lambda v: not _TYPES["number"](v) or v <= n),
                       ("minimum", lambda n: lambda v: not _TYPES["number"](v) or v >= n)):
        if word in schema:
            bound = schema[word]
            if not isinstance(bound, (int, float)) or isinstance(bound, bool):
                raise _Unsupported
            checks.append(test(bound))
    required = tuple(schema.get("required") or ())
    props = {name: _compile(sub) for name, sub in (schema.get("properties") or {}).items()}
    if required or props:
        def check_object(v: Any) -> bool:
            if not isinstance(v, dict):
                return True
            for name in required:
                if v.get(name) is None:
                    return False
            for name, sub in props.items():
                value = v.get(name)
                if value is not None and not sub(value):
                    return False
            return True
        checks.append(check_object)
    if "items" in schema:
        item = _compile(schema["items"])
        checks.append(lambda v: not isinstance(v, list) or all(x is None or item(x) for x in v))
    if len(checks) == 1:
        return checks[0]
    return lambda v: all(c(v) for c in checks)


class Validators:
    def __init__(self, api_version: str = "") -> None:
        #: 7.3 words string lengths with ValidationHelpers' formats (docs/sandbox-fidelity-api.md)
        self.length_messages = api_version >= "7.3"
        #: 5.x/6.x only require a value of a C# type whose default means something when it is not that default
        #: (RequiredWithNonDefault, Entities.cs CSharpDefaultHasDomainMeaning); 7.x requires all
        self.csharp_defaults = bool(api_version) and api_version < "7"
        self._cache: dict[str, Draft7Validator] = {}
        self._checks: dict[str, Check | None] = {}
        self._schemas: dict[str, Any] = {}

    def _checked(self, res: Resource) -> Any:
        """The schema bodies are checked against: 5.x/6.x do not require lenient properties."""
        schema = _writable(res.schema)
        return _without_lenient_required(schema) if self.csharp_defaults else schema

    def validator(self, res: Resource) -> Draft7Validator:
        v = self._cache.get(res.path)
        if v is None:
            v = self._cache[res.path] = Draft7Validator(
                self._checked(res), format_checker=Draft7Validator.FORMAT_CHECKER
            )
        return v

    def with_defaults(self, res: Resource, body: Any) -> Any:
        """5.x/6.x: a lenient required property left out binds its C# default (0, 0.0, false), which is stored."""
        if not self.csharp_defaults:
            return body
        schema = self._schemas.get(res.path)
        if schema is None:
            schema = self._schemas[res.path] = _writable(res.schema)
        _fill_defaults(schema, body)
        return body

    def conform(self, res: Resource, body: Any) -> Any:
        """``body`` bound to the resource the way the ODS/API's JSON deserializer binds it (see :func:`conform`)."""
        schema = self._schemas.get(res.path)
        if schema is None:
            schema = self._schemas[res.path] = _writable(res.schema)
        return conform(schema, body)

    def errors(self, res: Resource, body: Any) -> dict[str, list[str]]:
        """``{"$.studentReference.studentUniqueId": ["... is required."]}``; empty when valid."""
        if not isinstance(body, dict):
            return {"$": ["The request body must be a JSON object."]}
        if res.path not in self._checks:
            self._checks[res.path] = compile_check(self._checked(res))
        check = self._checks[res.path]
        if check is not None and check(body):
            return {}
        out: dict[str, list[str]] = {}
        for err in self.validator(res).iter_errors(_without_nulls(body)):
            parts = [p for p in err.absolute_path]
            if err.validator == "required":
                missing = err.message.split("'")[1] if "'" in err.message else "?"
                parts.append(missing)
                message = f"{missing} is required."
            elif err.validator in ("maxLength", "minLength") and self.length_messages and parts:
                name = str(parts[-1])
                name = name[:1].upper() + name[1:]
                low, high = err.schema.get("minLength") or 0, err.schema.get("maxLength")
                if low and high is not None:
                    message = f"{name} must be between {low} and {high} characters in length."
                elif high is not None:
                    message = f"{name} must be at most {high} characters in length."
                else:
                    message = err.message
            else:
                message = err.message
            path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)
            out.setdefault(path, []).append(message)
        return out


def _without_nulls(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_without_nulls(v) for v in node if v is not None]
    return node


_INT = re.compile(r"\s*[+-]?\d+\s*", re.ASCII)
_FLOAT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", re.ASCII)
_KEEP = SERVER_FIELDS | {"_ext"}


def conform(schema: Any, body: Any) -> Any:
    """``body`` as Newtonsoft.Json binds it to the resource model (docs/sandbox-fidelity-api.md).

    * A property name matches exactly, else case-insensitively (``"SchoolId"`` binds ``schoolId``).
    * A property the model does not have is ignored (``MissingMemberHandling.Ignore``, the default): it is
      neither stored nor returned. Server fields and ``_ext`` are left to the store.
    * A string holding a number binds a numeric property (``"255901001"``), ``"true"``/``"false"`` a boolean.
    * A date-only string binds a date-time property as midnight UTC (``DateTimeZoneHandling.Utc``).
    """
    if isinstance(body, dict) and isinstance(schema, dict):
        props = schema.get("properties")
        if not isinstance(props, dict):
            return body
        lower = {name.lower(): name for name in props}
        out: dict[str, Any] = {}
        for key, value in body.items():
            name = key if key in props else lower.get(key.lower())
            if name is None:
                if key in _KEEP:
                    out[key] = value
                continue
            if name in out and key != name:
                continue  # the exact name wins over a case variant
            out[name] = conform(props[name], value)
        return out
    if isinstance(body, list) and isinstance(schema, dict) and "items" in schema:
        return [conform(schema["items"], v) for v in body]
    if isinstance(schema, dict) and isinstance(body, str):
        kind = schema.get("type")
        if kind == "integer" and _INT.fullmatch(body) and -(2**63) <= int(body) < 2**63:
            return int(body)  # beyond Int64 Newtonsoft fails the conversion: the string stays and is refused
        if kind == "number" and _FLOAT.fullmatch(body):
            return float(body)
        if kind == "boolean" and body.strip().lower() in ("true", "false"):
            return body.strip().lower() == "true"
        if kind == "string" and schema.get("format") == "date-time" and _is_date(body):
            return f"{body}T00:00:00Z"
    return body


def default_has_meaning(name: str, schema: Any) -> bool:
    """Whether the C# default of the property's type is a value of its own in 5.x/6.x, so that leaving the property
    out is not an error (Ed-Fi-ODS v6.1 Utilities/CodeGeneration/EdFi.Ods.CodeGen/Generators/Entities.cs,
    ``CSharpDefaultHasDomainMeaning``): strings and dates never; ``int``/``short`` unless the name ends in Year,
    Number, Id or USI, is Version or contains Sequence; ``decimal``, ``double``, ``bool`` always."""
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    pascal = name[:1].upper() + name[1:]
    low = pascal.lower()
    if kind == "integer":
        # the name rule for every integer: documents say int64 for ids that were C# int before 7.x
        return not (low.endswith(("year", "number", "id", "usi")) or low == "version" or "Sequence" in pascal)
    return kind in ("number", "boolean")


def _lenient(schema: dict) -> list[str]:
    props = schema.get("properties") or {}
    return [n for n in schema.get("required") or () if default_has_meaning(n, props.get(n))]


def _without_lenient_required(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _without_lenient_required(v) for k, v in schema.items() if k != "required"}
        if "required" in schema:
            lenient = set(_lenient(schema))
            out["required"] = [r for r in schema["required"] if r not in lenient]
        return out
    if isinstance(schema, list):
        return [_without_lenient_required(v) for v in schema]
    return schema


_DEFAULTS = {"integer": 0, "number": 0.0, "boolean": False}


def _fill_defaults(schema: Any, body: Any) -> None:
    if isinstance(body, dict) and isinstance(schema, dict):
        props = schema.get("properties") or {}
        for name in _lenient(schema):
            if body.get(name) is None:
                body[name] = _DEFAULTS[props[name]["type"]]
        for name, value in body.items():
            if name in props:
                _fill_defaults(props[name], value)
    elif isinstance(body, list) and isinstance(schema, dict) and "items" in schema:
        for value in body:
            _fill_defaults(schema["items"], value)
