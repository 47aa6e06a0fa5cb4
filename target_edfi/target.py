"""target-edfi: any Singer stream into an Ed-Fi API, in dependency order, with a transaction log.

The data path: Singer messages -> :class:`~target_edfi.sinks.EdFiSink` (records cleaned, checked and spooled
to the transaction log as they arrive) -> at the end of the input, :class:`~target_edfi.sender.Sender` (the
spool applied in the API's dependency order, concurrently, deferring what waits for a reference, then
deletes) -> :class:`~target_edfi.results.Results` (logged, ``results_file``, exit status). STATE is echoed
only after every record that came before it has been applied or recorded as failed.

Input is read as bytes and parsed with orjson; a line that is not JSON, a RECORD before its SCHEMA or a
message without what it needs is reported (line number, stream, record) and skipped, and everything else is
still processed.
"""

from __future__ import annotations

import copy
import io
import logging
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from functools import cached_property
from typing import IO, Any

import click
import orjson
from singer_sdk import Target, metrics
from singer_sdk import typing as th
from singer_sdk.exceptions import InvalidInputLine
from singer_sdk.helpers.capabilities import PluginCapabilities
from singer_sdk.plugin_base import PluginBase
from singer_sdk.singerlib.encoding.base import GenericSingerReader

from edfi_core.auth import AuthError
from edfi_core.discovery import load_model
from edfi_core.errors import explain, one_line_errors
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
from target_edfi.mapping import ITEMS, StreamMapper
from target_edfi.payloads import Shaper, TooDeep
from target_edfi.results import Results
from target_edfi.sender import Sender, send_order
from target_edfi.sinks import EdFiSink, Spooler, _short, outline
from target_edfi.txlog import TransactionLog, open_log

logger = logging.getLogger("target_edfi")

DEFAULT_LOG = ".target-edfi/transaction_log.db"
#: failures that stop a run: the API, its credentials or its documents are not usable
FATAL = (AuthError, EdFiHTTPError, SpecError, ValueError)
CONFIG_SCHEMA = th.PropertiesList(
    *api_properties(
        th.Property("dependencies_url", th.StringType,
                    description="Override: the dependency order URL (`.../metadata/data/v3/dependencies`)."),
    ),
    th.Property("spec_files", th.ArrayType(th.StringType),
                description="Local OpenAPI/Swagger documents (resources, descriptors, extensions) describing the "
                            "API, instead of its /metadata."),
    th.Property("transaction_log", th.StringType, default=DEFAULT_LOG, secret=True,
                description="Where the transaction log (and the spool of records not yet sent) lives: a SQLite "
                            "file path, or a `postgresql://user:password@host:port/database` URL for teams that "
                            "run many loaders. One row per target API, resource and natural key; see the README."),
    th.Property("transaction_log_schema", th.StringType, default="target_edfi",
                pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
                description="PostgreSQL only: the schema of the transaction log's tables (a plain identifier: "
                            "letters, digits and `_`)."),
    th.Property("resource_map", th.ObjectType(additional_properties=th.StringType),
                description="Stream name -> Ed-Fi resource (`ed-fi/students`, `tpdm/candidates`), for streams "
                            "whose names do not say it. Other streams map by name: `studentSchoolAssociations`, "
                            "`student_school_associations`, `ed-fi/studentSchoolAssociations`, tap-edfi's "
                            "`<namespace>_<resource>`, a SQL tap's `<schema>-<table>`."),
    th.Property("validate", th.BooleanType, default=True,
                description="Check every record against the resource's schema (types, required fields, lengths, "
                            "dates, unknown fields) and its descriptor values (format, and existence in the log or "
                            "the target) before sending; a bad record is logged with field paths and never sent."),
    th.Property("unknown_fields", th.StringType, default="drop", allowed_values=["drop", "fail"],
                description="Fields of a record that are not properties of its resource (a SIS view's own "
                            "columns), after snake_case and flattened names are matched: `drop` leaves them out "
                            "with one warning per stream and field; `fail` (with `validate`) fails each such "
                            "record, naming the field."),
    th.Property("source_keys", th.ObjectType(additional_properties=th.ArrayType(th.StringType)),
                description="Stream -> the columns of its source key (`{\"students\": [\"sis_id\"]}`), for "
                            "taps that give none (SQL views have no primary key) or the wrong one; a stream is "
                            "named as the tap names it or by the text after its last `-` (`sis-students`). Key "
                            "columns that are not Ed-Fi fields are not sent."),
    th.Property("delete_missing", th.BooleanType, default=False,
                description="After an ACTIVATE_VERSION of a full-table stream, delete from the API the items this "
                            "target sent earlier for that stream that the stream no longer has. Singer SDK taps "
                            "send ACTIVATE_VERSION only with `emit_activate_version_messages: true`; a stream "
                            "without one is named in a warning at the end of the run."),
    th.Property("duplicate_keys", th.StringType, default="last_wins", allowed_values=["last_wins", "fail"],
                description="Records of several source items (different source keys) with one natural key in one "
                            "run: `last_wins` sends the last in input order and counts the others as `duplicates` "
                            "(with examples in the results); `fail` sends none of them and fails each, named."),
    th.Property("max_workers", th.IntegerType(minimum=1, maximum=128), default=32,
                description="Concurrent requests (within one dependency order group), each on its own keep-alive "
                            "connection. The Ed-Fi API Publisher posts with up to 20 per resource, 10 resources at "
                            "a time; lower it for a small API."),
    th.Property("deferred_passes", th.IntegerType(minimum=1), default=3,
                description="Passes over records that got 409 (unresolved reference) before they are reported."),
    th.Property("retry_failed", th.BooleanType, default=False,
                description="Send every record the API rejected in earlier runs (the dead letters: see `--failed`) "
                            "again. Without it, a rejected record is sent again only when something it waits for "
                            "(a referenced item, a descriptor value) has been written since, or when a newer record "
                            "of the same source item arrives."),
    th.Property("max_failures", th.IntegerType(minimum=-1), default=0,
                description="The run exits non-zero when more records than this failed (invalid, rejected by the "
                            "API, unmapped stream, unreadable input). -1: never."),
    th.Property("results_file", th.StringType,
                description="Write the run's results (per resource: records, requests, created, updated, key "
                            "changes, deleted, skipped unchanged, failed, grouped by status and message) as JSON "
                            "to this file."),
    *retry_properties(request_timeout=60),
    th.Property("batch_size_rows", th.IntegerType(minimum=1), default=5000,
                description="Records buffered in memory before they are written to the spool in one transaction."),
    th.Property("progress_interval", th.NumberType, default=15,
                description="Seconds between progress log lines while sending."),
    VERIFY_SSL,
    METRICS_LOG_LEVEL,
).to_dict()
#: every setting's default, from the schema (what --about shows is what a run uses)
DEFAULTS = defaults_of(CONFIG_SCHEMA)


