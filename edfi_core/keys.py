"""Natural keys: canonical form and hashes, the same on every side of the project."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson


def canonical(values: Mapping[str, Any]) -> bytes:
    """Canonical JSON of key values: sorted names, no whitespace."""
    return orjson.dumps(dict(values), option=orjson.OPT_SORT_KEYS)


def key_hash(values: Mapping[str, Any]) -> str:
    """A stable hash of natural key values (hex SHA-1 of their canonical JSON)."""
    return hashlib.sha1(canonical(values), usedforsecurity=False).hexdigest()


def payload_hash(payload: Mapping[str, Any]) -> str:
    """A stable hash of a whole payload, for "unchanged since last sent" checks."""
    return hashlib.sha256(canonical(payload)).hexdigest()


def split_descriptor_uri(uri: str) -> tuple[str, str] | None:
    """``uri://ed-fi.org/GradeLevelDescriptor#Ninth grade`` -> (namespace, codeValue)."""
    if not isinstance(uri, str) or "#" not in uri:
        return None
    namespace, _, code = uri.partition("#")
    if not namespace or not code:
        return None
    return namespace, code
