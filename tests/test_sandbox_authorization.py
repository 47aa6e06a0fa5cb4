"""Scoped API clients: claim sets and the ODS/API's authorization strategies (docs/authorization.md)."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from edfi_sandbox.server import Sandbox
from tests.conftest import VERSIONS

LEA, SCHOOL = 867530, 867530001  # the seeded district
OTHER_LEA, OTHER_SCHOOL = 999000, 999000001
#: SIS Vendor with ReadChanges added (7.x's SIS Vendor has no ReadChanges: /deletes and /keyChanges are 403)
SCHOOL_CLIENT = f"school-app:school-secret:SIS Vendor+ReadChanges:{SCHOOL}:uri://ed-fi.org"
LEA_CLIENT = f"lea-app:lea-secret:District Hosted SIS Vendor:{LEA}"


class ClientApi:
    """Raw requests as one client."""

    def __init__(self, sb: Sandbox, client_id: str | None = None) -> None:
        self.sb = sb
        self.http = requests.Session()
        self.http.headers["Authorization"] = "Bearer " + sb.token(client_id)

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.http.get(self.sb.data_url + path, params=params, timeout=30)

    def post(self, path: str, body: Any) -> requests.Response:
        return self.http.post(self.sb.data_url + path, json=body, timeout=30)

    def put(self, path: str, body: Any) -> requests.Response:
        return self.http.put(self.sb.data_url + path, json=body, timeout=30)

    def delete(self, path: str) -> requests.Response:
        return self.http.delete(self.sb.data_url + path, timeout=30)

    def total(self, path: str, **params: Any) -> int:
        resp = self.get(path, totalCount="true", limit=0, **params)
        assert resp.status_code == 200, resp.text
        return int(resp.headers["Total-Count"])

    def id_of(self, path: str, **params: Any) -> str:
        items = self.get(path, **params).json()
        assert len(items) == 1, items
        return items[0]["id"]


def student(uid: str) -> dict:
    return {"studentUniqueId": uid, "firstName": "Test", "lastSurname": "Person", "birthDate": "2012-01-02"}


def enrollment(uid: str, school: int) -> dict:
    return {"studentReference": {"studentUniqueId": uid}, "schoolReference": {"schoolId": school},
            "entryDate": "2024-08-20", "entryGradeLevelDescriptor": "uri://ed-fi.org/GradeLevelDescriptor#Sixth grade"}


def other_district(admin: ClientApi) -> None:
    """A second district with one school and three students, added by the sandbox (unrestricted) client."""
    r = admin.post("/ed-fi/localEducationAgencies", {
        "localEducationAgencyId": OTHER_LEA, "nameOfInstitution": "Other ISD",
        "localEducationAgencyCategoryDescriptor": "uri://ed-fi.org/LocalEducationAgencyCategoryDescriptor#Independent",
        "categories": [{"educationOrganizationCategoryDescriptor":
                        "uri://ed-fi.org/EducationOrganizationCategoryDescriptor#Local Education Agency"}]})
    assert r.status_code == 201, r.text
    r = admin.post("/ed-fi/schools", {
        "schoolId": OTHER_SCHOOL, "nameOfInstitution": "Other School",
        "localEducationAgencyReference": {"localEducationAgencyId": OTHER_LEA},
        "educationOrganizationCategories": [{"educationOrganizationCategoryDescriptor":
                                             "uri://ed-fi.org/EducationOrganizationCategoryDescriptor#School"}],
        "gradeLevels": [{"gradeLevelDescriptor": "uri://ed-fi.org/GradeLevelDescriptor#Sixth grade"}]})
    assert r.status_code == 201, r.text
    for i in range(3):
        assert admin.post("/ed-fi/students", student(f"OTHER{i}")).status_code == 201
        assert admin.post("/ed-fi/studentSchoolAssociations", enrollment(f"OTHER{i}", OTHER_SCHOOL)).status_code == 201


@pytest.fixture
def district(make_sandbox):
    def build(version: str = "7.3") -> tuple[Sandbox, ClientApi]:
        sb = make_sandbox(version, seed=30, clients=(SCHOOL_CLIENT, LEA_CLIENT))
        admin = ClientApi(sb)
        other_district(admin)
        return sb, admin
    return build


def test_default_client_sees_everything_and_cli_parses_clients(district) -> None:
    sb, admin = district()
    assert admin.total("/ed-fi/students") == 33
    spec = sb.config.clients[0]
    assert (spec.client_id, spec.claim_set, spec.education_organizations, spec.namespaces) == (
        "school-app", "SIS Vendor", (SCHOOL,), ("uri://ed-fi.org",))
    info = requests.post(sb.oauth_url.replace("/token", "/token_info"),
                         data={"token": sb.token("school-app")}, timeout=10).json()
    assert info["claim_set"] == {"name": "SIS Vendor"}
    assert info["education_organizations"] == [{"education_organization_id": SCHOOL}]


@pytest.mark.parametrize("version", ["6.1", "7.3"])
def test_school_client_reads_only_what_it_is_related_to(district, version) -> None:
    sb, admin = district(version)
    school = ClientApi(sb, "school-app")
    lea = ClientApi(sb, "lea-app")
    # relationship-based: people through the school's enrollments, contacts through theirs
    assert school.total("/ed-fi/students") == 30
    assert {s["studentUniqueId"] for s in school.get("/ed-fi/students", limit=500).json()} == \
        {s["studentUniqueId"] for s in admin.get("/ed-fi/students", limit=500).json()} - {"OTHER0", "OTHER1", "OTHER2"}
    assert school.total("/ed-fi/studentSchoolAssociations") == 30
    assert school.total("/ed-fi/contacts") == admin.total("/ed-fi/contacts") == 48
    assert lea.total("/ed-fi/students") == 30  # LEA -> school hierarchy
    # no staff employment or assignment associations in the built-in model: no staff is reachable
    assert school.total("/ed-fi/staffs") == 0 and admin.total("/ed-fi/staffs") == 14
    # education organizations and descriptors: no further authorization
    assert school.total("/ed-fi/schools") == 2
    assert school.total("/ed-fi/gradeLevelDescriptors") == admin.total("/ed-fi/gradeLevelDescriptors")
    # GET by id of an item outside the scope: 403
    other_id = admin.id_of("/ed-fi/students", studentUniqueId="OTHER0")
    r = school.get(f"/ed-fi/students/{other_id}")
    assert r.status_code == 403
    mine = admin.id_of("/ed-fi/students", studentUniqueId="100000")
    assert school.get(f"/ed-fi/students/{mine}").json()["studentUniqueId"] == "100000"


@pytest.mark.parametrize("version", ["6.1", "7.3"])
def test_tracked_deletes_are_filtered_including_deleted_enrollments(district, version) -> None:
    sb, admin = district(version)
    school = ClientApi(sb, "school-app")
    # a student deleted before any enrollment: not the school's
    assert admin.post("/ed-fi/students", student("LONER")).status_code == 201
    assert admin.delete("/ed-fi/students/" + admin.id_of("/ed-fi/students", studentUniqueId="LONER")).status_code == 204
    # a student of the other school, deleted with the enrollment: not the school's
    assert admin.delete("/ed-fi/studentSchoolAssociations/" + admin.id_of(
        "/ed-fi/studentSchoolAssociations", studentUniqueId="OTHER1")).status_code == 204
    other1 = admin.id_of("/ed-fi/students", studentUniqueId="OTHER1")
    assert admin.delete(f"/ed-fi/students/{other1}").status_code == 204
    # a student of the school, enrollment deleted first: still the school's (the IncludingDeletes views)
    assert admin.post("/ed-fi/students", student("LEAVER")).status_code == 201
    assert admin.post("/ed-fi/studentSchoolAssociations", enrollment("LEAVER", SCHOOL)).status_code == 201
    assert admin.delete("/ed-fi/studentSchoolAssociations/" + admin.id_of(
        "/ed-fi/studentSchoolAssociations", studentUniqueId="LEAVER")).status_code == 204
    gone = admin.id_of("/ed-fi/students", studentUniqueId="LEAVER")
    assert admin.delete(f"/ed-fi/students/{gone}").status_code == 204

    assert len(admin.get("/ed-fi/students/deletes").json()) == 3
    seen = school.get("/ed-fi/students/deletes", totalCount="true")
    assert [d["id"] for d in seen.json()] == [gone]
    assert seen.headers["Total-Count"] == "1"
    assert [d["keyValues"]["studentUniqueId"] for d in school.get("/ed-fi/studentSchoolAssociations/deletes").json()] \
        == ["LEAVER"]
    assert school.total("/ed-fi/students") == 30


MESSAGES = {
    "5.3": ("Authorization denied.  The claim does not have any established relationships with the requested"
            " resource.", None),
    "6.1": ("Authorization denied. No relationships have been established between the caller's education"
            " organization id claim (867530001) and the resource item's 'StudentUniqueId' value.", None),
    "7.1": ("Authorization denied. No relationships have been established between the caller's education"
            " organization id claim (867530001) and the resource item's 'StudentUniqueId' value.", None),
    "7.3": ("Access to the requested data could not be authorized. Hint: You may need to create a corresponding"
            " 'StudentSchoolAssociation' item.",
            ["No relationships have been established between the caller's education organization id claim"
             " (867530001) and the resource item's 'StudentUniqueId' value."]),
}


@pytest.mark.parametrize("version", VERSIONS)
def test_authorization_order_update_before_enrollment_is_403(district, version) -> None:
    """Create a student (no further authorization), update it: 403 until its enrollment exists."""
    sb, admin = district(version)
    school = ClientApi(sb, "school-app")
    assert school.post("/ed-fi/students", student("NEW1")).status_code == 201
    changed = {**student("NEW1"), "firstName": "Changed"}
    r = school.post("/ed-fi/students", changed)  # an upsert of an existing item is an Update
    assert r.status_code == 403, r.text
    body = r.json()
    message, errors = MESSAGES[version]
    if version >= "7.2":
        assert body["type"] == "urn:ed-fi:api:security:authorization"
        assert body["title"] == "Authorization Denied" and body["status"] == 403
        assert body["detail"] == message and body["errors"] == errors
    else:
        assert body == {"message": message}
    new_id = admin.id_of("/ed-fi/students", studentUniqueId="NEW1")
    assert school.put(f"/ed-fi/students/{new_id}", changed).status_code == 403
    assert school.post("/ed-fi/studentSchoolAssociations", enrollment("NEW1", SCHOOL)).status_code == 201
    assert school.put(f"/ed-fi/students/{new_id}", changed).status_code == 204
    assert admin.get(f"/ed-fi/students/{new_id}").json()["firstName"] == "Changed"


@pytest.mark.parametrize("version", ["6.1", "7.3"])
def test_writes_outside_scope_are_403(district, version) -> None:
    sb, admin = district(version)
    school = ClientApi(sb, "school-app")
    lea = ClientApi(sb, "lea-app")
    assert school.post("/ed-fi/students", student("NEW2")).status_code == 201
    r = school.post("/ed-fi/studentSchoolAssociations", enrollment("NEW2", OTHER_SCHOOL))
    assert r.status_code == 403
    text = r.json()["errors"][0] if version >= "7.2" else r.json()["message"]
    assert "and the resource item's 'SchoolId' value." in text
    assert admin.total("/ed-fi/studentSchoolAssociations", studentUniqueId="NEW2") == 0
    # the district's client writes its own schools' enrollments, not the other district's
    assert lea.post("/ed-fi/studentSchoolAssociations", enrollment("NEW2", SCHOOL)).status_code == 201
    assert lea.post("/ed-fi/studentSchoolAssociations", enrollment("NEW2", OTHER_SCHOOL)).status_code == 403
    # deleting another school's enrollment
    other = admin.id_of("/ed-fi/studentSchoolAssociations", studentUniqueId="OTHER2")
    assert school.delete(f"/ed-fi/studentSchoolAssociations/{other}").status_code == 403
    assert admin.get(f"/ed-fi/studentSchoolAssociations/{other}").status_code == 200
    # SIS Vendor may read, not write, system descriptors and education organizations
    r = school.post("/ed-fi/gradeLevelDescriptors", {"namespace": "uri://ed-fi.org/GradeLevelDescriptor",
                                                     "codeValue": "Pre-K", "shortDescription": "Pre-K"})
    assert r.status_code == 403
    if version >= "7.2":
        assert r.json()["type"] == "urn:ed-fi:api:security:authorization:access-denied:action"
        assert r.json()["detail"] == ("Access to the requested data could not be authorized. You do not have"
                                      " permissions to perform the requested operation on the data.")
        assert r.json()["errors"] == [
            "The API client's assigned claim set (currently 'SIS Vendor') must grant permission of the"
            " 'http://ed-fi.org/odsapi/actions/create' action on one of the following resource claims: 'http://ed-fi.org/ods/identity/claims/"
            "gradeLevelDescriptor', 'http://ed-fi.org/ods/identity/claims/domains/systemDescriptors'."]
    else:
        assert r.json() == {"message": "Access to the resource could not be authorized for the requested action"
                                       " 'http://ed-fi.org/odsapi/actions/create'."}
    # District Hosted SIS Vendor writes schools
    school_doc = admin.get("/ed-fi/schools", schoolId=SCHOOL).json()[0]
    assert lea.put(f"/ed-fi/schools/{school_doc['id']}", {
        k: v for k, v in school_doc.items() if k not in ("id", "_etag", "_lastModifiedDate")}).status_code == 204
    assert school.put(f"/ed-fi/schools/{school_doc['id']}", {
        k: v for k, v in school_doc.items() if k not in ("id", "_etag", "_lastModifiedDate")}).status_code == 403


def test_namespace_based_writes(make_sandbox) -> None:
    """Managed descriptors: namespace-based writes (the client's namespace prefix)."""
    from edfi_core.openapi import ApiModel
    from tests.conftest import DS5_SPECS

    sb = make_sandbox("7.3", model=ApiModel.from_files(DS5_SPECS),
                      clients=("vendor:vs:SIS Vendor:255901:uri://acme.org",))
    vendor = ClientApi(sb, "vendor")
    doc = {"codeValue": "Extra time", "shortDescription": "Extra time"}
    r = vendor.post("/ed-fi/accommodationDescriptors", {**doc, "namespace": "uri://ed-fi.org/AccommodationDescriptor"})
    assert r.status_code == 403
    assert r.json()["errors"] == [
        "Access to the resource item could not be authorized based on the caller's NamespacePrefix claims:"
        " 'uri://acme.org'."]
    assert vendor.post("/ed-fi/accommodationDescriptors",
                       {**doc, "namespace": "uri://acme.org/AccommodationDescriptor"}).status_code == 201
    # educationContents: namespace-based reads as well
    admin = ClientApi(sb)
    for ns, ident in (("uri://acme.org/content", "A1"), ("uri://other.org/content", "B1")):
        r = admin.post("/ed-fi/educationContents", {"contentIdentifier": ident, "namespace": ns})
        assert r.status_code == 201, r.text
    assert [c["contentIdentifier"] for c in vendor.get("/ed-fi/educationContents").json()] == ["A1"]
    assert admin.total("/ed-fi/educationContents") == 2
    # assessment metadata: assessments by their namespace, student assessments by their assessment's
    subject = "uri://ed-fi.org/AcademicSubjectDescriptor#Mathematics"
    assert admin.post("/ed-fi/academicSubjectDescriptors", {"namespace": "uri://ed-fi.org/AcademicSubjectDescriptor",
                                                            "codeValue": "Mathematics",
                                                            "shortDescription": "Math"}).status_code == 201
    assert admin.post("/ed-fi/students", student("S1")).status_code == 201
    for ns in ("uri://acme.org/assessments", "uri://other.org/assessments"):
        r = admin.post("/ed-fi/assessments", {"assessmentIdentifier": "MATH", "namespace": ns,
                                              "assessmentTitle": "Math", "academicSubjects": [
                                                  {"academicSubjectDescriptor": subject}]})
        assert r.status_code == 201, r.text
        r = admin.post("/ed-fi/studentAssessments", {
            "studentAssessmentIdentifier": "SA1", "assessmentReference": {"assessmentIdentifier": "MATH",
                                                                          "namespace": ns},
            "studentReference": {"studentUniqueId": "S1"}, "administrationDate": "2024-09-16T00:00:00Z"})
        assert r.status_code == 201, r.text
    assert [a["namespace"] for a in vendor.get("/ed-fi/assessments").json()] == ["uri://acme.org/assessments"]
    assert [a["assessmentReference"]["namespace"] for a in vendor.get("/ed-fi/studentAssessments").json()] == [
        "uri://acme.org/assessments"]
    assert admin.total("/ed-fi/studentAssessments") == 2


def test_cursor_paging_partitions_and_key_changes_are_filtered(district) -> None:
    sb, admin = district("7.3")
    school = ClientApi(sb, "school-app")
    # partitions and cursor pages cover exactly the school's students
    tokens = school.get("/ed-fi/students/partitions", number=4).json()["pageTokens"]
    assert 1 <= len(tokens) <= 4
    seen: list[str] = []
    for token in tokens:
        while token:
            page = school.get("/ed-fi/students", pageToken=token, pageSize=7)
            assert page.status_code == 200, page.text
            seen += [s["studentUniqueId"] for s in page.json()]
            token = page.headers.get("Next-Page-Token") if page.json() else None
    assert len(seen) == len(set(seen)) == 30 and not set(seen) & {"OTHER0", "OTHER1", "OTHER2"}
    assert len(admin.get("/ed-fi/students/partitions", number=200).json()["pageTokens"]) == 33
    assert len(school.get("/ed-fi/students/partitions", number=200).json()["pageTokens"]) == 30
    # key changes: a student's unique id changed is 400 on 7.x; an enrollment's entry date is a key change
    for uid in ("OTHER0", "100001"):
        item = admin.get("/ed-fi/studentSchoolAssociations", studentUniqueId=uid).json()[0]
        body = {k: v for k, v in item.items() if k not in ("id", "_etag", "_lastModifiedDate")}
        body["entryDate"] = "2024-08-01"
        assert admin.put(f"/ed-fi/studentSchoolAssociations/{item['id']}", body).status_code == 204
    everything = admin.get("/ed-fi/studentSchoolAssociations/keyChanges", totalCount="true")
    assert everything.headers["Total-Count"] == "2"
    mine = school.get("/ed-fi/studentSchoolAssociations/keyChanges", totalCount="true")
    assert mine.headers["Total-Count"] == "1"
    assert [k["oldKeyValues"]["studentUniqueId"] for k in mine.json()] == ["100001"]


def test_staff_through_employment_associations_on_the_real_model(make_sandbox) -> None:
    """auth.EducationOrganizationIdToStaffUSI: staff through employment (and assignment) associations at the
    claim's education organizations and those below them."""
    from edfi_core.openapi import ApiModel
    from tests.conftest import DS5_SPECS

    sb = make_sandbox("7.3", model=ApiModel.from_files(DS5_SPECS),
                      clients=("school-app:s:SIS Vendor:101", "lea-app:l:District Hosted SIS Vendor:10"))
    admin = ClientApi(sb)
    for path, ns, code in (("educationOrganizationCategoryDescriptors", "EducationOrganizationCategoryDescriptor",
                            "School"),
                           ("localEducationAgencyCategoryDescriptors", "LocalEducationAgencyCategoryDescriptor",
                            "Independent"),
                           ("gradeLevelDescriptors", "GradeLevelDescriptor", "Ninth grade"),
                           ("employmentStatusDescriptors", "EmploymentStatusDescriptor", "Tenured or permanent")):
        r = admin.post(f"/ed-fi/{path}", {"namespace": f"uri://ed-fi.org/{ns}", "codeValue": code,
                                          "shortDescription": code})
        assert r.status_code == 201, r.text
    cat = "uri://ed-fi.org/EducationOrganizationCategoryDescriptor#School"
    for lea in (10, 20):
        r = admin.post("/ed-fi/localEducationAgencies", {
            "localEducationAgencyId": lea, "nameOfInstitution": f"LEA {lea}",
            "localEducationAgencyCategoryDescriptor": "uri://ed-fi.org/LocalEducationAgencyCategoryDescriptor#Independent",
            "categories": [{"educationOrganizationCategoryDescriptor": cat}]})
        assert r.status_code == 201, r.text
    for school, lea in ((101, 10), (102, 10), (201, 20)):
        r = admin.post("/ed-fi/schools", {
            "schoolId": school, "nameOfInstitution": f"School {school}",
            "localEducationAgencyReference": {"localEducationAgencyId": lea},
            "educationOrganizationCategories": [{"educationOrganizationCategoryDescriptor": cat}],
            "gradeLevels": [{"gradeLevelDescriptor": "uri://ed-fi.org/GradeLevelDescriptor#Ninth grade"}]})
        assert r.status_code == 201, r.text
    for staff, edorg in (("T101", 101), ("T102", 102), ("T201", 201), ("T10", 10)):
        assert admin.post("/ed-fi/staffs", {"staffUniqueId": staff, "firstName": "T",
                                            "lastSurname": staff}).status_code == 201
        r = admin.post("/ed-fi/staffEducationOrganizationEmploymentAssociations", {
            "staffReference": {"staffUniqueId": staff}, "educationOrganizationReference": {
                "educationOrganizationId": edorg}, "hireDate": "2020-08-01",
            "employmentStatusDescriptor": "uri://ed-fi.org/EmploymentStatusDescriptor#Tenured or permanent"})
        assert r.status_code == 201, r.text
    school, lea = ClientApi(sb, "school-app"), ClientApi(sb, "lea-app")
    assert {s["staffUniqueId"] for s in school.get("/ed-fi/staffs").json()} == {"T101"}
    assert {s["staffUniqueId"] for s in lea.get("/ed-fi/staffs").json()} == {"T101", "T102", "T10"}
    assert school.total("/ed-fi/staffEducationOrganizationEmploymentAssociations") == 1
    assert admin.total("/ed-fi/staffs") == 4


@pytest.mark.parametrize("version", VERSIONS)
def test_read_changes_claim(make_sandbox, version) -> None:
    """SIS Vendor grants Read, not ReadChanges: 6.1 lets Read satisfy ReadChanges (bit value 0x16), 7.x does not."""
    sb = make_sandbox(version, seed=5,
                      clients=(f"plain:p:SIS Vendor:{SCHOOL}", f"rc:r:SIS Vendor+ReadChanges:{SCHOOL}"))
    plain, rc = ClientApi(sb, "plain"), ClientApi(sb, "rc")
    assert plain.total("/ed-fi/students") == 5
    assert rc.get("/ed-fi/students/deletes").status_code == 200
    r = plain.get("/ed-fi/students/deletes")
    if version < "7":
        assert r.status_code == 200 and r.json() == []
        return
    assert r.status_code == 403
    if version >= "7.2":
        assert r.json()["type"] == "urn:ed-fi:api:security:authorization:access-denied:action"
        assert r.json()["errors"] == [
            "The API client's assigned claim set (currently 'SIS Vendor') must grant permission of the"
            " 'http://ed-fi.org/odsapi/actions/readChanges' action on one of the following resource claims:"
            " 'http://ed-fi.org/ods/identity/claims/student', 'http://ed-fi.org/ods/identity/claims/domains/people'."]
    else:
        assert r.json() == {"message": "Access to the resource could not be authorized for the requested action"
                                       " 'http://ed-fi.org/odsapi/actions/readChanges'."}
    assert plain.get("/ed-fi/students/keyChanges").status_code == 403


def test_cli_client_option_is_checked(caplog) -> None:
    """``edfi-sandbox serve --client``: a malformed one or an unknown claim set stops the start, naming the client
    id (never its secret)."""
    from edfi_sandbox.authorization import ClientSpec
    from edfi_sandbox.cli import main

    with caplog.at_level("ERROR"):
        assert main(["serve", "--port", "0", "--client", "app:topsecret:Gold Vendor:1"]) == 2
    assert "unknown claim set 'Gold Vendor'" in caplog.text and "topsecret" not in caplog.text
    spec = ClientSpec.parse("lea:s3:District Hosted SIS Vendor+ReadChanges:10,20:uri://a.org,uri://b.org")
    assert (spec.claim_set, spec.read_changes, spec.education_organizations, spec.namespaces) == (
        "District Hosted SIS Vendor", True, (10, 20), ("uri://a.org", "uri://b.org"))
    assert ClientSpec.parse("x:y:SIS Vendor:uri://acme.org").namespaces == ("uri://acme.org",)
