"""target-edfi without a server: stream names to resources, payload cleaning, conforming and validation."""

from __future__ import annotations

import pytest

from edfi_core.openapi import ApiModel
from edfi_sandbox.server import build_model
from target_edfi.mapping import DELETES, ITEMS, KEY_CHANGES, StreamMapper
from target_edfi.payloads import Shaper, descriptor_values, reference_keys


@pytest.fixture(scope="module")
def model() -> ApiModel:
    return build_model()


@pytest.mark.parametrize("stream", [
    "studentSchoolAssociations", "student_school_associations", "StudentSchoolAssociations",
    "ed-fi/studentSchoolAssociations", "/ed-fi/studentSchoolAssociations", "public-student_school_associations",
    "student-school-associations",
])
def test_streams_map_by_name(model: ApiModel, stream: str) -> None:
    route = StreamMapper(model).route(stream)
    assert route is not None and route.resource.path == "/ed-fi/studentSchoolAssociations" and route.kind == ITEMS


def test_change_streams_resource_map_and_unmapped(model: ApiModel) -> None:
    mapper = StreamMapper(model, {"enrollments": "ed-fi/studentSchoolAssociations", "bad": "ed-fi/nothing"})
    assert mapper.route("enrollments").resource.path == "/ed-fi/studentSchoolAssociations"
    assert mapper.route("students_deletes").kind == DELETES
    kc = mapper.route("studentSchoolAssociations_key_changes")
    assert kc.kind == KEY_CHANGES and kc.base_stream == "studentSchoolAssociations"
    assert mapper.route("enrollments_deletes").resource.path == "/ed-fi/studentSchoolAssociations"
    assert mapper.route("gradeLevelDescriptors").resource.is_descriptor
    assert mapper.route("bad") is None
    assert mapper.route("teachers") is None


def test_server_fields_links_nulls_and_sdc_are_dropped(model: ApiModel) -> None:
    shaper = Shaper(model.get("/ed-fi/studentSchoolAssociations"))
    shaped = shaper.shape({
        "id": "abc", "_etag": "1", "_lastModifiedDate": "2025-01-01T00:00:00Z", "_sdc_extracted_at": "x",
        "entryDate": "2024-08-20", "exitWithdrawDate": None,
        "schoolReference": {"schoolId": 1, "link": {"rel": "School", "href": "/ed-fi/schools/1"}},
        "studentReference": {"studentUniqueId": "S1", "link": {"rel": "Student", "href": "/x"}},
        "entryGradeLevelDescriptor": "uri://ed-fi.org/GradeLevelDescriptor#Ninth grade",
    })
    assert shaped.ok, shaped.error_text()
    assert shaped.payload == {
        "entryDate": "2024-08-20", "schoolReference": {"schoolId": 1}, "studentReference": {"studentUniqueId": "S1"},
        "entryGradeLevelDescriptor": "uri://ed-fi.org/GradeLevelDescriptor#Ninth grade"}
    assert shaped.natural_key == {"entryDate": "2024-08-20", "schoolId": 1, "studentUniqueId": "S1"}
    desc = Shaper(model.get("/ed-fi/gradeLevelDescriptors")).shape(
        {"id": "x", "gradeLevelDescriptorId": 7, "namespace": "uri://ed-fi.org/GradeLevelDescriptor",
         "codeValue": "Ninth grade", "shortDescription": "9"})
    assert desc.payload == {"namespace": "uri://ed-fi.org/GradeLevelDescriptor", "codeValue": "Ninth grade",
                            "shortDescription": "9"}


def test_flat_sources_are_conformed(model: ApiModel) -> None:
    """tap-csv / SQL taps: strings for numbers and booleans, JSON strings, flattened and snake_case columns."""
    shaper = Shaper(model.get("/ed-fi/studentSchoolAssociations"))
    shaped = shaper.shape({
        "entry_date": "2024-08-20T00:00:00+00:00",
        "schoolReference__schoolId": "255901001",
        "studentReference": '{"studentUniqueId": "S1"}',
        "entryGradeLevelDescriptor": "uri://ed-fi.org/GradeLevelDescriptor#Ninth grade",
        "primary_school": "true",
        "exitWithdrawDate": "",
    })
    assert shaped.ok, shaped.error_text()
    assert shaped.payload["entryDate"] == "2024-08-20"
    assert shaped.payload["schoolReference"] == {"schoolId": 255901001}
    assert shaped.payload["studentReference"] == {"studentUniqueId": "S1"}
    assert shaped.payload["primarySchool"] is True


