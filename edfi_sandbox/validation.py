"""Request body validation against the resource schema, with field paths like the ODS/API's."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft7Validator

from edfi_core.openapi import Resource

SERVER_FIELDS = ("id", "_etag", "_lastModifiedDate", "link")


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


class Validators:
    def __init__(self) -> None:
        self._cache: dict[str, Draft7Validator] = {}

    def validator(self, res: Resource) -> Draft7Validator:
        v = self._cache.get(res.path)
        if v is None:
            v = self._cache[res.path] = Draft7Validator(
                _writable(res.schema), format_checker=Draft7Validator.FORMAT_CHECKER
            )
        return v

    def errors(self, res: Resource, body: Any) -> dict[str, list[str]]:
        """``{"$.studentReference.studentUniqueId": ["... is required."]}``; empty when valid."""
        if not isinstance(body, dict):
            return {"$": ["The request body must be a JSON object."]}
        out: dict[str, list[str]] = {}
        for err in self.validator(res).iter_errors(_without_nulls(body)):
            parts = [p for p in err.absolute_path]
            if err.validator == "required":
                missing = err.message.split("'")[1] if "'" in err.message else "?"
                parts.append(missing)
                message = f"{missing} is required."
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
