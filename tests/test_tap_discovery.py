"""tap-edfi discovery: the real DS 5.0 specs served by the sandbox, local spec files, the CLI."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from singer_sdk.typing import DEFAULT_JSONSCHEMA_VALIDATOR

from edfi_sandbox.server import Sandbox
from tap_edfi.tap import TapEdFi
from tests.tap_support import DS5_SPECS, TAP, Warehouse, run_tap, tap_config


@pytest.fixture(scope="module", params=["6.1", "7.3"])
def real_spec_sandbox(request: pytest.FixtureRequest):
    with Sandbox(request.param, specs=DS5_SPECS) as sb:
        yield sb


def test_discovery_of_the_real_ds5_spec(real_spec_sandbox: Sandbox) -> None:
    sb = real_spec_sandbox
    started = time.perf_counter()
    tap = TapEdFi(config=tap_config(sb), setup_mapper=False)
    catalog = tap.catalog_dict
    seconds = time.perf_counter() - started
    assert seconds < 15, f"discovery took {seconds:.1f}s"
    streams = {s["stream"]: s for s in catalog["streams"]}
    items = [s for s in streams.values() if s["metadata"][-1]["metadata"].get("edfi-kind") == "items"]
    assert len(items) == len(sb.model) > 300
    assert all("-" not in name for name in streams)
    assert "studentSchoolAssociations" in streams and "tpdm_candidates" in streams
    assert "gradeLevelDescriptors" in streams
    ssa = streams["studentSchoolAssociations"]
    assert ssa["key_properties"] == ["id"]
    root = next(m["metadata"] for m in ssa["metadata"] if m["breadcrumb"] == [])
    assert set(root["edfi-natural-key"]) == {"entryDate", "schoolReference.schoolId",
                                             "studentReference.studentUniqueId"}
    assert root["edfi-resource"] == "/ed-fi/studentSchoolAssociations"
    for name in [*sorted(streams)[::12], "studentSchoolAssociations", "students", "tpdm_candidates"]:
        DEFAULT_JSONSCHEMA_VALIDATOR.check_schema(streams[name]["schema"])  # (all of them: ~10s)
    props = ssa["schema"]["properties"]
    assert props["id"]["type"] == "string"
    assert props["schoolReference"]["type"] == ["object", "null"]
    assert "$ref" not in json.dumps(catalog)
    assert props["_sdc_deleted_at"]["format"] == "date-time"


def test_sync_against_the_real_spec(real_spec_sandbox: Sandbox) -> None:
    sb = real_spec_sandbox
    from tests.tap_support import Mutator

    m = Mutator(sb)
    for path, codes in (("/ed-fi/gradeLevelDescriptors", ["Ninth grade", "Tenth grade"]),
                        ("/ed-fi/sexDescriptors", ["Female", "Male"])):
        entity = path.rsplit("/", 1)[-1][:-1]
        for code in codes:
            body = {"namespace": f"uri://ed-fi.org/{entity[0].upper()}{entity[1:]}", "codeValue": code,
                    "shortDescription": code}
            resp = m.http.post(m.url(path), json=body, timeout=30)
            assert resp.status_code in (200, 201), resp.text
    config = tap_config(sb, resources=["gradeLevelDescriptors", "sexDescriptors", "students", "tpdm_*"])
    out = run_tap(config)
    assert out.counts() == {"gradeLevelDescriptors": 2, "sexDescriptors": 2}
    wh = Warehouse().apply(out)
    for stream in ("gradeLevelDescriptors", "sexDescriptors"):
        assert {r["codeValue"] for r in wh.live(stream).values()} <= {"Ninth grade", "Tenth grade", "Female", "Male"}
    assert "tpdm_candidates" in out.schemas


def test_discovery_from_local_spec_files_needs_no_api() -> None:
    config = {"base_url": "http://127.0.0.1:9", "client_id": "x", "client_secret": "y", "spec_files": DS5_SPECS,
              "key_changes": False, "deletes": "streams"}
    started = time.perf_counter()
    catalog = TapEdFi(config=config, setup_mapper=False).catalog_dict
    assert time.perf_counter() - started < 30
    names = {s["stream"] for s in catalog["streams"]}
    assert "students" in names and "students_deletes" in names
    assert not any(n.endswith("_key_changes") for n in names)
    assert "schoolYearTypes_deletes" not in names  # the API never offers it


def test_cli_about_and_discover(tmp_path: Path) -> None:
    about = subprocess.run([TAP, "--about", "--format=markdown"], capture_output=True, text=True, timeout=60)
    assert about.returncode == 0, about.stderr
    for setting in ("base_url", "client_secret", "page_size", "deletes", "use_snapshot", "paging", "max_workers"):
        assert setting in about.stdout
    with Sandbox("7.3", seed=5) as sb:
        cfg = tmp_path / "config.json"
        cfg.write_text(json.dumps(tap_config(sb)))
        disc = subprocess.run([TAP, "--config", str(cfg), "--discover"], capture_output=True, timeout=60)
        assert disc.returncode == 0, disc.stderr.decode()[-2000:]
        catalog = json.loads(disc.stdout)
        assert {s["stream"] for s in catalog["streams"]} >= {"students", "studentSchoolAssociations"}
        # deselect everything but students, and run with the catalog and a state
        for stream in catalog["streams"]:
            stream["metadata"][-1]["metadata"]["selected"] = stream["stream"] == "students"
        cat = tmp_path / "catalog.json"
        cat.write_text(json.dumps(catalog))
        run = subprocess.run([TAP, "--config", str(cfg), "--catalog", str(cat)], capture_output=True, timeout=60)
        assert run.returncode == 0, run.stderr.decode()[-2000:]
        lines = [json.loads(x) for x in run.stdout.splitlines()]
        assert {m["stream"] for m in lines if m["type"] == "RECORD"} == {"students"}
        wh = Warehouse()
        from tests.tap_support import Output

        wh.apply(Output(run.stdout))
        assert len(wh.live("students")) == 5
        assert "summary" in run.stderr.decode() or "sync complete" in run.stderr.decode()


def test_field_selection_goes_through_the_sdk() -> None:
    with Sandbox("7.3", seed=5) as sb:
        config = tap_config(sb, resources=["students"])
        catalog = TapEdFi(config=config, setup_mapper=False).catalog_dict
        for stream in catalog["streams"]:
            for entry in stream["metadata"]:
                if entry["breadcrumb"] == ["properties", "birthCity"]:
                    entry["metadata"]["selected"] = False
        out = run_tap(config, catalog=catalog)
        records = out.stream_records("students")
        assert records and all("birthCity" not in r for r in records)
        assert all("firstName" in r for r in records)
