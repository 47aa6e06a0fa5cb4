"""The sandbox's routes, query parameters, JSON bodies and error texts as the real ODS/API has them, per version
(docs/sandbox-fidelity-api.md names the Ed-Fi-ODS source of each)."""

from __future__ import annotations

import pytest
import requests

from tests.conftest import DS5_SPECS, load_basics, school, student, uri

VERSIONS = ["5.3", "6.1", "7.1", "7.3"]
CHANGE_VERSIONS = ["6.1", "7.1", "7.3"]


@pytest.mark.parametrize("version", VERSIONS)
def test_routes_are_case_insensitive(make_sandbox, api_for, version):
    sb = make_sandbox(version)
    api = api_for(sb)
    load_basics(api, students=3)
    layout = sb.app.layout
    url = f"{sb.base_url}{layout.root}/changeQueries/v1{layout.segment}/AvailableChangeVersions"
    reply = api.http.get(url, timeout=30)
    assert reply.status_code == 200, reply.text
    newest = reply.json()["NewestChangeVersion" if version < "6" else "newestChangeVersion"]
    assert newest == api.newest()
    expected = api.all("/ed-fi/studentSchoolAssociations")
    assert len(expected) == 3
    for path in ("/ed-fi/StudentSchoolAssociations", "/Ed-Fi/studentschoolassociations"):
        got = api.get(path, params={"limit": 500})
        assert got.status_code == 200, (path, got.text)
        assert got.json() == expected
    data = sb.data_url.replace("/data/v3", "/DATA/V3")
    got = api.http.get(f"{data}/ed-fi/staffs", timeout=30)
    assert got.status_code == 200 and got.json() == []
    one = expected[0]
    got = api.get(f"/ed-fi/StudentSchoolAssociations/{one['id']}")
    assert got.status_code == 200 and got.json()["id"] == one["id"]


@pytest.mark.parametrize("version", VERSIONS)
def test_query_parameter_names_are_case_insensitive(make_sandbox, api_for, version):
    sb = make_sandbox(version)
    api = api_for(sb)
    load_basics(api, students=3)
    newest = api.newest()
    reply = api.get("/ed-fi/students", params={"MinChangeVersion": newest + 1, "TotalCount": "true"})
    assert reply.status_code == 200
    assert reply.json() == []
    assert reply.headers["Total-Count"] == "0"
    reply = api.get("/ed-fi/students", params={"LIMIT": 2, "Offset": 1})
    assert [s["studentUniqueId"] for s in reply.json()] == ["S0001", "S0002"]
    reply = api.get("/ed-fi/students", params={"StudentUniqueId": "S0002"})
    assert [s["studentUniqueId"] for s in reply.json()] == ["S0002"]


@pytest.mark.parametrize("version", VERSIONS)
def test_body_names_case_insensitive_numbers_as_strings_unknown_properties_ignored(make_sandbox, api_for,
                                                                                   version):
    sb = make_sandbox(version)
    api = api_for(sb)
    load_basics(api, schools=0, students=0)
    body = school(255901001)
    body["SchoolId"] = "255901001"
    del body["schoolId"]
    body["NameOfInstitution"] = body.pop("nameOfInstitution")
    body["favoriteColor"] = "blue"
    reply = api.post("/ed-fi/schools", body)
    assert reply.status_code == 201, reply.text
    [item] = api.all("/ed-fi/schools")
    assert item["schoolId"] == 255901001
    assert item["nameOfInstitution"] == "Grand Bend High"
    assert "favoriteColor" not in item and "SchoolId" not in item and "NameOfInstitution" not in item
    one = api.get(f"/ed-fi/schools/{item['id']}").json()
    assert "favoriteColor" not in one
    # an unknown property inside a collection item and a reference is ignored too
    person = student("S1")
    person["StudentUniqueId"] = person.pop("studentUniqueId")
    person["shoeSize"] = 44
    assert api.post("/ed-fi/students", person).status_code == 201
    [got] = api.all("/ed-fi/students")
    assert got["studentUniqueId"] == "S1" and "shoeSize" not in got
    # a numeric string that is not a number, or beyond Int64, is still refused
    for bad in ("25590100x", "99999999999999999999"):
        reply = api.post("/ed-fi/schools", {**school(7), "schoolId": bad})
        assert reply.status_code == 400 and "schoolId" in reply.text
    assert len(api.all("/ed-fi/schools")) == 1


