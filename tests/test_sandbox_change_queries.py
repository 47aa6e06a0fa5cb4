"""/deletes and /keyChanges as the ODS/API answers them, per version (docs/change-queries.md)."""

from __future__ import annotations

import pytest

from tests.conftest import DS5_SPECS, Api, load_basics, uri

CHANGE_VERSIONS = ("6.1", "7.1", "7.3", "8.0", "8.1")  # DMS: "the response body remains the same as ODS"


def load_program_association(api: Api) -> dict:
    """A district (LEA 255901), its school 255901001, a program of the district and a student in it (DS 5.0)."""
    descriptors = {
        "/ed-fi/educationOrganizationCategoryDescriptors": ("EducationOrganizationCategoryDescriptor", "School"),
        "/ed-fi/gradeLevelDescriptors": ("GradeLevelDescriptor", "Ninth grade"),
        "/ed-fi/localEducationAgencyCategoryDescriptors": ("LocalEducationAgencyCategoryDescriptor", "Independent"),
        "/ed-fi/programTypeDescriptors": ("ProgramTypeDescriptor", "Bilingual"),
    }
    for path, (name, code) in descriptors.items():
        resp = api.post(path, {"namespace": f"uri://ed-fi.org/{name}", "codeValue": code, "shortDescription": code})
        assert resp.status_code in (200, 201), resp.text
    category = [{"educationOrganizationCategoryDescriptor": uri("EducationOrganizationCategoryDescriptor", "School")}]
    lea = {"localEducationAgencyId": 255901, "nameOfInstitution": "Grand Bend ISD",
           "localEducationAgencyCategoryDescriptor": uri("LocalEducationAgencyCategoryDescriptor", "Independent"),
           "categories": category}
    school = {"schoolId": 255901001, "nameOfInstitution": "Grand Bend High",
              "educationOrganizationCategories": category,
              "gradeLevels": [{"gradeLevelDescriptor": uri("GradeLevelDescriptor", "Ninth grade")}],
              "localEducationAgencyReference": {"localEducationAgencyId": 255901}}
    program = {"educationOrganizationReference": {"educationOrganizationId": 255901}, "programName": "Bilingual",
               "programTypeDescriptor": uri("ProgramTypeDescriptor", "Bilingual")}
    association = {
        "beginDate": "2021-08-23",
        "educationOrganizationReference": {"educationOrganizationId": 255901001},
        "programReference": {"educationOrganizationId": 255901, "programName": "Bilingual",
                             "programTypeDescriptor": uri("ProgramTypeDescriptor", "Bilingual")},
        "studentReference": {"studentUniqueId": "604822"},
    }
    for path, body in (("/ed-fi/localEducationAgencies", lea), ("/ed-fi/schools", school), ("/ed-fi/programs", program),
                       ("/ed-fi/students", {"studentUniqueId": "604822", "firstName": "Ada", "lastSurname": "Lovelace",
                                            "birthDate": "2010-05-01"}),
                       ("/ed-fi/studentProgramAssociations", association)):
        resp = api.post(path, body)
        assert resp.status_code in (200, 201), (path, resp.text)
    return association


@pytest.mark.parametrize("version", CHANGE_VERSIONS)
def test_deletes_carry_every_identity_part_under_its_role_name(make_sandbox, version) -> None:
    sb = make_sandbox(version, specs=DS5_SPECS)
    api = Api(sb)
    load_program_association(api)
    [item] = api.get("/ed-fi/studentProgramAssociations").json()
    assert api.delete(f"/ed-fi/studentProgramAssociations/{item['id']}").status_code == 204
    [deleted] = api.get("/ed-fi/studentProgramAssociations/deletes").json()
    assert deleted["id"] == item["id"]
    assert deleted["keyValues"] == {
        "beginDate": "2021-08-23",
        "educationOrganizationId": 255901001,
        "programEducationOrganizationId": 255901,
        "programName": "Bilingual",
        "programTypeDescriptor": uri("ProgramTypeDescriptor", "Bilingual"),
        "studentUniqueId": "604822",
    }
    # the names are the resource's query parameters: the item is found by them
    again = load_program_association(api)
    found = api.get("/ed-fi/studentProgramAssociations", params={
        "programEducationOrganizationId": 255901, "educationOrganizationId": 255901001}).json()
    assert [f["programReference"]["educationOrganizationId"] for f in found] == [255901]
    assert found[0]["educationOrganizationReference"]["educationOrganizationId"] == \
        again["educationOrganizationReference"]["educationOrganizationId"]
    assert api.get("/ed-fi/studentProgramAssociations",
                   params={"programEducationOrganizationId": 255901001}).json() == []


