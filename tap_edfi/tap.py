"""tap-edfi: every Ed-Fi resource, incremental, complete, fast.

A singer-sdk tap for Ed-Fi ODS/APIs 5.3 to 7.3. Discovery reads the API's own OpenAPI documents
(or local spec files); a sync reads every selected stream between its bookmark and the API's
``newestChangeVersion`` concurrently, without losing items that change while they are read
(``tap_edfi.paging``), and writes STATE after every completed change-version window
(``tap_edfi.sync``).
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from functools import cached_property
from typing import Any, cast

import click
from singer_sdk import Tap
from singer_sdk import typing as th
from singer_sdk.helpers.capabilities import PluginCapabilities, TapCapabilities
from singer_sdk.singerlib import Schema
from singer_sdk.singerlib.catalog import StreamMetadata

from edfi_core.auth import AuthError
from edfi_core.discovery import load_model
from edfi_core.errors import one_line_errors
from edfi_core.openapi import ApiModel, Resource, SpecError
from edfi_core.session import EdFiClient, EdFiHTTPError
from edfi_core.settings import (
    METRICS_LOG_LEVEL,
    VERIFY_SSL,
    api_properties,
    defaults_of,
    make_client,
    retry_properties,
    validate_config,
    with_defaults,
)
from tap_edfi.edu import EDU, EDU_SCHEMA, EduFormat
from tap_edfi.output import SingerOutput
from tap_edfi.progress import Progress
from tap_edfi.slices import RawSlice, slice_keys, slice_values, with_slice_columns
from tap_edfi.streams import (
    DELETES,
    ITEMS,
    KEY_CHANGES,
    EdFiStream,
    deletes_schema,
    item_schema,
    key_changes_schema,
)
from tap_edfi.sync import RunContext, SettingsError, SyncEngine, SyncError, resolve_run

logger = logging.getLogger(__name__)

#: change versions re-read below the last run's bound (docs/change-versions.md: why this many)
LOOKBACK_DEFAULT = 1000

CONFIG_SCHEMA = th.PropertiesList(
    *api_properties(
        th.Property("change_queries_url", th.StringType,
                    description="Override: the change queries URL (`.../changeQueries/v1`)."),
    ),
    th.Property("spec_files", th.ArrayType(th.StringType),
                description="Local OpenAPI/Swagger documents (resources, descriptors, extensions) to discover "
                            "streams from instead of the API's /metadata, for offline catalogs."),
    th.Property("page_size", th.IntegerType(minimum=1, maximum=500), default=500,
                description="Items per request (`limit` / `pageSize`); the API allows at most 500."),
    th.Property("max_window_rows", th.IntegerType(minimum=0), default=0,
                description="Most items in one change-version window. Windows are the unit of STATE (a killed run "
                            "re-reads at most the unfinished windows). 0 (default): 10 pages with reverse offset "
                            "paging (each window is read page after page, so windows are the unit of concurrency), "
                            "50 pages with cursor or snapshot paging (pages of a window are read concurrently)."),
    th.Property("change_version_step_size", th.IntegerType(minimum=0), default=0,
                description="Cut each stream's change-version range into steps of this many change versions "
                            "before sizing windows by count. 0 (default): size windows by count only."),
    th.Property("change_version_lookback", th.IntegerType(minimum=0), default=LOOKBACK_DEFAULT,
                description="Change versions below the last run's bound that each run reads again: a write takes "
                            "its change version when its transaction starts and becomes visible when it commits, "
                            "so a write still open while the tap read its window shows up later below the "
                            "bookmark. Re-read items are the same `id` (an upserting target keeps one row); once a "
                            "run has re-read them they are not read a third time. 0 turns it off. See "
                            "docs/change-versions.md for the default."),
    th.Property("reconcile_interval", th.IntegerType(minimum=0), default=604800,
                description="Every this many seconds (per stream; default 604800, a week), read the stream's live "
                            "items "
                            "completely instead of from its bookmark, as a table version, and end it with "
                            "`ACTIVATE_VERSION`: an upserting target (target-postgres) marks the rows of that "
                            "stream it did not get deleted. An item deleted and re-created under the same natural "
                            "key before the tap read the delete is never reported deleted (the ODS/API's /deletes "
                            "leaves out keys that exist again: docs/change-queries.md), so without this a "
                            "warehouse keyed by `id` keeps its old row live. 0: never."),
    th.Property("resync", th.ArrayType(th.StringType),
                description="Reconcile these streams this run, whatever `reconcile_interval` says (names or globs "
                            "as in `resources`): every live item is read as a table version and ended with "
                            "`ACTIVATE_VERSION`, the bookmark stays correct and the next run continues "
                            "incrementally from this run's bound. Set it for one run "
                            "(`TAP_EDFI_RESYNC='[\"students\"]' meltano run ...`): left in the config, every run "
                            "reconciles those streams. A stream whose tracked changes were purged (the API's "
                            "`oldestChangeVersion` above its bookmark + 1), or whose state was written against "
                            "another server (STATE's `server`: product or data URL changed, e.g. ODS/API to DMS), "
                            "is reconciled without it, with a warning."),
    th.Property("start_change_version", th.IntegerType(minimum=0), default=0,
                description="Where streams without a bookmark start (0: everything)."),
    th.Property("include_descriptors", th.BooleanType, default=True,
                description="Emit descriptor streams (`gradeLevelDescriptors` ...)."),
    th.Property("namespaces", th.ArrayType(th.StringType),
                description="Only these namespaces (`ed-fi`, `tpdm`, extension namespaces). Default: all."),
    th.Property("resources", th.ArrayType(th.StringType),
                description="Only these resources: names or globs matching `students`, `ed-fi/students` or the "
                            "stream name (`tpdm_*`). Default: all."),
    th.Property("exclude_resources", th.ArrayType(th.StringType),
                description="Leave out these resources (same patterns as `resources`)."),
    th.Property("composites", th.ArrayType(th.StringType),
                description="Also read these enrollment composites (ODS/API 5.x-7.x, `/composites/v1/ed-fi/"
                            "enrollment/...`; docs/composites.md), each as a read-only full-table stream: "
                            "`students`, `sections`, `staffs`, `schools`, `localEducationAgencies` (or `*` for all "
                            "five) as `composite_enrollment_<name>` keyed by `id`; `sections/students` (a filtered "
                            "form, for every section) as `composite_enrollment_students_of_sections` keyed by "
                            "`_parent_id` and `id`; `sections/<id>/students` for one section. An API without "
                            "composites (404) fails the run naming this setting. Default: none."),
    th.Property("deletes", th.StringType, default="inline", allowed_values=["inline", "streams", "off"],
                description="Deleted items: `inline` emits a record with `id`, `_sdc_deleted_at` and the key values "
                            "into the resource's stream; `streams` emits `<stream>_deletes` streams; `off` "
                            "ignores deletes."),
    th.Property("key_changes", th.BooleanType, default=True,
                description="Emit `<stream>_key_changes` streams (ODS/API 6.0+) with old and new natural keys."),
    th.Property("use_snapshot", th.StringType, default="auto", allowed_values=["auto", "always", "never"],
                description="Read inside the API's snapshot (`Use-Snapshot` on 7.x, `Snapshot-Identifier` on "
                            "5.2-6.x): `auto` when the API has one, `always` fails without one, `never`."),
    th.Property("paging", th.StringType, default="auto", allowed_values=["auto", "offset", "cursor"],
                description="`auto`: snapshot pages, else cursor paging where the OpenAPI documents have /partitions "
                            "(7.3, DMS 8.1), else reverse offset paging over change-version windows. `offset` and "
                            "`cursor` force one."),
    th.Property("max_workers", th.IntegerType(minimum=1, maximum=64), default=8,
                description="Concurrent requests (across streams, windows and partitions)."),
    *retry_properties(request_timeout=120),
    th.Property("profile", th.StringType,
                description="An API profile name: items are read with its readable content type."),
    th.Property("fail_on_forbidden", th.BooleanType, default=False,
                description="Fail the run on a resource the client may not read (HTTP 403) instead of skipping it "
                            "with a warning."),
    th.Property("record_format", th.StringType, default="native", allowed_values=["native", "edu"],
                description="`native`: one stream per resource with the document's fields as columns. `edu`: the "
                            "raw tables edu_edfi_airflow loads and edu_edfi_source reads (stream = resource in snake "
                            "case, `_deletes`, `_key_changes`; the document as one JSON column `v` with "
                            "`tenant_code`, `api_year`, `pull_timestamp`, `name`...; docs/edu-format.md). Deletes "
                            "go to `_deletes` unless `deletes` is `off`; `reconcile_interval` does not apply."),
    th.Property("tenant_code", th.StringType,
                description="The `tenant_code` column of every record, for one table set holding many tenants "
                            "(one tap per tenant and year). `native`: when set, every stream (resources, "
                            "descriptors, deletes, key changes) has the column and its key properties start with "
                            "it, and no table versions are written (no reconciliation: `ACTIVATE_VERSION` would "
                            "apply to every tenant's rows of the table). `edu`: required."),
    th.Property("api_year", th.IntegerType(minimum=1900, maximum=2999),
                description="The `api_year` column of every record (school year, e.g. 2025), as `tenant_code`: "
                            "`native`: when set, in every stream and its key properties, and no table versions. "
                            "`edu`: required."),
    th.Property("progress_interval", th.NumberType, default=10,
                description="Seconds between progress log lines."),
    VERIFY_SSL,
    METRICS_LOG_LEVEL,
).to_dict()
#: every setting's default, from the schema (what --about shows is what a run uses)
DEFAULTS = defaults_of(CONFIG_SCHEMA)


def _matches(res: Resource, name: str, patterns: list[str]) -> bool:
    candidates = [res.name.lower(), f"{res.namespace}/{res.name}".lower(), name.lower(), res.path.lower()]
    return any(fnmatch.fnmatchcase(c, p.lower().strip("/")) or fnmatch.fnmatchcase(c, p.lower())
               for p in patterns for c in candidates)


class TapEdFi(Tap):
    """Singer tap for Ed-Fi ODS/APIs."""

    name = "tap-edfi"
    package_name = "edfi-singer"  # the distribution (for the version in --about and logs)
    config_jsonschema = CONFIG_SCHEMA
    #: no BATCH messages and no ACTIVATE_VERSION (an incremental tap must not make targets drop rows)
    capabilities = [
        TapCapabilities.CATALOG,
        TapCapabilities.STATE,
        TapCapabilities.DISCOVER,
        PluginCapabilities.ABOUT,
        PluginCapabilities.STREAM_MAPS,
        PluginCapabilities.FLATTENING,
        PluginCapabilities.STRUCTURED_LOGGING,
    ]

    @classmethod
    def get_singer_command(cls) -> click.Command:
        """The SDK's command, with known failures (unreachable API, credentials, a base_url that is not the root,
        403, settings the API cannot honour) as one ERROR line and exit code 2; tracebacks only at DEBUG."""
        command = super().get_singer_command()
        command.main = one_line_errors(  # type: ignore[method-assign]
            command.main, logging.getLogger(cls.name),
            (AuthError, EdFiHTTPError, SyncError, SettingsError, SpecError, ValueError))
        return command

    # -- settings and API ---------------------------------------------------------------------------
    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        """The SDK's validation, without the value of a secret setting in any error (the SDK logs them)."""
        return validate_config(self, raise_errors=raise_errors)

    @cached_property
    def settings(self) -> dict[str, Any]:
        settings = with_defaults(self.config, DEFAULTS)
        # edu: raw tables keep every pull; tenant_code/api_year: tables shared by tenants and years, where an
        # ACTIVATE_VERSION would drop the other slices' rows too. Neither writes table versions.
        if settings.get("record_format") == EDU or slice_values(settings):
            settings["reconcile_interval"] = 0
        return settings

    @cached_property
    def slice(self) -> RawSlice | None:
        """``tenant_code``/``api_year`` columns of ``record_format: native`` records; None when neither is set."""
        values = slice_values(self.settings)
        if not values or self.settings.get("record_format") == EDU:
            return None
        return RawSlice(values)

    def setup_mapper(self) -> None:
        """With ``tenant_code``/``api_year``, an input catalog made without them gets them, in each stream's schema
        and key properties (else one tenant's or year's rows would overwrite another's)."""
        catalog = self.input_catalog
        if catalog is not None and self.slice is not None:
            values = self.slice.values
            for entry in catalog.streams:
                entry.schema = Schema.from_dict(with_slice_columns(entry.schema.to_dict(), values))
                root = entry.metadata.get(()) if entry.metadata is not None else None
                if entry.key_properties:
                    entry.key_properties = slice_keys(values, list(entry.key_properties))
                if isinstance(root, StreamMetadata) and root.table_key_properties:
                    root.table_key_properties = slice_keys(values, list(root.table_key_properties))
        super().setup_mapper()

    @cached_property
    def edu(self) -> EduFormat | None:
        """``record_format: edu``: what every row carries besides the document; None for ``native``."""
        s = self.settings
        if s.get("record_format") != EDU:
            return None
        for key in ("tenant_code", "api_year"):
            if s.get(key) in (None, ""):
                raise SettingsError(f"record_format is 'edu' but the {key} setting is not set: set {key} "
                                    "(TAP_EDFI_" + key.upper() + ") to the value of the raw tables' "
                                    f"{key} column, or set record_format to 'native'")
        if self.config.get("stream_maps") or self.config.get("flattening_enabled"):
            raise SettingsError("record_format 'edu' writes the raw tables' columns: stream_maps and "
                                "flattening_enabled do not apply; remove them or set record_format to 'native'")
        info = self.client.info
        return EduFormat(str(s["tenant_code"]), int(s["api_year"]), self.run_context.started_at,
                         info.version_text or None, info.data_standard or None)

    @cached_property
    def client(self) -> EdFiClient:
        s = self.settings
        return make_client(s, url_overrides={"change_queries": s.get("change_queries_url")})

    @cached_property
    def model(self) -> ApiModel:
        return load_model(self.settings.get("spec_files"), self.client, min(4, int(self.settings["max_workers"])))

    @cached_property
    def run_context(self) -> RunContext:
        # cursor paging where the API's own documents show /partitions (local spec_files: what the version says)
        partitions = None if self.settings.get("spec_files") else any(r.has_partitions for r in self.model)
        return resolve_run(self.client, self.settings["use_snapshot"], self.settings["paging"], partitions)

    # -- discovery ---------------------------------------------------------------------------------------
    def selected_resources(self) -> list[Resource]:
        s = self.settings
        namespaces = {n.lower() for n in s.get("namespaces") or []}
        include = list(s.get("resources") or [])
        exclude = list(s.get("exclude_resources") or [])
        out = []
        for res in sorted(self.model, key=lambda r: r.path):
            if res.is_descriptor and not s["include_descriptors"]:
                continue
            if namespaces and res.namespace.lower() not in namespaces:
                continue
            from tap_edfi.streams import stream_name

            name = stream_name(res)
            if include and not _matches(res, name, include):
                continue
            if exclude and _matches(res, name, exclude):
                continue
            out.append(res)
        if include:
            self._check_filter(include)
        return out

    def _check_filter(self, include: list[str]) -> None:
        """Each ``resources`` pattern must name a resource of the API: a filter that matches nothing fails the run
        (it would otherwise end with exit 0 and an empty STATE), a pattern that matches nothing is a warning; both
        name the closest stream names."""
        from tap_edfi.streams import stream_name

        names = sorted({n for res in self.model for n in (stream_name(res), res.name)})
        unmatched = [p for p in include if not any(_matches(res, stream_name(res), [p]) for res in self.model)]
        if not unmatched:
            return

        def close(pattern: str) -> str:
            found = difflib.get_close_matches(pattern.lower().strip("/").split("/")[-1],
                                              [n.lower() for n in names], n=3, cutoff=0.5)
            lookup = {n.lower(): n for n in names}
            return f" (closest: {', '.join(lookup[f] for f in found)})" if found else ""

        text = "; ".join(f"{p!r} matches no resource of the API{close(p)}" for p in unmatched)
        if len(unmatched) == len(include):
            raise SettingsError(f"the resources setting {include!r} matches no stream: {text}. Fix it, or remove it "
                                "to read every resource")
        logger.warning("resources setting: %s", text)

    def load_state(self, state: dict[str, Any]) -> None:
        """The SDK keeps only ``bookmarks``; ``server`` (the server the bookmarks are change versions of, recorded by
        ``tap_edfi.sync``) is kept too, so that a switch to another server is seen."""
        super().load_state(state)
        if isinstance(state.get("server"), dict):
            cast(dict[str, Any], self.state)["server"] = dict(state["server"])

    def discover_streams(self) -> list[EdFiStream]:
        s = self.settings
        deletes = s["deletes"]
        edu = s.get("record_format") == EDU
        slices = self.slice.values if self.slice is not None else {}
        streams: list[EdFiStream] = []
        names: dict[str, str] = {}
        for res in self.selected_resources():
            if edu:  # deletes as the `_deletes` table's rows, never inline
                candidates = [EdFiStream(self, res, ITEMS, EDU_SCHEMA)]
                if deletes != "off" and res.has_deletes:
                    candidates.append(EdFiStream(self, res, DELETES, EDU_SCHEMA))
            else:
                candidates = [EdFiStream(self, res, ITEMS,
                                         with_slice_columns(item_schema(res, deletes == "inline"), slices),
                                         inline_deletes=deletes == "inline" and res.has_deletes)]
            if deletes == "streams" and res.has_deletes and not edu:
                candidates.append(EdFiStream(self, res, DELETES, with_slice_columns(deletes_schema(res), slices)))
            if s["key_changes"] and res.has_key_changes and not res.is_descriptor:
                candidates.append(EdFiStream(self, res, KEY_CHANGES, EDU_SCHEMA if edu
                                             else with_slice_columns(key_changes_schema(res), slices)))
            if edu:
                for stream in candidates:  # raw tables: append-only, no key
                    stream.primary_keys = []
            elif slices:  # tenant_code/api_year: the columns, first in the schema and in the key
                for stream in candidates:
                    stream.primary_keys = slice_keys(slices, list(stream.primary_keys or []))
            for stream in candidates:
                if stream.name in names:
                    logger.warning("stream name %s of %s is taken by %s; skipping it", stream.name, res.path,
                                   names[stream.name])
                    continue
                names[stream.name] = res.path
                streams.append(stream)
        if s.get("composites"):  # tap_edfi/composites.py
            from tap_edfi.composites import discover

            if edu:
                raise SettingsError("the composites setting is not available with record_format 'edu' (the raw "
                                    "tables are resources): remove composites or set record_format to 'native'")
            streams.extend(discover(self, names))  # type: ignore[arg-type]
        return streams

    # -- syncing -----------------------------------------------------------------------------------------
    def fast_path(self, stream: EdFiStream) -> bool:
        """Whether records can be written as the API sent them (no maps, nothing deselected)."""
        cache: dict[str, bool] = self.__dict__.setdefault("_fast_path", {})
        if stream.name not in cache:
            maps = bool(self.config.get("stream_maps")) or bool(self.config.get("flattening_enabled"))
            mask = stream.mask
            all_selected = all(mask.get(crumb, True) for crumb in stream.metadata)
            same_schema = set(stream.effective_schema.get("properties") or {}) == set(
                stream.schema.get("properties") or {})
            cache[stream.name] = not maps and all_selected and same_schema
            if not cache[stream.name]:
                logger.info("%s: stream maps or field selection in use; records go through the SDK", stream.name)
        return cache[stream.name]

    def sync_all(self) -> None:  # type: ignore[misc]  # the SDK's loop is serial: this one is concurrent
        """Sync every selected stream: concurrently, in a fixed order, with STATE after each window."""
        from tap_edfi.composites import CompositeReader, CompositeStream

        selected = [s for s in self.streams.values() if isinstance(s, EdFiStream) and s.selected]
        composites = [s for s in self.streams.values() if isinstance(s, CompositeStream) and s.selected]
        if not selected and not composites:
            logger.warning("no stream is selected")
        try:
            self.edu  # noqa: B018  # record_format edu: missing settings fail before anything is read
            output, progress = SingerOutput(), Progress(interval=float(self.settings.get("progress_interval", 10)))
            if composites:  # full-table streams first; the engine's summary counts them too
                reader = CompositeReader(self, output, progress)
                try:
                    reader.sync(composites)
                finally:
                    reader.close()
            engine = SyncEngine(self, selected, self.run_context, output=output, progress=progress)
            self.sync_summary = engine.run_all()
        finally:
            self.client.close()  # every connection of the run (a later request would open new ones)


if __name__ == "__main__":
    TapEdFi.cli()
