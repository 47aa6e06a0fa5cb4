"""What a user sees: the SDK's METRIC lines, progress that tells the truth, known failures in one line.

Every test runs the plugins as processes (as Meltano does) against a sandbox over loopback and reads their stderr.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from edfi_sandbox.server import Sandbox
from tests.conftest import student
from tests.tap_support import Output, run_tap_process, tap_config
from tests.target_support import run_target_process, singer_messages, target_config

METRIC = re.compile(r"METRIC: (\{.*\})\s*$")


def metric_points(stderr: bytes) -> list[dict[str, Any]]:
    return [json.loads(m.group(1)) for line in stderr.decode().splitlines() if (m := METRIC.search(line))]


def lines_at(stderr: bytes, level: str) -> list[str]:
    return [line for line in stderr.decode().splitlines() if f"| {level}" in line]


# -- 7: METRIC lines ----------------------------------------------------------------------------------------------
def test_tap_metric_lines_count_the_records_of_each_stream(make_sandbox, tmp_path: Path) -> None:
    sb = make_sandbox("7.3", seed=40)
    cfg = tap_config(sb, resources=["students", "studentSchoolAssociations", "sections"], page_size=7)
    proc = run_tap_process(cfg, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = Output(proc.stdout)
    emitted = Counter(m["stream"] for m in out.records)
    assert emitted["students"] == 40 and emitted["studentSchoolAssociations"] >= 40 and emitted["sections"] > 0
    points = metric_points(proc.stderr)
    counted: Counter[str] = Counter()
    for p in points:
        if p["metric"] == "record_count":
            assert p["type"] == "counter" and set(p["tags"]) >= {"stream", "pid"}
            counted[p["tags"]["stream"]] += p["value"]
    for stream, n in emitted.items():
        assert counted[stream] == n, (stream, counted[stream], n)
    streams = {p["tags"]["stream"] for p in points if p["metric"] == "sync_duration"}
    assert streams >= set(emitted)
    for p in points:
        if p["metric"] == "sync_duration":
            assert p["type"] == "timer" and p["tags"]["status"] == "succeeded" and p["value"] >= 0
    # requests per stream and endpoint, aggregated (one line per endpoint and status, not one per request)
    requests = defaultdict(int)
    for p in points:
        if p["metric"] == "http_request_count":
            requests[(p["tags"]["stream"], p["tags"]["endpoint"], p["tags"]["http_status_code"])] += p["value"]
    data_path = urllib.parse.urlsplit(sb.data_url).path.rstrip("/")
    assert requests[("students", data_path + "/ed-fi/students", 200)] >= 40 // 7
    durations = [p for p in points if p["metric"] == "http_request_duration"]
    assert durations and all(p["type"] == "timer" and p["value"] > 0 for p in durations)
    assert len(durations) == len(requests)
    # metrics_log_level WARNING turns them off (the SDK's meaning of the setting)
    quiet = run_tap_process({**cfg, "metrics_log_level": "WARNING"}, tmp_path)
    assert quiet.returncode == 0 and not metric_points(quiet.stderr)
    assert Counter(m["stream"] for m in Output(quiet.stdout).records) == emitted


def test_target_batch_processing_time_times_the_sending(make_sandbox, api_for, tmp_path: Path) -> None:
    sb = make_sandbox("7.3")
    records = [("students", student(f"S{i:03d}", first=f"N{i}")) for i in range(60)]
    cfg = target_config(sb, tmp_path / "log.db", max_workers=4)
    proc = run_target_process(cfg, singer_messages(records, key_properties={"students": ["studentUniqueId"]}),
                              tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert sorted(s["studentUniqueId"] for s in api_for(sb).all("/ed-fi/students")) == [f"S{i:03d}" for i in range(60)]
    timers = [p for p in metric_points(proc.stderr) if p["metric"] == "batch_processing_time"]
    # one timer of the sending of students (not of spooling them)
    assert [(p["tags"]["resource"], p["tags"]["stream"], p["tags"]["phase"]) for p in timers] == [
        ("/ed-fi/students", "students", "upsert")]
    # 60 POSTs over loopback take far more than spooling a batch does (20 µs)
    assert timers[0]["value"] > 0.005 and timers[0]["tags"]["status"] == "succeeded"


# -- 8: progress -------------------------------------------------------------------------------------------------
PROGRESS_RUN = re.compile(r"progress: ([\d,]+) rows of ([\d,]+) \((\d+)%\), [\d,]+ rows/s, ETA (\S+)")
PROGRESS_STREAM = re.compile(r"; (\w+): ([\d,]+) of ([\d,]+) \((\d+)%\)")


def _n(text: str) -> int:
    return int(text.replace(",", ""))


def test_progress_names_each_streams_true_total(make_sandbox, tmp_path: Path) -> None:
    sb = make_sandbox("7.3", seed=60)
    cfg = tap_config(sb, resources=["students", "studentSchoolAssociations", "sections", "staffs"], page_size=5,
                     max_workers=2, progress_interval=0.001, max_window_rows=10)
    proc = run_tap_process(cfg, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    emitted = Counter(m["stream"] for m in Output(proc.stdout).records)
    total = sum(emitted.values())
    progress = [line for line in proc.stderr.decode().splitlines() if "progress: " in line]
    runs = [m for line in progress if (m := PROGRESS_RUN.search(line))]
    per_stream = [m for line in progress if (m := PROGRESS_STREAM.search(line))]
    assert runs and per_stream, progress[:5]
    for m in runs:
        done, of, pct = _n(m.group(1)), _n(m.group(2)), int(m.group(3))
        assert of == total and done <= of and pct == round(100 * done / of) and pct <= 100
    for m in per_stream:
        name, done, of, pct = m.group(1), _n(m.group(2)), _n(m.group(3)), int(m.group(4))
        assert of == emitted[name], (name, of, emitted[name])
        assert done <= of and pct <= 100
    # a line without a known total shows no percentage for it
    for line in progress:
        if "total not known yet" in line:
            assert not PROGRESS_STREAM.search(line)


def test_retries_are_summed_in_progress_lines_with_one_warning_per_kind(make_sandbox, tmp_path: Path) -> None:
    sb = make_sandbox("7.3", seed=40)
    sb.set_faults(rate_429=0.25, retry_after=0, seed=7)
    cfg = tap_config(sb, resources=["students", "studentSchoolAssociations", "sections"], page_size=5,
                     progress_interval=0.001, max_tries=10)
    proc = run_tap_process(cfg, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    emitted = Counter(m["stream"] for m in Output(proc.stdout).records)
    assert emitted["students"] == 40
    err = proc.stderr.decode()
    summary = re.search(r"sync complete: .*?, ([\d,]+) retries \(429: ([\d,]+)\)", err)
    assert summary, err[-2000:]
    retries, of_429 = _n(summary.group(1)), _n(summary.group(2))
    assert retries == of_429 >= 3
    assert re.search(r"progress: .*retries \(429: \d+\)", err)
    # one warning for the first 429 of the API's requests, however many followed (the token request, with its own
    # retry loop and logger, is another kind)
    warnings_429 = [line for line in lines_at(proc.stderr, "WARNING") if "HTTP 429" in line and "edfi_core.session"
                    in line]
    assert len(warnings_429) == 1, warnings_429


# -- 9: errors in one line -----------------------------------------------------------------------------------------
def _one_error(proc: Any, *needles: str) -> str:
    errors = lines_at(proc.stderr, "ERROR")
    text = proc.stderr.decode()
    assert proc.returncode != 0
    assert len(errors) == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    retried = Counter(line.split("|")[2].strip() for line in lines_at(proc.stderr, "WARNING") if "; retry " in line)
    assert all(n == 1 for n in retried.values()), retried  # the first retry of a kind is a warning, not each
    return errors[0]


def _bad_configs(sb: Sandbox, forbidden: Sandbox) -> dict[str, tuple[dict[str, Any], tuple[str, ...]]]:
    return {
        "refused": ({"base_url": "http://127.0.0.1:1/api", "max_tries": 3, "max_backoff_seconds": 0.2},
                    ("cannot reach the API at http://127.0.0.1:1", "Connection refused", "is the API running")),
        "data_url": ({"base_url": sb.data_url}, ("is base_url the API root? it answered 404",)),
        "secret": ({"client_secret": "not-the-secret"}, ("401", "check client_id and client_secret")),
        "forbidden": ({"base_url": forbidden.api_root, "client_id": forbidden.client_id,
                       "client_secret": forbidden.client_secret, "fail_on_forbidden": True},
                      ("403", "/ed-fi/students", "claim set")),
        "snapshot": ({"use_snapshot": "always"}, ("use_snapshot is 'always'",)),
    }


@pytest.mark.parametrize("case", ["refused", "data_url", "secret", "forbidden", "snapshot"])
def test_tap_known_failures_are_one_error_line(make_sandbox, tmp_path: Path, case: str) -> None:
    sb = make_sandbox("7.3", seed=5)
    forbidden = make_sandbox("7.3", seed=5, forbidden=frozenset({"/ed-fi/students"})) if case == "forbidden" else sb
    extra, needles = _bad_configs(sb, forbidden)[case]
    proc = run_tap_process(tap_config(sb, resources=["students"], **extra), tmp_path)
    line = _one_error(proc, *needles)
    assert sb.client_secret not in proc.stderr.decode() and "not-the-secret" not in line


@pytest.mark.parametrize("case", ["refused", "data_url"])  # refused credentials: one line already (test_secrets)
def test_target_known_failures_are_one_error_line(make_sandbox, tmp_path: Path, case: str) -> None:
    sb = make_sandbox("7.3")
    extra, needles = _bad_configs(sb, sb)[case]
    cfg = target_config(sb, tmp_path / "log.db", **extra)
    proc = run_target_process(cfg, singer_messages([("students", student("S1"))]), tmp_path)
    _one_error(proc, *needles)
    assert proc.stdout == b""  # no STATE


def test_a_resources_filter_that_matches_nothing_fails_naming_close_streams(make_sandbox, tmp_path: Path) -> None:
    sb = make_sandbox("7.3", seed=5)
    proc = run_tap_process(tap_config(sb, resources=["studnets"]), tmp_path)
    line = _one_error(proc, "'studnets'", "students")
    assert "resources" in line
    assert b"STATE" not in proc.stdout
    # one pattern of several that matches nothing is a warning; the others are read
    ok = run_tap_process(tap_config(sb, resources=["students", "sectoins"]), tmp_path)
    assert ok.returncode == 0
    assert Counter(m["stream"] for m in Output(ok.stdout).records)["students"] == 5
    assert any("'sectoins'" in w and "sections" in w for w in lines_at(ok.stderr, "WARNING"))


def test_a_misspelt_setting_warns_with_the_closest_setting(make_sandbox, tmp_path: Path) -> None:
    sb = make_sandbox("7.3", seed=5)
    cfg = tap_config(sb, resources=["students"], resource=["sections"], page_sise=10)
    proc = run_tap_process(cfg, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    warnings = lines_at(proc.stderr, "WARNING")
    assert any("unknown setting 'resource'" in w and "did you mean 'resources'" in w for w in warnings), warnings
    assert any("unknown setting 'page_sise'" in w and "did you mean 'page_size'" in w for w in warnings), warnings
    target = run_target_process({**target_config(sb, tmp_path / "log.db"), "resource_maps": {"a": "b"}},
                                singer_messages([("students", student("S1"))]), tmp_path)
    assert target.returncode == 0, target.stderr.decode()[-2000:]
    assert any("unknown setting 'resource_maps'" in w and "did you mean 'resource_map'" in w
               for w in lines_at(target.stderr, "WARNING"))
