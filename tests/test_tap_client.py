"""edfi_core's HTTP client: URL resolution, the shared token, retries and error messages."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from edfi_core.auth import AuthError, TokenManager
from edfi_core.discovery import load_model_from_api
from edfi_core.session import EdFiClient, EdFiHTTPError, resolve_urls, server_message
from edfi_sandbox.server import Sandbox

DISCOVERY = Path(__file__).resolve().parents[2] / "shared" / "edfi" / "discovery"


def client_for(sb: Sandbox, **kw: Any) -> EdFiClient:
    return EdFiClient(sb.api_root, sb.client_id, sb.client_secret, **kw)


# -- URLs --------------------------------------------------------------------------------------------------
def test_year_specific_root_takes_the_configured_year() -> None:
    root = json.loads((DISCOVERY / "apipublisher_v6.1-Version.json").read_text())
    base = "https://localhost/v6.1/WebApi"
    urls = resolve_urls(base, root)
    assert urls.data == f"{base}/data/v3/2025"
    urls = resolve_urls(base, root, school_year=2024)
    assert urls.data == f"{base}/data/v3/2024"
    assert urls.change_queries == f"{base}/changeQueries/v1/2024"
    assert urls.dependencies == f"{base}/metadata/data/v3/2024/dependencies"
    assert urls.oauth == f"{base}/oauth/token"


def test_placeholders_and_overrides() -> None:
    root = {"version": "7.2", "urls": {
        "dataManagementApi": "https://h/api/{tenantIdentifier}/{schoolYearFromRoute}/data/v3/",
        "oauth": "https://h/api/{tenantIdentifier}/{schoolYearFromRoute}/oauth/token",
        "openApiMetadata": "https://h/api/{tenantIdentifier}/{schoolYearFromRoute}/metadata/",
        "changeQueries": "https://h/api/{tenantIdentifier}/{schoolYearFromRoute}/changeQueries/v1/",
        "dependencies": "https://h/api/{tenantIdentifier}/{schoolYearFromRoute}/metadata/data/v3/dependencies"}}
    with pytest.raises(ValueError, match="placeholder"):
        resolve_urls("https://h/api", root)
    urls = resolve_urls("https://h/api", root, tenant="t1", school_year=2024)
    assert urls.data == "https://h/api/t1/2024/data/v3"
    assert urls.change_queries == "https://h/api/t1/2024/changeQueries/v1"
    urls = resolve_urls("https://h/api", root, tenant="t1", context="2023", overrides={"oauth": "https://idp/token"})
    assert urls.oauth == "https://idp/token" and urls.data.endswith("/t1/2023/data/v3")
    # 5.x: no changeQueries URL in the root payload
    urls = resolve_urls("https://h", {"version": "5.3", "urls": {"dataManagementApi": "https://h/data/v3"}})
    assert urls.change_queries == "https://h/changeQueries/v1"


@pytest.mark.parametrize(("version", "routing"), [
    ("5.3", {"api_mode": "year", "school_year": 2024}),
    ("6.1", {"api_mode": "instance-year", "school_year": 2023, "instance": "east"}),
    ("7.1", {"tenant": "t1", "context": "2024"}),
    ("7.3", {}),
])
def test_routing_against_the_sandbox(version: str, routing: dict[str, Any]) -> None:
    with Sandbox(version, **routing) as sb:
        client = client_for(sb)
        assert client.available_change_versions()[1] == sb.store.change_version
        assert len(load_model_from_api(client)) == len(sb.model)
        resp = client.get(client.data_url("/ed-fi/students"))
        assert resp.status_code == 200


# -- tokens ----------------------------------------------------------------------------------------------
def test_one_token_for_all_threads_and_one_renewal_after_a_401() -> None:
    with Sandbox("7.3") as sb:
        client = client_for(sb, max_workers=16)
        url = client.data_url("/ed-fi/students")

        def hammer() -> None:
            for _ in range(5):
                assert client.get(url).status_code == 200

        threads = [threading.Thread(target=hammer) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sb.app.tokens.issued == 1
        # the server forgets every token: all threads get a 401, exactly one new token is fetched
        sb.app.tokens.revoke_all()
        barrier = threading.Barrier(16)

        def after_revoke() -> None:
            barrier.wait()
            assert client.get(url).status_code == 200

        threads = [threading.Thread(target=after_revoke) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sb.app.tokens.issued == 2
        assert client.stats.token_fetches == 2


def test_token_is_renewed_before_it_expires() -> None:
    with Sandbox("7.3", token_ttl=2) as sb:
        client = client_for(sb)
        url = client.data_url("/ed-fi/students")
        end = time.monotonic() + 3.5
        while time.monotonic() < end:
            assert client.get(url).status_code == 200
            time.sleep(0.05)
        assert client.stats.token_fetches >= 2
        assert client.stats.auth_renewals == 0  # renewed ahead of time: no 401 at all


class _BodyOnly:
    """A token endpoint that refuses Basic credentials (some proxies and older servers)."""

    def __init__(self, app: Any) -> None:
        self._app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app, name)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope["path"].endswith("/oauth/token"):
            headers = dict(scope["headers"])
            if headers.get(b"authorization", b"").lower().startswith(b"basic"):
                body = b'{"error":"invalid_client"}'
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self._app(scope, receive, send)


def test_credentials_in_the_body_when_basic_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    sb = Sandbox("6.1")
    sb.app = _BodyOnly(sb.app)  # type: ignore[assignment]
    with sb, caplog.at_level(logging.DEBUG):
        client = client_for(sb)
        assert client.get(client.data_url("/ed-fi/students")).status_code == 200
        assert client.tokens._use_basic is False
        assert sb.client_secret not in caplog.text
        token = client.tokens.token()
        assert token not in caplog.text
        assert sb.client_secret not in repr(client.tokens) and sb.client_secret not in repr(client)


def test_bad_credentials_fail_clearly() -> None:
    with Sandbox("7.3") as sb:
        tm = TokenManager(sb.oauth_url, sb.client_id, "wrong-secret-123")
        with pytest.raises(AuthError) as err:
            tm.token()
        text = str(err.value)
        assert "401" in text and "invalid_client" in text and sb.oauth_url in text
        assert "wrong-secret-123" not in text


# -- retries and errors ----------------------------------------------------------------------------------
def test_retries_honour_retry_after_and_give_up_with_the_servers_message() -> None:
    with Sandbox("7.3") as sb:
        client = client_for(sb, max_tries=3, backoff_factor=0.01)
        url = client.data_url("/ed-fi/students")
        client.tokens.token()
        sb.set_faults(rate_429=1.0, retry_after=1)
        started = time.monotonic()
        with pytest.raises(EdFiHTTPError) as err:
            client.get(url)
        assert time.monotonic() - started >= 2.0  # two waits of Retry-After: 1
        assert err.value.status == 429 and "Too many requests." in str(err.value) and url in str(err.value)
        assert client.stats.retries == 2
        sb.set_faults(rate_429=0.0, rate_drop=1.0)
        with pytest.raises(EdFiHTTPError, match=r"IncompleteRead|RemoteDisconnected|ConnectionResetError"):
            client.get(url)
        sb.set_faults(rate_drop=0.3, rate_503=0.3, seed=5)
        client.max_tries = 12
        for _ in range(10):
            assert client.get(url).status_code == 200


@pytest.mark.parametrize("version", ["6.1", "7.3"])
def test_error_messages_of_both_formats(version: str) -> None:
    with Sandbox(version) as sb:
        client = client_for(sb)
        url = client.data_url("/ed-fi/students")
        resp = client.post(url, json={"studentUniqueId": "1"})
        message = server_message(resp)
        assert resp.status_code == 400
        assert "birthDate" in message or "firstName" in message
        with pytest.raises(EdFiHTTPError) as err:
            client.get_json(url, params={"limit": 9999})
        assert err.value.status == 400 and "imit" in err.value.server_message and "limit=9999" in str(err.value)


def test_server_message_formats() -> None:
    class R:
        def __init__(self, body: Any, reason: str = "") -> None:
            self.content = body if isinstance(body, bytes) else orjson.dumps(body)
            self.reason = reason

    assert server_message(R({"message": "The value supplied for the related 'student' resource does not exist."})
                          ).startswith("The value supplied")
    pd = {"detail": "Data validation failed.", "type": "urn:ed-fi:api:bad-request:data-validation-failed",
          "validationErrors": {"$.termDescriptor": ["TermDescriptor value 'x' does not exist."]}}
    text = server_message(R(pd))
    assert "Data validation failed." in text and "$.termDescriptor" in text and "urn:ed-fi" in text
    assert server_message(R(b"<html><body><h1>502 Bad Gateway</h1></body></html>")) == "502 Bad Gateway"
    assert server_message(R(b"", "Service Unavailable")) == "Service Unavailable"
