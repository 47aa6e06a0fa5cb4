"""Secrets and student data stay out of messages (issue 10, point 6): a config error never shows the value of a
secret setting; target-edfi's per-record errors name the field path and the problem, and the source values appear
only at DEBUG (not in the results, the transaction log or a log line at INFO)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from singer_sdk.exceptions import ConfigValidationError

from tap_edfi.tap import CONFIG_SCHEMA as TAP_SCHEMA
from tap_edfi.tap import TapEdFi
from target_edfi.target import CONFIG_SCHEMA as TARGET_SCHEMA
from target_edfi.target import TargetEdFi
from tests.target_support import REPO, run_target, target_config

PLUGINS = {"tap-edfi": TapEdFi, "target-edfi": TargetEdFi}
SECRET = "s3cr3t-Value-42"


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
@pytest.mark.parametrize("secret", [987654321, [SECRET], {"value": SECRET}])
def test_config_errors_never_show_a_secret(plugin: str, secret: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    # the secret mistyped, and also pasted into another setting
    cfg.write_text(json.dumps({"base_url": "http://127.0.0.1:9", "client_id": "me", "client_secret": secret,
                               "max_tries": str(secret) if isinstance(secret, int) else SECRET}))
    proc = subprocess.run([str(REPO / ".venv" / "bin" / plugin), "--config", str(cfg)], input=b"",
                          capture_output=True, timeout=120, env={**os.environ, "LOGLEVEL": "DEBUG"})
    err = proc.stderr.decode()
    assert proc.returncode == 1, err[-2000:]
    assert "in config['client_secret']" in err and "secret setting: value not shown" in err
    assert "in config['max_tries']" in err and "'<secret>' is not of type 'integer'" in err
    assert "987654321" not in err and SECRET not in err


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_every_secret_setting_is_redacted_in_process(plugin: str) -> None:
    from edfi_core.settings import config_errors, secret_settings

    schema = TAP_SCHEMA if plugin == "tap-edfi" else TARGET_SCHEMA
    assert "client_secret" in secret_settings(schema)
    with pytest.raises(ConfigValidationError) as info:
        PLUGINS[plugin](config={"base_url": "x", "client_id": "me", "client_secret": 987654321})
    assert info.value.errors == ["a value that is not of type 'string' (secret setting: value not shown) in "
                                 "config['client_secret']"]
    # any setting the schema marks secret, and a password in a URL
    custom = {"type": "object", "properties": {"api_key": {"type": "string", "writeOnly": True},
                                               "log": {"type": "integer"}}}
    errors = config_errors(custom, {"api_key": ["abcdef"], "log": "postgresql://u:pw-123@db/x"})
    assert errors == ["a value that is not of type 'string' (secret setting: value not shown) in config['api_key']",
                      "'postgresql://u:<secret>@db/x' is not of type 'integer' in config['log']"]


def line(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message) + b"\n"


def log_text(path: Path) -> str:
    """Every value of every table of a SQLite transaction log but the payloads (the records themselves, which the
    dead-letter table keeps by design so that they can be resent)."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        out = []
        for t in tables:
            cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")') if r[1] != "payload"]
            out.append(str(conn.execute(f'SELECT {", ".join(cols)} FROM "{t}"').fetchall()))
        return "\n".join(out)
    finally:
        conn.close()


def dead_letter_payloads(path: Path) -> list[bytes]:
    conn = sqlite3.connect(path)
    try:
        return [bytes(r[0]) for r in conn.execute("SELECT payload FROM failed WHERE payload IS NOT NULL")]
    finally:
        conn.close()


def test_record_errors_name_the_field_and_the_problem_not_the_value(make_sandbox: Any, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    sb = make_sandbox("7.3")
    student = {"studentUniqueId": "S1", "firstName": "Zebediah", "lastSurname": "Quintrell",
               "birthDate": "not-a-date", "birthSexDescriptor": "Marsian"}
    data = b"".join([
        line({"type": "SCHEMA", "stream": "students", "schema": {"properties": {}}, "key_properties": []}),
        line({"type": "RECORD", "stream": "students", "record": student}),
        line({"type": "RECORD", "stream": "students", "record": {**student, "studentUniqueId": "S2",
                                                                 "birthDate": "2010-13-45x"}}),
        b'{"type": "RECORD", "stream": "students", "record": {"firstName": "Octavian-Unparsed"\n',  # cut short
        line({"type": "RECORD", "stream": "staffs", "record": {"firstName": "Philomena-Early"}}),  # no SCHEMA
        line({"type": "RECORD", "record": {"firstName": "Leopold-Nostream"}}),
    ])
    results = tmp_path / "results.json"
    log = tmp_path / "log.db"
    with caplog.at_level(logging.INFO):
        run = run_target(target_config(sb, log, results_file=str(results), max_failures=-1), data)
    assert run.exit_code == 0
    assert sb.store.count("/ed-fi/students") == 0
    summary = results.read_text()
    failures = json.loads(summary)["resources"]["/ed-fi/students"]
    assert failures["failed"] == 2
    messages = " ".join(g["message"] for g in failures["failures"])
    assert "$.birthDate: is not a date (YYYY-MM-DD)" in messages
    assert "$.birthSexDescriptor: is not a descriptor value" in messages
    assert "input line 4 is not JSON" in caplog.text
    assert "RECORD of stream 'staffs' before its SCHEMA: an object with fields firstName" in caplog.text
    assert "stream students, record" in caplog.text and "$.birthDate: is not a date" in caplog.text
    values = ("not-a-date", "2010-13-45x", "Marsian", "Octavian-Unparsed", "Philomena-Early", "Leopold-Nostream",
              "Zebediah", "Quintrell")
    stored = log_text(log)
    info_lines = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    for value in values:
        assert value not in info_lines, value
        assert value not in summary, value
        assert value not in stored, value
    # the rejected records themselves are kept, as dead letters to resend, not as messages
    assert any(b"not-a-date" in p for p in dead_letter_payloads(log))
    # at DEBUG the values are there, for whoever debugs the source
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        run_target(target_config(sb, tmp_path / "log2.db", max_failures=-1), data)
    debug = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    assert "$.birthDate: 'not-a-date'" in debug and "Octavian-Unparsed" in debug
