"""target-edfi into DMS (API v8) sandboxes: what DMS's write rules ask of a client (docs/dms.md, "Writes").

* payloads carry the spec's exact property names, and no nulls or empty arrays (DMS drops a miscased optional
  property silently, and drops nulls and empty collections);
* PUT bodies carry the item's ``id`` (DMS requires it);
* a POST that DMS refuses as a Create (403) for an item that exists becomes a PUT with ``If-Match``;
* an unchanged record is skipped through the transaction log (no request at all).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Api, load_basics, uri
from tests.target_support import RequestCounter, run_target, singer_messages, target_config

DMS = ("8.0", "8.1")


def _capture(sb: Any) -> list[tuple[str, bytes]]:
    """(method, body) of every data write the sandbox receives."""
    seen: list[tuple[str, bytes]] = []
    app = sb.app
    original = app._dispatch

    async def capturing(route: Any, req: Any, base: str) -> Any:
        if route.area == "data" and req.method in ("POST", "PUT"):
            seen.append((req.method, req.body))
        return await original(route, req, base)

    app._dispatch = capturing
    return seen


@pytest.mark.parametrize("version", DMS)
def test_payloads_have_exact_names_and_no_nulls_or_empty_arrays(version: str, make_sandbox: Any,
                                                                tmp_path: Path) -> None:
    sb = make_sandbox(version)
    load_basics(Api(sb), schools=1, students=0)
    sent = _capture(sb)
    record = {"StudentUniqueId": "T1", "FirstName": "Ada", "middle_name": "Grace", "lastSurname": "Lovelace",
              "birthDate": "2010-05-01", "generationCodeSuffix": None, "electronicMails": [],
              "otherNames": [{}]}
    config = target_config(sb, tmp_path / "log.db")
    run = run_target(config, singer_messages([("students", record)]))
    assert run.exit_code == 0, run.results
    [(method, body)] = sent
    payload = orjson.loads(body)
    assert method == "POST"
    assert payload == {"studentUniqueId": "T1", "firstName": "Ada", "middleName": "Grace", "lastSurname": "Lovelace",
                       "birthDate": "2010-05-01"}
    [item] = Api(sb).get("/ed-fi/students").json()
    assert item["middleName"] == "Grace"  # DMS would have dropped "middle_name" silently
    # the same record again: skipped through the transaction log, no request
    run = run_target(config, singer_messages([("students", record)]))
    assert run.exit_code == 0 and len(sent) == 1
    assert run.totals["skipped_unchanged"] == 1


@pytest.mark.parametrize("version", DMS)
def test_key_change_put_carries_the_id(version: str, make_sandbox: Any, tmp_path: Path) -> None:
    sb = make_sandbox(version)
    load_basics(Api(sb), schools=1, students=1)
    sent = _capture(sb)
    config = target_config(sb, tmp_path / "log.db")
    enrollment = {"id": "src-1", "studentReference": {"studentUniqueId": "S0000"}, "schoolReference": {"schoolId": 1},
                  "entryDate": "2024-08-21", "entryGradeLevelDescriptor": uri("GradeLevelDescriptor", "Ninth grade")}
    keys = {"studentSchoolAssociations": ["id"]}
    assert run_target(config, singer_messages([("studentSchoolAssociations", enrollment)],
                                              key_properties=keys)).exit_code == 0
    moved = {**enrollment, "entryDate": "2024-08-22"}  # the same source item, a new natural key
    run = run_target(config, singer_messages([("studentSchoolAssociations", moved)], key_properties=keys))
    assert run.exit_code == 0, run.results
    puts = [orjson.loads(b) for m, b in sent if m == "PUT"]
    assert len(puts) == 1 and puts[0]["id"] and puts[0]["entryDate"] == "2024-08-22"
    dates = sorted(d["entryDate"] for d in sb.store.iter_docs("/ed-fi/studentSchoolAssociations"))
    assert dates == ["2024-08-20", "2024-08-22"]  # load_basics' own enrollment, and the one moved in place


@pytest.mark.parametrize("version", DMS)
def test_a_post_refused_as_a_create_becomes_a_put_with_if_match(version: str, make_sandbox: Any,
                                                                tmp_path: Path) -> None:
    """A District Hosted SIS Vendor client may update its district but not create one: DMS answers its POST 403
    (POST is the Create action), and the target updates the existing item by id with If-Match instead."""
    sb = make_sandbox(version, clients=("lea-app:l:District Hosted SIS Vendor:255901",))
    admin = Api(sb)
    for path, (name, code) in {"/ed-fi/localEducationAgencyCategoryDescriptors": (
            "LocalEducationAgencyCategoryDescriptor", "Independent"),
            "/ed-fi/educationOrganizationCategoryDescriptors": ("EducationOrganizationCategoryDescriptor",
                                                                 "School")}.items():
        assert admin.post(path, {"namespace": f"uri://ed-fi.org/{name}", "codeValue": code,
                                 "shortDescription": code}).status_code == 201
    lea = {"localEducationAgencyId": 255901, "nameOfInstitution": "Grand Bend ISD",
           "localEducationAgencyCategoryDescriptor": uri("LocalEducationAgencyCategoryDescriptor", "Independent"),
           "categories": [{"educationOrganizationCategoryDescriptor": uri("EducationOrganizationCategoryDescriptor",
                                                                          "School")}]}
    assert admin.post("/ed-fi/localEducationAgencies", lea).status_code == 201
    counter = RequestCounter(sb)
    config = {**target_config(sb, tmp_path / "log.db"), "client_id": "lea-app", "client_secret": "l"}
    run = run_target(config, singer_messages([("localEducationAgencies", {**lea, "nameOfInstitution": "Renamed"})]))
    assert run.exit_code == 0, run.results
    assert counter.statuses[("POST", 403)] == 1 and counter.statuses[("PUT", 204)] == 1
    [item] = admin.get("/ed-fi/localEducationAgencies").json()
    assert item["nameOfInstitution"] == "Renamed"
    assert run.totals["updated"] == 1 and run.totals["failed_all"] == 0
    # an item that does not exist: the 403 stands, reported
    other = {**lea, "localEducationAgencyId": 255902}
    run = run_target(config, singer_messages([("localEducationAgencies", other)]))
    assert run.exit_code != 0 and run.totals["failed_all"] == 1
    assert admin.get("/ed-fi/localEducationAgencies", params={"localEducationAgencyId": 255902}).json() == []
