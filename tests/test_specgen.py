"""The OpenAPI documents the sandbox serves, checked against the real Ed-Fi specs they are built from."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edfi_core.openapi import ApiModel, Resource
from edfi_sandbox.specgen import (
    SUPPORTED_VERSIONS,
    change_queries_document,
    served_documents,
    tracked_change_names,
    version_rules,
)

SPECS = Path(__file__).resolve().parents[1].parent / "shared" / "edfi" / "openapi"
DS50 = ("standards_resources-ds-5.0.oas3.yml", "standards_descriptors-ds-5.0.oas3.yml")
ODS311 = ("odsapi-3.1.1_resources_swagger2.json",)
DATA_URL = "http://localhost:8765/tenant1/2025/data/v3"
OAUTH_URL = "http://localhost:8765/tenant1/2025/oauth/token"

pytestmark = pytest.mark.skipif(not (SPECS / DS50[0]).exists(), reason="real Ed-Fi specs not available")

SOURCES = ("ds50", "ods311")
#: (api_version, swagger2 argument): every version's own format, plus Swagger 2 on 7.x (?version=2).
VARIANTS = [(v, None) for v in SUPPORTED_VERSIONS] + [("7.1", True), ("7.3", True)]


def _variant_id(variant: tuple[str, bool | None]) -> str:
    version, swagger2 = variant
    return version + ("-swagger2" if swagger2 else "")


# -- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models() -> dict[str, ApiModel]:
    """The real specs, loaded once for the module (a couple of seconds)."""
    return {
        "ds50": ApiModel.from_files(SPECS / name for name in DS50),
        "ods311": ApiModel.from_files(SPECS / name for name in ODS311),
    }


@pytest.fixture(scope="module")
def served_cache() -> dict[tuple[str, str, bool | None], dict[str, Any]]:
    return {}


@pytest.fixture(params=SOURCES)
def source(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=VARIANTS, ids=_variant_id)
def variant(request: pytest.FixtureRequest) -> tuple[str, bool | None]:
    return request.param


@pytest.fixture
def model(models: dict[str, ApiModel], source: str) -> ApiModel:
    return models[source]


@pytest.fixture
def served(models: dict[str, ApiModel], served_cache: dict, source: str,
           variant: tuple[str, bool | None]) -> dict[str, Any]:
    key = (source, *variant)
    if key not in served_cache:
        version, swagger2 = variant
        served_cache[key] = served_documents(models[source], version, DATA_URL, OAUTH_URL, swagger2=swagger2)
    return served_cache[key]


def _is_swagger2(variant: tuple[str, bool | None]) -> bool:
    version, swagger2 = variant
    return swagger2 if swagger2 is not None else version < "7.1"


def _walk_refs(node: Any) -> Iterator[str]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                yield ref
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, (dict, list)))


def _resolve(doc: dict, ref: str) -> Any:
    node: Any = doc
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def _param(doc: dict, spec: dict) -> dict:
    return _resolve(doc, spec["$ref"]) if "$ref" in spec else spec


def _param_names(doc: dict, op: dict) -> list[str]:
    return [_param(doc, p)["name"] for p in op.get("parameters") or []]


def _schemas(doc: dict) -> dict:
    return doc["definitions"] if "swagger" in doc else doc["components"]["schemas"]


def _item_ref(op: dict) -> str:
    resp = op["responses"]["200"]
    schema = resp["schema"] if "schema" in resp else resp["content"]["application/json"]["schema"]
    return schema["items"]["$ref"].rsplit("/", 1)[-1]


def _summary(res: Resource) -> tuple:
    return (
        res.schema_name,
        res.key_fields,
        res.identity,
        res.key_updatable,
        res.is_descriptor,
        sorted((r.path, r.target_schema) for r in res.references),
        sorted(res.field_paths.items()),
    )


# -- (1) round trip ----------------------------------------------------------------------------------
def test_served_documents_parse_back_to_the_same_model(model: ApiModel, served: dict,
                                                        variant: tuple[str, bool | None]) -> None:
    back = ApiModel.from_documents([served["resources"], served["descriptors"]])
    assert list(back.resources) == list(model.resources)
    for path, res in model.resources.items():
        assert _summary(back.resources[path]) == _summary(res), path

    key_changes = version_rules(variant[0]).key_values
    for res in back:
        assert res.has_deletes == (res.name != "schoolYearTypes"), res.path
        assert res.has_key_changes == (key_changes and res.name != "schoolYearTypes"), res.path


def test_split_by_descriptor(model: ApiModel, served: dict) -> None:
    back_resources = ApiModel.from_documents([served["resources"]])
    back_descriptors = ApiModel.from_documents([served["descriptors"]])
    assert all(not r.is_descriptor for r in back_resources)
    assert all(r.is_descriptor for r in back_descriptors)
    assert len(back_resources) + len(back_descriptors) == len(model)


def test_query_parameters_carried_over(model: ApiModel, served: dict) -> None:
    doc = served["resources"]
    for res in model:
        if res.is_descriptor:
            continue
        get = doc["paths"][res.path]["get"]
        served_filters = {}
        for spec in get["parameters"]:
            p = _param(doc, spec)
            if p["in"] == "query":
                served_filters[p["name"]] = bool(p.get("x-Ed-Fi-isIdentity"))
        for p in res.query_params:
            assert served_filters[p["name"]] == bool(p.get("x-Ed-Fi-isIdentity")), (res.path, p["name"])


def test_schemas_carried_over(model: ApiModel, served: dict, variant: tuple[str, bool | None]) -> None:
    source_doc = model.documents[0]
    source_schemas = _schemas(source_doc)
    served_schemas = _schemas(served["resources"])
    prefix_from = "#/definitions/" if "swagger" in source_doc else "#/components/schemas/"
    prefix_to = "#/definitions/" if _is_swagger2(variant) else "#/components/schemas/"
    for name in ("edFi_academicWeek", "edFi_studentSchoolAssociation", "edFi_schoolReference"):
        if name not in source_schemas:
            continue
        original = repr(source_schemas[name]).replace(prefix_from, prefix_to)
        assert repr(served_schemas[name]) == original, name


# -- (2) version-specific paths, parameters and headers --------------------------------------------
def test_change_query_paths(model: ApiModel, served: dict, variant: tuple[str, bool | None]) -> None:
    rules = version_rules(variant[0])
    paths = {**served["resources"]["paths"], **served["descriptors"]["paths"]}
    for res in model:
        tracked = res.name != "schoolYearTypes"
        assert (f"{res.path}/deletes" in paths) == tracked, res.path
        assert (f"{res.path}/keyChanges" in paths) == (tracked and rules.key_values), res.path
        assert (f"{res.path}/partitions" in paths) == rules.partitions, res.path
    assert any(r.name == "schoolYearTypes" for r in model)


def test_tracked_change_schemas(model: ApiModel, served: dict, variant: tuple[str, bool | None]) -> None:
    rules = version_rules(variant[0])
    for group in ("resources", "descriptors"):
        doc = served[group]
        schemas = _schemas(doc)
        for res in model:
            if res.is_descriptor != (group == "descriptors") or res.name == "schoolYearTypes":
                continue
            key_name, delete_name, key_change_name = tracked_change_names(res)
            assert _item_ref(doc["paths"][f"{res.path}/deletes"]["get"]) == delete_name
            delete = schemas[delete_name]["properties"]
            if not rules.key_values:
                assert set(delete) == {"id", "changeVersion"}
                assert key_name not in schemas
                continue
            assert set(delete) == {"id", "changeVersion", "keyValues"}
            assert delete["keyValues"]["$ref"].endswith("/" + key_name)
            assert _item_ref(doc["paths"][f"{res.path}/keyChanges"]["get"]) == key_change_name
            assert set(schemas[key_change_name]["properties"]) == {
                "id", "changeVersion", "oldKeyValues", "newKeyValues"}
            key_props = schemas[key_name]["properties"]
            assert tuple(key_props) == res.key_fields, res.path
            assert all(p["x-Ed-Fi-isIdentity"] is True and "type" in p for p in key_props.values())


def test_collection_get_parameters_and_headers(served: dict, variant: tuple[str, bool | None]) -> None:
    rules = version_rules(variant[0])
    doc = served["resources"]
    shared = doc["parameters"] if "swagger" in doc else doc["components"]["parameters"]
    assert {"offset", "limit", "MinChangeVersion", "MaxChangeVersion", "totalCount"} <= set(shared)
    cursor = {"pageToken", "pageSize", "numberOfPartitions"}
    assert (cursor <= set(shared)) == rules.partitions

    get = doc["paths"]["/ed-fi/academicWeeks"]["get"]
    names = _param_names(doc, get)
    assert names[:2] == ["offset", "limit"]
    assert {"minChangeVersion", "maxChangeVersion", "totalCount", "weekIdentifier", "schoolId"} <= set(names)
    assert ("pageToken" in names) == rules.partitions
    assert ("pageSize" in names) == rules.partitions
    assert ("Use-Snapshot" in names) == rules.use_snapshot
    assert ("Snapshot-Identifier" in names) == rules.snapshot_identifier
    headers = get["responses"]["200"].get("headers") or {}
    assert ("Next-Page-Token" in headers) == rules.partitions

    if rules.partitions:
        partitions = doc["paths"]["/ed-fi/academicWeeks/partitions"]["get"]
        assert _param_names(doc, partitions)[0] == "number"
        ok = _resolve(doc, partitions["responses"]["200"]["$ref"])
        schema = ok["schema"] if "swagger" in doc else ok["content"]["application/json"]["schema"]
        assert schema["properties"]["pageTokens"] == {"type": "array", "items": {"type": "string"}}


def test_key_updatable_resources(model: ApiModel, served: dict) -> None:
    doc = served["resources"]
    for res in model:
        if not res.is_descriptor:
            put = doc["paths"][f"{res.path}/{{id}}"]["put"]
            assert put.get("x-Ed-Fi-isUpdatable", False) is res.key_updatable


# -- (3) formats -------------------------------------------------------------------------------------
def test_refs_match_the_format(served: dict, variant: tuple[str, bool | None]) -> None:
    swagger2 = _is_swagger2(variant)
    for doc in served.values():
        assert ("swagger" in doc) == swagger2
        assert ("openapi" in doc) != swagger2
        refs = set(_walk_refs(doc))
        assert bool(refs) == bool(doc["paths"])
        wrong = "#/components/" if swagger2 else "#/definitions/"
        assert not [r for r in refs if r.startswith(wrong)]
        if not swagger2:
            assert not [r for r in refs if r.startswith(("#/parameters/", "#/responses/"))]
        for ref in refs:
            assert ref.startswith("#/"), ref
            _resolve(doc, ref)  # raises KeyError on a dangling reference


def test_document_shape(served: dict, variant: tuple[str, bool | None]) -> None:
    doc = served["resources"]
    post = doc["paths"]["/ed-fi/academicWeeks"]["post"]
    put = doc["paths"]["/ed-fi/academicWeeks/{id}"]["put"]
    if _is_swagger2(variant):
        assert doc["swagger"] == "2.0"
        assert doc["host"] == "localhost:8765"
        assert doc["basePath"] == "/tenant1/2025/data/v3"
        assert doc["securityDefinitions"]["oauth2_client_credentials"] == {
            "type": "oauth2", "description": "Ed-Fi ODS/API OAuth 2.0 Client Credentials Grant Type authorization",
            "flow": "application", "tokenUrl": OAUTH_URL, "scopes": {}}
        for op in (post, put):
            assert "requestBody" not in op
            body = [p for p in op["parameters"] if p.get("in") == "body"]
            assert body[0]["schema"] == {"$ref": "#/definitions/edFi_academicWeek"}
        for spec in doc["paths"]["/ed-fi/academicWeeks"]["get"]["parameters"]:
            assert "$ref" in spec or ("type" in spec and "schema" not in spec)
        assert "schema" in doc["paths"]["/ed-fi/academicWeeks/{id}"]["get"]["responses"]["200"]
    else:
        assert doc["openapi"].startswith("3.0.")
        assert doc["servers"] == [{"url": DATA_URL}]
        flows = doc["components"]["securitySchemes"]["oauth2_client_credentials"]["flows"]
        assert flows["clientCredentials"]["tokenUrl"] == OAUTH_URL
        for op in (post, put):
            assert not [p for p in op.get("parameters") or [] if p.get("in") == "body"]
            assert op["requestBody"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/edFi_academicWeek"}
        for spec in doc["paths"]["/ed-fi/academicWeeks"]["get"]["parameters"]:
            assert "$ref" in spec or ("schema" in spec and "type" not in spec)
        assert "content" in doc["paths"]["/ed-fi/academicWeeks/{id}"]["get"]["responses"]["200"]


def test_no_object_is_shared_within_a_document(served: dict) -> None:
    """Shared sub-objects would turn into anchors and aliases in a YAML rendering."""
    for doc in served.values():
        seen: set[int] = set()
        stack: list[Any] = [doc]
        while stack:
            item = stack.pop()
            assert id(item) not in seen
            seen.add(id(item))
            children = item.values() if isinstance(item, dict) else item
            stack.extend(v for v in children if isinstance(v, (dict, list)))


def test_operation_ids_are_unique(served: dict) -> None:
    for doc in served.values():
        ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
        assert len(ids) == len(set(ids))


# -- (4) structural validation -------------------------------------------------------------------------
def _sub_model(model: ApiModel, names: tuple[str, ...]) -> ApiModel:
    return ApiModel([r for r in model if r.name in names], model.documents)


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_documents_validate(models: dict[str, ApiModel], variant: tuple[str, bool | None]) -> None:
    """Full documents take the validator minutes; a few resources of each source cover every shape."""
    validator = pytest.importorskip("openapi_spec_validator")
    version, swagger2 = variant
    picks = ("academicWeeks", "studentSchoolAssociations", "schoolYearTypes", "gradeLevelDescriptors",
             "credentials", "candidates")
    for model in models.values():
        docs = served_documents(_sub_model(model, picks), version, DATA_URL, OAUTH_URL, swagger2=swagger2)
        for doc in docs.values():
            validator.validate(doc)
    validator.validate(change_queries_document(version, "http://localhost:8765/changeQueries/v1",
                                               oauth_url=OAUTH_URL, swagger2=swagger2))


# -- performance, change queries, version rules ------------------------------------------------------------
def test_building_is_fast(models: dict[str, ApiModel]) -> None:
    for version in SUPPORTED_VERSIONS:
        start = time.perf_counter()
        served_documents(models["ds50"], version, DATA_URL, OAUTH_URL)
        elapsed = time.perf_counter() - start
        assert elapsed < 1.0, f"{version}: {elapsed:.2f} s"


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_change_queries_document(version: str) -> None:
    url = "http://localhost:8765/changeQueries/v1"
    doc = change_queries_document(version, url, oauth_url=OAUTH_URL)
    schemas = _schemas(doc)
    assert set(schemas["availableChangeVersion"]["properties"]) == {"oldestChangeVersion", "newestChangeVersion"}
    ok = doc["paths"]["/availableChangeVersions"]["get"]["responses"]["200"]
    if version < "7.1":
        assert doc["swagger"] == "2.0"
        assert (doc["host"], doc["basePath"]) == ("localhost:8765", "/changeQueries/v1")
        assert ok["schema"] == {"$ref": "#/definitions/availableChangeVersion"}
        assert "/snapshots" in doc["paths"]
    else:
        assert doc["servers"] == [{"url": url}]
        assert ok["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/availableChangeVersion"}
        assert "/snapshots" not in doc["paths"]
    assert not [r for r in _walk_refs(doc) if r.startswith("#/components" if "swagger" in doc else "#/defin")]


def test_version_rules() -> None:
    assert version_rules("7.3.2").version == (7, 3)
    assert version_rules("7.3").swagger2 is False
    assert version_rules("7.3", swagger2=True).swagger2 is True
    assert version_rules("7.0").swagger2 is True
    assert version_rules("6.1").key_values and not version_rules("5.3").key_values
    with pytest.raises(ValueError):
        version_rules("latest")
    with pytest.raises(ValueError):
        version_rules("3.1")
