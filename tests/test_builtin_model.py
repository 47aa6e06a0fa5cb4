"""The built-in model against the real Ed-Fi Data Standard 5.0 OpenAPI documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from edfi_core.dependencies import dependency_graph, levels
from edfi_core.openapi import ApiModel, Resource
from edfi_sandbox.builtin_model import DESCRIPTOR_VALUES, builtin_documents, descriptor_namespace

SHARED = Path(__file__).parents[1].parent / "shared" / "edfi" / "openapi"
REAL_FILES = [SHARED / "standards_resources-ds-5.0.oas3.yml", SHARED / "standards_descriptors-ds-5.0.oas3.yml"]

EXPECTED_RESOURCES = {
    "localEducationAgencies", "schools", "schoolYearTypes", "sessions", "calendars", "calendarDates",
    "classPeriods", "courses", "courseOfferings", "sections", "staffs", "staffSectionAssociations",
    "students", "studentSchoolAssociations", "studentEducationOrganizationAssociations",
    "studentSectionAssociations", "studentSchoolAttendanceEvents", "studentSectionAttendanceEvents",
    "gradingPeriods", "grades", "contacts", "studentContactAssociations",
}


@pytest.fixture(scope="module")
def real() -> ApiModel:
    if not all(p.exists() for p in REAL_FILES):
        pytest.skip(f"real Ed-Fi specs not found under {SHARED}")
    return ApiModel.from_files(REAL_FILES)


@pytest.fixture(scope="module")
def builtin() -> ApiModel:
    return ApiModel.from_documents(builtin_documents())


def _resources(model: ApiModel) -> list[Resource]:
    return [r for r in model if not r.is_descriptor]


def _required_refs(res: Resource) -> set[str]:
    return {ref.prop for ref in res.references if ref.required and ref.top_level}


def test_documents_are_openapi3(builtin: ApiModel) -> None:
    resources_doc, descriptors_doc = builtin_documents()
    for doc in (resources_doc, descriptors_doc):
        assert doc["openapi"].startswith("3.0.")
        assert "oauth2_client_credentials" in doc["components"]["securitySchemes"]
        assert doc["components"]["parameters"]["limit"]["schema"]["maximum"] == 500
    assert {r.name for r in _resources(builtin)} == EXPECTED_RESOURCES
    assert {r.path for r in builtin.descriptors} == set(DESCRIPTOR_VALUES)


def test_documents_are_fresh_copies() -> None:
    first = builtin_documents()
    first[0]["paths"].clear()
    assert builtin_documents()[0]["paths"]


@pytest.mark.parametrize("name", sorted(EXPECTED_RESOURCES))
def test_resource_matches_real_ds5(name: str, builtin: ApiModel, real: ApiModel) -> None:
    mine = builtin.get(f"/ed-fi/{name}")
    theirs = real.get(f"/ed-fi/{name}")
    assert mine is not None and theirs is not None
    assert mine.key_fields == theirs.key_fields
    assert mine.identity == theirs.identity
    assert mine.key_updatable == theirs.key_updatable
    assert _required_refs(mine) == _required_refs(theirs)
    assert set(mine.raw_schema["required"]) == set(theirs.raw_schema["required"])
    for ref in mine.references:  # every reference (also in collections) is shaped like the real one
        match = [r for r in theirs.references if r.path == ref.path]
        assert match, f"{name}: {ref.path} is no reference in DS 5.0"
        assert (ref.target_schema, ref.fields, ref.required) == (
            match[0].target_schema, match[0].fields, match[0].required)


def test_properties_match_real_ds5(builtin: ApiModel, real: ApiModel) -> None:
    def strip(spec: dict) -> dict:
        return {k: v for k, v in spec.items() if k != "description"}

    for mine in _resources(builtin):
        theirs = real.get(mine.path)
        assert theirs is not None
        for prop, spec in mine.raw_schema["properties"].items():
            assert prop in theirs.raw_schema["properties"], f"{mine.path}: no {prop} in DS 5.0"
            if "items" not in spec:
                assert strip(spec) == strip(theirs.raw_schema["properties"][prop]), (mine.path, prop)


def test_identity_query_parameters(builtin: ApiModel, real: ApiModel) -> None:
    for mine in _resources(builtin):
        theirs = real.get(mine.path)
        assert theirs is not None
        ident = [p["name"] for p in mine.query_params if p.get("x-Ed-Fi-isIdentity")]
        assert ident == [p["name"] for p in theirs.query_params if p.get("x-Ed-Fi-isIdentity")]


def test_descriptors_exist_in_real_ds5(builtin: ApiModel, real: ApiModel) -> None:
    for desc in builtin.descriptors:
        assert desc.path in real
        assert desc.key_fields == ("namespace", "codeValue")
        assert descriptor_namespace(desc.path).startswith("uri://ed-fi.org/")


def test_descriptor_properties_resolve(builtin: ApiModel) -> None:
    for res in _resources(builtin):
        for dpath in res.descriptor_paths:
            target = builtin.descriptor_for(dpath[-1])
            assert target is not None, f"{res.path}: {'.'.join(dpath)} has no descriptor"
            assert DESCRIPTOR_VALUES[target.path]


def test_references_resolve(builtin: ApiModel) -> None:
    for res in _resources(builtin):
        for ref in res.references:
            assert builtin.reference_targets(ref), f"{res.path}: {ref.prop} points nowhere"


def test_dependency_levels(builtin: ApiModel, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG", logger="edfi_core.dependencies"):
        lv = levels(dependency_graph(builtin))
    assert "cycle" not in caplog.text
    assert lv["/ed-fi/gradeLevelDescriptors"] == 1
    assert lv["/ed-fi/schools"] > lv["/ed-fi/localEducationAgencies"]
    assert lv["/ed-fi/sessions"] > lv["/ed-fi/gradingPeriods"]
    assert lv["/ed-fi/grades"] > lv["/ed-fi/studentSectionAssociations"] > lv["/ed-fi/sections"]
    assert lv["/ed-fi/studentSectionAttendanceEvents"] > lv["/ed-fi/students#Retry"]
