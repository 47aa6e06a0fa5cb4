"""Reads of the Ed-Fi Data Management Service: GET-many, cursor paging, /partitions, /deletes, /keyChanges.

docs/dms.md ("Reads and change queries", "Cursor paging and partitions") gives each rule with its DMS source:

* query parameters: ``limit``, ``offset``, ``totalCount`` (case-sensitive), ``minChangeVersion``,
  ``maxChangeVersion`` (any case), the resource's query fields (any case); anything else is a 400
  "The query field 'x' is not valid for this resource." (Core/Middleware/ValidateQueryMiddleware.cs). On 8.1
  ``pageToken`` and ``pageSize`` too; on 8.0 they are unknown query fields.
* ``limit`` 0..MaximumPageSize (500), and MaximumPageSize when omitted (not 25): PaginationParameters,
  RelationalQueryPageKeysetPlanner (``Limit ?? MaximumPageSize``).
* 8.1: a page with ``maxChangeVersion`` is selected in change-version order (change-queries.md, "Page-selection
  ordering", DMS-1298, after v8.0.0) and carries no ``Next-Page-Token``; other pages carry one whenever they
  selected an item (Handler/QueryRequestHandler.TryCreateNextPageToken). 8.0 selects in DocumentId order.
* ``Use-Snapshot`` is ignored (the caller, app._snapshot_for, returns no snapshot on DMS).
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

import orjson

from edfi_core.openapi import Resource
from edfi_sandbox.dms_auth import PROBLEM, problem

if TYPE_CHECKING:
    from edfi_sandbox.app import Reply, Request, SandboxApp

INT64_MAX = 2**63 - 1
PAGING = ("limit", "offset", "totalCount")  # matched case-sensitively (ValidateQueryMiddleware)
CHANGE_VERSIONS = ("minchangeversion", "maxchangeversion")  # matched case-insensitively
CURSOR = ("pageToken", "pageSize")
#: parameters of the OpenAPI documents that are no query fields of the resource (ApiSchema queryFieldMapping);
#: DMS has no ``q`` or ``fields``
NOT_QUERY_FIELDS = frozenset({"offset", "limit", "totalcount", "minchangeversion", "maxchangeversion", "pagetoken",
                              "pagesize", "q", "fields", "snapshot-identifier", "use-snapshot"})
RESERVED_ON_PARTITIONS = ("pageToken", "pageSize", "limit", "offset", "totalCount")
MIN_PARTITION_PAGES = 5  # "every partition is at least five maximum-sized pages" (CURSOR-PAGING.md)


class DmsRejected(Exception):
    """A 400 answered with DMS problem details."""

    def __init__(self, body: bytes) -> None:
        super().__init__("rejected")
        self.body = body


def _bad_request(errors: list[str]) -> DmsRejected:
    return DmsRejected(problem(400, "urn:ed-fi:api:bad-request", "Bad Request",
                               "The request could not be processed. See 'errors' for details.", errors))


def _parameter_validation(errors: list[str]) -> DmsRejected:
    return DmsRejected(problem(400, "urn:ed-fi:api:bad-request:parameter-validation-failed",
                               "Parameter Validation Failed", "Parameters supplied to the request were invalid.",
                               errors))


def encode_page_token(low: int, high: int) -> str:
    """An opaque token naming the aggregate-id range ``low..high`` (the sandbox's own encoding)."""
    return base64.urlsafe_b64encode(f"dms:{low}:{high}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[int, int] | None:
    try:
        text = base64.urlsafe_b64decode((token + "=" * (-len(token) % 4)).encode()).decode("ascii")
        tag, low, high = text.split(":")
        lo, hi = int(low), int(high)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if tag != "dms" or not (0 <= lo <= INT64_MAX and 0 <= hi <= INT64_MAX) or lo > hi:
        return None
    return lo, hi


def _query(app: SandboxApp, res: Resource, req: Request, *, partitions: bool = False) -> dict[str, str]:
    """The request's filters under the resource's own names; 400 for an unknown query field."""
    names = {str(p["name"]).lower(): str(p["name"]) for p in res.query_params
             if p.get("name") and str(p["name"]).lower() not in NOT_QUERY_FIELDS}
    names.update({n.lower(): n for n in res.field_paths})
    allowed = set(PAGING)
    if app.config.has_partitions:
        allowed |= set(CURSOR)
    if partitions:
        allowed = set(RESERVED_ON_PARTITIONS) | {"number"}
    out: dict[str, str] = {}
    for key, value in req.query.items():
        if key in allowed or key.lower() in CHANGE_VERSIONS:
            continue
        name = names.get(key.lower())
        if name is None:
            raise _bad_request([f"The query field '{key}' is not valid for this resource."])
        out[name] = value
    return out


def _change_versions(app: SandboxApp, req: Request) -> tuple[int | None, int | None]:
    from edfi_sandbox.app import INT64

    lowered = {k.lower(): k for k in req.query}
    values: list[int | None] = []
    for name in CHANGE_VERSIONS:
        key = lowered.get(name)
        raw = req.query.get(key, "") if key else ""
        if raw == "":
            values.append(None)
            continue
        try:
            value = int(raw) if len(raw) <= 40 else None
        except ValueError:
            value = None
        if value is None or not INT64[0] <= value <= INT64[1]:
            proper = "minChangeVersion" if name == "minchangeversion" else "maxChangeVersion"
            raise _parameter_validation([f"The value '{raw[:100]}' is not valid for {proper}."])
        values.append(value)
    return values[0], values[1]


def _filters(app: SandboxApp, res: Resource, req: Request, raw: dict[str, str]) -> dict[str, Any]:
    from edfi_sandbox.app import Request as Req

    return app._filters(res, Req(req.method, req.path, raw, req.headers, req.body))


def _traditional_paging(app: SandboxApp, req: Request) -> tuple[int, int, bool]:
    """(offset, limit, totalCount) with DMS's messages (8.0: a Bad Request shell, 8.1: parameter validation)."""
    q = req.query
    maximum = app.config.maximum_page_size
    errors: list[str] = []
    offset, limit = 0, maximum
    if "offset" in q:
        try:
            offset = int(q["offset"])
        except ValueError:
            offset = -1
        if offset < 0:
            errors.append("Offset must be a numeric value greater than or equal to 0.")
    if "limit" in q:
        try:
            limit = int(q["limit"])
        except ValueError:
            limit = -1
        if not 0 <= limit <= maximum:
            errors.append(f"Limit must be omitted or set to a numeric value between 0 and {maximum}.")
    total = False
    if "totalCount" in q:
        if q["totalCount"].lower() not in ("true", "false"):
            errors.append("TotalCount must be a boolean value.")
        total = q["totalCount"].lower() == "true"
    if errors:
        raise (_parameter_validation(errors) if app.config.has_partitions else _bad_request(errors))
    return offset, limit, total


def _cursor_paging(app: SandboxApp, req: Request) -> tuple[tuple[int, int], int]:
    """((low, high), pageSize) of a cursor request, in CursorRequestValidator's order of checks (8.1)."""
    q = req.query
    maximum = app.config.maximum_page_size
    if "pageToken" not in q:
        if "offset" in q and "limit" not in q:
            raise _parameter_validation(["Use limit instead of pageSize when using limit/offset paging."])
        raise _parameter_validation(["PageToken is required when pageSize is specified."])
    token = decode_page_token(q["pageToken"]) if len(q["pageToken"]) <= 200 else None
    if token is None:
        raise _parameter_validation(["The page token provided was invalid."])
    if "offset" in q:
        raise _parameter_validation(["Both offset and pageToken parameters were provided, but they support "
                                     "alternative paging approaches and cannot be used together."])
    if "limit" in q:
        raise _parameter_validation(["Use pageSize instead of limit when using cursor paging with pageToken."])
    if q.get("totalCount", "").lower() == "true":
        raise _parameter_validation(["The totalCount parameter cannot be set to true when using cursor paging "
                                     "with pageToken."])
    size = maximum
    if "pageSize" in q:
        try:
            size = int(q["pageSize"])
        except ValueError:
            size = -1
        if not 0 <= size <= maximum:
            raise _parameter_validation([f"PageSize must be a value between 0 and {maximum}."])
    if "totalCount" in q and q["totalCount"].lower() not in ("true", "false"):
        raise _parameter_validation(["TotalCount must be a boolean value."])
    return token, size


def _page_reply(rows: list[tuple[int, bytes]], headers: dict[str, str]) -> Reply:
    from edfi_sandbox.app import Reply

    return Reply(200, b"[" + b",".join(r[1] for r in rows) + b"]", headers)


def _rejected(exc: DmsRejected) -> Reply:
    from edfi_sandbox.app import Reply

    return Reply(400, exc.body, content_type=PROBLEM)


def get_collection(app: SandboxApp, res: Resource, req: Request) -> Reply:
    """GET-many on DMS (traditional paging on 8.0 and 8.1, cursor paging on 8.1)."""
    try:
        cursor = app.config.has_partitions and ("pageToken" in req.query or "pageSize" in req.query)
        paging = _cursor_paging(app, req) if cursor else None
        offset, limit, total = (0, 0, False) if paging else _traditional_paging(app, req)
        min_cv, max_cv = _change_versions(app, req)
        filters = _filters(app, res, req, _query(app, res, req))
    except DmsRejected as exc:
        return _rejected(exc)
    auth = app._read_auth(res, req)
    headers: dict[str, str] = {}
    if paging is not None:
        (low, high), size = paging
        rows = app.store.range_page(res.path, low, high, size, min_cv, max_cv, filters, auth=auth) if size else []
        if rows and rows[-1][0] < high:
            headers["Next-Page-Token"] = encode_page_token(rows[-1][0] + 1, high)
        return _page_reply(rows, headers)
    if total:
        headers["Total-Count"] = str(app.store.count(res.path, min_cv, max_cv, filters, auth=auth))
    # "maxChangeVersion present": ContentVersion page selection and no continuation token (DMS-1298, after v8.0.0;
    # v8.0.0 selects every page in DocumentId order)
    by_cv = max_cv is not None and app.config.has_partitions
    rows = app.store.page(res.path, offset, limit, min_cv, max_cv, filters, auth=auth,
                          by_change_version=by_cv) if limit else []
    if rows and app.config.has_partitions and not by_cv:
        headers["Next-Page-Token"] = encode_page_token(max(r[0] for r in rows) + 1, INT64_MAX)
    return _page_reply(rows, headers)


def partitions(app: SandboxApp, res: Resource, req: Request) -> Reply:
    """``GET .../partitions`` (8.1): PartitionRequestValidator's four phases, then at most ``number`` tokens, each
    partition at least five maximum-sized pages; the first starts at 0, the last ends at Int64.MaxValue."""
    q = req.query
    try:
        min_cv, max_cv = _change_versions(app, req)
        filters = _filters(app, res, req, _query(app, res, req, partitions=True))
        number = app.config.default_partition_count
        if "number" in q:
            raw = q["number"]
            number = int(raw) if raw.strip().isdigit() and len(raw) < 10 else 0
            if not 1 <= number <= 200:
                raise _parameter_validation(["Number of partitions must be between 1 and 200."])
        reserved = [p for p in RESERVED_ON_PARTITIONS if p in q]
        if reserved:
            raise _parameter_validation([f"The '{p}' parameter is not supported by the partitions endpoint."
                                         for p in reserved])
    except DmsRejected as exc:
        return _rejected(exc)
    auth = app._read_auth(res, req)
    total = app.store.count(res.path, min_cv, max_cv, filters, auth=auth)
    if total == 0:
        ranges: list[tuple[int, int]] = []
    else:
        worth = max(1, total // (MIN_PARTITION_PAGES * app.config.maximum_page_size))
        ranges = app.store.partitions(res.path, min(number, worth), min_cv, max_cv, filters, auth=auth)
        last = len(ranges) - 1
        ranges = [(0 if i == 0 else lo, INT64_MAX if i == last else hi) for i, (lo, hi) in enumerate(ranges)]
    from edfi_sandbox.app import Reply

    return Reply(200, orjson.dumps({"pageTokens": [encode_page_token(lo, hi) for lo, hi in ranges]}),
                 content_type="application/json")


def change_paging(app: SandboxApp, req: Request) -> tuple[int, int, bool] | Reply:
    """/deletes and /keyChanges: the same pagination rules, ``limit`` MaximumPageSize when omitted
    (Backend/ChangeQueries/TrackedChangeQueryPlanner.cs)."""
    try:
        return _traditional_paging(app, req)
    except DmsRejected as exc:
        return _rejected(exc)