@pytest.mark.parametrize("version", CHANGE_VERSIONS)
def test_grade_key_changes_carry_eleven_key_values(make_sandbox, version) -> None:
    sb = make_sandbox(version, seed=3)
    api = Api(sb)
    grade = api.get("/ed-fi/grades", params={"limit": 1}).json()[0]
    types = [d for d in api.get("/ed-fi/gradeTypeDescriptors").json()
             if f"{d['namespace']}#{d['codeValue']}" != grade["gradeTypeDescriptor"]]
    assert types, "the seeded district needs a second grade type"
    body = {k: v for k, v in grade.items() if k not in ("_etag", "_lastModifiedDate")}  # DMS PUTs need the id
    body["gradeTypeDescriptor"] = f"{types[0]['namespace']}#{types[0]['codeValue']}"
    resp = api.put(f"/ed-fi/grades/{grade['id']}", body)
    assert resp.status_code == 204, resp.text
    [change] = api.get("/ed-fi/grades/keyChanges").json()
    period = grade["gradingPeriodReference"]
    section = grade["studentSectionAssociationReference"]
    expected = {
        "gradeTypeDescriptor": grade["gradeTypeDescriptor"],
        "gradingPeriodDescriptor": period["gradingPeriodDescriptor"],
        "gradingPeriodName": period["gradingPeriodName"],
        "gradingPeriodSchoolYear": period["schoolYear"],
        "schoolId": section["schoolId"],
        "schoolYear": section["schoolYear"],
        "beginDate": section["beginDate"],
        "localCourseCode": section["localCourseCode"],
        "sectionIdentifier": section["sectionIdentifier"],
        "sessionName": section["sessionName"],
        "studentUniqueId": section["studentUniqueId"],
    }
    assert change["oldKeyValues"] == expected
    assert change["newKeyValues"] == {**expected, "gradeTypeDescriptor": body["gradeTypeDescriptor"]}


def contact(unique_id: str) -> dict:
    return {"contactUniqueId": unique_id, "firstName": "Grace", "lastSurname": "Hopper"}


@pytest.mark.parametrize("version", CHANGE_VERSIONS)
def test_a_deleted_item_whose_key_exists_again_is_not_in_deletes(make_sandbox, version) -> None:
    sb = make_sandbox(version)
    api = Api(sb)
    for unique_id in ("CDE123", "CDE456"):
        assert api.post("/ed-fi/contacts", contact(unique_id)).status_code == 201
    ids = {c["contactUniqueId"]: c["id"] for c in api.get("/ed-fi/contacts").json()}
    for item_id in ids.values():
        assert api.delete(f"/ed-fi/contacts/{item_id}").status_code == 204
    assert api.post("/ed-fi/contacts", contact("CDE123")).status_code == 201  # re-created: a new id
    resp = api.get("/ed-fi/contacts/deletes", params={"totalCount": "true"})
    assert [d["id"] for d in resp.json()] == [ids["CDE456"]]
    assert resp.headers["Total-Count"] == "1"
    # deleted again: now it is a delete (both of its ids: the live table no longer has the key)
    [live] = [c for c in api.get("/ed-fi/contacts").json() if c["contactUniqueId"] == "CDE123"]
    assert api.delete(f"/ed-fi/contacts/{live['id']}").status_code == 204
    deleted = api.get("/ed-fi/contacts/deletes").json()
    assert sorted(d["id"] for d in deleted) == sorted([ids["CDE123"], ids["CDE456"], live["id"]])


def test_5_3_lists_every_deleted_id(make_sandbox) -> None:
    """5.3 reads its tracked deletes table alone (GetDeletedResourceIds): a re-created key is still listed."""
    sb = make_sandbox("5.3")
    api = Api(sb)
    assert api.post("/ed-fi/contacts", contact("CDE123")).status_code == 201
    [item] = api.get("/ed-fi/contacts").json()
    assert api.delete(f"/ed-fi/contacts/{item['id']}").status_code == 204
    assert api.post("/ed-fi/contacts", contact("CDE123")).status_code == 201
    assert [d["Id"] for d in api.get("/ed-fi/contacts/deletes").json()] == [item["id"]]


