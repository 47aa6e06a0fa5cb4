"""The sandbox's DMS (API v8) writes, over loopback, on 8.0 and 8.1 (docs/dms.md, "Writes").

Each test names the DMS behaviour it pins; the source files are cited in docs/dms.md.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api, enrollment, load_basics, school, student, uri

DMS = ("8.0", "8.1")
PROBLEM_KEYS = ["detail", "type", "title", "status", "correlationId", "validationErrors", "errors"]


def _problem(resp: Any, status: int, kind: str, title: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body = resp.json()
    assert list(body) == PROBLEM_KEYS  # every DMS problem has all seven members, in this order
    assert (body["type"], body["title"], body["status"]) == (f"urn:ed-fi:api:{kind}" if kind else "urn:ed-fi:api",
                                                            title, status)
    return body


@pytest.fixture(params=DMS)
def dms(request: Any, make_sandbox: Any) -> Api:
    api = Api(make_sandbox(request.param))
    load_basics(api, schools=1, students=2)
    return api


def _one(api: Api, path: str, **params: Any) -> dict:
    [item] = api.get(path, params=params).json()
    return item


def _body(item: dict) -> dict:
    return {k: v for k, v in item.items() if k not in ("_etag", "_lastModifiedDate")}


def test_property_names_are_case_sensitive(dms: Api) -> None:
    # an optional property with the wrong casing is dropped: the write succeeds, the value is gone
    resp = dms.post("/ed-fi/students", {**student("C1"), "MiddleName": "Grace", "BIRTHCITY": "Paris"})
    assert resp.status_code == 201
    item = _one(dms, "/ed-fi/students", studentUniqueId="C1")
    assert "middleName" not in item and "MiddleName" not in item and "BIRTHCITY" not in item
    # a required one: dropped, then missing (DATA-STRICTNESS.md's own example)
    bad = {**school(7)}
    bad["GRADELEVELS"] = bad.pop("gradeLevels")
    body = _problem(dms.post("/ed-fi/schools", bad), 400, "bad-request:data-validation-failed",
                    "Data Validation Failed")
    assert body["validationErrors"] == {"$.gradeLevels": ["gradeLevels is required."]}
    assert body["errors"] == [] and body["detail"] == "Data validation failed. See 'validationErrors' for details."
    # the ODS/API binds names case-insensitively: the sandbox's 7.3 keeps the value (the difference that matters)


def test_nulls_and_empty_arrays_are_dropped(dms: Api) -> None:
    resp = dms.post("/ed-fi/students", {**student("N1"), "middleName": None, "electronicMails": [],
                                        "addresses": [{}]})
    assert resp.status_code == 201, resp.text
    item = _one(dms, "/ed-fi/students", studentUniqueId="N1")
    assert not {"middleName", "electronicMails", "addresses"} & set(item)
    # a required collection sent empty is dropped and then missing
    body = _problem(dms.post("/ed-fi/schools", {**school(8), "gradeLevels": []}), 400,
                    "bad-request:data-validation-failed", "Data Validation Failed")
    assert body["validationErrors"] == {"$.gradeLevels": ["gradeLevels is required."]}
    # and a required scalar sent as null
    body = _problem(dms.post("/ed-fi/students", {**student("N2"), "firstName": None}), 400,
                    "bad-request:data-validation-failed", "Data Validation Failed")
    assert body["validationErrors"] == {"$.firstName": ["firstName is required."]}


@pytest.mark.parametrize("name", ["id", "ID", "Id"])
def test_id_in_a_post_body_is_400_in_any_casing(dms: Api, name: str) -> None:
    body = _problem(dms.post("/ed-fi/students", {**student("I1"), name: "f52298d612ba4722b0536cfd58ec72c0"}), 400,
                    "bad-request:data-validation-failed", "Data Validation Failed")
    assert body["detail"] == "The request data was constructed incorrectly."
    assert body["errors"] == ["Resource identifiers cannot be assigned by the client. The 'id' property should not"
                              " be included in the request body."]
    assert dms.get("/ed-fi/students", params={"studentUniqueId": "I1"}).json() == []


def test_a_property_named_twice_is_400(dms: Api) -> None:
    raw = b'{"studentUniqueId": "D1", "firstName": "A", "lastSurname": "L", "birthDate": "2010-05-01",' \
          b' "firstName": "B"}'
    resp = dms.http.post(dms.url("/ed-fi/students"), data=raw, headers={"Content-Type": "application/json"},
                         timeout=30)
    body = _problem(resp, 400, "bad-request:data-validation-failed", "Data Validation Failed")
    assert body["validationErrors"] == {"$.firstName": ["An item with the same key has already been added."]}
    assert dms.get("/ed-fi/students", params={"studentUniqueId": "D1"}).json() == []


def test_put_needs_the_id_of_the_url_in_its_body(dms: Api) -> None:
    item = _one(dms, "/ed-fi/students", studentUniqueId="S0000")
    body = _problem(dms.put(f"/ed-fi/students/{item['id']}", {**_body(item), "id": "0" * 32}), 400, "bad-request",
                    "Bad Request")
    assert body["errors"] == ["Request body id must match the id in the url."]
    missing = {k: v for k, v in _body(item).items() if k != "id"}
    body = _problem(dms.put(f"/ed-fi/students/{item['id']}", missing), 400, "bad-request:data-validation-failed",
                    "Data Validation Failed")
    assert body["validationErrors"] == {"$.id": ["id is required."]}


def test_if_match_on_put_post_and_delete(dms: Api) -> None:
    sb = dms.sb
    item = _one(dms, "/ed-fi/students", studentUniqueId="S0000")
    url = f"/ed-fi/students/{item['id']}"
    stale = _problem(dms.put(url, {**_body(item), "firstName": "B"}, headers={"If-Match": '"123"'}), 412,
                     "optimistic-lock-failed", "Optimistic Lock Failed")
    assert stale["detail"] == "The item has been modified by another user."
    weak = dms.put(url, {**_body(item), "firstName": "B"}, headers={"If-Match": f'W/"{item["_etag"]}"'})
    assert weak.status_code == 412  # weak validators never match
    ok = dms.put(url, {**_body(item), "firstName": "B"}, headers={"If-Match": f'"{item["_etag"]}"'})
    assert ok.status_code == 204 and ok.headers["ETag"] != f'"{item["_etag"]}"'
    # a POST that updates is checked too; one that would create has no representation to match
    assert dms.post("/ed-fi/students", {**student("S0000"), "firstName": "C"},
                    headers={"If-Match": f'"{item["_etag"]}"'}).status_code == 412
    created = _problem(dms.post("/ed-fi/students", student("NEW1"), headers={"If-Match": "*"}), 412,
                       "optimistic-lock-failed", "Optimistic Lock Failed")
    assert created["detail"] == "The If-Match precondition failed because the resource does not exist."
    assert dms.get("/ed-fi/students", params={"studentUniqueId": "NEW1"}).json() == []
    # "*" on a missing item is 412, not 404; a specific tag on a missing item keeps the 404
    missing = "/ed-fi/students/" + "0" * 32
    assert dms.put(missing, {**_body(item), "id": "0" * 32}, headers={"If-Match": "*"}).status_code == 412
    assert dms.delete(missing, headers={"If-Match": '"1"'}).status_code == 404
    current = _one(dms, "/ed-fi/students", studentUniqueId="S0000")
    assert dms.delete(url, headers={"If-Match": f'"{item["_etag"]}"'}).status_code == 412  # stale: before the 409
    assert sb.store.count("/ed-fi/students") == 2
    assert current["_etag"] != item["_etag"]


def test_unchanged_writes_change_nothing(dms: Api) -> None:
    sb = dms.sb
    item = _one(dms, "/ed-fi/students", studentUniqueId="S0001")
    before = sb.store.change_version
    again = dms.post("/ed-fi/students", student("S0001"))
    assert again.status_code == 200 and again.headers["ETag"] == f'"{item["_etag"]}"'
    put = dms.put(f"/ed-fi/students/{item['id']}", _body(item))
    assert put.status_code == 204 and put.headers["ETag"] == f'"{item["_etag"]}"'
    assert sb.store.change_version == before  # the guarded no-op: no new change version


def test_identity_updates_where_the_resource_allows_them(dms: Api) -> None:
    ssa = _one(dms, "/ed-fi/studentSchoolAssociations", studentUniqueId="S0000")
    resp = dms.put(f"/ed-fi/studentSchoolAssociations/{ssa['id']}", {**_body(ssa), "entryDate": "2024-09-01"})
    assert resp.status_code == 204  # allowIdentityUpdates: the key changes in place
    assert _one(dms, "/ed-fi/studentSchoolAssociations", studentUniqueId="S0000")["entryDate"] == "2024-09-01"
    # a second enrollment takes the same key: 409 identity conflict
    other = _one(dms, "/ed-fi/studentSchoolAssociations", studentUniqueId="S0001")
    clash = {**_body(other), "studentReference": {"studentUniqueId": "S0000"}, "entryDate": "2024-09-01"}
    body = _problem(dms.put(f"/ed-fi/studentSchoolAssociations/{other['id']}", clash), 409, "identity-conflict",
                    "Identifying Values Are Not Unique")
    assert body["errors"][0].startswith("A natural key conflict occurred when attempting to update a resource"
                                        " StudentSchoolAssociation with a duplicate key.")
    student_item = _one(dms, "/ed-fi/students", studentUniqueId="S0001")
    body = _problem(dms.put(f"/ed-fi/students/{student_item['id']}", {**_body(student_item),
                                                                      "studentUniqueId": "S9"}),
                    400, "bad-request:data-validation-failed:key-change-not-supported", "Key Change Not Supported")
    assert body["detail"] == ("Identifying values for the Student resource cannot be changed. Delete and recreate"
                              " the resource item instead.")


def test_reference_validation_answers(dms: Api) -> None:
    body = _problem(dms.post("/ed-fi/studentSchoolAssociations", enrollment("nobody", 99)), 409,
                    "data-conflict:unresolved-reference", "Unresolved Reference")
    assert body["detail"] == "One or more references could not be resolved. See 'validationErrors' for details."
    assert body["validationErrors"] == {"$.schoolReference": ["The referenced School item does not exist."],
                                        "$.studentReference": ["The referenced Student item does not exist."]}
    # descriptors: 400 Bad Request, the value lower-cased as DMS reports it
    bad = {**school(9), "gradeLevels": [{"gradeLevelDescriptor": uri("GradeLevelDescriptor", "Tenth")}]}
    body = _problem(dms.post("/ed-fi/schools", bad), 400, "bad-request", "Bad Request")
    assert body["validationErrors"] == {"$.gradeLevels[0].gradeLevelDescriptor": [
        "GradeLevelDescriptor value 'uri://ed-fi.org/gradeleveldescriptor#tenth' does not exist."]}
    # descriptor values match case-insensitively and are stored as the descriptor is
    odd = {**school(10), "gradeLevels": [{"gradeLevelDescriptor": "URI://ED-FI.ORG/GradeLevelDescriptor#NINTH GRADE"}]}
    assert dms.post("/ed-fi/schools", odd).status_code == 201
    assert _one(dms, "/ed-fi/schools", schoolId=10)["gradeLevels"] == school(10)["gradeLevels"]


def test_delete_answers(dms: Api) -> None:
    missing = dms.delete("/ed-fi/students/" + "0" * 32)
    assert missing.status_code == 404 and missing.content == b""  # DeleteFailureNotExists: no body
    item = _one(dms, "/ed-fi/schools", schoolId=1)
    body = _problem(dms.delete(f"/ed-fi/schools/{item['id']}"), 409, "data-conflict:dependent-item-exists",
                    "Dependent Item Exists")
    assert body["detail"] == ("The requested action cannot be performed because this item is referenced by"
                              " existing StudentSchoolAssociation item(s).")
    # a descriptor in use is a dependency too (DMS keeps descriptor references as foreign keys)
    grade = _one(dms, "/ed-fi/gradeLevelDescriptors", codeValue="Ninth grade")
    body = _problem(dms.delete(f"/ed-fi/gradeLevelDescriptors/{grade['id']}"), 409,
                    "data-conflict:dependent-item-exists", "Dependent Item Exists")
    assert body["detail"] == ("The requested action cannot be performed because this item is referenced by"
                              " existing School, StudentSchoolAssociation item(s).")
    term = _one(dms, "/ed-fi/termDescriptors")  # used by nothing
    assert dms.delete(f"/ed-fi/termDescriptors/{term['id']}").status_code == 204


def test_coercion(dms: Api) -> None:
    resp = dms.post("/ed-fi/students", {**student("K1"), "birthDate": "5/6/2009"})
    assert resp.status_code == 201, resp.text
    assert _one(dms, "/ed-fi/students", studentUniqueId="K1")["birthDate"] == "2009-05-06"  # month first


@pytest.mark.parametrize("version", DMS)
def test_a_repost_is_authorized_as_a_create(version: str, make_sandbox: Any) -> None:
    """Every DMS POST needs the Create action (ResourceActionAuthorizationMiddleware), also one that updates: a
    District Hosted SIS Vendor client, which may read and update its district but not create one, gets 403 for a
    re-POST of it and updates it with a PUT. The ODS/API authorizes that upsert as an Update (200)."""
    lea_id = 255901
    clients = (f"lea-app:l:District Hosted SIS Vendor:{lea_id}",)
    lea = {"localEducationAgencyId": lea_id, "nameOfInstitution": "Grand Bend ISD",
           "localEducationAgencyCategoryDescriptor": uri("LocalEducationAgencyCategoryDescriptor", "Independent"),
           "categories": [{"educationOrganizationCategoryDescriptor": uri("EducationOrganizationCategoryDescriptor",
                                                                          "School")}]}
    for v, expected in ((version, 403), ("7.3", 200)):
        sb = make_sandbox(v, clients=clients)
        admin = Api(sb)
        assert admin.post("/ed-fi/localEducationAgencyCategoryDescriptors", {
            "namespace": "uri://ed-fi.org/LocalEducationAgencyCategoryDescriptor", "codeValue": "Independent",
            "shortDescription": "Independent"}).status_code == 201
        assert admin.post("/ed-fi/educationOrganizationCategoryDescriptors", {
            "namespace": "uri://ed-fi.org/EducationOrganizationCategoryDescriptor", "codeValue": "School",
            "shortDescription": "School"}).status_code == 201
        assert admin.post("/ed-fi/localEducationAgencies", lea).status_code == 201
        client = Api(sb)
        client.http.headers["Authorization"] = "Bearer " + sb.token("lea-app")
        resp = client.post("/ed-fi/localEducationAgencies", {**lea, "nameOfInstitution": "Renamed"})
        assert resp.status_code == expected, resp.text
        if v != version:
            continue
        assert resp.json()["title"] == "Authorization Denied"
        item = _one(client, "/ed-fi/localEducationAgencies")
        put = client.put(f"/ed-fi/localEducationAgencies/{item['id']}", {**_body(item), "nameOfInstitution": "R"},
                         headers={"If-Match": f'"{item["_etag"]}"'})
        assert put.status_code == 204, put.text
        assert _one(client, "/ed-fi/localEducationAgencies")["nameOfInstitution"] == "R"


@pytest.mark.parametrize("version", DMS)
def test_429_as_each_version_answers_it(version: str, make_sandbox: Any) -> None:
    sb = make_sandbox(version)
    api = Api(sb)
    sb.app.faults.configure({"rate_429": 1.0, "retry_after": 3})
    resp = api.get("/ed-fi/students")
    sb.app.faults.configure({"rate_429": 0.0})
    assert resp.status_code == 429
    if version == "8.0":  # the rate limiter's bare status: no body, no Retry-After
        assert resp.content == b"" and "Retry-After" not in resp.headers
    else:
        assert resp.headers["Retry-After"] == "3"
        body = _problem(resp, 429, "too-many-requests", "Too Many Requests")
        assert body["detail"] == "The number of allowed requests has been exceeded. Retry the request later."
