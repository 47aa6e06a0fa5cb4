"""The sandbox as an Ed-Fi Data Management Service (8.0 = DMS v8.0.0, 8.1 = DMS main): discovery, routes,
authentication and metadata (docs/dms.md)."""

from __future__ import annotations

import base64

import pytest
import requests

DMS = ("8.0", "8.1")


@pytest.fixture(scope="module")
def sandboxes():
    from edfi_sandbox.server import Sandbox

    running = {v: Sandbox(v, seed=5).start() for v in DMS}
    yield running
    for sb in running.values():
        sb.stop()


def _token(oauth: str, cid: str, secret: str) -> str:
    resp = requests.post(oauth, data={"grant_type": "client_credentials"}, auth=(cid, secret), timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()["access_token"]


@pytest.mark.parametrize("version", DMS)
def test_discovery_document(sandboxes, version: str) -> None:
    sb = sandboxes[version]
    root = requests.get(sb.base_url + "/", timeout=5).json()
    assert list(root) == ["version", "applicationName", "informationalVersion", "dataModels", "urls"]
    assert root["version"] == {"8.0": "8.0.0", "8.1": "8.1.0"}[version]
    assert root["applicationName"] == "Ed-Fi API"
    assert root["dataModels"] == [{"name": "Ed-Fi", "version": "5.2.0",
                                   "informationalVersion": "The Ed-Fi Data Standard v5.2.0"}]
    b = sb.base_url
    assert root["urls"] == {
        "dependencies": f"{b}/metadata/dependencies",
        "openApiMetadata": f"{b}/metadata/specifications",
        "oauth": f"{b}/oauth/token",
        "tokenInfo": f"{b}/oauth/token_info",
        "dataManagementApi": f"{b}/data",
        "changeQueries": f"{b}/changeQueries/v1/",
        "xsdMetadata": f"{b}/metadata/xsd",
    }
    assert "suite" not in root and "build" not in root  # ODS/API keys DMS does not have
    # every URL works, and the ODS/API's do not exist
    urls = root["urls"]
    token = _token(urls["oauth"], sb.client_id, sb.client_secret)
    auth = {"Authorization": f"Bearer {token}"}
    students = requests.get(urls["dataManagementApi"] + "/ed-fi/students", headers=auth, timeout=5)
    assert students.status_code == 200 and len(students.json()) == 5
    assert requests.get(urls["dependencies"], timeout=5).status_code == 200
    assert requests.get(urls["changeQueries"] + "availableChangeVersions", headers=auth,
                        timeout=5).json()["oldestChangeVersion"] == 0
    assert requests.get(b + "/data/v3/ed-fi/students", headers=auth, timeout=5).status_code == 404
    assert requests.get(b + "/metadata/data/v3/dependencies", timeout=5).status_code == 404


@pytest.mark.parametrize("version", DMS)
def test_metadata_listing_and_documents(sandboxes, version: str) -> None:
    sb = sandboxes[version]
    b = sb.base_url
    assert requests.get(b + "/metadata", timeout=5).json() == {
        "dependencies": f"{b}/metadata/dependencies", "specifications": f"{b}/metadata/specifications",
        "xsdMetadata": f"{b}/metadata/xsd"}
    listing = requests.get(b + "/metadata/specifications", timeout=5).json()
    assert [(e["name"], e["prefix"]) for e in listing] == [
        ("Resources", ""), ("Descriptors", ""), ("Discovery", "Other"), ("Change-Queries", "Other")]
    docs = {e["name"]: requests.get(e["endpointUri"], timeout=30) for e in listing}
    assert all(r.status_code == 200 for r in docs.values())
    resources = docs["Resources"].json()
    assert resources["openapi"].startswith("3.")
    assert "/ed-fi/students/deletes" in resources["paths"] and "/ed-fi/students/keyChanges" in resources["paths"]
    # cursor paging is in the documents after v8.0.0 only (CursorPagingOpenApiAugmenter.cs is on main)
    assert ("/ed-fi/students/partitions" in resources["paths"]) == (version == "8.1")
    params = {p.get("$ref", "").rsplit("/", 1)[-1] for p in resources["paths"]["/ed-fi/students"]["get"]["parameters"]}
    assert ("pageToken" in params) == (version == "8.1")
    descriptors = docs["Descriptors"].json()
    assert any(p.endswith("Descriptors") for p in descriptors["paths"])


@pytest.mark.parametrize("version", DMS)
def test_token_by_basic_only(sandboxes, version: str) -> None:
    """OAuthManager forwards only the Authorization header: body credentials are not read."""
    sb = sandboxes[version]
    url = sb.oauth_url
    body_only = requests.post(url, data={"grant_type": "client_credentials", "client_id": sb.client_id,
                                         "client_secret": sb.client_secret}, timeout=5)
    assert body_only.status_code == 400
    assert body_only.headers["content-type"].startswith("application/problem+json")
    assert body_only.json()["detail"] == "Malformed Authorization header"
    assert body_only.json()["type"] == "urn:ed-fi:api:bad-request"
    grant = requests.post(url, data={"grant_type": "password"}, auth=(sb.client_id, sb.client_secret), timeout=5)
    assert grant.status_code == 400 and grant.json()["detail"] == "Unsupported grant type"
    wrong = requests.post(url, data={"grant_type": "client_credentials"}, auth=(sb.client_id, "nope"), timeout=5)
    assert wrong.status_code == 401 and wrong.json()["type"] == "urn:ed-fi:api:unauthorized"
    as_json = requests.post(url, json={"grant_type": "Client_Credentials"},
                            headers={"Authorization": "Basic " + base64.b64encode(
                                f"{sb.client_id}:{sb.client_secret}".encode()).decode()}, timeout=5)
    assert as_json.status_code == 200
    body = as_json.json()
    assert body["expires_in"] == 1800 and body["token_type"] == "Bearer" and body["refresh_expires_in"] == 0


@pytest.mark.parametrize("version", DMS)
def test_no_live_token_limit(sandboxes, version: str) -> None:
    """The ODS/API 7.3's 15 live tokens per client (429) does not exist on DMS."""
    sb = sandboxes[version]
    tokens = {_token(sb.oauth_url, sb.client_id, sb.client_secret) for _ in range(20)}
    assert len(tokens) == 20


@pytest.mark.parametrize("version", DMS)
def test_minimal_get_and_post(sandboxes, version: str) -> None:
    sb = sandboxes[version]
    auth = {"Authorization": "Bearer " + sb.token()}
    data = sb.data_url
    assert data.endswith("/data")
    first = requests.get(data + "/ed-fi/students", headers=auth, timeout=5).json()[0]
    body = {k: v for k, v in first.items() if k not in ("id", "_etag", "_lastModifiedDate")}
    body["studentUniqueId"] = f"DMS-{version}"
    created = requests.post(data + "/ed-fi/students", json=body, headers=auth, timeout=5)
    assert created.status_code == 201
    assert created.headers["location"].startswith(data + "/ed-fi/students/")
    got = requests.get(created.headers["location"], headers=auth, timeout=5)
    assert got.status_code == 200 and got.json()["studentUniqueId"] == f"DMS-{version}"


def test_tenant_and_route_qualifiers(make_sandbox) -> None:
    """/{tenant}/{qualifiers...}/data; discovery at / (placeholders) and at every leading part of the prefix;
    metadata at the server root only (MetadataEndpointModule maps /metadata/* without the prefix)."""
    sb = make_sandbox("8.0", seed=3, tenant="DistrictA", route_qualifiers=("255901", "2024"))
    b = sb.base_url
    at_root = requests.get(b + "/", timeout=5).json()["urls"]
    assert at_root["dataManagementApi"] == f"{b}/{{tenant}}/{{districtId}}/{{schoolYear}}/data"
    partial = requests.get(b + "/DistrictA/255901", timeout=5).json()["urls"]
    assert partial["dataManagementApi"] == f"{b}/DistrictA/255901/{{schoolYear}}/data"
    full = requests.get(sb.api_root, timeout=5).json()["urls"]
    assert full["dataManagementApi"] == f"{b}/DistrictA/255901/2024/data" == sb.data_url
    assert full["changeQueries"] == f"{b}/DistrictA/255901/2024/changeQueries/v1/"
    assert requests.get(b + "/DistrictB", timeout=5).status_code == 404
    # the token endpoint: under the prefix, and at the server root when multi-tenant
    token = _token(full["oauth"], sb.client_id, sb.client_secret)
    assert _token(b + "/oauth/token", sb.client_id, sb.client_secret)
    auth = {"Authorization": f"Bearer {token}"}
    assert len(requests.get(full["dataManagementApi"] + "/ed-fi/students", headers=auth, timeout=5).json()) == 3
    assert requests.get(b + "/data/ed-fi/students", headers=auth, timeout=5).status_code == 404
    assert requests.get(full["changeQueries"] + "availableChangeVersions", headers=auth, timeout=5).ok
    assert requests.get(b + "/metadata/specifications", timeout=5).status_code == 200
    assert requests.get(full["openApiMetadata"], timeout=5).status_code == 404  # as DMS: not under the prefix
