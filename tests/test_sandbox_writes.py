"""Writes as the ODS/API does them: upserts, PUT, key changes, deletes, conflicts, error bodies."""

from __future__ import annotations

import re

import pytest

from tests.conftest import VERSIONS, Api, enrollment, load_basics, school, student, uri

PROBLEM = {"5.3": False, "6.1": False, "7.1": False, "7.3": True}


@pytest.fixture(params=VERSIONS)
def api(request, make_sandbox, ds5_model) -> Api:
    sb = make_sandbox(request.param, model=ds5_model)
    api = Api(sb)
    load_basics(api)
    return api


def error_text(api: Api, resp) -> str:
    body = resp.json()
    if PROBLEM[api.sb.config.api_version]:
        assert body["type"].startswith("urn:ed-fi:api:")
        assert body["status"] == resp.status_code
        assert re.fullmatch(r"[0-9a-f]{32}", body["correlationId"])
        return body["detail"] + " " + str(body.get("validationErrors", ""))
    assert "message" in body
    return body["message"] + " " + str(body.get("modelState", ""))


def test_post_creates_then_updates_by_natural_key(api: Api) -> None:
    created = api.post("/ed-fi/students", student("NEW1"))
    assert created.status_code == 201
    assert created.content == b""
    location = created.headers["Location"]
    item_id = location.rsplit("/", 1)[1]
    assert re.fullmatch(r"[0-9a-f]{32}", item_id)
    assert location == api.url(f"/ed-fi/students/{item_id}")
    etag = created.headers["ETag"].strip('"')
    updated = api.post("/ed-fi/students", student("NEW1", first="Grace"))
    assert updated.status_code == 200
    assert updated.headers["Location"] == location
    assert updated.headers["ETag"].strip('"') != etag
    item = api.get(f"/ed-fi/students/{item_id}").json()
    assert item["firstName"] == "Grace"
    assert item["id"] == item_id
    assert item["_etag"] == updated.headers["ETag"].strip('"')
    if api.sb.config.api_version >= "6":
        assert item["_lastModifiedDate"].endswith("Z")


def test_unchanged_upsert_does_not_bump_change_version(api: Api) -> None:
    before = api.newest()
    assert api.post("/ed-fi/students", student("S0000")).status_code == 200
    assert api.newest() == before


def test_post_with_id_is_rejected(api: Api) -> None:
    body = {**student("X1"), "id": "0" * 32}
    resp = api.post("/ed-fi/students", body)
    assert resp.status_code == 400
    assert "identifiers cannot be assigned by the client" in error_text(api, resp)


def test_references_carry_links(api: Api) -> None:
    item = api.get("/ed-fi/studentSchoolAssociations", params={"studentUniqueId": "S0001"}).json()[0]
    link = item["studentReference"]["link"]
    assert link["rel"] == "Student"
    student_id = link["href"].rsplit("/", 1)[1]
    assert api.get(f"/ed-fi/students/{student_id}").json()["studentUniqueId"] == "S0001"
    assert item["schoolReference"]["link"]["rel"] == "School"


def test_missing_reference_is_409(api: Api) -> None:
    resp = api.post("/ed-fi/studentSchoolAssociations", enrollment("NOBODY", 1))
    assert resp.status_code == 409
    assert "Student" in error_text(api, resp)
    if PROBLEM[api.sb.config.api_version]:
        assert resp.json()["type"] == "urn:ed-fi:api:data-conflict:unresolved-reference"


def test_unknown_descriptor_is_400(api: Api) -> None:
    body = school(99)
    body["gradeLevels"] = [{"gradeLevelDescriptor": uri("GradeLevelDescriptor", "Twentieth grade")}]
    resp = api.post("/ed-fi/schools", body)
    assert resp.status_code == 400
    assert "Twentieth grade" in error_text(api, resp)


