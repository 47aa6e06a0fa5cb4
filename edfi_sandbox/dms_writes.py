"""Writes (POST, PUT, DELETE) as the Ed-Fi Data Management Service (API v8) answers them.

What each step does and where it comes from is in docs/dms.md, section "Writes". In short, in the order of the
DMS upsert/update pipelines (``ApiService.cs``: ``CreateUpsertPipeline``, ``CreateUpdatePipeline``):

1. the body is parsed (400 ``$.`` for bad JSON, 400 for an empty body); on POST an ``id`` in any casing is 400;
2. values are coerced (``"true"``/``1`` booleans, numeric strings, slash dates, date-times to UTC);
3. the body is pruned and validated against the resource schema: property names are matched **exactly** (a
   miscased or unknown property is dropped), nulls are dropped, top-level empty arrays are dropped; what is left
   must be valid (400 ``data-validation-failed``, JsonSchema.Net wording);
4. the claim set's action is checked: Create for every POST (also one that turns out to update), Update for PUT,
   Delete for DELETE (403);
5. the handler: ``If-Match`` (412), stored-then-proposed authorization of an upsert-as-update or an update (403),
   identity stability (400 ``key-change-not-supported`` unless the resource allows identity updates), references
   (409 ``unresolved-reference``; descriptors 400), identity conflicts (409), the guarded no-op (an unchanged
   write changes nothing: same ``_etag``, no new change version), then the write.

Every error is a DMS problem-details body: ``detail``, ``type``, ``title``, ``status``, ``correlationId``,
``validationErrors`` (always, ``{}`` when empty) and ``errors`` (always, ``[]`` when empty).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from edfi_core.keys import split_descriptor_uri
from edfi_core.openapi import SERVER_FIELDS, Resource, without_server_fields
from edfi_sandbox.authorization import AuthorizationDenied
from edfi_sandbox.store import StoreError, key_hash

if TYPE_CHECKING:
    from edfi_sandbox.app import Reply, Request, SandboxApp

PROBLEM = "application/problem+json"
URN = "urn:ed-fi:api"
DATA_VALIDATION = "Data validation failed. See 'validationErrors' for details."
#: descriptor properties whose surrounding whitespace DMS trims (DocumentValidator.trimmableProperties)
TRIMMED = ("codeValue", "shortDescription")


class Problem(Exception):
    """A DMS problem-details answer (FailureResponse.CreateBaseJsonObject)."""

    def __init__(self, status: int, kind: str, title: str, detail: str,
                 validation_errors: dict[str, list[str]] | None = None, errors: list[str] | None = None,
                 headers: dict[str, str] | None = None, empty: bool = False) -> None:
        super().__init__(detail)
        self.status, self.kind, self.title, self.detail = status, kind, title, detail
        self.validation_errors = validation_errors or {}
        self.errors = errors or []
        self.headers = headers or {}
        self.empty = empty  # answered without a body (DELETE of a missing item)


def problem_body(status: int, kind: str, title: str, detail: str,
                 validation_errors: dict[str, list[str]] | None = None, errors: list[str] | None = None) -> bytes:
    return orjson.dumps({
        "detail": detail,
        "type": f"{URN}:{kind}" if kind else URN,
        "title": title,
        "status": status,
        "correlationId": uuid.uuid4().hex,
        "validationErrors": validation_errors or {},
        "errors": errors or [],
    })


def _reply(problem: Problem) -> Reply:
    from edfi_sandbox.app import Reply

    if problem.empty:
        return Reply(problem.status, b"", problem.headers, content_type=None)
    body = problem_body(problem.status, problem.kind, problem.title, problem.detail, problem.validation_errors,
                        problem.errors)
    return Reply(problem.status, body, problem.headers, content_type=PROBLEM)


def throttled(api_version: str, retry_after: int) -> Reply:
    """A 429 of the rate limiter. 8.0.0 sets only the status (no body, no ``Retry-After``); main (8.1) writes
    ``Retry-After`` (seconds, rounded up) and the too-many-requests problem details
    (WebApplicationBuilderExtensions.WriteRateLimitRejectionAsync)."""
    from edfi_sandbox.app import Reply

    if api_version < "8.1":
        return Reply(429, b"", content_type=None)
    body = problem_body(429, "too-many-requests", "Too Many Requests",
                        "The number of allowed requests has been exceeded. Retry the request later.")
    return Reply(429, body, {"Retry-After": str(max(1, int(retry_after)))},
                 content_type="application/problem+json; charset=utf-8")


def _bad_request(detail: str, errors: list[str] | None = None,
                 validation_errors: dict[str, list[str]] | None = None) -> Problem:
    return Problem(400, "bad-request", "Bad Request", detail, validation_errors, errors)


def _data_validation(validation_errors: dict[str, list[str]], detail: str = DATA_VALIDATION,
                     errors: list[str] | None = None) -> Problem:
    return Problem(400, "bad-request:data-validation-failed", "Data Validation Failed", detail, validation_errors,
                   errors)


def _cap(name: str) -> str:
    return name[:1].upper() + name[1:]


# -- 1. parsing ------------------------------------------------------------------------------------------------
def parse_body(raw: bytes) -> Any:
    if not raw.strip():
        raise _bad_request("The request could not be processed. See 'errors' for details.",
                           ["A non-empty request body is required."])
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # ParseBodyMiddleware: the parser's message under "$."
        raise _data_validation({"$.": [f"The request body is not valid JSON: {exc}"]}) from exc
    duplicate = duplicate_path(raw)
    if duplicate is not None:  # DuplicatePropertiesMiddleware
        raise _data_validation({duplicate: ["An item with the same key has already been added."]})
    return body


class _Seen(dict):
    """An object of the request body that named a property twice (``dup``: the name)."""

    dup: str | None = None


def duplicate_path(raw: bytes) -> str | None:
    """The JSON path (``$.a.b[0].c``) of the first property named twice in an object, or None
    (DuplicatePropertiesMiddleware scans the raw body: a parsed JsonNode would keep the last value)."""
    import json

    def hook(pairs: list[tuple[str, Any]]) -> dict:
        out = _Seen()
        for key, value in pairs:
            if key in out and out.dup is None:
                out.dup = key
            out[key] = value
        return out

    try:
        doc = json.loads(raw, object_pairs_hook=hook)
    except ValueError:
        return None

    def find(node: Any, path: str) -> str | None:
        if isinstance(node, _Seen):
            if node.dup is not None:
                return f"{path}.{node.dup}"
            for key, value in node.items():
                hit = find(value, f"{path}.{key}")
                if hit:
                    return hit
        elif isinstance(node, list):
            for i, value in enumerate(node):
                hit = find(value, f"{path}[{i}]")
                if hit:
                    return hit
        return None

    return find(doc, "$")


# -- 2. coercion -----------------------------------------------------------------------------------------------
_INT = re.compile(r"[+-]?\d+")
_NUM = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_SLASH_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")
_DATE_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})(?:[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?\s*([AaPp][Mm])?"
                        r"\s*(Z|[+-]\d{2}:?\d{2})?)?")


def _slash_date(value: str) -> str | None:
    m = _SLASH_DATE.fullmatch(value.strip())
    if not m:
        return None
    a, b, year = int(m.group(1)), int(m.group(2)), int(m.group(3))
    for month, day in ((a, b), (b, a)):  # month first wins (JsonHelpers: M/d/yyyy before d/M/yyyy)
        try:
            return dt.date(year, month, day).isoformat()
        except ValueError:
            continue
    return None


def _date_time(value: str) -> str | None:
    """A date-time as DMS stores it: UTC, ``yyyy-MM-ddTHH:mm:ssZ`` (JsonHelpers; no fraction)."""
    text = value.strip()
    head, sep, tail = text.partition(" ")
    if "/" in head:
        date = _slash_date(head)
        if date is None:
            return None
        text = date + (sep + tail if sep else "")
    m = _DATE_TIME.fullmatch(text)
    if not m:
        return None
    date, hour, minute, second, ampm, zone = m.groups()
    try:
        h = int(hour or 0)
        if ampm:
            h = h % 12 + (12 if ampm.lower() == "pm" else 0)
        stamp = dt.datetime.fromisoformat(date).replace(hour=h, minute=int(minute or 0), second=int(second or 0))
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            digits = zone[1:].replace(":", "")
            stamp -= sign * dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    except ValueError:
        return None
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def coerce(schema: Any, value: Any) -> Any:
    """CoerceRequestValuesMiddleware, CoerceDateFormatMiddleware, CoerceDateTimesMiddleware: schema-guided."""
    if not isinstance(schema, dict):
        return value
    kind = schema.get("type")
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        return {k: coerce(props.get(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [coerce(schema.get("items"), v) for v in value]
    if kind == "boolean":
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if value in ("1", "0") or (isinstance(value, int) and not isinstance(value, bool) and value in (0, 1)):
            return value in ("1", 1)
    elif kind == "integer" and isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value.strip())
    elif kind == "number" and isinstance(value, str) and _NUM.fullmatch(value.strip()):
        number = float(value.strip())
        return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    elif kind == "string" and isinstance(value, str):
        if schema.get("format") == "date" and "/" in value:
            return _slash_date(value) or value
        if schema.get("format") == "date-time":
            return _date_time(value) or value
    return value


# -- 3. pruning and validation ---------------------------------------------------------------------------------
def prune(schema: Any, value: Any, top: bool = True) -> Any:
    """DocumentValidator's prunes: properties the schema does not name (case-sensitively) and nulls go at every
    level; a top-level array that is empty or holds only empty objects goes too."""
    if isinstance(value, dict) and isinstance(schema, dict):
        props = schema.get("properties") or {}
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key not in props or item is None:
                continue
            item = prune(props[key], item, top=False)
            if top and isinstance(item, list) and all(isinstance(x, dict) and not x for x in item):
                continue  # [] or [{}]: a top-level empty collection
            out[key] = item
        return out
    if isinstance(value, list) and isinstance(schema, dict):
        return [prune(schema.get("items"), v, top=False) for v in value]
    return value


_KINDS = {"object": dict, "array": list, "string": str, "boolean": bool}


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "integer":
        if isinstance(value, float):
            return value.is_integer()
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    expected = _KINDS.get(kind)
    return expected is None or isinstance(value, expected)


def validate(schema: Any, value: Any, location: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Validation errors keyed and worded as DocumentValidator.ValidationErrorsFrom writes them: the key is
    ``$.`` and the last segment of the instance location; a missing required property adds its name (so a
    required property of an array item is ``$.0.name``). Messages are JsonSchema.Net's defaults."""
    errors: dict[str, list[str]] = {}

    def add(key: str, message: str) -> None:
        errors.setdefault(key, []).append(message)

    def walk(node: Any, inst: Any, loc: tuple[str, ...]) -> None:
        if not isinstance(node, dict):
            return
        last = loc[-1] if loc else ""
        kind = node.get("type")
        if kind and not _type_ok(kind, inst):
            add(f"$.{last}", f'{last} Value is "{_json_kind(inst)}" but should be "{kind}"')
            return
        if isinstance(inst, dict):
            props = node.get("properties") or {}
            for name in node.get("required") or ():
                if name not in inst and name not in SERVER_FIELDS - {"id"}:
                    add(f"$.{last + '.' if last else ''}{name}", f"{name} is required.")
            for name, sub in props.items():
                if name in inst:
                    walk(sub, inst[name], (*loc, name))
        elif isinstance(inst, list):
            for i, item in enumerate(inst):
                walk(node.get("items"), item, (*loc, str(i)))
        elif isinstance(inst, str):
            high, low = node.get("maxLength"), node.get("minLength")
            if isinstance(high, int) and len(inst) > high:
                add(f"$.{last}", f"{last} Value is not shorter than or equal to {high} characters")
            if isinstance(low, int) and len(inst) < low:
                add(f"$.{last}", f"{last} Value is not longer than or equal to {low} characters")
            fmt = node.get("format")
            if fmt == "date" and not _is_date(inst):
                add(f"$.{last}", f'{last} Value does not match format "date"')
            elif fmt == "date-time" and _date_time(inst) != inst:
                add(f"$.{last}", f'{last} Value does not match format "date-time"')
        elif isinstance(inst, (int, float)) and not isinstance(inst, bool):
            if isinstance(node.get("maximum"), (int, float)) and inst > node["maximum"]:
                add(f"$.{last}", f"{last} {_num(inst)} is greater than {_num(node['maximum'])}")
            if isinstance(node.get("minimum"), (int, float)) and inst < node["minimum"]:
                add(f"$.{last}", f"{last} {_num(inst)} is less than {_num(node['minimum'])}")

    walk(schema, value, location)
    return errors


