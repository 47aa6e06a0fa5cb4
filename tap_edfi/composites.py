"""Enrollment composites as tap-edfi streams (the ``composites`` setting; docs/composites.md).

An ODS/API 5.x to 7.x serves ``/composites/v1[/{instance}][/{year}]/ed-fi/enrollment/{composite}`` (under
``/{tenant}/{context}`` on 7.x): read-only documents that join a base resource with what is linked to it. Each entry
of the ``composites`` setting is one stream:

* ``students`` (``localEducationAgencies``, ``schools``, ``sections``, ``staffs``, ``students``, or ``*`` for all
  five): the whole collection, stream ``composite_enrollment_students``, key ``id``;
* ``sections/students``: the filtered form ``/sections/{id}/students`` for every section the API lists, stream
  ``composite_enrollment_students_of_sections``, key ``(_parent_id, id)`` (``_parent_id``: the section's id);
* ``sections/{id}/students``: one section's students, stream ``composite_enrollment_students_of_section_<id>``.

Composites have no change versions and no ``totalCount``: they are full-table streams, read every run with offset
paging (``limit`` at most 100), through the same HTTP layer and retry rules as the resources (429, 5xx, dropped
connections, a 200 whose body is not a JSON array), with progress lines and the run's summary. What is read is
checked: a short page is believed only when nothing lies after it (asked with one more request), duplicates (an
item that moved to a later page) are written once, and a whole collection is compared with the count of its base
resource (``/data/v3/ed-fi/students?totalCount=true``): fewer distinct items than the resource holds makes the tap
read it again, and fail naming the stream and URL if that persists. An API without composites (404: the
Composites feature is off, or the API is not an ODS/API) fails the run naming the setting.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from singer_sdk import Stream

from edfi_core.composites import (
    CATEGORY,
    COMPOSITES,
    MAX_LIMIT,
    ORGANIZATION,
    PARENTS,
    SINGULAR,
    Composite,
    document_schema,
    lookup,
    parent_name,
)
from edfi_core.session import EdFiHTTPError
from tap_edfi.output import SingerOutput
from tap_edfi.paging import Endpoint, PageReader, full_url, record_ids
from tap_edfi.progress import Progress
from tap_edfi.slices import slice_keys, with_slice_columns

if TYPE_CHECKING:
    from tap_edfi.tap import TapEdFi

logger = logging.getLogger(__name__)

SETTING = "composites"
PARENT_ID = "_parent_id"
PREFIX = f"composite_{CATEGORY}_"
_GUID = re.compile(r"^[0-9a-fA-F]{32}$|^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")


class CompositeSettingError(ValueError):
    """A ``composites`` entry the enrollment composites do not have."""


@dataclass(frozen=True)
class CompositeSpec:
    """One entry of the ``composites`` setting."""

    composite: Composite
    parent: str | None = None  # a parent route segment (``sections``): the filtered form
    parent_id: str | None = None  # one parent; None with a parent: every item of the parent

    @property
    def stream_name(self) -> str:
        name = PREFIX + self.composite.name
        if self.parent is None:
            return name
        if self.parent_id is None:
            return f"{name}_of_{self.parent}"
        return f"{name}_of_{SINGULAR[self.parent]}_{self.parent_id.replace('-', '').lower()}"

    @property
    def label(self) -> str:
        if self.parent is None:
            return self.composite.name
        return f"{self.parent}/{self.parent_id or '{id}'}/{self.composite.name}"


def parse_composites(entries: Iterable[str]) -> list[CompositeSpec]:
    """The streams the ``composites`` setting asks for; :class:`CompositeSettingError` names a wrong entry."""
    names = ", ".join(COMPOSITES)
    out: list[CompositeSpec] = []
    seen: set[str] = set()
    for raw in entries:
        text = str(raw).strip().strip("/")
        if text.lower().startswith(f"{ORGANIZATION}/{CATEGORY}/"):
            text = text[len(f"{ORGANIZATION}/{CATEGORY}/"):]
        parts = [p for p in text.split("/") if p]
        specs: list[CompositeSpec] = []
        if parts == ["*"]:
            specs = [CompositeSpec(c) for c in COMPOSITES.values()]
        elif len(parts) in (1, 2, 3):
            comp = lookup(parts[-1])
            if comp is None:
                raise CompositeSettingError(
                    f"{SETTING} setting: {raw!r} names no enrollment composite ({parts[-1]!r}); the composites are "
                    f"{names}, alone or as <parent>/<composite> or <parent>/<id>/<composite>")
            parent = None
            parent_id = None
            if len(parts) > 1:
                parent = parent_name(parts[0])
                if parent is None or parent not in comp.parents:
                    accepted = ", ".join(f"{p}/{comp.name}" for p in comp.parents) or "none"
                    raise CompositeSettingError(
                        f"{SETTING} setting: {raw!r}: the {comp.name} composite has no route under {parts[0]!r} "
                        f"(Composites.xml: its filtered forms are {accepted})")
                if len(parts) == 3:
                    parent_id = parts[1]
                    if not _GUID.match(parent_id):
                        raise CompositeSettingError(
                            f"{SETTING} setting: {raw!r}: {parent_id!r} is not the id (a GUID) of one of the "
                            f"{parent}; use {parent}/{comp.name} for every one of them")
            specs = [CompositeSpec(comp, parent, parent_id)]
        else:
            raise CompositeSettingError(
                f"{SETTING} setting: {raw!r} is not <composite>, <parent>/<composite> or <parent>/<id>/<composite> "
                f"(composites: {names})")
        for spec in specs:
            if spec.stream_name not in seen:
                seen.add(spec.stream_name)
                out.append(spec)
    return out


def composite_schema(spec: CompositeSpec) -> dict[str, Any]:
    """The stream's schema: the composite document as the definition shapes it (every property of any ODS/API
    version, nullable but ``id``), and ``_parent_id`` in filtered forms."""
    schema = document_schema(spec.composite, "7.3")
    props = schema["properties"]
    for prop in spec.composite.props_for("6.1"):  # a property older versions show instead (course subject)
        props.setdefault(prop.name, {"type": ["string", "null"]})
    if spec.parent is not None:
        schema["properties"] = {
            PARENT_ID: {"type": "string",
                        "description": f"The id of the {SINGULAR[spec.parent]} whose {spec.composite.name} this is."},
            **props,
        }
    return schema


class CompositeStream(Stream):
    """One ``composites`` entry as a read-only, full-table stream."""

    def __init__(self, tap: TapEdFi, spec: CompositeSpec) -> None:
        self.spec = spec
        slices = tap.slice.values if tap.slice is not None else {}  # tenant_code/api_year (tap_edfi/slices.py)
        super().__init__(tap, schema=with_slice_columns(composite_schema(spec), slices), name=spec.stream_name)
        self.primary_keys = slice_keys(slices, [PARENT_ID, "id"] if spec.parent is not None else ["id"])
        self.replication_key = None
        self.forced_replication_method = "FULL_TABLE"

    @property
    def is_sorted(self) -> bool:
        return False

    def _increment_stream_state(self, latest_record: Mapping[str, Any], *,
                                context: Mapping[str, Any] | None = None) -> None:
        """No bookmark: every run reads the whole composite."""

    def get_records(self, context: Mapping[str, Any] | None) -> Iterable[dict[str, Any]]:
        tap: TapEdFi = self._tap  # type: ignore[assignment]
        reader = CompositeReader(tap, SingerOutput(), Progress(interval=float(tap.settings["progress_interval"])))
        try:
            sliced = tap.slice
            for _, records in reader.batches(self):
                for raw in records:
                    doc = orjson.loads(bytes(raw))
                    yield sliced.add(doc) if sliced is not None else doc
        finally:
            reader.close()


def _with_parent(raw: Any, parent_id: str) -> bytes:
    body = bytes(raw).lstrip()
    head = b'{"' + PARENT_ID.encode() + b'":' + orjson.dumps(parent_id)
    rest = body[1:].lstrip()
    return head + (b"}" if rest.startswith(b"}") else b"," + rest)


class CompositeReader:
    """Reads composite streams: pages through the tap's HTTP layer, checked as the module docstring says."""

    def __init__(self, tap: TapEdFi, output: SingerOutput, progress: Progress) -> None:
        self.tap = tap
        self.client = tap.client
        self.settings = tap.settings
        self.output = output
        self.progress = progress
        self.limit = min(int(self.settings["page_size"]), MAX_LIMIT)
        self.max_workers = max(1, int(self.settings["max_workers"]))
        self.reader = PageReader(self.client, self.limit, 0, self.max_workers)
        self.pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="tap-edfi-composites")
        self.tries = max(1, int(self.client.max_tries))
        self.fail_on_forbidden = bool(self.settings.get("fail_on_forbidden"))

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    @property
    def base(self) -> str:
        """``.../composites/v1[/{instance}][/{year}]/ed-fi/enrollment``: beside the data management API."""
        data = self.client.urls.data
        root = data.replace("/data/v3", "/composites/v1", 1) if "/data/v3" in data else data + "/../composites/v1"
        return f"{root.rstrip('/')}/{ORGANIZATION}/{CATEGORY}"

    def url(self, comp: Composite, parent: str | None = None, parent_id: str | None = None) -> str:
        if parent is None:
            return f"{self.base}/{comp.name}"
        return f"{self.base}/{parent}/{parent_id}/{comp.name}"

    # -- pages ------------------------------------------------------------------------------------------------
    def _page(self, ep: Endpoint, offset: int, limit: int | None = None, fields: str | None = None) -> list[Any]:
        params: dict[str, Any] = {"offset": offset, "limit": limit or self.limit}
        if fields:
            params["fields"] = fields
        return self.reader.get(ep, params)[0]

    def collection(self, ep: Endpoint, expected: int | None = None, fields: str | None = None) -> list[Any]:
        """Every item of one composite collection, in the API's order, each once.

        Pages are read concurrently up to ``expected`` items, then one after the other until a short one; a short
        page is believed only when no item lies right after it, else it is asked for again (up to ``max_tries``)."""
        size = self.limit
        planned = [i * size for i in range(max(1, -(-expected // size)))] if expected else [0]
        # (called from a pool worker for filtered forms: then one page, read in that worker, never the pool's)
        pages = ({0: self._page(ep, 0, fields=fields)} if len(planned) == 1 else
                 dict(zip(planned, self.pool.map(lambda o: self._page(ep, o, fields=fields), planned), strict=True)))
        out: list[Any] = []
        offset, tries = 0, 0
        while True:
            page = pages.pop(offset) if offset in pages else self._page(ep, offset, fields=fields)
            if len(page) >= size:
                out.extend(page)
                offset += size
                tries = 0
                continue
            if not page or not self._page(ep, offset + len(page), 1, fields="id"):
                out.extend(page)
                break
            tries += 1  # a short page with items after it: spoiled on the way, or items came in meanwhile
            if tries >= self.tries:
                raise EdFiHTTPError("GET", full_url(ep.url, {"offset": offset, "limit": size}), 200,
                                    f"the page kept coming back short ({len(page)} of {size} items) while items "
                                    "lie after it", tries=tries)
            logger.warning("GET %s: %d of %d items, but more lie after them; asking for the page again (%d/%d)",
                           full_url(ep.url, {"offset": offset, "limit": size}), len(page), size, tries,
                           self.tries - 1)
        return _distinct(out)

    def count(self, comp: Composite) -> int | None:
        """The items of the composite's base resource (``Total-Count``), None when the API does not count."""
        ep = Endpoint(PREFIX + comp.name, self.client.data_url(comp.resource), "items")
        params = {"offset": 0, "limit": 1, "totalCount": "true"}
        try:
            resp = self.reader.get(ep, params)[1]
        except EdFiHTTPError as exc:
            logger.info("%s: no count of %s (%s); reading without it", comp.name, comp.resource, exc)
            return None
        value = resp.headers.get("Total-Count")
        return int(value) if value is not None and value.strip().isdigit() else None

    # -- streams ----------------------------------------------------------------------------------------------
    def batches(self, stream: CompositeStream) -> Iterator[tuple[str | None, list[Any]]]:
        """(parent id, raw items) of a stream, in order; :class:`EdFiHTTPError` as the API answered."""
        spec = stream.spec
        comp = spec.composite
        if spec.parent is None:
            ep = Endpoint(stream.name, self.url(comp), "items")
            expected = self.count(comp)
            self.progress.planned(stream.name, [expected])
            items = self.collection(ep, expected)
            for attempt in range(1, self.tries):
                if expected is None or len(items) >= expected:
                    break
                now = self.count(comp)  # items may have been deleted meanwhile
                if now is not None and len(items) >= now:
                    break
                logger.warning("%s: %d distinct items read at %s but %s counts %s; reading it again (%d/%d)",
                               stream.name, len(items), ep.url, comp.resource, now, attempt, self.tries - 1)
                items = _distinct([*items, *self.collection(ep, now)])
                expected = now
            else:
                if expected is not None and len(items) < expected:
                    raise EdFiHTTPError("GET", ep.url, 200, f"{len(items)} distinct items read, but the API counts "
                                        f"{expected} {comp.resource}", tries=self.tries)
            yield None, items
            return
        parents = [spec.parent_id] if spec.parent_id else self.parent_ids(stream, spec.parent)
        self.progress.planned(stream.name, [None])
        chunk = 4 * self.max_workers
        for start in range(0, len(parents), chunk):
            ids = parents[start:start + chunk]
            eps = [Endpoint(stream.name, self.url(comp, spec.parent, pid), "items") for pid in ids]
            for pid, items in zip(ids, self.pool.map(self.collection, eps), strict=True):
                yield pid, [_with_parent(raw, str(pid)) for raw in items]

    def parent_ids(self, stream: CompositeStream, parent: str) -> list[str]:
        """The ids of every item of ``parent``, from its own composite (``fields=id``)."""
        comp = COMPOSITES[parent]
        ep = Endpoint(stream.name, self.url(comp), "items")
        items = self.collection(ep, self.count(comp), fields="id")
        ids = [i for i in record_ids(items) if _GUID.match(i)]
        logger.info("%s: %d %s to read the %s of", stream.name, len(ids), parent, stream.spec.composite.name)
        return ids

    def sync(self, streams: list[CompositeStream]) -> None:
        """Write every selected composite stream (SCHEMA, then its RECORDs), one after the other."""
        for stream in streams:
            self.progress.register(stream.name, 1)
        for stream in streams:
            self._sync_one(stream)

    def _sync_one(self, stream: CompositeStream) -> None:
        from tap_edfi.sync import SyncError, utc_now_iso

        for msg in stream._generate_schema_messages():
            self.output.write_schema(msg.stream, msg.schema, msg.key_properties or [], msg.bookmark_properties)
        self.progress.start(stream.name)
        fast = self.tap.fast_path(stream)  # type: ignore[arg-type]
        sliced = self.tap.slice  # tenant_code/api_year columns
        try:
            for _, records in self.batches(stream):
                ts = utc_now_iso()
                if fast:
                    self.output.write_raw_records(stream.name, records if sliced is None
                                                  else [sliced(r) for r in records], ts)
                else:
                    for raw in records:
                        doc = orjson.loads(bytes(raw))
                        for rec in stream._generate_record_messages(sliced.add(doc) if sliced is not None else doc):
                            self.output.write_message(rec.to_dict())
                self.progress.add(stream.name, len(records))
                self.progress.maybe_log(self.client.stats.as_dict(), stream.name)
        except EdFiHTTPError as exc:
            if exc.status == 404:
                raise SyncError(
                    f"stream '{stream.name}' (composites setting entry {stream.spec.label!r}): {exc}. The API has "
                    "no enrollment composites there: the host turned the Composites feature off, or it is not an "
                    f"ODS/API 5.x-7.x. Remove {stream.spec.label!r} from the composites setting (TAP_EDFI_COMPOSITES) "
                    "or ask the host to enable composites") from exc
            if exc.status == 403 and not self.fail_on_forbidden:
                logger.warning("skipping %s: not authorized (HTTP 403: %s)", stream.name, exc.server_message)
                self.progress.skip(stream.name, f"not authorized (HTTP 403: {exc.server_message})")
                return
            raise SyncError(f"stream '{stream.name}' (composites setting entry {stream.spec.label!r}): {exc}") from exc
        finally:
            self.output.flush()
        self.progress.finish(stream.name)


def _distinct(items: list[Any]) -> list[Any]:
    seen: set[str] = set()
    out = []
    for raw, ident in zip(items, record_ids(items), strict=True):
        if ident not in seen:
            seen.add(ident)
            out.append(raw)
    return out


def discover(tap: TapEdFi, taken: Iterable[str]) -> list[CompositeStream]:
    """The composite streams of the ``composites`` setting; a name a resource stream has is an error."""
    entries = tap.settings.get(SETTING) or []
    if not entries:
        return []
    try:
        specs = parse_composites(entries)
    except CompositeSettingError as exc:
        from tap_edfi.sync import SettingsError

        raise SettingsError(str(exc)) from None
    names = set(taken)
    out = []
    for spec in specs:
        if spec.stream_name in names:
            from tap_edfi.sync import SettingsError

            raise SettingsError(f"{SETTING} setting: the stream name {spec.stream_name} of {spec.label!r} is taken by "
                                "a resource stream of the API; leave that resource out (exclude_resources) to read "
                                "the composite")
        out.append(CompositeStream(tap, spec))
    return out


__all__ = ["PARENTS", "CompositeReader", "CompositeSpec", "CompositeStream", "composite_schema", "discover",
           "parse_composites"]