class BadInput(Exception):
    """A message that cannot be processed (reported and skipped)."""


class TolerantReader(GenericSingerReader[bytes]):
    """Singer messages parsed with orjson; a bad line is reported (with its number) and skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.line_number = 0
        self.on_bad_line: Callable[[str, str], None] = lambda kind, detail: logger.error("%s: %s", kind, detail)

    @property
    def default_input(self) -> IO[bytes]:
        return sys.stdin.buffer

    def deserialize_json(self, line: bytes) -> dict:
        return orjson.loads(line)

    def process_lines(self, file_input: IO[bytes] | None, callbacks: dict[str, Callable[[dict], None]]) -> Counter:
        stats: dict[str, int] = defaultdict(int)
        for line in file_input or self.default_input:
            self.line_number += 1
            if not line.strip():
                continue
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                # the line itself only at DEBUG: it may hold source data
                logger.debug("input line %d: %r", self.line_number, line[:200])
                self.on_bad_line("malformed_json", f"input line {self.line_number} is not JSON ({exc}; "
                                                   f"{len(line)} bytes)")
                continue
            kind = message.get("type") if isinstance(message, dict) else None
            callback = callbacks.get(kind) if isinstance(kind, str) else None
            if callback is None:
                logger.debug("input line %d: %r", self.line_number, line[:200])
                self.on_bad_line("unknown_message", f"input line {self.line_number}: not a Singer message: "
                                                    f"{outline(message)}")
                continue
            try:
                callback(message)
            except (BadInput, InvalidInputLine) as exc:
                self.on_bad_line("bad_message", f"input line {self.line_number}: {exc}")
                continue
            except Exception as exc:  # a message that breaks something: reported, and the input goes on
                logger.debug("message processing failed", exc_info=True)
                self.on_bad_line("bad_message", f"input line {self.line_number} ({kind}): cannot process it: "
                                                f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            stats[kind] += 1
        return Counter(**stats)


class TargetEdFi(Target):
    """Singer target for Ed-Fi ODS/APIs."""

    name = "target-edfi"
    package_name = "edfi-singer"  # the distribution (for the version in --about and logs)
    config_jsonschema = CONFIG_SCHEMA
    default_sink_class = EdFiSink
    message_reader_class = TolerantReader
    capabilities = [
        PluginCapabilities.ABOUT,
        PluginCapabilities.STREAM_MAPS,
        PluginCapabilities.STRUCTURED_LOGGING,
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_parallelism = 1  # sinks share one spool writer
        self.run_id = uuid.uuid4().hex
        self.results = Results(self.run_id)
        self._input_state: Any = None
        self._activations: dict[str, int] = {}
        self._unversioned: set[str] = set()
        self._versioned: set[str] = set()
        self._shapers: dict[str, Shaper] = {}
        self._plain_maps = not self.config.get("stream_maps")
        self._log: TransactionLog | None = None
        self._resend_failed = False
        self.exit_code = 0
        reader = self.message_reader
        if isinstance(reader, TolerantReader):
            reader.on_bad_line = self._bad_line

    # -- the dead letters from the command line -------------------------------------------------------------
    @classmethod
    def get_singer_command(cls) -> click.Command:
        command = super().get_singer_command()
        command.main = one_line_errors(command.main, logger, FATAL)  # type: ignore[method-assign]
        command.params.extend([
            click.Option(["--failed", "list_failed"], is_flag=True, default=False,
                         help="List the records the API rejected (the dead letters of the transaction log) and exit: "
                              "one JSON line each with resource, stream, key, status and message."),
            click.Option(["--resend-failed", "resend_failed"], is_flag=True, default=False,
                         help="Send every dead letter again, without reading any input."),
        ])
        return command

    @classmethod
    def invoke(cls, *, about: bool = False, about_format: str | None = None, config: Any = None,
               file_input: IO[str] | None = None, list_failed: bool = False,
               resend_failed: bool = False) -> None:
        if not (list_failed or resend_failed) or about:
            super().invoke(about=about, about_format=about_format, config=config, file_input=file_input)
            return
        from singer_sdk.plugin_base import _ConfigInput

        config = config or _ConfigInput()
        target = cls(config=config.config, validate_config=True, parse_env_config=config.parse_env)
        if list_failed:
            sys.exit(target.print_failed())
        target._resend_failed = True
        target.listen(io.BytesIO(b""))

    def print_failed(self) -> int:
        """The dead letters of this target, one JSON line each on stdout (no values but the natural key)."""
        try:
            log = open_log(str(self.settings["transaction_log"]), str(self.settings["transaction_log_schema"]))
        except Exception as exc:
            logger.error("cannot open the transaction log: %s", exc if isinstance(exc, FATAL) else type(exc).__name__)
            return 2
        try:
            target = self.target_id
            rows = log.list_failed(target)
        finally:
            log.close()
        out = sys.stdout
        for resource, stream, source_key, natural_key, status, http_status, message, tries, failed_at in rows:
            out.write(orjson.dumps({
                "resource": resource, "stream": stream,
                "key": orjson.loads(natural_key) if natural_key else orjson.loads(source_key),
                "status": http_status if http_status is not None else status, "message": _without_values(message),
                "tries": tries, "failed_at": str(failed_at),
            }).decode() + "\n")
        out.flush()
        logger.info("%d rejected records for %s in the transaction log (send them again with --resend-failed, or "
                    "set retry_failed)", len(rows), target)
        return 0

    @classmethod
    def append_builtin_config(cls, config_jsonschema: dict) -> None:
        """Stream maps only: no load_method, add_record_metadata or validate_records (they do not apply)."""
        PluginBase.append_builtin_config.__func__(cls, config_jsonschema)  # type: ignore[attr-defined]

    # -- settings, API, model, log ---------------------------------------------------------------------------
    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        """The SDK's validation, without the value of a secret setting in any error (the SDK logs them)."""
        return validate_config(self, raise_errors=raise_errors)

    @cached_property
    def settings(self) -> dict[str, Any]:
        return with_defaults(self.config, DEFAULTS)

    @cached_property
    def client(self) -> EdFiClient:
        s = self.settings
        client = make_client(s, url_overrides={"dependencies": s.get("dependencies_url")},
                             user_agent="target-edfi/0.1")
        client.pin_environment()  # thousands of small writes: read proxy settings once, not per request
        return client

    @cached_property
    def model(self) -> ApiModel:
        return load_model(self.settings.get("spec_files"), self.client, min(4, int(self.settings["max_workers"])))

    @cached_property
    def routes(self) -> StreamMapper:
        """Stream name -> Ed-Fi resource (``self.mapper`` is the SDK's stream-map machinery)."""
        return StreamMapper(self.model, self.settings.get("resource_map"))

    @property
    def target_id(self) -> str:
        """The target API as the log knows it: its data management URL."""
        return self.client.urls.data

    @property
    def log(self) -> TransactionLog:
        if self._log is None:
            s = self.settings
            log = open_log(str(s["transaction_log"]), str(s["transaction_log_schema"]))
            log.lock(self.target_id)
            log.start_run(self.run_id, self.target_id)
            self.results.target = self.target_id
            logger.info("%s; run %s to %s", log.description, self.run_id, self.target_id)
            self._log = log
        return self._log

    @cached_property
    def spooler(self) -> Spooler:
        return Spooler(self.log, self.target_id, self.run_id, int(self.settings["batch_size_rows"]))

    def shaper(self, res: Resource) -> Shaper:
        shaper = self._shapers.get(res.path)
        if shaper is None:
            shaper = self._shapers[res.path] = Shaper(res, bool(self.settings["validate"]),
                                                      str(self.settings["unknown_fields"]),
                                                      drop_empty=self.client.info.is_dms)
        return shaper

    def source_key_columns(self, stream: str) -> list[str] | None:
        """``source_keys`` for a stream: by its name, or by the text after its last ``-`` (a SQL tap's
        ``<schema>-<table>``); None when the setting does not name it."""
        keys = self.settings.get("source_keys") or {}
        columns = keys.get(stream)
        if columns is None and "-" in stream:
            columns = keys.get(stream.rsplit("-", 1)[-1])
        return [str(c) for c in columns] if columns else None

    # -- bad input -------------------------------------------------------------------------------------------
    def _bad_line(self, kind: str, detail: str) -> None:
        logger.error("bad input: %s", detail)
        self.results.bad_line(kind, detail)

    # -- messages --------------------------------------------------------------------------------------------
    def _process_schema_message(self, message_dict: dict) -> None:
        if not isinstance(message_dict.get("stream"), str) or not isinstance(message_dict.get("schema"), dict):
            raise BadInput(f"SCHEMA without a stream name or a schema object: {_short(message_dict)}")
        message_dict["schema"].setdefault("properties", {})
        if "spooler" not in self.__dict__:
            self._start()
        super()._process_schema_message(message_dict)

    def listen(self, file_input: IO[Any] | None = None) -> None:
        """Check the API and the credentials before the first line of input is read, then read it."""
        if "spooler" not in self.__dict__:
            self._start()
        super().listen(file_input)

    def _start(self) -> None:
        """Connect (the API root), get a token (the credentials), load the API's model and open the log: before the
        first line of input is read, so that a wrong secret or a dead API fails in seconds, not after the whole
        upstream extract."""
        try:
            _ = self.client.urls
            self.client.tokens.token()
            _ = self.spooler
        except Exception as exc:  # the API, its documents or the transaction log are not usable
            logger.debug("start-up failed", exc_info=True)
            detail = explain(exc) if isinstance(exc, FATAL) else f"{type(exc).__name__}: {exc}"
            logger.error("cannot start: %s", detail)
            raise SystemExit(2) from None

    def _process_record_message(self, message_dict: dict) -> None:
        stream, record = message_dict.get("stream"), message_dict.get("record")
        if not isinstance(stream, str) or not isinstance(record, dict):
            self._bad_line("bad_record", f"RECORD without a stream name or a record object: {outline(message_dict)}")
            return
        maps = self.mapper_maps(stream)
        if maps is None:
            self._bad_line("record_without_schema",
                           f"RECORD of stream {stream!r} before its SCHEMA: {outline(record)}")
            return
        version = message_dict.get("version")
        if isinstance(version, int):
            self._versioned.add(stream)
        else:
            version = None
            self._unversioned.add(stream)
        for stream_map in maps:
            rec = stream_map.transform(record if self._plain_maps else copy.copy(record))
            if rec is None:
                continue
            sink = self._sinks_active.get(stream_map.stream_alias)
            if not isinstance(sink, EdFiSink):
                self._bad_line("record_without_schema",
                               f"RECORD of stream {stream_map.stream_alias!r} before its SCHEMA: {outline(rec)}")
                continue
            try:
                sink.spool(rec, version)
            except Exception as exc:  # a poison record: it fails, named, and the run goes on
                self._poison(sink, rec, exc)

    def _poison(self, sink: EdFiSink, record: dict, exc: Exception) -> None:
        """A record whose processing raised: failed, named by stream, input line and source key (no values)."""
        logger.debug("record processing failed", exc_info=True)
        source_key = None
        try:
            source_key = sink.source_key(record, None)
            if source_key is None and sink.shaper is not None:  # keyed by its natural key: read only the key
                firsts = {path[0] for path in sink.shaper.resource.key_paths.values()}
                source_key = sink.shaper.key_only({k: v for k, v in record.items() if k in firsts}).key_text
        except Exception:
            logger.debug("no source key for a broken record", exc_info=True)
        reader = self.message_reader
        where = f"input line {reader.line_number}" if isinstance(reader, TolerantReader) else "input"
        detail = str(exc) if isinstance(exc, TooDeep) else type(exc).__name__  # the text may quote values: DEBUG only
        self._bad_line("bad_record", f"stream {sink.stream_name!r}, {where}, source key "
                                     f"{source_key or '(none)'}: record not sent: {detail}")

    def add_sink(self, stream_name: str, schema: dict, key_properties: Any = None) -> Any:
        """The SDK's sink, without its ``batch_processing_time`` around spooling (microseconds, meaningless): the
        sender times the sending instead (one timer per resource and dependency group, in the SDK's format)."""
        sink = super().add_sink(stream_name, schema, key_properties)
        sink._batch_timer = _Untimed(metrics.Metric.BATCH_PROCESSING_TIME)
        return sink

    def mapper_maps(self, stream: str) -> list | None:
        return self.mapper.stream_maps.get(stream)

    def _process_state_message(self, message_dict: dict) -> None:
        # kept back until every record before it has been applied (see process_endofpipe)
        self._input_state = message_dict.get("value")

    def _process_activate_version_message(self, message_dict: dict) -> None:
        stream, version = message_dict.get("stream"), message_dict.get("version")
        if not isinstance(stream, str) or not isinstance(version, int):
            raise BadInput(f"ACTIVATE_VERSION without a stream or an integer version: {_short(message_dict)}")
        if self.settings["delete_missing"]:
            self._activations[stream] = version
        else:
            logger.debug("ACTIVATE_VERSION %s of %s ignored (delete_missing is off)", version, stream)

    def _process_batch_message(self, message_dict: dict) -> None:
        raise BadInput(f"BATCH messages are not supported (stream {message_dict.get('stream')!r})")

    # -- the end of the input: send, report, echo STATE --------------------------------------------------------
    def process_endofpipe(self) -> None:
        started = time.monotonic()
        status = "failed"
        if "spooler" not in self.__dict__:
            self._start()
        try:
            self.drain_all(is_endofpipe=True)  # every buffered record into the spool (no STATE is written here)
            self.spooler.flush()
            logger.info("input done: %d records spooled in %.1fs", self.spooler.spooled, time.monotonic() - started)
            self._warn_unactivated()
            self._count_spool()
            for stream in self.results.unmapped:
                logger.error("stream %r maps to no Ed-Fi resource: %d records not sent", stream,
                             self.results.unmapped[stream])
            groups, source = send_order(self.client, self.model)
            logger.info("sending in %d dependency groups (order from %s)", len(groups), source)
            sender = Sender(
                self.client, self.model, self.log, self.target_id, self.results, self.run_id, groups,
                max_workers=int(self.settings["max_workers"]), deferred_passes=int(self.settings["deferred_passes"]),
                validate=bool(self.settings["validate"]), shapers=self.shaper,
                progress_interval=float(self.settings["progress_interval"]),
                retry_failed=bool(self.settings["retry_failed"]) or self._resend_failed,
                duplicate_keys=str(self.settings["duplicate_keys"]), failed_keys=self.spooler.failed_keys,
            )
            try:
                sender.apply(self._valid_activations())
            except FATAL as exc:
                logger.debug("sending stopped", exc_info=True)
                logger.error("sending stopped: %s. What was not sent stays in the spool of the transaction log; the "
                             "next run sends it", explain(exc))
                status = "stopped"
                return
            status = "done"
        finally:
            self.results.requests = self.client.stats.as_dict() if "client" in self.__dict__ else {}
            self._finish(status)
            if status == "stopped":
                raise SystemExit(2)  # no STATE: not everything before it was applied
        if self._input_state is not None:
            self._write_state_message(self._input_state)
            self.results.state_messages_emitted += 1
        self._check_threshold()

    def _count_spool(self) -> None:
        """Records of this run that a later record of the same source item replaced in the spool (``superseded``),
        and records an earlier run spooled that this one applies (``resumed``): so that every record is counted
        once in the results."""
        counts = self.log.spool_counts(self.target_id, self.spooler.first_seq)
        for path, res in list(self.results.resources.items()):
            spooled = counts.get(path, (0, 0))[0]
            replaced = res.counts.get("records", 0) - res.counts.get("failed", 0) - spooled
            if replaced > 0:
                self.results.add(path, "superseded", replaced)
        for path, (_, earlier) in counts.items():
            if earlier:
                self.results.add(path, "resumed", earlier)

    def _warn_unactivated(self) -> None:
        """``delete_missing`` with streams that ended without ACTIVATE_VERSION: nothing can be deleted for them."""
        if not self.settings["delete_missing"]:
            return
        for stream in sorted((self._versioned | self._unversioned) - set(self._activations)):
            route = self.routes.route(stream)
            if route is None or route.kind != ITEMS:
                continue
            logger.warning("stream %s ended without ACTIVATE_VERSION: delete_missing deletes nothing for it (items "
                           "the source no longer has stay in the API). Singer SDK taps (tap-postgres, tap-csv) send "
                           "it for full-table streams with the tap setting `emit_activate_version_messages: true`",
                           stream)

    def _valid_activations(self) -> dict[str, int]:
        out = {}
        for stream, version in self._activations.items():
            if stream in self._unversioned and stream not in self._versioned:
                logger.warning("ACTIVATE_VERSION %s of %s ignored: its records carry no version, so delete_missing "
                               "cannot tell what the stream still has", version, stream)
                continue
            if self.routes.route(stream) is None:
                continue
            out[stream] = version
        return out

    def _finish(self, status: str) -> None:
        failed = self.results.failed
        limit = int(self.settings["max_failures"])
        if status == "done" and limit >= 0 and failed > limit:
            status = "failed_records"
        elif status == "done" and self.results.waiting:
            status = "waiting"
        self.results.finish(status)
        self.results.log()
        path = self.settings.get("results_file")
        if path:
            self.results.write(path)
        if self._log is not None:
            try:
                summary = orjson.dumps(self.results.summary(), default=str, option=orjson.OPT_NON_STR_KEYS)
                self._log.finish_run(self.run_id, status, summary.decode())
            finally:
                self._log.close()
                self._log = None

    def _check_threshold(self) -> None:
        failed = self.results.failed
        limit = int(self.settings["max_failures"])
        waiting = self.results.waiting
        if waiting:
            reasons = ", ".join(f"{n} after {status} {message}" for (status, message), n in
                                self.results.waiting_reasons().most_common(5))
            logger.error("%d records wait in the spool of the transaction log after transient failures (%s): they "
                         "are not lost; the next run sends them, also when it gets no input", waiting, reasons)
        if limit >= 0 and failed > limit:
            logger.error("%d records failed (max_failures is %d): exiting with status 1", failed, limit)
            self.exit_code = 1
            sys.exit(1)
        if waiting:
            logger.error("exiting with status 3: %d records wait in the spool", waiting)
            self.exit_code = 3
            sys.exit(3)

    def _handle_termination(self, signum: int, frame: Any) -> None:  # pragma: no cover - signals
        logger.warning("received signal %d: stopping; what was spooled stays in the transaction log", signum)
        sys.exit(128 + signum)


class _Untimed(metrics.Timer):
    """A timer that logs nothing (spooling a batch is not what batch_processing_time is read for)."""

    def __exit__(self, *exc: object) -> None:
        return None


def _without_values(message: str | None) -> str:
    """A rejection message without the values it quotes (``'31/12/2010' is not a date`` -> ``'…' is not a
    date``): natural keys are named by the listing itself."""
    import re

    return re.sub(r"'[^']*'", "'…'", message or "")


__all__ = ["CONFIG_SCHEMA", "TargetEdFi"]


if __name__ == "__main__":
    TargetEdFi.cli()