def test_schema_violation_names_field_paths(api: Api) -> None:
    body = student("X2")
    del body["birthDate"]
    body["firstName"] = 12
    resp = api.post("/ed-fi/students", body)
    assert resp.status_code == 400
    text = error_text(api, resp)
    assert "birthDate" in text and "firstName" in text
    if PROBLEM[api.sb.config.api_version]:
        assert set(resp.json()["validationErrors"]) == {"$.birthDate", "$.firstName"}
    else:
        assert set(resp.json()["modelState"]) == {"request.birthDate", "request.firstName"}


def test_malformed_json_is_400(api: Api) -> None:
    resp = api.http.post(api.url("/ed-fi/students"), data=b"{not json", timeout=10,
                         headers={"Content-Type": "application/json"})
    assert resp.status_code == 400


def test_put_updates_and_returns_204(api: Api) -> None:
    item = api.get("/ed-fi/students", params={"studentUniqueId": "S0002"}).json()[0]
    resp = api.put(f"/ed-fi/students/{item['id']}", {**student("S0002", first="Mary"), "id": item["id"]})
    assert resp.status_code == 204
    assert resp.headers["ETag"].strip('"') != item["_etag"]
    assert api.get(f"/ed-fi/students/{item['id']}").json()["firstName"] == "Mary"
    assert api.put("/ed-fi/students/" + "f" * 32, student("S0002")).status_code == 404


def test_key_change_where_updatable_is_recorded(api: Api) -> None:
    item = api.get("/ed-fi/studentSchoolAssociations", params={"studentUniqueId": "S0000"}).json()[0]
    resp = api.put(f"/ed-fi/studentSchoolAssociations/{item['id']}", enrollment("S0000", 1, "2024-09-01"))
    assert resp.status_code == 204
    moved = api.get(f"/ed-fi/studentSchoolAssociations/{item['id']}").json()
    assert moved["entryDate"] == "2024-09-01"
    changes = api.get("/ed-fi/studentSchoolAssociations/keyChanges")
    if api.sb.config.api_version < "6":
        assert changes.status_code == 404  # no /keyChanges before 6.0
        return
    [change] = changes.json()
    assert change["id"] == item["id"]
    assert change["oldKeyValues"] == {"entryDate": "2024-08-20", "schoolId": 1, "studentUniqueId": "S0000"}
    assert change["newKeyValues"] == {"entryDate": "2024-09-01", "schoolId": 1, "studentUniqueId": "S0000"}


def test_key_change_where_not_updatable_is_400(api: Api) -> None:
    if api.sb.config.api_version.startswith("6"):
        pytest.skip("6.x accepts a person's key change: tests/test_sandbox_change_queries.py")
    item = api.get("/ed-fi/students", params={"studentUniqueId": "S0001"}).json()[0]
    resp = api.put(f"/ed-fi/students/{item['id']}", student("S9999"))
    assert resp.status_code == 400
    if PROBLEM[api.sb.config.api_version]:
        assert resp.json()["type"].endswith("key-change-not-supported")
    assert api.get(f"/ed-fi/students/{item['id']}").json()["studentUniqueId"] == "S0001"


def test_key_change_cascades_to_dependents(make_sandbox, ds5_model) -> None:
    api = Api(make_sandbox("7.3", model=ds5_model))
    load_basics(api, students=1)
    api.post("/ed-fi/schoolYearTypes", {"schoolYear": 2025, "currentSchoolYear": True,
                                        "schoolYearDescription": "2024-2025"})
    session = {"sessionName": "Fall", "schoolReference": {"schoolId": 1},
               "schoolYearTypeReference": {"schoolYear": 2025}, "beginDate": "2024-08-01",
               "endDate": "2024-12-20", "termDescriptor": uri("TermDescriptor", "Fall Semester"),
               "totalInstructionalDays": 80}
    assert api.post("/ed-fi/sessions", session).status_code == 201
    api.post("/ed-fi/courses", {"courseCode": "ALG1", "courseTitle": "Algebra", "numberOfParts": 1,
                                "identificationCodes": [], "educationOrganizationReference": {
                                    "educationOrganizationId": 1}})
    offering = {"localCourseCode": "ALG1-1", "courseReference": {"courseCode": "ALG1", "educationOrganizationId": 1},
                "schoolReference": {"schoolId": 1},
                "sessionReference": {"schoolId": 1, "schoolYear": 2025, "sessionName": "Fall"}}
    assert api.post("/ed-fi/courseOfferings", offering).status_code == 201, api.post(
        "/ed-fi/courseOfferings", offering).text
    sess = api.get("/ed-fi/sessions").json()[0]
    renamed = {**session, "sessionName": "Autumn"}
    assert api.put(f"/ed-fi/sessions/{sess['id']}", renamed).status_code == 204
    [off] = api.get("/ed-fi/courseOfferings").json()
    assert off["sessionReference"]["sessionName"] == "Autumn"
    # the offering's own key changed with its session: recorded as a key change of its own
    [change] = api.get("/ed-fi/courseOfferings/keyChanges").json()
    assert change["oldKeyValues"]["sessionName"] == "Fall"
    assert change["newKeyValues"]["sessionName"] == "Autumn"


