"""Enrollment composites: the sandbox serves the shapes of the Ed-Fi-ODS definitions, tap-edfi reads them.

Everything over real HTTP on loopback (docs/composites.md says where each behaviour comes from):

* the sandbox's documents validate against the definition (no property it does not name, every type right) and
  hold what the stored resources say, on 5.3, 6.1, 7.1 and 7.3 with instance-year, year and tenant/context routing;
* paging (1..100, default 25), no ``totalCount`` nor change versions, by id, filtered forms, the errors;
* tap-edfi gets every composite and filtered form edfi-api-client's ``api.composite(...)`` gets, record for record;
* through a proxy that spoils 30 % of the composite pages and a sandbox that answers 5xx, 429 and drops
  connections, nothing is lost or doubled;
* an API without composites fails the run naming the ``composites`` setting.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import requests
from edfi_api_client import EdFiClient

from edfi_core.composites import COMPOSITES, MAX_LIMIT, Composite, document_schema
from edfi_sandbox.server import Sandbox
from tap_edfi.composites import CompositeSettingError, parse_composites
from tap_edfi.sync import SettingsError, SyncError
from tap_edfi.tap import TapEdFi
from tests.page_proxies import OddPageProxy
from tests.tap_support import run_tap, run_tap_process, tap_config

SEED = 30

#: id -> (api version, sandbox options, tap options, edfi-api-client options)
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "5.3-instance-year": ("5.3", {"api_mode": "instance-year", "instance": "gbisd", "school_year": 2025},
                          {"school_year": 2025, "instance": "gbisd"}, {"api_year": 2025, "instance_code": "gbisd"}),
    "6.1-year": ("6.1", {"api_mode": "year", "school_year": 2025}, {"school_year": 2025}, {"api_year": 2025}),
    "7.1": ("7.1", {}, {}, {}),
    "7.3-tenant-context": ("7.3", {"tenant": "gbisd", "context": "2025"}, {}, {}),
}


@dataclass
class Site:
    name: str
    sb: Sandbox
    tap_options: dict[str, Any]
    client_options: dict[str, Any]

    @property
    def version(self) -> str:
        return self.sb.config.api_version

    @property
    def base(self) -> str:
        return self.sb.app.layout.composites_url(self.sb.base_url) + "/ed-fi/enrollment"

    def session(self) -> requests.Session:
        http = requests.Session()
        http.headers["Authorization"] = "Bearer " + self.sb.token()
        return http

    def all(self, http: requests.Session, route: str, limit: int = MAX_LIMIT) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            resp = http.get(f"{self.base}/{route}", params={"offset": len(out), "limit": limit}, timeout=30)
            assert resp.status_code == 200, resp.text
            page = resp.json()
            out.extend(page)
            if len(page) < limit:
                return out

    def docs(self, path: str) -> list[dict[str, Any]]:
        return list(self.sb.store.iter_docs(path))


@pytest.fixture(scope="module", params=list(VARIANTS))
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    version, options, tap_options, client_options = VARIANTS[request.param]
    sb = Sandbox(version, seed=SEED, **options).start()
    try:
        yield Site(request.param, sb, tap_options, client_options)
    finally:
        sb.stop()


def strict(node: Any) -> Any:
    """The schema with ``additionalProperties: false`` at every level: a property the definition does not name
    fails."""
    if isinstance(node, dict):
        out = {k: strict(v) for k, v in node.items()}
        if "properties" in node:
            out["additionalProperties"] = False
        return out
    return node


# -- the sandbox ----------------------------------------------------------------------------------------------
def test_sandbox_documents_are_the_definitions_shapes_and_the_stored_data(site: Site) -> None:
    http = site.session()
    by_name: dict[str, list[dict[str, Any]]] = {}
    for comp in COMPOSITES.values():
        docs = site.all(http, comp.name)
        by_name[comp.name] = docs
        schema = strict(document_schema(comp, site.version))
        for doc in docs:
            jsonschema.validate(doc, schema)
            objects = {p.name for p in comp.parts if not p.many}  # a single object without a row is null
            assert all(v is not None for k, v in doc.items() if k not in objects), doc  # null values left out
        # every item of the base resource, once
        assert sorted(d["id"] for d in docs) == sorted(d["id"] for d in site.docs(comp.resource)), comp.name
    # ordered by the base resource's primary key
    assert [d["schoolId"] for d in by_name["schools"]] == sorted(d["schoolId"] for d in by_name["schools"])
    # what the stored resources say: enrollments, section rosters, sessions, demographics
    schools = {s["schoolId"]: s for s in site.docs("/ed-fi/schools")}
    ssa: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in site.docs("/ed-fi/studentSchoolAssociations"):
        ssa[a["studentReference"]["studentUniqueId"]].append(a)
    for doc in by_name["students"]:
        got = sorted((e["schoolId"], e["enrollmentBeginDate"], e["id"]) for e in doc["studentSchoolEnrollments"])
        refs = [(a["schoolReference"]["schoolId"], a["entryDate"]) for a in ssa[doc["studentUniqueId"]]]
        want = sorted((school_id, entry, schools[school_id]["id"]) for school_id, entry in refs)
        assert got == want
        assert all(d["educationOrganizationType"].startswith("edfi.") for d in doc["studentDemographics"])
    students = {s["studentUniqueId"]: s["id"] for s in site.docs("/ed-fi/students")}
    roster: dict[str, set[str]] = defaultdict(set)
    for a in site.docs("/ed-fi/studentSectionAssociations"):
        roster[a["sectionReference"]["sectionIdentifier"]].add(students[a["studentReference"]["studentUniqueId"]])
    for doc in by_name["sections"]:
        assert {s["id"] for s in doc["students"]} == roster[doc["sectionIdentifier"]]
        assert doc["session"]["sessionName"] and doc["session"]["schoolYear"] == 2025
        assert doc["location"] is None  # no locations in the built-in model: an object without a row is null
    assert sum(len(d["students"]) for d in by_name["sections"]) > 0


def test_sandbox_routes_paging_and_errors(site: Site) -> None:
    http = site.session()
    base, v = site.base, site.version
    everyone = site.all(http, "students")
    # default limit 25, offset paging in a stable order
    assert [d["id"] for d in http.get(f"{base}/students", timeout=30).json()] == [d["id"] for d in everyone[:25]]
    assert http.get(f"{base}/Students", params={"offset": 5, "limit": 3}, timeout=30).json() == everyone[5:8]
    # limit 1..100; totalCount and change versions are not parameters of composites (a filter on no property)
    for limit in (0, 101):
        resp = http.get(f"{base}/students", params={"limit": limit}, timeout=30)
        assert resp.status_code == 400
        assert "Limit must be omitted or set to a value between 1 and 100." in resp.text
    for param in ("totalCount", "minChangeVersion"):
        resp = http.get(f"{base}/students", params={param: "true" if param == "totalCount" else "1"}, timeout=30)
        assert resp.status_code == 400 and f"The property '{param}' does not exist or is not available." in resp.text
        if v >= "7.3":
            detail = f"Filter value was supplied for an unrecognized data element named '{param}'."
            assert resp.json()["detail"] == detail
    assert "Total-Count" not in http.get(f"{base}/students", timeout=30).headers
    # a property of the base resource filters; fields keeps what is named
    first = everyone[0]
    assert http.get(f"{base}/students", params={"studentUniqueId": first["studentUniqueId"]},
                    timeout=30).json() == [first]
    assert http.get(f"{base}/students", params={"fields": "id,firstName", "limit": 2}, timeout=30).json() == [
        {"id": d["id"], "firstName": d["firstName"]} for d in everyone[:2]]
    # one item by id: an object; 404 when there is none; 400 when it is no GUID
    assert http.get(f"{base}/students/{first['id']}", timeout=30).json() == first
    assert http.get(f"{base}/students/{'0' * 32}", timeout=30).status_code == 404
    assert http.get(f"{base}/students/nope", timeout=30).status_code == 400
    # filtered forms: a section's students are its roster; forms the specification lacks and unknown names: 404
    section = site.all(http, "sections")[0]
    assert ({d["id"] for d in http.get(f"{base}/sections/{section['id']}/students", timeout=30).json()}
            == {s["id"] for s in section["students"]})
    assert http.get(f"{base}/sections/{'0' * 32}/students", timeout=30).json() == []
    school = site.all(http, "schools")[0]
    for route in (f"schools/{school['id']}/schools", "studentz", f"students/{first['id']}/localEducationAgencies"):
        assert http.get(f"{base}/{route}", timeout=30).status_code == 404, route
    assert http.get(base.replace("/enrollment", "/assessment") + "/students", timeout=30).status_code == 404
    assert http.post(f"{base}/students", json={}, timeout=30).status_code == 405
    assert requests.get(f"{base}/students", timeout=30).status_code == 401
    # discovery: the root payload names composites from 6.x; /metadata lists the section and its document
    root = requests.get(site.sb.api_root + "/", timeout=30).json()
    assert ("composites" in root["urls"]) == (v >= "6")
    entry = requests.get(root["urls"]["openApiMetadata"], timeout=30).json()[0]
    assert (entry["name"], entry["prefix"]) == ("Enrollment", "Composites")
    doc = requests.get(entry["endpointUri"], timeout=30).json()
    assert "/enrollment/sections/{section_id}/students" in doc["paths"]
    assert "/enrollment/schools/{school_id}/schools" not in doc["paths"]
    assert doc["servers"][0]["url"] + "/ed-fi/enrollment" == base


def test_a_server_without_composites() -> None:
    with Sandbox("7.3", seed=5, composites=False) as sb:
        http = requests.Session()
        http.headers["Authorization"] = "Bearer " + sb.token()
        url = sb.app.layout.composites_url(sb.base_url) + "/ed-fi/enrollment/students"
        assert http.get(url, timeout=30).status_code == 404
        root = requests.get(sb.api_root + "/", timeout=30).json()
        assert "composites" not in root["urls"]
        assert [e["name"] for e in requests.get(root["urls"]["openApiMetadata"], timeout=30).json()] == [
            "Descriptors", "Resources"]


# -- tap-edfi -------------------------------------------------------------------------------------------------
def test_the_setting(tmp_path: Path) -> None:
    specs = parse_composites(["*", "sections/students", "ed-fi/enrollment/Schools/staffs",
                              f"sections/{'a' * 32}/students", "students"])
    assert [s.stream_name for s in specs] == [
        "composite_enrollment_localEducationAgencies", "composite_enrollment_schools",
        "composite_enrollment_sections", "composite_enrollment_students", "composite_enrollment_staffs",
        "composite_enrollment_students_of_sections", "composite_enrollment_staffs_of_schools",
        f"composite_enrollment_students_of_section_{'a' * 32}"]
    for entry, words in (("studnets", "names no enrollment composite"),
                         ("schools/schools", "its filtered forms are localEducationAgencies/schools"),
                         ("sections/42/students", "is not the id (a GUID)"),
                         ("a/b/c/d", "is not <composite>")):
        with pytest.raises(CompositeSettingError, match="composites setting") as info:
            parse_composites([entry])
        assert words in str(info.value)


def by_key(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {(r.get("_parent_id", ""), r["id"]): r for r in records}
    assert len(out) == len(records), "a record was written twice"
    return out


def peer_rows(endpoint: Any) -> list[dict[str, Any]]:
    """Every row of an edfi-api-client composite, page by page with its ``get`` (``get_rows`` fails on composites
    in edfi-api-client 0.4.1: its composite ``get_pages`` calls ``.json()`` on the list ``get`` returns)."""
    out: list[dict[str, Any]] = []
    while True:
        page = endpoint.get(MAX_LIMIT, params={"offset": len(out)})
        out.extend(page)
        if len(page) < MAX_LIMIT:
            return out


def filtered_forms() -> list[tuple[Composite, str]]:
    return [(comp, parent) for comp in COMPOSITES.values() for parent in comp.parents]


def test_tap_reads_every_composite_edfi_api_client_reads_and_the_filtered_forms(site: Site) -> None:
    forms = filtered_forms() if site.version == "7.3" else [(COMPOSITES["students"], "sections"),
                                                           (COMPOSITES["staffs"], "schools")]
    entries = ["*", *(f"{parent}/{comp.name}" for comp, parent in forms)]
    out = run_tap(tap_config(site.sb, resources=["schoolYearTypes"], composites=entries, page_size=9,
                             **site.tap_options))
    schemas = out.schemas
    client = EdFiClient(site.sb.api_root, site.sb.client_id, site.sb.client_secret, **site.client_options)
    client.connect()
    with pytest.raises(AttributeError, match="'list' object has no attribute 'json'"):  # see peer_rows
        next(iter(client.composite("students").get_rows()))
    for comp in COMPOSITES.values():
        name = f"composite_enrollment_{comp.name}"
        assert schemas[name]["key_properties"] == ["id"]
        got = by_key(out.stream_records(name))
        peer = {("", r["id"]): r for r in peer_rows(client.composite(comp.name))}
        assert got == peer and len(got) == len(site.docs(comp.resource)), name
        for record in got.values():
            jsonschema.validate(record, schemas[name]["schema"])
    http = site.session()
    for comp, parent in forms:
        name = f"composite_enrollment_{comp.name}_of_{parent}"
        assert schemas[name]["key_properties"] == ["_parent_id", "id"]
        got = by_key(out.stream_records(name))
        peer = {}
        for p in site.all(http, parent):
            rows = peer_rows(client.composite(comp.name, filter_type=parent, filter_id=p["id"]))
            peer.update({(p["id"], r["id"]): {"_parent_id": p["id"], **r} for r in rows})
        assert got == peer, name
    # a section's students are its roster, from the resources themselves
    roster = {(k[0], k[1]) for k in by_key(out.stream_records("composite_enrollment_students_of_sections"))}
    sections = {s["sectionIdentifier"]: s["id"] for s in site.docs("/ed-fi/sections")}
    students = {s["studentUniqueId"]: s["id"] for s in site.docs("/ed-fi/students")}
    assert roster == {(sections[a["sectionReference"]["sectionIdentifier"]],
                       students[a["studentReference"]["studentUniqueId"]])
                      for a in site.docs("/ed-fi/studentSectionAssociations")}
    assert out.tap.sync_summary["rows"] == len(out.records)  # the run's summary counts the composite rows


def test_paging_is_complete_through_spoiled_pages_and_server_faults() -> None:
    entries = ["students", "sections", "sections/students"]
    with Sandbox("7.3", seed=SEED) as sb:
        clean = run_tap(tap_config(sb, resources=["schoolYearTypes"], composites=entries, page_size=7))
        with OddPageProxy(sb.base_url, ("empty", "object", "half", "html", "truncated"), 0.3, seed=3,
                          match=lambda path: "/composites/" in path) as proxy:
            sb.set_faults(rate_500=0.05, rate_429=0.05, rate_drop=0.03, retry_after=0, seed=11)
            try:
                out = run_tap(tap_config(sb, base_url=proxy.url, resources=["schoolYearTypes"], composites=entries,
                                         page_size=7, max_backoff_seconds=0.05, max_tries=12))
            finally:
                sb.set_faults(rate_500=0, rate_429=0, rate_drop=0)
        assert sum(proxy.injected.values()) > 10 and "half" in proxy.injected, proxy.injected
        assert sum(sb.app.faults.injected.values()) > 0
    for name in ("composite_enrollment_students", "composite_enrollment_sections",
                 "composite_enrollment_students_of_sections"):
        assert by_key(out.stream_records(name)) == by_key(clean.stream_records(name)), name
        assert len(clean.stream_records(name)) > 7


def test_an_api_without_composites_fails_naming_the_setting(tmp_path: Path) -> None:
    with Sandbox("7.3", seed=5, composites=False) as sb:
        config = tap_config(sb, resources=["schoolYearTypes"], composites=["sections/students"])
        with pytest.raises(SyncError, match=r"composites setting entry 'sections/\{id\}/students'.*HTTP 404"):
            run_tap(config)
        proc = run_tap_process({**config, "composites": ["students"]}, tmp_path)
        edu = {**config, "record_format": "edu", "tenant_code": "a", "api_year": 2025}
        with pytest.raises(SettingsError, match="composites setting is not available with record_format 'edu'"):
            run_tap(edu)
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert "Remove 'students' from the composites setting (TAP_EDFI_COMPOSITES)" in err
    assert sb.client_secret not in err
    assert b'"type":"RECORD"' not in proc.stdout.replace(b" ", b"")


def test_composite_records_are_the_api_bytes_with_the_parent_id() -> None:
    with Sandbox("6.1", seed=8) as sb:
        out = run_tap(tap_config(sb, resources=["schoolYearTypes"], composites=["schools/students"]))
        http = requests.Session()
        http.headers["Authorization"] = "Bearer " + sb.token()
        base = sb.app.layout.composites_url(sb.base_url) + "/ed-fi/enrollment"
        school = http.get(f"{base}/schools", timeout=30).json()[0]
        served = http.get(f"{base}/schools/{school['id']}/students", params={"limit": 100}, timeout=30).json()
    records = out.stream_records("composite_enrollment_students_of_schools")
    assert records == [{"_parent_id": school["id"], **doc} for doc in served]
    assert orjson.loads(orjson.dumps(records)) == records


def test_the_sdk_path_reads_a_composite_stream_too() -> None:
    """``get_records`` (``--test``, the SDK's own per-stream loop) reads with the same reader."""
    with Sandbox("7.1", seed=8) as sb:
        tap = TapEdFi(config=tap_config(sb, resources=["schoolYearTypes"], composites=["sections/students"]))
        stream = tap.streams["composite_enrollment_students_of_sections"]
        assert stream.replication_method == "FULL_TABLE" and stream.primary_keys == ["_parent_id", "id"]
        records = list(stream.get_records(None))
        associations = len(list(sb.store.iter_docs("/ed-fi/studentSectionAssociations")))
    assert len(records) == associations > 0
    assert all(r["_parent_id"] and r["id"] for r in records)


def test_composite_streams_carry_the_tenant_and_year_columns() -> None:
    """With ``tenant_code``/``api_year`` (tap_edfi/slices.py), composite rows of several tenants and years share
    one table too: the columns lead the schema and the key, and are on every record (raw and SDK paths)."""
    with Sandbox("6.1", seed=8) as sb:
        config = tap_config(sb, resources=["schoolYearTypes"], composites=["schools/students", "students"],
                            tenant_code="north", api_year=2025)
        out = run_tap(config)
        sdk = list(TapEdFi(config=config).streams["composite_enrollment_students"].get_records(None))
        students = len(list(sb.store.iter_docs("/ed-fi/students")))
    for name, keys in (("composite_enrollment_students_of_schools", ["tenant_code", "api_year", "_parent_id", "id"]),
                       ("composite_enrollment_students", ["tenant_code", "api_year", "id"])):
        schema = out.schemas[name]
        assert schema["key_properties"] == keys
        assert list(schema["schema"]["properties"])[:2] == ["tenant_code", "api_year"]
        records = out.stream_records(name)
        assert records and all(r["tenant_code"] == "north" and r["api_year"] == 2025 for r in records)
    assert len(sdk) == students > 0
    assert all(r["tenant_code"] == "north" and r["api_year"] == 2025 for r in sdk)
