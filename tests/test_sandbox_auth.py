"""OAuth client credentials as the ODS/API's TokenController handles them."""

from __future__ import annotations

import base64
import time

import pytest
import requests

from tests.conftest import VERSIONS


@pytest.fixture(params=VERSIONS)
def sb(request, make_sandbox):
    return make_sandbox(request.param, token_ttl=2)


def test_basic_header_and_body_credentials(sb) -> None:
    by_header = requests.post(sb.oauth_url, data={"grant_type": "client_credentials"},
                              auth=(sb.client_id, sb.client_secret), timeout=10)
    assert by_header.status_code == 200
    body = by_header.json()
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 2
    assert len(body["access_token"]) == 32
    by_form = requests.post(sb.oauth_url, data={"grant_type": "client_credentials", "client_id": sb.client_id,
                                                "client_secret": sb.client_secret}, timeout=10)
    assert by_form.status_code == 200
    by_json = requests.post(sb.oauth_url, json={"grant_type": "client_credentials", "client_id": sb.client_id,
                                                "client_secret": sb.client_secret}, timeout=10)
    assert by_json.status_code == 200


def test_credential_errors(sb) -> None:
    both = requests.post(sb.oauth_url, data={"grant_type": "client_credentials", "client_id": sb.client_id,
                                             "client_secret": sb.client_secret},
                         auth=(sb.client_id, sb.client_secret), timeout=10)
    assert both.status_code == 400 and both.json() == {"error": "invalid_client"}
    wrong = requests.post(sb.oauth_url, data={"grant_type": "client_credentials"},
                          auth=(sb.client_id, "wrong"), timeout=10)
    assert wrong.status_code == 401 and wrong.json() == {"error": "invalid_client"}
    missing = requests.post(sb.oauth_url, data={"grant_type": "client_credentials"}, timeout=10)
    assert missing.status_code == 401 and missing.json() == {"error": "invalid_request"}
    grant = requests.post(sb.oauth_url, data={"grant_type": "password"}, auth=(sb.client_id, sb.client_secret),
                          timeout=10)
    assert grant.status_code == 400 and grant.json() == {"error": "unsupported_grant_type"}
    bearer = requests.post(sb.oauth_url, data={"grant_type": "client_credentials"},
                           headers={"Authorization": "Bearer " + base64.b64encode(b"a:b").decode()}, timeout=10)
    assert bearer.status_code == 401


def test_tokens_expire_and_unknown_tokens_are_401(sb) -> None:
    token = sb.token()
    url = sb.data_url + "/ed-fi/students"
    assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200
    missing = requests.get(url, timeout=10)
    assert missing.status_code == 401
    if sb.config.api_version >= "7.2":
        assert missing.json()["errors"] == ["Authorization header is missing."]
        assert missing.json()["type"] == "urn:ed-fi:api:security:authentication"
    else:
        assert missing.content == b""
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    time.sleep(2.2)
    expired = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert expired.status_code == 401


def test_live_token_limit_on_7x(sb) -> None:
    statuses = [
        requests.post(sb.oauth_url, data={"grant_type": "client_credentials"},
                      auth=(sb.client_id, sb.client_secret), timeout=10).status_code
        for _ in range(16)
    ]
    if sb.config.api_version >= "7.3":  # BearerTokenPerClientLimit exists from 7.3 on (ApiSettings.cs)
        assert statuses == [200] * 15 + [429]
        time.sleep(2.2)  # expired tokens no longer count
        assert requests.post(sb.oauth_url, data={"grant_type": "client_credentials"},
                             auth=(sb.client_id, sb.client_secret), timeout=10).status_code == 200
    else:
        assert statuses == [200] * 16


def test_token_info(sb) -> None:
    url = sb.oauth_url + "_info"
    token = sb.token()
    by_form = requests.post(url, data={"token": token}, timeout=10).json()
    by_json = requests.post(url, json={"token": token}, timeout=10).json()
    assert by_form == by_json
    assert by_form["active"] is True and by_form["client_id"] == sb.client_id
    assert {"namespace_prefixes", "education_organizations", "assigned_profiles", "claim_set"} <= set(by_form)
    assert requests.post(url, data={"token": "nope"}, timeout=10).json() == {"active": False}


def test_forbidden_resources_are_403(make_sandbox) -> None:
    sb = make_sandbox("7.3", seed=3, forbidden=frozenset({"/ed-fi/staffs"}))
    headers = {"Authorization": f"Bearer {sb.token()}"}
    denied = requests.get(sb.data_url + "/ed-fi/staffs", headers=headers, timeout=10)
    assert denied.status_code == 403
    assert denied.json()["type"] == "urn:ed-fi:api:security:authorization"
    assert denied.json()["title"] == "Authorization Denied"
    assert requests.post(sb.data_url + "/ed-fi/staffs", json={}, headers=headers, timeout=10).status_code == 403
    assert requests.get(sb.data_url + "/ed-fi/students", headers=headers, timeout=10).status_code == 200
    old = make_sandbox("5.3", forbidden=frozenset({"/ed-fi/staffs"}))
    resp = requests.get(old.data_url + "/ed-fi/staffs", headers={"Authorization": f"Bearer {old.token()}"}, timeout=10)
    assert resp.status_code == 403 and "message" in resp.json()