def test_delete_and_conflicts(api: Api) -> None:
    student_item = api.get("/ed-fi/students", params={"studentUniqueId": "S0001"}).json()[0]
    blocked = api.delete(f"/ed-fi/students/{student_item['id']}")
    assert blocked.status_code == 409
    if PROBLEM[api.sb.config.api_version]:
        assert blocked.json()["type"] == "urn:ed-fi:api:data-conflict:dependent-item-exists"
    ssa = api.get("/ed-fi/studentSchoolAssociations", params={"studentUniqueId": "S0001"}).json()[0]
    stale = api.delete(f"/ed-fi/studentSchoolAssociations/{ssa['id']}", headers={"If-Match": '"123"'})
    assert stale.status_code == 412
    ok = api.delete(f"/ed-fi/studentSchoolAssociations/{ssa['id']}", headers={"If-Match": f'"{ssa["_etag"]}"'})
    assert ok.status_code == 204
    assert api.get(f"/ed-fi/studentSchoolAssociations/{ssa['id']}").status_code == 404
    assert api.delete(f"/ed-fi/studentSchoolAssociations/{ssa['id']}").status_code == 404
    assert api.delete(f"/ed-fi/students/{student_item['id']}").status_code == 204


def test_put_if_match_mismatch_is_412(api: Api) -> None:
    item = api.get("/ed-fi/students", params={"studentUniqueId": "S0000"}).json()[0]
    resp = api.put(f"/ed-fi/students/{item['id']}", student("S0000", "Z"), headers={"If-Match": '"1"'})
    assert resp.status_code == 412
    if PROBLEM[api.sb.config.api_version]:
        assert resp.json()["type"] == "urn:ed-fi:api:optimistic-lock-failed"


def test_wrong_methods_are_405(api: Api) -> None:
    assert api.http.put(api.url("/ed-fi/students"), json={}, timeout=10).status_code == 405
    assert api.http.delete(api.url("/ed-fi/students"), timeout=10).status_code == 405
    assert api.http.post(api.url("/ed-fi/students/" + "a" * 32), json={}, timeout=10).status_code == 405


def test_unknown_resource_is_404(api: Api) -> None:
    assert api.get("/ed-fi/notAResource").status_code == 404


def test_descriptors_get_their_integer_id_and_collections_default_to_empty(api: Api) -> None:
    [grade] = api.get("/ed-fi/gradeLevelDescriptors").json()
    assert isinstance(grade["gradeLevelDescriptorId"], int)
    assert list(grade)[:2] == ["id", "gradeLevelDescriptorId"]
    # a client sending the server's integer id back changes nothing
    again = api.post("/ed-fi/gradeLevelDescriptors", {k: v for k, v in grade.items() if k != "id"})
    assert again.status_code == 200
    assert api.get(f"/ed-fi/gradeLevelDescriptors/{grade['id']}").json()["_etag"] == grade["_etag"]
    [one] = api.get("/ed-fi/students", params={"studentUniqueId": "S0000"}).json()
    assert one["otherNames"] == [] and one["visas"] == []