@pytest.mark.parametrize("version", ["5.3", "6.1", "7.3"])
def test_a_date_only_value_binds_a_date_time_field(make_sandbox, api_for, version):
    sb = make_sandbox(version, specs=DS5_SPECS)
    api = api_for(sb)
    ns = "uri://ed-fi.org/AcademicSubjectDescriptor"
    assert api.post("/ed-fi/academicSubjectDescriptors",
                    {"namespace": ns, "codeValue": "Reading", "shortDescription": "Reading"}).status_code == 201
    assert api.post("/ed-fi/students", student("S1")).status_code == 201
    assert api.post("/ed-fi/assessments", {
        "assessmentIdentifier": "A1", "namespace": "uri://ed-fi.org/Assessment", "assessmentTitle": "Reading",
        "academicSubjects": [{"academicSubjectDescriptor": uri("AcademicSubjectDescriptor", "Reading")}],
    }).status_code == 201
    reply = api.post("/ed-fi/studentAssessments", {
        "studentAssessmentIdentifier": "SA1",
        "assessmentReference": {"assessmentIdentifier": "A1", "namespace": "uri://ed-fi.org/Assessment"},
        "studentReference": {"studentUniqueId": "S1"},
        "administrationDate": "2021-09-16",
    })
    assert reply.status_code == 201, reply.text
    [item] = api.all("/ed-fi/studentAssessments")
    assert item["administrationDate"] == "2021-09-16T00:00:00Z"


@pytest.mark.parametrize("version", CHANGE_VERSIONS)
@pytest.mark.parametrize("what", ["deletes", "keyChanges"])
def test_change_query_paging_errors_are_worded_as_the_source(make_sandbox, api_for, version, what):
    sb = make_sandbox(version)
    api = api_for(sb)
    reply = api.get(f"/ed-fi/students/{what}", params={"limit": 501, "offset": -1})
    assert reply.status_code == 400
    limit = "Limit must be omitted or set to a value between 1 and 500."
    offset = "Offset must be greater than or equal to 0."
    if version >= "7.3":
        body = reply.json()
        assert body["detail"] == "Parameters supplied to the request were invalid."
        assert body["errors"] == [limit, offset]
        assert body["type"] == "urn:ed-fi:api:bad-request:parameter-validation-failed"
    else:
        assert reply.json() == {"message": f"{limit} {offset}"}
    reply = api.get(f"/ed-fi/students/{what}", params={"offset": -5})
    assert reply.status_code == 400
    assert (reply.json().get("errors") or [reply.json().get("message")]) == [offset]
    reply = api.get(f"/ed-fi/students/{what}", params={"limit": 0})
    assert reply.status_code == 200 and reply.json() == []


@pytest.mark.parametrize("version", CHANGE_VERSIONS)
def test_an_unknown_resources_deletes_are_not_found(make_sandbox, api_for, version):
    sb = make_sandbox(version)
    api = api_for(sb)
    reply = api.get("/ed-fi/unicorns/deletes")
    assert reply.status_code == 404
    if version >= "7.3":
        body = reply.json()
        assert body["detail"] == "The specified data could not be found."
        assert body["type"] == "urn:ed-fi:api:not-found"
    else:
        assert reply.content == b""


DS6_SPECS = tuple(p.parent / p.name.replace("ds-5.0", "ds-6.0") for p in DS5_SPECS)


@pytest.mark.parametrize(("specs", "message"), [
    # the built-in model gives classPeriodName a minimum length of 1, as DS 4.0 does
    (None, "ClassPeriodName must be between 1 and 60 characters in length."),
    # DS 5.1 and later dropped the minimum
    (DS6_SPECS, "ClassPeriodName must be at most 60 characters in length."),
])
def test_a_too_long_string_is_worded_as_the_source_on_7_3(make_sandbox, api_for, specs, message):
    sb = make_sandbox("7.3", specs=specs)
    api = api_for(sb)
    reply = api.post("/ed-fi/classPeriods", {"schoolReference": {"schoolId": 1}, "classPeriodName": "P" * 61})
    assert reply.status_code == 400
    body = reply.json()
    assert body["detail"] == "Data validation failed. See 'validationErrors' for details."
    assert body["validationErrors"] == {"$.classPeriodName": [message]}