def _num(value: float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _is_date(value: str) -> bool:
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


# -- 5. references ---------------------------------------------------------------------------------------------
def _json_path(path: tuple[str, ...], indexes: list[int]) -> str:
    out, i = "$", 0
    for part in path:
        if part == "[]":
            out += f"[{indexes[i] if i < len(indexes) else 0}]"
            i += 1
        else:
            out += "." + part
    return out


def _walk_paths(doc: Any, path: tuple[str, ...], indexes: tuple[int, ...] = ()) -> list[tuple[Any, list[int]]]:
    """(value, array indexes) at every place ``path`` reaches."""
    if not path:
        return [(doc, list(indexes))]
    head, rest = path[0], path[1:]
    if head == "[]":
        if not isinstance(doc, list):
            return []
        return [hit for i, item in enumerate(doc) for hit in _walk_paths(item, rest, (*indexes, i))]
    if isinstance(doc, dict) and head in doc:
        return _walk_paths(doc[head], rest, indexes)
    return []


class References:
    """Reference validation with DMS's answers (UpsertHandler/UpdateByIdHandler, ValidationErrorFactory): every
    failing reference is reported under its JSON path; descriptors are matched case-insensitively and stored
    with the descriptor's own URI."""

    def __init__(self, app: SandboxApp) -> None:
        self.app = app
        self.store = app.store
        self.model = app.model

    def descriptor_uri(self, desc: Resource, value: str) -> str | None:
        parts = split_descriptor_uri(value)
        if not parts:
            return None
        store = self.store
        table = store.table(desc.path)
        hashed = key_hash(desc.path, {"namespace": parts[0], "codeValue": parts[1]})
        row = store._writer.execute(f'SELECT doc FROM "{table}" WHERE key_hash = ?', (hashed,)).fetchone()
        if row is None:
            row = store._writer.execute(
                f"SELECT doc FROM \"{table}\" WHERE lower(json_extract(doc, '$.namespace')) = ?"
                " AND lower(json_extract(doc, '$.codeValue')) = ? LIMIT 1",
                (parts[0].lower(), parts[1].lower())).fetchone()
        if row is None:
            return None
        stored = orjson.loads(row[0])
        return f"{stored['namespace']}#{stored['codeValue']}"

    def check(self, res: Resource, doc: dict[str, Any]) -> None:
        """Rewrite descriptor values to their stored URIs; raise the DMS answer for what does not resolve."""
        descriptor_errors: dict[str, list[str]] = {}
        for dpath in res.descriptor_paths:
            desc = self.model.descriptor_for(dpath[-1])
            for value, indexes in _walk_paths(doc, dpath):
                if not isinstance(value, str):
                    continue
                found = self.descriptor_uri(desc, value) if desc is not None else None
                if found is None:
                    name = _cap(desc.entity) if desc else _cap(dpath[-1])
                    descriptor_errors.setdefault(_json_path(dpath, indexes), []).append(
                        f"{name} value '{value.lower()}' does not exist.")
                elif found != value:
                    _set_at(doc, dpath, indexes, found)
        reference_errors: dict[str, list[str]] = {}
        for ref in res.references:
            targets = self.model.reference_targets(ref)
            if not targets:
                continue
            for obj, indexes in _walk_paths(doc, ref.path):
                if not isinstance(obj, dict):
                    continue
                values = {f: obj.get(f) for f in ref.fields}
                if any(v is None for v in values.values()):
                    continue
                if not any(self._exists(target, ref, values) for target in targets):
                    entity = _cap(ref.target_schema.split("_", 1)[-1])
                    message = f"The referenced {entity} item does not exist."
                    errors = reference_errors.setdefault(_json_path(ref.path, indexes), [])
                    if message not in errors:
                        errors.append(message)
        if descriptor_errors:
            # any descriptor failure: 400 ForBadRequest with both kinds of failure in validationErrors
            raise _bad_request(DATA_VALIDATION, validation_errors={**reference_errors, **descriptor_errors})
        if reference_errors:
            raise Problem(409, "data-conflict:unresolved-reference", "Unresolved Reference",
                          "One or more references could not be resolved. See 'validationErrors' for details.",
                          reference_errors)

    def _exists(self, target: Resource, ref: Any, values: dict[str, Any]) -> bool:
        if target.schema_name != ref.target_schema:
            if len(target.key_fields) != 1 or len(values) != 1:
                return False
            values = {target.key_fields[0]: next(iter(values.values()))}
        return self.store._lookup_key(self.store._writer, target.path, key_hash(target.path, values)) is not None


def _set_at(doc: Any, path: tuple[str, ...], indexes: list[int], value: Any) -> None:
    node = doc
    it = iter(indexes)
    for part in path[:-1]:
        node = node[next(it)] if part == "[]" else node[part]
    node[path[-1]] = value


# -- If-Match (EtagValue.cs, DMS-1005 If-Match outcome table) ------------------------------------------------------
def _significant(tag: str) -> tuple[str, str]:
    """(ContentVersion, schemaEpoch) of an etag ``{ContentVersion}-{epoch}.{format}.{profile}.{link}.{coding}``;
    a tag of another shape is compared whole."""
    head, sep, variant = tag.rpartition("-")
    if sep and head and variant.count(".") == 4:
        return head, variant.split(".", 1)[0]
    return tag, ""


def if_match_fails(header: str | None, current_etag: str | None) -> str | None:
    """The ETagPreconditionFailureReason of an ``If-Match`` against the item's current ``_etag`` (None: the item
    does not exist); None when the precondition holds or there is none."""
    if header is None:
        return None
    raw = header.strip()
    if current_etag is None:
        return "TargetDoesNotExist"
    if raw == "*":
        return None  # existence only
    if raw.startswith("W/"):
        return "Concurrency"  # weak validators never match
    value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    if not value or value == "*":
        return "Concurrency"
    return None if _significant(value) == _significant(current_etag) else "Concurrency"


def _precondition(reason: str) -> Problem:
    if reason == "TargetDoesNotExist":
        return Problem(412, "optimistic-lock-failed", "Optimistic Lock Failed",
                       "The If-Match precondition failed because the resource does not exist.",
                       errors=["The 'If-Match' request header requires a current representation of the resource,"
                               " but none exists. Do not retry with If-Match; create the resource first, or omit"
                               " If-Match."])
    return Problem(412, "optimistic-lock-failed", "Optimistic Lock Failed",
                   "The item has been modified by another user.",
                   errors=["The resource item's etag value does not match what was specified in the 'If-Match'"
                           " request header indicating that it has been modified by another client since it was"
                           " last retrieved."])


# -- the writes ------------------------------------------------------------------------------------------------
class DmsWrites:
    """POST, PUT and DELETE of one sandbox app serving DMS."""

    def __init__(self, app: SandboxApp) -> None:
        self.app = app
        self.refs = References(app)
        self._schemas: dict[tuple[str, bool], Any] = {}

    def schema(self, res: Resource, put: bool) -> Any:
        """JsonSchemaForInsert (POST) or JsonSchemaForUpdate (PUT: ``id`` is a required property)."""
        cached = self._schemas.get((res.path, put))
        if cached is None:
            from edfi_sandbox.validation import _writable

            cached = _writable(res.schema)
            if put:
                cached = {**cached, "properties": {"id": {"type": "string"}, **(cached.get("properties") or {})},
                          "required": ["id", *(cached.get("required") or [])]}
            self._schemas[(res.path, put)] = cached
        return cached

    def handle(self, res: Resource, item_id: str | None, req: Request, base: str) -> Reply:
        try:
            if req.method == "POST" and item_id is None:
                return self.post(res, req, base)
            if req.method == "PUT" and item_id is not None:
                return self.put(res, item_id, req, base)
            if req.method == "DELETE" and item_id is not None:
                return self.delete(res, item_id, req)
            raise Problem(405, "method-not-allowed", "Method Not Allowed", "The request construction was invalid.",
                          errors=[f"Method {req.method} is not allowed."])
        except Problem as exc:
            return _reply(exc)
        except AuthorizationDenied as exc:
            return _reply(_Forbidden(exc))
        except StoreError as exc:  # not expected: the checks above run first; keep the DMS shape
            return _reply(Problem(exc.status, exc.kind, exc.kind.split(":")[-1].replace("-", " ").title(),
                                  exc.message, exc.errors or None))

    def _body(self, res: Resource, req: Request, put: bool) -> dict[str, Any]:
        body = parse_body(req.body)
        if not isinstance(body, dict):
            raise _data_validation({"$.": ["The request body must be a JSON object."]})
        if not put and any(k.lower() == "id" for k in body):
            raise _data_validation({}, "The request data was constructed incorrectly.",
                                   ["Resource identifiers cannot be assigned by the client. The 'id' property"
                                    " should not be included in the request body."])
        schema = self.schema(res, put)
        body = prune(schema, coerce(schema, body))
        if res.is_descriptor:
            for name in TRIMMED:
                if isinstance(body.get(name), str):
                    body[name] = body[name].strip()
        errors = validate(schema, body)
        if errors:
            raise _data_validation(errors)
        return body

    def _authorize(self, res: Resource, req: Request, action: str, doc: dict[str, Any], proposed: bool) -> None:
        self.app._check_item(res, req, action, doc, proposed=proposed)

    def _location(self, res: Resource, base: str, item_id: str) -> str:
        return f"{self.app.layout.data_url(base)}{res.path}/{item_id}"

    def post(self, res: Resource, req: Request, base: str) -> Reply:
        from edfi_sandbox.app import Reply

        body = self._body(res, req, put=False)
        store = self.app.store
        # ResourceActionAuthorizationMiddleware maps POST to Create, whatever the upsert turns out to be
        self._authorize(res, req, "Create", body, proposed=True)
        existing = store.get_by_key(res.path, body)
        if_match = req.headers.get("if-match")
        if existing is None:
            reason = if_match_fails(if_match, None)
            if reason:
                raise _precondition(reason)
        else:
            reason = if_match_fails(if_match, existing.get("_etag"))
            if reason:
                raise _precondition(reason)
            # upsert-as-update: the stored values are authorized first, then the proposed ones (as a PUT)
            self._authorize(res, req, "Create", existing, proposed=False)
        self.refs.check(res, body)
        result = store.upsert(res.path, body)
        return Reply(201 if result.created else 200, b"",
                     {"Location": self._location(res, base, result.id), "ETag": f'"{result.etag}"'},
                     content_type=None)

    def put(self, res: Resource, item_id: str, req: Request, base: str) -> Reply:
        from edfi_sandbox.app import Reply

        body = self._body(res, req, put=True)
        if str(body.get("id", "")).replace("-", "").lower() != item_id.replace("-", "").lower():
            raise _bad_request("The request could not be processed. See 'errors' for details.",
                               ["Request body id must match the id in the url."])
        body.pop("id", None)
        store = self.app.store
        self._authorize(res, req, "Update", body, proposed=True)
        try:
            stored = orjson.loads(store.get(res.path, item_id))
        except StoreError:
            stored = None
        reason = if_match_fails(req.headers.get("if-match"), stored.get("_etag") if stored else None)
        if stored is None:
            if reason and (req.headers.get("if-match") or "").strip() == "*":
                raise _precondition(reason)
            raise Problem(404, "not-found", "Not Found", "Resource to update was not found")
        if reason:
            raise _precondition(reason)
        self._authorize(res, req, "Update", stored, proposed=False)
        old_key, new_key = res.natural_key(stored), res.natural_key(body)
        if key_hash(res.path, old_key) != key_hash(res.path, new_key):
            if res.is_descriptor:
                raise Problem(400, "bad-request:data-validation-failed:key-change-not-supported",
                              "Key Change Not Supported",
                              f"Identity of resource '{res.namespace}.{_cap(res.entity)}' cannot be changed. "
                              "Descriptor identity fields (Namespace, CodeValue) are immutable on PUT.")
            if not res.key_updatable:
                raise Problem(400, "bad-request:data-validation-failed:key-change-not-supported",
                              "Key Change Not Supported",
                              f"Identifying values for the {_cap(res.entity)} resource cannot be changed. Delete and"
                              " recreate the resource item instead.")
            if store.get_by_key(res.path, body) is not None:
                values = ",".join(f"({k} = {v})" for k, v in new_key.items())
                raise Problem(409, "identity-conflict", "Identifying Values Are Not Unique",
                              "The identifying value(s) of the item are the same as another item that already"
                              " exists.",
                              errors=[f"A natural key conflict occurred when attempting to update a resource"
                                      f" {_cap(res.entity)} with a duplicate key. The duplicate keys and values are"
                                      f" {values}"])
        self.refs.check(res, body)
        location = self._location(res, base, item_id)
        if _same(res, stored, body):  # the guarded no-op: nothing written, the etag stays
            return Reply(204, b"", {"Location": location, "ETag": f'"{stored["_etag"]}"'}, content_type=None)
        result = store.update(res.path, item_id, body)
        return Reply(204, b"", {"Location": location, "ETag": f'"{result.etag}"'}, content_type=None)

    def delete(self, res: Resource, item_id: str, req: Request) -> Reply:
        from edfi_sandbox.app import Reply

        store = self.app.store
        try:
            stored = orjson.loads(store.get(res.path, item_id))
        except StoreError:
            stored = None
        header = req.headers.get("if-match")
        if stored is None:
            if header is not None and header.strip() == "*":
                raise _precondition("TargetDoesNotExist")
            raise Problem(404, "not-found", "Not Found", "", empty=True)  # DeleteFailureNotExists: no body
        self._authorize(res, req, "Delete", stored, proposed=False)
        reason = if_match_fails(header, stored.get("_etag"))
        if reason:
            raise _precondition(reason)
        names = self._dependents(res, stored)
        if names:
            raise Problem(409, "data-conflict:dependent-item-exists", "Dependent Item Exists",
                          "The requested action cannot be performed because this item is referenced by existing"
                          f" {', '.join(names)} item(s).")
        store.delete(res.path, item_id)
        return Reply(204)

    def _dependents(self, res: Resource, stored: dict[str, Any]) -> list[str]:
        """The resources whose items reference ``stored``: document references (the store's refs), and for a
        descriptor every item that names it (DMS keeps descriptor references as foreign keys too)."""
        store = self.app.store
        hashed = key_hash(res.path, res.natural_key(stored))
        names: list[str] = []
        for path, _ in store._dependents_of(store._writer, hashed):
            src = self.app.model.get(path)
            name = _cap(src.entity) if src else path
            if name not in names:
                names.append(name)
        if res.is_descriptor:
            for name in self._descriptor_users(res, f"{stored.get('namespace')}#{stored.get('codeValue')}"):
                if name not in names:
                    names.append(name)
        return names

    def _descriptor_users(self, desc: Resource, value: str) -> list[str]:
        store = self.app.store
        needle = orjson.dumps(value)  # the value as it appears in a stored document
        users = []
        for res in self.app.model:
            paths = [p for p in res.descriptor_paths if self.app.model.descriptor_for(p[-1]) is desc]
            if not paths:
                continue
            rows = store._writer.execute(f'SELECT doc FROM "{store.table(res.path)}" WHERE instr(doc, ?) > 0',
                                         (needle,))
            for (blob,) in rows:
                doc = orjson.loads(blob)
                if any(v == value for p in paths for v, _ in _walk_paths(doc, p)):
                    users.append(_cap(res.entity))
                    break
        return users


def _same(res: Resource, stored: dict[str, Any], body: dict[str, Any]) -> bool:
    old = without_server_fields(stored)
    if res.is_descriptor:
        old.pop(f"{res.entity}Id", None)
    new = without_server_fields(body)
    # the store keeps empty collections where a payload had none: compare without them
    return _no_empty(old) == _no_empty(new)


def _no_empty(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v not in ([], None)}


class _Forbidden(Problem):
    """The 403 of a claim or strategy check, in DMS's problem shape (FailureResponse.ForForbidden)."""

    def __init__(self, exc: AuthorizationDenied) -> None:
        kind = exc.kind if exc.kind.startswith("security:authorization") else "security:authorization"
        super().__init__(403, kind, "Authorization Denied", exc.message, errors=list(exc.errors or []))