def test_validation_names_field_paths(model: ApiModel) -> None:
    shaper = Shaper(model.get("/ed-fi/studentSchoolAssociations"))
    shaped = shaper.shape({
        "entryDate": "20 August", "schoolReference": {"schoolId": "abc"}, "studentReference": {},
        "entryGradeLevelDescriptor": "Ninth grade", "nickname": "x",
    })
    assert not shaped.ok
    problems = dict(shaped.problems.items)
    assert problems["$.entryDate"] == "is not a date (YYYY-MM-DD)"  # the path and the problem, not the value
    assert problems["$.schoolReference.schoolId"] == "is not an integer"
    assert shaped.problems.values["$.entryDate"] == "20 August"  # kept for DEBUG logs only
    assert problems["$.studentReference.studentUniqueId"] == "is required"
    assert "not a descriptor value" in problems["$.entryGradeLevelDescriptor"]
    assert problems["$.nickname"] == "is not a property of this resource"
    assert "natural key incomplete: studentUniqueId missing" in shaped.error_text()
    # without validate, only the natural key stops a record
    loose = Shaper(model.get("/ed-fi/studentSchoolAssociations"), validate=False).shape(
        {"entryDate": "2024-08-20", "schoolReference": {"schoolId": 1}, "studentReference": {"studentUniqueId": "S"},
         "nickname": "x"})
    assert loose.ok and loose.payload["nickname"] == "x"


def test_descriptor_and_reference_walks(model: ApiModel) -> None:
    res = model.get("/ed-fi/schools")
    payload = {"schoolId": 1, "nameOfInstitution": "X", "localEducationAgencyReference": {"localEducationAgencyId": 9},
               "educationOrganizationCategories": [{"educationOrganizationCategoryDescriptor": "uri://a/B#c"}],
               "gradeLevels": [{"gradeLevelDescriptor": "uri://ed-fi.org/GradeLevelDescriptor#Ninth grade"}]}
    values = {(path, desc.path, value) for path, desc, value in descriptor_values(model, res, payload)}
    assert ("$.gradeLevels.gradeLevelDescriptor", "/ed-fi/gradeLevelDescriptors",
            "uri://ed-fi.org/GradeLevelDescriptor#Ninth grade") in values
    refs = dict(reference_keys(model, res, payload))
    target, key = refs["localEducationAgencyReference"][0]
    assert target.path == "/ed-fi/localEducationAgencies" and key == {"localEducationAgencyId": 9}
    course = model.get("/ed-fi/courses")
    refs = dict(reference_keys(model, course, {"educationOrganizationReference": {"educationOrganizationId": 5}}))
    assert {t.path for t, _ in refs["educationOrganizationReference"]} >= {"/ed-fi/schools",
                                                                         "/ed-fi/localEducationAgencies"}


def test_other_namespaces_map_like_tap_edfi_names_them() -> None:
    """tap-edfi names streams of other namespaces ``<namespace>_<resource>`` (``tpdm_candidates``)."""
    doc = {
        "swagger": "2.0",
        "paths": {
            "/tpdm/candidates": {"get": {"responses": {"200": {"schema": {
                "type": "array", "items": {"$ref": "#/definitions/tpdm_candidate"}}}}}},
            "/ed-fi/students": {"get": {"responses": {"200": {"schema": {
                "type": "array", "items": {"$ref": "#/definitions/edFi_student"}}}}}},
        },
        "definitions": {
            "tpdm_candidate": {"type": "object", "properties": {
                "candidateIdentifier": {"type": "string", "x-Ed-Fi-isIdentity": True}}},
            "edFi_student": {"type": "object", "properties": {
                "studentUniqueId": {"type": "string", "x-Ed-Fi-isIdentity": True}}},
        },
    }
    mapper = StreamMapper(ApiModel.from_documents([doc]))
    for name in ("tpdm_candidates", "tpdm/candidates", "candidates"):
        assert mapper.route(name).resource.path == "/tpdm/candidates", name
    assert mapper.route("tpdm_candidates_key_changes").kind == KEY_CHANGES


def test_flat_snake_case_columns_with_a_row_id_are_shaped_and_the_row_id_named_once(model: ApiModel) -> None:
    """tap-csv's flat, snake_case columns (``student_reference__student_unique_id``, every cell a string) beside
    the vendor's row id: conformed to the resource; the row id is reported once (``fail``) or left out (``drop``)."""
    row = {"sis_id": "1", "student_reference__student_unique_id": "S1", "school_reference__school_id": "255901001",
           "entry_date": "2024-08-20", "entry_grade_level_descriptor": "uri://ed-fi.org/GradeLevelDescriptor#Ninth",
           "exit_withdraw_date": ""}
    payload = {"studentReference": {"studentUniqueId": "S1"}, "schoolReference": {"schoolId": 255901001},
               "entryDate": "2024-08-20", "entryGradeLevelDescriptor": "uri://ed-fi.org/GradeLevelDescriptor#Ninth"}
    strict = Shaper(model.get("/ed-fi/studentSchoolAssociations")).shape(row)
    assert strict.problems.items == [("$.sis_id", "is not a property of this resource")]
    dropped = Shaper(model.get("/ed-fi/studentSchoolAssociations"), unknown_fields="drop").shape(row)
    assert dropped.ok and dropped.payload == payload and dropped.problems.unknown == ["$.sis_id"]
    assert len(dropped.problems.descriptors) == 1
