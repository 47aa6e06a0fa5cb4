"""Root payload, metadata listing, OpenAPI documents, dependencies and route prefixes per version."""

from __future__ import annotations

import json
import re

import pytest
import requests

from edfi_core.dependencies import load_order, parse_dependencies_json, parse_graphml_edges
from edfi_core.openapi import ApiModel
from tests.conftest import SHARED, VERSIONS, Api


@pytest.fixture(scope="module")
def sandboxes():
    from edfi_sandbox.server import Sandbox

    running = {v: Sandbox(v, seed=5).start() for v in VERSIONS}
    yield running
    for sb in running.values():
        sb.stop()


@pytest.mark.parametrize("version", VERSIONS)
def test_root_payload(sandboxes, version: str) -> None:
    sb = sandboxes[version]
    root = requests.get(sb.base_url + "/", timeout=5).json()
    assert root["version"] == version
    assert root["suite"] == "3"
    assert {"informationalVersion", "build", "dataModels", "urls"} <= set(root)
    assert root["dataModels"][0]["name"] == "Ed-Fi"
    urls = root["urls"]
    assert {"dependencies", "openApiMetadata", "oauth", "dataManagementApi", "xsdMetadata"} <= set(urls)
    assert ("apiMode" in root) == (version < "7")
    assert ("changeQueries" in urls) == (version >= "6")
    assert ("oauthTokenIntrospection" in urls) == (version >= "7.3")
    assert ("applicationName" in root) == (version >= "7.3")
    if version >= "7":
        assert urls["dataManagementApi"].endswith("/data/v3/")
    # every URL the root payload gives works
    assert requests.get(urls["dependencies"], timeout=5).status_code == 200
    assert requests.get(urls["openApiMetadata"], timeout=5).status_code == 200
    token = requests.post(urls["oauth"], data={"grant_type": "client_credentials"},
                          auth=(sb.client_id, sb.client_secret), timeout=5).json()["access_token"]
    data = urls["dataManagementApi"].rstrip("/")
    resp = requests.get(data + "/ed-fi/students", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert resp.status_code == 200 and len(resp.json()) == 5


@pytest.mark.parametrize("version", VERSIONS)
def test_metadata_listing_and_documents(sandboxes, version: str) -> None:
    sb = sandboxes[version]
    listing = requests.get(sb.base_url + "/metadata/", timeout=5).json()
    # the composites section first (OpenApiMetadataController orders by section: docs/composites.md)
    assert [(e["name"], e["prefix"]) for e in listing] == [("Enrollment", "Composites"), ("Descriptors", ""),
                                                           ("Resources", "")]
    assert all(set(e) == {"name", "endpointUri", "prefix"} for e in listing)
    listing = listing[1:]
    docs = {e["name"]: requests.get(e["endpointUri"], timeout=30).json() for e in listing}
    for doc in docs.values():
        if version < "7.1":
            assert doc["swagger"] == "2.0" and "definitions" in doc
        else:
            assert doc["openapi"].startswith("3.0") and "components" in doc
    paths = docs["Resources"]["paths"]
    assert "/ed-fi/students/deletes" in paths
    assert ("/ed-fi/students/keyChanges" in paths) == (version >= "6")
    assert ("/ed-fi/students/partitions" in paths) == (version >= "7.3")
    assert "/ed-fi/schoolYearTypes/deletes" not in paths
    served = ApiModel.from_documents(docs.values())
    assert {r.path for r in served} == {r.path for r in sb.model}
    for res in sb.model:
        assert served.get(res.path).key_fields == res.key_fields
        assert served.get(res.path).key_updatable == res.key_updatable
    if version >= "7.1":
        v2 = requests.get(listing[1]["endpointUri"], params={"version": "2"}, timeout=30).json()
        assert v2["swagger"] == "2.0"


@pytest.mark.parametrize("version", VERSIONS)
def test_dependencies_json_and_graphml(sandboxes, version: str) -> None:
    sb = sandboxes[version]
    url = requests.get(sb.base_url + "/", timeout=5).json()["urls"]["dependencies"]
    items = parse_dependencies_json(requests.get(url, timeout=5).json())
    students = [i for i in items if i.resource == "/ed-fi/students"]
    if version >= "6":
        # people listed twice from DS 4.0 on: Create early, Update after the authorizing association
        assert [i.operations for i in students] == [("Create",), ("Update",)]
        ssa = next(i for i in items if i.resource == "/ed-fi/studentSchoolAssociations")
        assert students[0].order < ssa.order < students[1].order
    else:
        assert [i.operations for i in students] == [("Create",)]
    order = load_order(items)
    assert all(order[d.path] == 1 for d in sb.model.descriptors)
    graph = requests.get(url, headers={"Accept": "application/graphml"}, timeout=5)
    assert graph.headers["content-type"].startswith("application/graphml")
    edges = parse_graphml_edges(graph.text)
    assert ("/ed-fi/students", "/ed-fi/studentSchoolAssociations") in edges
    levels = {i.resource + ("#Retry" if i.operations == ("Update",) else ""): i.order for i in items}
    for source, target in edges:
        assert levels[source] < levels[target], (source, target)


def test_dependency_order_of_real_ds4_spec_respects_every_real_edge() -> None:
    specs = [SHARED / f"openapi/standards_{kind}-ds-4.0.oas3.yml" for kind in ("resources", "descriptors")]
    from edfi_core.dependencies import dependency_items

    model = ApiModel.from_files(specs)
    items = dependency_items(model, person_retry=True)
    ours = {i.resource + ("#Retry" if i.operations == ("Update",) else ""): i.order for i in items}
    real_json = json.loads((SHARED / "dependencies/odsapi-7.x_ds-4.0.0_dependencies.json").read_text())
    real = {i["resource"] + ("#Retry" if i["operations"] == ["Update"] else ""): i["order"] for i in real_json}
    assert set(real) <= set(ours)  # every real resource (ours adds TPDM, which the spec carries)
    edges = parse_graphml_edges((SHARED / "dependencies/odsapi-7.x_ds-4.0.0_dependencies.graphml").read_text())
    assert len(edges) > 1000
    broken = [(a, b) for a, b in edges if not ours[a] < ours[b]]
    assert broken == []
    # the JSON document's people entries are matched: a Create and a later Update entry
    for person in ("/ed-fi/students", "/ed-fi/staffs", "/ed-fi/parents"):
        assert ours[person] < ours[person + "#Retry"]
        assert real[person] < real[person + "#Retry"]


ROUTES = [
    ("5.3", {"api_mode": "year", "school_year": 2025}, "/data/v3/2025", "/oauth/token"),
    ("6.1", {"api_mode": "instance-year", "school_year": 2024, "instance": "district9"},
     "/data/v3/district9/2024", "/district9/oauth/token"),
    ("7.3", {"tenant": "tenant1", "context": "2025"}, "/tenant1/2025/data/v3", "/tenant1/2025/oauth/token"),
    ("7.1", {"context": "2024"}, "/2024/data/v3", "/2024/oauth/token"),
]


@pytest.mark.parametrize(("version", "routing", "data", "oauth"), ROUTES)
def test_route_prefixes(make_sandbox, version, routing, data, oauth) -> None:
    sb = make_sandbox(version, seed=3, **routing)
    root_url = sb.api_root + "/"
    root = requests.get(root_url, timeout=5).json()
    assert root["urls"]["dataManagementApi"].rstrip("/") == sb.base_url + data
    assert root["urls"]["oauth"] == sb.base_url + oauth
    api = Api(sb)
    assert len(api.get("/ed-fi/students").json()) == 3
    assert api.changes("availableChangeVersions").status_code == 200
    deps = requests.get(root["urls"]["dependencies"], timeout=5)
    assert deps.status_code == 200
    # the unprefixed routes do not exist
    plain = requests.get(sb.base_url + "/data/v3/ed-fi/students", headers=api.http.headers, timeout=5)
    assert plain.status_code == 404
    if version < "7":
        assert re.search(r"/metadata/.*\d{4}", root["urls"]["openApiMetadata"])
