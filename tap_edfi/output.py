"""Singer messages written straight to stdout as bytes.

The SDK's default writer serializes each message with the standard library and conforms every
record to its schema, which caps a tap at a few thousand records per second. Ed-Fi pages are
already JSON: a RECORD line is made by wrapping the raw item bytes (``msgspec.Raw`` slices of the
response) in the message envelope, with no parsing and no re-encoding. Streams that need the
SDK's record processing (stream maps, flattening, deselected properties) go through
``Stream._generate_record_messages`` and are encoded here with orjson.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

FLUSH_BYTES = 1 << 20


def _default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if hasattr(value, "value"):  # enums
        return value.value
    return str(value)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default)


class SingerOutput:
    """Buffered writer of Singer messages to the current ``sys.stdout``."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.records = 0
        self.bytes_written = 0

    def _add(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def write_raw_records(self, stream: str, items: Iterable[Any], time_extracted: str,
                          version: int | None = None) -> int:
        """RECORD lines for raw JSON items (bytes-like, one line each); ``version``: the table version."""
        head = b'{"type":"RECORD","stream":' + orjson.dumps(stream) + b',"record":'
        tail = (b',"time_extracted":"' + time_extracted.encode() + b'"'
                + (b',"version":' + str(int(version)).encode() if version is not None else b"") + b"}\n")
        lines = [head + bytes(item) + tail for item in items]
        if lines:
            self._add(b"".join(lines))
            self.records += len(lines)
        return len(lines)

    def write_lines(self, data: bytes, count: int) -> None:
        """``count`` RECORD lines made elsewhere (``record_format: edu``)."""
        if count:
            self._add(data)
            self.records += count

    def write_record(self, stream: str, record: Mapping[str, Any], time_extracted: str,
                     version: int | None = None) -> None:
        msg: dict[str, Any] = {"type": "RECORD", "stream": stream, "record": record, "time_extracted": time_extracted}
        if version is not None:
            msg["version"] = version
        self._add(dumps(msg) + b"\n")
        self.records += 1

    def write_message(self, message: Mapping[str, Any]) -> None:
        self._add(dumps(message) + b"\n")

    def write_schema(self, stream: str, schema: Mapping[str, Any], key_properties: Iterable[str],
                     bookmark_properties: Iterable[str] | None = None) -> None:
        msg: dict[str, Any] = {"type": "SCHEMA", "stream": stream, "schema": schema,
                               "key_properties": list(key_properties)}
        if bookmark_properties:
            msg["bookmark_properties"] = list(bookmark_properties)
        self.write_message(msg)

    def write_state(self, state: Mapping[str, Any]) -> None:
        self.write_message({"type": "STATE", "value": state})
        self.flush()

    def flush(self) -> None:
        if not self._parts:
            return
        data = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        out = sys.stdout
        out.flush()  # anything the SDK wrote as text goes first
        buffer = getattr(out, "buffer", None)
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:  # a text-only stdout (some test harnesses)
            out.write(data.decode("utf-8"))
            out.flush()
        self.bytes_written += len(data)
