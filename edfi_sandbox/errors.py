"""Error bodies as each ODS/API version writes them.

Before 7.2: ``{"message": ...}`` (validation failures add ``modelState``). From 7.2: problem
details with a ``urn:ed-fi:api:...`` type, ``title``, ``status``, ``correlationId`` and
``validationErrors`` / ``errors``.
"""

from __future__ import annotations

import uuid

import orjson

TITLES = {
    "bad-request": "Bad Request",
    "bad-request:data-validation-failed": "Data Validation Failed",
    "bad-request:data-validation-failed:key-change-not-supported": "Key Change Not Supported",
    "bad-request:parameter-validation-failed": "Parameter Validation Failed",
    "security:authentication": "Authentication Failed",
    "security:authentication:too-many-tokens": "Too Many Tokens",
    "security:authorization": "Authorization Denied",
    "security:authorization:access-denied:resource": "Authorization Denied",
    "security:authorization:access-denied:action": "Authorization Denied",
    "not-found": "Not Found",
    "method-not-allowed": "Method Not Allowed",
    "not-acceptable": "Not Acceptable",
    "snapshots:method-not-allowed": "Method Not Allowed",
    "data-conflict:unresolved-reference": "Unresolved Reference",
    "data-conflict:dependent-item-exists": "Dependent Item Exists",
    "data-conflict:non-unique-identity": "Identifying Values Are Not Unique",
    "optimistic-lock-failed": "Optimistic Lock Failed",
    "snapshots:gone": "Snapshot Gone",
    "system": "System Error",
    "throttled": "Too Many Requests",
}


def error_body(
    problem_details: bool,
    status: int,
    kind: str,
    message: str,
    validation_errors: dict[str, list[str]] | None = None,
    errors: list[str] | None = None,
) -> tuple[bytes, str]:
    """(body, content type) of an error response."""
    if problem_details:
        body: dict = {
            "detail": message,
            "type": f"urn:ed-fi:api:{kind}",
            "title": TITLES.get(kind, "Error"),
            "status": status,
            "correlationId": uuid.uuid4().hex,
        }
        if validation_errors:
            body["validationErrors"] = validation_errors
        if errors:
            body["errors"] = errors
        return orjson.dumps(body), "application/problem+json"
    body = {"message": message}
    if validation_errors:
        body = {
            "message": "The request is invalid.",
            "modelState": {
                "request" + path.removeprefix("$"): msgs for path, msgs in validation_errors.items()
            },
        }
    return orjson.dumps(body), "application/json; charset=utf-8"