COURSE = {
    "courseCode": "ALG-1", "courseTitle": "Algebra I",
    "educationOrganizationReference": {"educationOrganizationId": 1},
    "identificationCodes": [{"courseIdentificationSystemDescriptor": uri("CourseIdentificationSystemDescriptor",
                                                                          "State course code"),
                             "identificationCode": "ALG-1"}],
}


def _course_setup(api) -> None:
    load_basics(api, students=0)
    assert api.post("/ed-fi/courseIdentificationSystemDescriptors", {
        "namespace": "uri://ed-fi.org/CourseIdentificationSystemDescriptor", "codeValue": "State course code",
        "shortDescription": "State course code"}).status_code == 201


@pytest.mark.parametrize("version", ["5.3", "6.1"])
def test_a_required_value_whose_csharp_default_means_something_may_be_left_out_before_7(make_sandbox, api_for,
                                                                                       version):
    api = api_for(make_sandbox(version))
    _course_setup(api)
    reply = api.post("/ed-fi/courses", COURSE)
    assert reply.status_code == 201, reply.text
    [course] = api.all("/ed-fi/courses")
    assert course["numberOfParts"] == 0
    # a required string is still required
    reply = api.post("/ed-fi/courses", {**COURSE, "courseCode": "GEO-1", "courseTitle": None})
    assert reply.status_code == 400 and "courseTitle" in reply.text
    # 7.x: NoUnsuppliedRequiredMembersWithMeaningfulDefaults refuses it
    api7 = api_for(make_sandbox("7.3"))
    _course_setup(api7)
    reply = api7.post("/ed-fi/courses", COURSE)
    assert reply.status_code == 400 and "numberOfParts" in reply.text
    assert api7.all("/ed-fi/courses") == []


LEA = {"localEducationAgencyId": 255901, "nameOfInstitution": "Grand Bend ISD",
       "localEducationAgencyCategoryDescriptor": uri("LocalEducationAgencyCategoryDescriptor", "Independent"),
       "categories": [{"educationOrganizationCategoryDescriptor": uri("EducationOrganizationCategoryDescriptor",
                                                                      "School")}]}


def _put_lea_without_its_id(api) -> tuple[requests.Response, dict]:
    load_basics(api, schools=0, students=0)
    assert api.post("/ed-fi/localEducationAgencyCategoryDescriptors", {
        "namespace": "uri://ed-fi.org/LocalEducationAgencyCategoryDescriptor", "codeValue": "Independent",
        "shortDescription": "Independent"}).status_code == 201
    reply = api.post("/ed-fi/localEducationAgencies", LEA)
    assert reply.status_code == 201, reply.text
    [item] = api.all("/ed-fi/localEducationAgencies")
    body = {k: v for k, v in LEA.items() if k != "localEducationAgencyId"}
    body["nameOfInstitution"] = "Grand Bend Independent School District"
    reply = api.put(f"/ed-fi/localEducationAgencies/{item['id']}", body)
    [after] = api.all("/ed-fi/localEducationAgencies")
    return reply, after


@pytest.mark.parametrize("version", ["5.3", "6.1"])
def test_a_put_may_leave_out_the_items_own_key_values_before_7(make_sandbox, api_for, version):
    reply, after = _put_lea_without_its_id(api_for(make_sandbox(version)))
    assert reply.status_code == 204, reply.text
    assert after["localEducationAgencyId"] == 255901
    assert after["nameOfInstitution"] == "Grand Bend Independent School District"
    # 7.x resources require it
    reply, after = _put_lea_without_its_id(api_for(make_sandbox("7.3")))
    assert reply.status_code == 400 and "localEducationAgencyId" in reply.text
    assert after["nameOfInstitution"] == "Grand Bend ISD"
