"""The DMS token endpoint: client credentials in an HTTP Basic header only (docs/dms.md "Authentication").

``POST {prefix}/oauth/token`` takes ``grant_type`` from a form or JSON body and forwards the request's
``Authorization`` header to the identity provider (TokenEndpointModule, Core/OAuth/OAuthManager.cs); the body's
``client_id``/``client_secret`` are never read. Answers:

* no header, or one without ``basic`` in it: 400 problem details "Malformed Authorization header";
* ``grant_type`` other than ``client_credentials`` (any case): 400 "Unsupported grant type";
* unknown client or wrong secret (the identity provider's 401): 401 ``urn:ed-fi:api:unauthorized``;
* success: ``access_token``, ``expires_in`` (IdentitySettings:TokenExpirationMinutes, 30 -> 1800),
  ``refresh_expires_in`` 0, ``token_type`` "Bearer", ``scope`` (OpenIddictTokenManager).

There is no live-tokens-per-client limit (no 429) on DMS.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import uuid
from urllib.parse import parse_qsl

import orjson

from edfi_sandbox.auth import TokenRegistry

PROBLEM = "application/problem+json"


def problem(status: int, type_: str, title: str, detail: str, errors: list[str] | None = None) -> bytes:
    """A DMS problem-details body (Core/Response/FailureResponse.CreateBaseJsonObject)."""
    return orjson.dumps({
        "detail": detail, "type": type_, "title": title, "status": status,
        "correlationId": uuid.uuid4().hex, "validationErrors": {}, "errors": errors or [],
    })


def dms_token(tokens: TokenRegistry, ttl: int, method: str, headers: dict[str, str],
              body: bytes) -> tuple[int, bytes, str]:
    """(status, body, content type) of a token request."""
    if method != "POST":
        return 405, b"", ""
    ctype = headers.get("content-type", "").lower()
    grant = ""
    if ctype.startswith("application/x-www-form-urlencoded") or ctype.startswith("multipart/form-data"):
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        grant = form.get("grant_type", "")
    elif ctype.startswith("application/json"):
        try:
            parsed = orjson.loads(body or b"{}")
        except orjson.JSONDecodeError:
            return 400, problem(400, "urn:ed-fi:api:bad-request", "Bad Request",
                                "The request body could not be parsed as JSON."), PROBLEM
        grant = str(parsed.get("grant_type") or "") if isinstance(parsed, dict) else ""
    else:
        return 415, b"", ""  # neither endpoint accepts the content type
    auth = headers.get("authorization", "")
    if "basic" not in auth.lower():
        return 400, problem(400, "urn:ed-fi:api:bad-request", "Bad Request", "Malformed Authorization header"), PROBLEM
    if grant.lower() != "client_credentials":
        return 400, problem(400, "urn:ed-fi:api:bad-request", "Bad Request", "Unsupported grant type"), PROBLEM
    _, _, value = auth.strip().partition(" ")
    try:
        cid, _, secret = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        cid, secret = "", ""
    expected = tokens.clients.get(cid)
    if not cid or expected is None or not secrets.compare_digest(expected.encode(), secret.encode()):
        return 401, problem(401, "urn:ed-fi:api:unauthorized", "Unauthorized",
                            "Invalid client or Invalid client credentials"), PROBLEM
    token = tokens.issue(cid)  # no per-client limit on DMS (max_per_client None)
    return 200, orjson.dumps({"access_token": token.value, "expires_in": ttl, "refresh_expires_in": 0,
                              "token_type": "Bearer", "scope": ""}), "application/json; charset=utf-8"