def _student_body(doc: dict, unique_id: str) -> dict:
    body = {k: v for k, v in doc.items() if k not in ("id", "_etag", "_lastModifiedDate")}
    body["studentUniqueId"] = unique_id
    return body


def test_6_1_accepts_a_person_key_change_and_cascades_it(make_sandbox) -> None:
    sb = make_sandbox("6.1")
    api = Api(sb)
    load_basics(api, students=2)
    [student] = api.get("/ed-fi/students", params={"studentUniqueId": "S0000"}).json()
    [enrollment] = api.get("/ed-fi/studentSchoolAssociations", params={"studentUniqueId": "S0000"}).json()
    before = api.newest()
    resp = api.put(f"/ed-fi/students/{student['id']}", _student_body(student, "S9000"))
    assert resp.status_code == 204, resp.text
    [change] = api.get("/ed-fi/students/keyChanges").json()
    assert change["id"] == student["id"]
    assert change["oldKeyValues"] == {"studentUniqueId": "S0000"}
    assert change["newKeyValues"] == {"studentUniqueId": "S9000"}
    assert change["changeVersion"] > before
    # the enrollment refers to the student's USI: it shows the new unique id, with no change of its own
    moved = api.get(f"/ed-fi/studentSchoolAssociations/{enrollment['id']}").json()
    assert moved["studentReference"]["studentUniqueId"] == "S9000"
    assert moved["_etag"] == enrollment["_etag"]
    assert api.get("/ed-fi/studentSchoolAssociations",
                   params={"minChangeVersion": before + 1}).json() == []
    assert api.get("/ed-fi/studentSchoolAssociations/keyChanges").json() == []
    assert api.get("/ed-fi/studentSchoolAssociations", params={"studentUniqueId": "S9000"}).json()[0]["id"] == \
        enrollment["id"]
    # the old unique id is free again; the new one is taken
    assert api.post("/ed-fi/students", {**_student_body(student, "S0000")}).status_code == 201
    clash = api.put(f"/ed-fi/students/{student['id']}", _student_body(student, "S0001"))
    assert clash.status_code == 409


@pytest.mark.parametrize("version", ("7.1", "7.3"))
def test_7_x_refuses_a_person_key_change(make_sandbox, version) -> None:
    sb = make_sandbox(version)
    api = Api(sb)
    load_basics(api, students=1)
    [student] = api.get("/ed-fi/students").json()
    resp = api.put(f"/ed-fi/students/{student['id']}", _student_body(student, "S9000"))
    assert resp.status_code == 400
    if version == "7.3":
        assert resp.json()["detail"] == ("Identifying values for the Student data cannot be changed. Delete and "
                                         "recreate the item instead.")
    else:  # 7.1: EntityMapper.mustache (docs/change-queries.md)
        assert resp.json()["message"] == ("Key values for this resource cannot be changed. Delete and recreate the "
                                          "resource item.")
    assert api.get("/ed-fi/students/keyChanges").json() == []
    assert api.get(f"/ed-fi/students/{student['id']}").json()["studentUniqueId"] == "S0000"


@pytest.mark.parametrize(("path", "field", "body"), [
    ("/ed-fi/staffs", "staffUniqueId", {"staffUniqueId": "T100", "firstName": "Alan", "lastSurname": "Turing"}),
    ("/ed-fi/contacts", "contactUniqueId", {"contactUniqueId": "C100", "firstName": "Grace", "lastSurname": "Hopper"}),
])
def test_6_1_accepts_key_changes_of_staff_and_parents(make_sandbox, path, field, body) -> None:
    """The HandleKeyChanges triggers of 6.1 are on edfi.staff and edfi.parent (contacts in DS 5) too."""
    sb = make_sandbox("6.1")
    api = Api(sb)
    assert api.post(path, body).status_code == 201
    [doc] = api.get(path).json()
    new = {k: v for k, v in doc.items() if k not in ("id", "_etag", "_lastModifiedDate")}
    new[field] = body[field] + "X"
    assert api.put(f"{path}/{doc['id']}", new).status_code == 204
    [change] = api.get(f"{path}/keyChanges").json()
    assert (change["id"], change["oldKeyValues"], change["newKeyValues"]) == (
        doc["id"], {field: body[field]}, {field: body[field] + "X"})
    assert api.get(f"{path}/{doc['id']}").json()[field] == body[field] + "X"
