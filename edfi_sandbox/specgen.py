"""The OpenAPI documents the sandbox serves, shaped the way each ODS/API version serves them.

An ODS/API publishes its model as two documents, ``resources`` and ``descriptors``
(``/metadata/data/v3/{resources,descriptors}/swagger.json``). Up to 7.0 they are Swagger 2.0;
from 7.1 on they are OpenAPI 3.0, with Swagger 2.0 still served on ``?version=2``. Besides the
resource paths they carry the change-query paths of the version: ``/deletes`` everywhere,
``/keyChanges`` from 6.0 on, ``/partitions`` and cursor paging from 7.3 on.

:func:`served_documents` builds both documents from an :class:`~edfi_core.openapi.ApiModel`:
the schemas are taken from the model's source documents (Swagger 2 or OpenAPI 3, converted when
the target format differs), the operations are generated per resource the way the ODS/API's
``OpenApiMetadataPathsFactory`` generates them, keeping each resource's own query parameters,
``x-Ed-Fi-isIdentity`` flags and ``x-Ed-Fi-isUpdatable``. :func:`change_queries_document` builds
the small ``availableChangeVersions`` document.

The documents share unchanged sub-objects (schemas, tags) with ``model.documents``: treat them as
read-only, serialize them once and serve the bytes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from edfi_core.openapi import JSON, ApiModel, Resource, ref_name, schemas_of

logger = logging.getLogger(__name__)

#: ODS/API versions the sandbox imitates.
SUPPORTED_VERSIONS = ("5.3", "6.1", "7.1", "7.3")

JSON_MEDIA = "application/json"
SECURITY_NAME = "oauth2_client_credentials"

#: Query parameters the server adds to collection GETs itself; a resource's own filters are the rest.
STANDARD_QUERY_PARAMS = frozenset(
    {"offset", "limit", "totalCount", "minChangeVersion", "maxChangeVersion", "pageToken", "pageSize",
     "fields", "q"}
)

_SWAGGER2_PARAM_SCHEMA_KEYS = frozenset(
    {"type", "format", "items", "collectionFormat", "default", "maximum", "exclusiveMaximum", "minimum",
     "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems",
     "enum", "multipleOf"}
)
_PARAM_FIELDS = frozenset({"name", "in", "description", "required", "schema"})

INFO: JSON = {
    "title": "Ed-Fi Operational Data Store API",
    "description": (
        "The Ed-Fi ODS / API enables applications to read and write education data stored in an Ed-Fi "
        "ODS through a secure REST interface. \n***\n > *Note: Consumers of ODS / API information should "
        "sanitize all data for display and storage. The ODS / API provides reasonable safeguards against "
        "cross-site scripting attacks and other malicious content, but the platform does not and cannot "
        "guarantee that the data it contains is free of all potentially harmful content.* \n***\n"
    ),
    "version": "3",
}
SECURITY_DESCRIPTION = "Ed-Fi ODS/API OAuth 2.0 Client Credentials Grant Type authorization"

NEXT_PAGE_TOKEN_DESCRIPTION = (
    "A token that can be used to retrieve the next contiguous page of items. If not present, it indicates "
    "that there are no more items in the current cursor paging context (which is the current partition if "
    "the starting token was obtained using the partitions endpoint)."
)
SNAPSHOT_405 = "Method Is Not Allowed. When the Use-Snapshot header is set to true, the method is not allowed."


# -- version rules ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionRules:
    """What one ODS/API version puts in its documents."""

    version: tuple[int, int]
    swagger2: bool

    @property
    def key_values(self) -> bool:
        """Deletes carry ``keyValues`` and ``/keyChanges`` exists (6.0+)."""
        return self.version >= (6, 0)

    @property
    def partitions(self) -> bool:
        """Cursor paging: ``/partitions``, ``pageToken``/``pageSize``, ``Next-Page-Token`` (ODS/API 7.3; DMS after
        v8.0.0, the sandbox's 8.1: Core/OpenApi/CursorPagingOpenApiAugmenter.cs is on DMS main only)."""
        return (7, 3) <= self.version < (8, 0) or self.version >= (8, 1)

    @property
    def dms(self) -> bool:
        """The Ed-Fi Data Management Service (8.x)."""
        return self.version >= (8, 0)

    @property
    def use_snapshot(self) -> bool:
        """Snapshots are asked for with ``Use-Snapshot: true`` (7.0+)."""
        return self.version >= (7, 0)

    @property
    def snapshot_identifier(self) -> bool:
        """Snapshots are chosen with ``Snapshot-Identifier`` (5.2 to 6.x)."""
        return (5, 2) <= self.version < (7, 0)

    @property
    def openapi_version(self) -> str:
        return "3.0.4" if self.version >= (7, 3) else "3.0.1"

    @property
    def min_limit(self) -> int:
        return 0  # limit=0 is a valid count-only request on every version


def version_rules(api_version: str, swagger2: bool | None = None) -> VersionRules:
    """Rules for ``api_version`` ("5.3", "7.3", "7.3.2" ...); ``swagger2`` None means the version's default."""
    m = re.match(r"^v?(\d+)\.(\d+)", api_version.strip())
    if not m:
        raise ValueError(f"not an ODS/API version: {api_version!r}")
    version = (int(m.group(1)), int(m.group(2)))
    if version < (5, 0):
        raise ValueError(f"ODS/API {api_version} is older than the sandbox supports (5.x and later)")
    if swagger2 is None:
        swagger2 = version < (7, 1)
    elif not swagger2 and version < (7, 1):
        logger.warning("ODS/API %s serves only Swagger 2.0; building OpenAPI 3 on request", api_version)
    return VersionRules(version, swagger2)


# -- Swagger 2 / OpenAPI 3 shapes ------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """A parameter independent of the document format; ``schema`` holds type, format, maxLength ..."""

    name: str
    where: str
    description: str
    schema: JSON
    required: bool = False
    extras: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_spec(cls, spec: JSON) -> Param:
        """Read a resolved Swagger 2 or OpenAPI 3 parameter."""
        if "schema" in spec:
            schema = dict(spec["schema"])
            extras = tuple((k, v) for k, v in spec.items() if k not in _PARAM_FIELDS)
        else:
            schema = {k: v for k, v in spec.items() if k in _SWAGGER2_PARAM_SCHEMA_KEYS}
            extras = tuple(
                (k, v) for k, v in spec.items() if k not in _PARAM_FIELDS and k not in schema
            )
        return cls(spec["name"], spec["in"], spec.get("description", ""), schema,
                   bool(spec.get("required")), extras)


class Style:
    """Writes document fragments in one format; :class:`Swagger2` or :class:`OpenApi3`."""

    swagger2: bool
    schema_prefix: str
    parameter_prefix: str
    response_prefix: str

    def schema_ref(self, name: str) -> JSON:
        return {"$ref": self.schema_prefix + name}

    def param_ref(self, key: str) -> JSON:
        return {"$ref": self.parameter_prefix + key}

    def response_ref(self, key: str) -> JSON:
        return {"$ref": self.response_prefix + key}

    def param(self, p: Param) -> JSON:
        raise NotImplementedError

    def set_body(self, op: JSON, schema_name: str, body_name: str, description: str) -> None:
        raise NotImplementedError

    def response(self, description: str, schema: JSON | None = None, *, json_content: bool = False,
                 headers: dict[str, JSON] | None = None) -> JSON:
        """A response; ``json_content`` marks an ``application/json`` body with no declared schema."""
        raise NotImplementedError

    def header(self, description: str, schema: JSON) -> JSON:
        raise NotImplementedError

    def convert_schema(self, node: JSON, refs: set[str]) -> JSON:
        """``node`` with every ``$ref`` rewritten for this format; referenced names go into ``refs``."""
        out: JSON = {}
        for key, value in node.items():
            if key == "$ref":
                if value:
                    name = ref_name(value)
                    refs.add(name)
                    value = self.schema_prefix + name
            elif key == "properties" and isinstance(value, dict):
                value = {p: self.convert_schema(s, refs) if isinstance(s, dict) else s
                         for p, s in value.items()}
            elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
                value = self.convert_schema(value, refs)
            elif key in ("allOf", "oneOf", "anyOf") and isinstance(value, list):
                value = [self.convert_schema(s, refs) if isinstance(s, dict) else s for s in value]
            else:
                key = self._schema_keyword(key)
            out[key] = value
        return out

    def _schema_keyword(self, key: str) -> str:
        return key


class Swagger2(Style):
    swagger2 = True
    schema_prefix = "#/definitions/"
    parameter_prefix = "#/parameters/"
    response_prefix = "#/responses/"

    def param(self, p: Param) -> JSON:
        out: JSON = {"name": p.name, "in": p.where, "description": p.description, "required": p.required}
        out.update(self.convert_schema(p.schema, set()))
        out.update(p.extras)
        return out

    def set_body(self, op: JSON, schema_name: str, body_name: str, description: str) -> None:
        op.setdefault("parameters", []).append(
            {"in": "body", "name": body_name, "description": description, "required": True,
             "schema": self.schema_ref(schema_name)}
        )
        op["consumes"] = [JSON_MEDIA]

    def response(self, description: str, schema: JSON | None = None, *, json_content: bool = False,
                 headers: dict[str, JSON] | None = None) -> JSON:
        out: JSON = {"description": description}
        if schema is not None:
            out["schema"] = schema
        if headers:
            out["headers"] = headers
        return out

    def header(self, description: str, schema: JSON) -> JSON:
        return {"description": description, **schema}

    def _schema_keyword(self, key: str) -> str:
        return "x-nullable" if key == "nullable" else key


class OpenApi3(Style):
    swagger2 = False
    schema_prefix = "#/components/schemas/"
    parameter_prefix = "#/components/parameters/"
    response_prefix = "#/components/responses/"

    def param(self, p: Param) -> JSON:
        out: JSON = {"name": p.name, "in": p.where, "description": p.description}
        if p.required:
            out["required"] = True
        out["schema"] = self.convert_schema(p.schema, set())
        out.update(p.extras)
        return out

    def set_body(self, op: JSON, schema_name: str, body_name: str, description: str) -> None:
        op["requestBody"] = {
            "description": description,
            "content": {JSON_MEDIA: {"schema": self.schema_ref(schema_name)}},
            "required": True,
            "x-bodyName": body_name,
        }

    def response(self, description: str, schema: JSON | None = None, *, json_content: bool = False,
                 headers: dict[str, JSON] | None = None) -> JSON:
        out: JSON = {"description": description}
        if headers:
            out["headers"] = headers
        if schema is not None:
            out["content"] = {JSON_MEDIA: {"schema": schema}}
        elif json_content:
            out["content"] = {JSON_MEDIA: {}}
        return out

    def header(self, description: str, schema: JSON) -> JSON:
        return {"description": description, "schema": dict(schema)}


def style_for(rules: VersionRules) -> Style:
    return Swagger2() if rules.swagger2 else OpenApi3()


# -- shared components -------------------------------------------------------------------------------
def _shared_parameters(rules: VersionRules) -> dict[str, Param]:
    total_count = (
        "Indicates if the total number of items available should be returned in the 'Total-Count' header "
        "of the response.  If set to false, 'Total-Count' header will not be provided."
    )
    if rules.partitions:
        total_count += " Must be false when using cursor paging (with pageToken)."
    int32 = {"type": "integer", "format": "int32"}
    int64 = {"type": "integer", "format": "int64"}
    params = {
        "offset": Param("offset", "query",
                        "Indicates how many items should be skipped before returning results.",
                        {**int32, "default": 0}),
        "limit": Param("limit", "query",
                       "Indicates the maximum number of items that should be returned in the results.",
                       {"maximum": 500, "minimum": rules.min_limit, **int32, "default": 25}),
        "MinChangeVersion": Param("minChangeVersion", "query",
                                  "Used in synchronization to set sequence minimum ChangeVersion", int64),
        "MaxChangeVersion": Param("maxChangeVersion", "query",
                                  "Used in synchronization to set sequence maximum ChangeVersion", int64),
        "If-None-Match": Param(
            "If-None-Match", "header",
            "The previously returned ETag header value, used here to prevent the unnecessary data transfer "
            "of an unchanged resource.", {"type": "string"}),
        "fields": Param(
            "fields", "query",
            "Specifies a subset of properties that should be returned for each entity (e.g. "
            "\"property1,collection1(collProp1,collProp2)\").", {"type": "string"}),
        "queryExpression": Param(
            "q", "query",
            "Specifies a query filter expression for the request. Currently only supports range-based "
            "queries on dates and numbers (e.g. \"schoolId:[255901000...255901002]\" and "
            "\"BeginDate:[2016-03-07...2016-03-10]\").", {"type": "string"}),
        "totalCount": Param("totalCount", "query", total_count, {"type": "boolean", "default": False}),
    }
    if rules.partitions:
        params["pageToken"] = Param(
            "pageToken", "query",
            "The token of the page to retrieve, obtained either from the \"Next-Page-Token\" header of the "
            "previous request, or from the \"partitions\" endpoint for the resource. Cannot be used with "
            "limit/offset paging.", {"type": "string"})
        params["pageSize"] = Param(
            "pageSize", "query",
            "The maximum number of items to retrieve in the page. For use with pageToken (cursor paging) "
            "only.", {"minimum": 0, **int32, "default": 25})
        params["numberOfPartitions"] = Param(
            "number", "query",
            "The number of evenly distributed partitions to provide for client-side parallel processing. "
            "If unspecified, a reasonable set of partitions will be determined based on the total number "
            "of accessible items.", {"maximum": 200, "minimum": 1, **int32})
    return params


def _shared_responses(rules: VersionRules, style: Style) -> dict[str, JSON]:
    r = style.response
    responses = {
        "Created": r("The resource was created.  An ETag value is available in the ETag header, and the "
                     "location of the resource is available in the Location header of the response."),
        "Updated": r("The resource was updated.  An updated ETag value is available in the ETag header of "
                     "the response."),
        "Deleted": r("The resource was successfully deleted."),
        "NotModified": r("The resource's current server-side ETag value matched the If-None-Match header "
                         "value supplied with the request indicating the resource has not been modified."),
        "BadRequest": r("Bad Request. The request was invalid and cannot be completed. See the response body "
                        "for specific validation errors. This will typically be an issue with the query "
                        "parameters or their values.", json_content=True),
        "Unauthorized": r("Unauthorized. The request requires authentication. The OAuth bearer token was "
                          "either not provided or is invalid. The operation may succeed once authentication "
                          "has been successfully completed."),
        "Forbidden": r("Forbidden. The request cannot be completed in the current authorization context. "
                       "Contact your administrator if you believe this operation should be allowed."),
        "NotFound": r("The resource could not be found."),
        "Conflict": r("Conflict.  The request cannot be completed because it would result in an invalid "
                      "state.  See the response body for details.", json_content=True),
        "PreconditionFailed": r("The resource's current server-side ETag value does not match the supplied "
                                "If-Match header value in the request. This indicates the resource has been "
                                "modified by another consumer."),
        "Error": r("An unhandled error occurred on the server. See the response body for details.",
                   json_content=True),
    }
    if rules.use_snapshot:
        responses["NotFoundUseSnapshot"] = r(
            "The resource could not be found. If Use-Snapshot header is set to true, this response can "
            "indicate the snapshot may have been removed.")
    if rules.partitions:
        responses["Partitions"] = r(
            "The partitions were successfully retrieved.",
            {"type": "object", "properties": {"pageTokens": {"type": "array", "items": {"type": "string"}}}})
    return responses


def _security(style: Style, token_url: str) -> tuple[str, JSON]:
    """The key and value of the OAuth client-credentials security definition."""
    if style.swagger2:
        return "securityDefinitions", {SECURITY_NAME: {
            "type": "oauth2", "description": SECURITY_DESCRIPTION, "flow": "application",
            "tokenUrl": token_url, "scopes": {}}}
    return "securitySchemes", {SECURITY_NAME: {
        "type": "oauth2", "description": SECURITY_DESCRIPTION,
        "flows": {"clientCredentials": {"tokenUrl": token_url, "scopes": {}}}}}


def _host_and_base_path(url: str) -> JSON:
    parts = urlsplit(url)
    out: JSON = {}
    if parts.netloc:
        out["host"] = parts.netloc
    out["basePath"] = parts.path.rstrip("/") or "/"
    return out


def _skeleton(style: Style, rules: VersionRules, info: JSON, url: str) -> JSON:
    """The top of a document, before paths and components."""
    if style.swagger2:
        return {"swagger": "2.0", "info": info, **_host_and_base_path(url),
                "consumes": [JSON_MEDIA], "produces": [JSON_MEDIA]}
    return {"openapi": rules.openapi_version, "info": info, "servers": [{"url": url}]}


def _assemble(style: Style, doc: JSON, *, paths: JSON, schemas: JSON, parameters: JSON,
              responses: JSON, token_url: str, tags: list[JSON]) -> JSON:
    sec_key, sec_value = _security(style, token_url)
    doc["paths"] = paths
    if style.swagger2:
        doc["definitions"] = schemas
        if parameters:
            doc["parameters"] = parameters
        if responses:
            doc["responses"] = responses
        doc[sec_key] = sec_value
    else:
        components: JSON = {"schemas": schemas}
        if responses:
            components["responses"] = responses
        if parameters:
            components["parameters"] = parameters
        components[sec_key] = sec_value
        doc["components"] = components
    doc["security"] = [{SECURITY_NAME: []}]
    doc["tags"] = tags
    return doc


# -- schemas -----------------------------------------------------------------------------------------
class SchemaPool:
    """Every schema of the model's documents, converted to one format on first use."""

    def __init__(self, model: ApiModel, style: Style) -> None:
        self.style = style
        self._sources: dict[str, tuple[JSON, bool | None]] = {}
        for doc in model.documents:
            swagger2 = "swagger" in doc
            for name, schema in schemas_of(doc).items():
                self._sources.setdefault(name, (schema, swagger2))
        for res in model:  # a model built without documents still has its resources' own schemas
            self._sources.setdefault(res.schema_name, (res.raw_schema, None))
        self._converted: dict[str, tuple[JSON, frozenset[str]]] = {}
        self._missing: set[str] = set()

    def source(self, name: str) -> JSON | None:
        entry = self._sources.get(name)
        return entry[0] if entry else None

    def get(self, name: str) -> tuple[JSON, frozenset[str]] | None:
        """The converted schema and the names it references, or None if the model lacks it."""
        done = self._converted.get(name)
        if done is not None:
            return done
        entry = self._sources.get(name)
        if entry is None:
            if name not in self._missing:
                self._missing.add(name)
                logger.warning("schema %r is referenced but not defined in the model's documents", name)
            return None
        schema, swagger2 = entry
        refs: set[str] = set()
        if swagger2 is self.style.swagger2:
            _collect_refs(schema, refs)  # same format: serve the source object itself
        else:
            schema = self.style.convert_schema(schema, refs)
        done = (schema, frozenset(refs))
        self._converted[name] = done
        return done

    def closure(self, roots: Iterable[str]) -> dict[str, JSON]:
        """The named schemas and every schema they reach through ``$ref``, sorted by name."""
        out: dict[str, JSON] = {}
        stack = list(roots)
        while stack:
            name = stack.pop()
            if name in out:
                continue
            found = self.get(name)
            if found is None:
                continue
            out[name] = found[0]
            stack.extend(r for r in found[1] if r not in out)
        return dict(sorted(out.items()))


def _collect_refs(node: Any, refs: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                if value:
                    refs.add(ref_name(value))
            elif isinstance(value, (dict, list)):
                _collect_refs(value, refs)
    elif isinstance(node, list):
        for value in node:
            if isinstance(value, (dict, list)):
                _collect_refs(value, refs)


def tracked_change_names(res: Resource) -> tuple[str, str, str]:
    """Schema names of a resource's key, delete and key-change items, as the ODS/API names them."""
    base = f"trackedChanges_{res.schema_name}"
    return f"{base}Key", f"{base}Delete", f"{base}KeyChange"


def _key_field_schema(res: Resource, path: tuple[str, ...], pool: SchemaPool, style: Style) -> JSON:
    node: JSON | None = res.raw_schema
    for part in path:
        spec = ((node or {}).get("properties") or {}).get(part)
        if isinstance(spec, dict) and spec.get("$ref"):
            spec = pool.source(ref_name(spec["$ref"]))
        node = spec
    if not isinstance(node, dict):
        logger.warning("%s: key field %s not found in its schema", res.path, ".".join(path))
        return {"type": "string", "x-Ed-Fi-isIdentity": True}
    leaf = {k: v for k, v in node.items() if k not in ("x-nullable", "nullable", "$ref")}
    leaf["x-Ed-Fi-isIdentity"] = True
    return style.convert_schema(leaf, set())


def tracked_change_schemas(res: Resource, rules: VersionRules, pool: SchemaPool, style: Style) -> JSON:
    """The ``trackedChanges_*`` schemas of one resource's ``/deletes`` and ``/keyChanges`` items."""
    key_name, delete_name, key_change_name = tracked_change_names(res)
    if not rules.key_values:
        return {delete_name: {"type": "object", "properties": _change_item()}}
    key_props = {name: _key_field_schema(res, path, pool, style) for name, path in res.key_paths.items()}
    return {
        delete_name: {"type": "object",
                      "properties": {**_change_item(), "keyValues": style.schema_ref(key_name)}},
        key_name: {"type": "object", "properties": key_props},
        key_change_name: {"type": "object", "properties": {
            **_change_item(), "oldKeyValues": style.schema_ref(key_name),
            "newKeyValues": style.schema_ref(key_name)}},
    }


def _change_item() -> JSON:
    return {"id": {"type": "string", "description": "Resource identifier"},
            "changeVersion": {"type": "number", "description": "Change version"}}


# -- operations --------------------------------------------------------------------------------------
def _upper_first(s: str) -> str:
    return s[:1].upper() + s[1:]


class OperationFactory:
    """The path items of one resource, as ``OpenApiMetadataPathsFactory`` writes them."""

    def __init__(self, rules: VersionRules, style: Style) -> None:
        self.rules = rules
        self.style = style
        self._operation_ids: set[str] = set()

    # -- helpers ----------------------------------------------------------------------------------
    def _op_id(self, res: Resource, op_id: str) -> str:
        if op_id in self._operation_ids:  # same collection name in two namespaces
            op_id = f"{op_id}{_upper_first(re.sub(r'[^A-Za-z0-9]', '', res.namespace))}"
        self._operation_ids.add(op_id)
        return op_id

    def _refs(self, *keys: str) -> list[JSON]:
        return [self.style.param_ref(k) for k in keys]

    def _snapshot_params(self) -> list[JSON]:
        if self.rules.use_snapshot:
            return [self.style.param(Param("Use-Snapshot", "header",
                                           "Indicates if the configured Snapshot should be used.",
                                           {"type": "boolean", "default": False}))]
        if self.rules.snapshot_identifier:
            return [self.style.param(Param("Snapshot-Identifier", "header",
                                           "Indicates the Snapshot that should be used.", {"type": "string"}))]
        return []

    def _id_param(self) -> JSON:
        return self.style.param(Param("id", "path", "A resource identifier that uniquely identifies the resource.",
                                      {"type": "string"}, required=True))

    def _if_match(self, action: str) -> JSON:
        return self.style.param(Param(
            "If-Match", "header",
            f"The ETag header value used to prevent the {action} a resource modified by another consumer.",
            {"type": "string"}))

    def _responses(self, codes: Iterable[str], *, read: bool = False, **own: JSON) -> JSON:
        names = {"200": "Updated", "201": "Created", "204": "Updated", "304": "NotModified",
                 "400": "BadRequest", "401": "Unauthorized", "403": "Forbidden", "404": "NotFound",
                 "409": "Conflict", "412": "PreconditionFailed", "500": "Error"}
        if read and self.rules.use_snapshot:
            names["404"] = "NotFoundUseSnapshot"
        out: JSON = {}
        for code in codes:
            if code in own:
                out[code] = own[code]
            elif code == "405":
                if self.rules.use_snapshot:
                    out[code] = self.style.response(SNAPSHOT_405)
            else:
                out[code] = self.style.response_ref(names[code])
        return out

    def _array_of(self, schema_name: str) -> JSON:
        return {"type": "array", "items": self.style.schema_ref(schema_name)}

    def _operation(self, res: Resource, op_id: str, summary: str, description: str) -> JSON:
        return {"tags": [res.name], "summary": summary, "description": description,
                "operationId": self._op_id(res, op_id)}

    def _get_op(self, op: JSON, params: list[JSON], responses: JSON) -> JSON:
        if self.style.swagger2:
            op["produces"] = [JSON_MEDIA]
        op["parameters"] = params
        op["responses"] = responses
        return op

    # -- path items ---------------------------------------------------------------------------------
    def _filters(self, res: Resource) -> list[JSON]:
        """The resource's own query parameters (fresh objects for every operation)."""
        return [self.style.param(Param.from_spec(p)) for p in res.query_params
                if p.get("name") not in STANDARD_QUERY_PARAMS]

    def path_items(self, res: Resource) -> dict[str, JSON]:
        items = {
            res.path: {"get": self.get_many(res), "post": self.post(res)},
            f"{res.path}/{{id}}": {"get": self.get_by_id(res), "put": self.put(res),
                                  "delete": self.delete(res)},
        }
        if res.name != "schoolYearTypes" or self.rules.dms:  # DMS: a regular resource for change queries
            _, delete_name, key_change_name = tracked_change_names(res)
            items[f"{res.path}/deletes"] = {"get": self.tracked_changes(res, "deletes", delete_name)}
            if self.rules.key_values:
                items[f"{res.path}/keyChanges"] = {"get": self.tracked_changes(res, "keyChanges",
                                                                              key_change_name)}
        if self.rules.partitions:
            items[f"{res.path}/partitions"] = {"get": self.partitions(res)}
        return items

    def get_many(self, res: Resource) -> JSON:
        paging = ["offset", "limit", *(["pageToken", "pageSize"] if self.rules.partitions else [])]
        params = [*self._refs(*paging, "MinChangeVersion", "MaxChangeVersion", "totalCount"),
                  *self._filters(res), *self._snapshot_params()]
        headers = None
        if self.rules.partitions:
            headers = {"Next-Page-Token": self.style.header(NEXT_PAGE_TOKEN_DESCRIPTION, {"type": "string"})}
        ok = self.style.response("The requested resource was successfully retrieved.",
                                 self._array_of(res.schema_name), headers=headers)
        op = self._operation(
            res, f"get{_upper_first(res.name)}",
            "Retrieves specific resources using the resource's property values (using the \"Get\" pattern).",
            "This GET operation provides access to resources using the \"Get\" search pattern.  The values "
            "of any properties of the resource that are specified will be used to return all matching "
            "results (if it exists).")
        return self._get_op(op, params, self._responses(
            ("200", "304", "400", "401", "403", "404", "500"), read=True, **{"200": ok}))

    def post(self, res: Resource) -> JSON:
        op = self._operation(
            res, f"post{_upper_first(res.entity)}",
            "Creates or updates resources based on the natural key values of the supplied resource.",
            "The POST operation can be used to create or update resources. In database terms, this is often "
            "referred to as an \"upsert\" operation (insert + update). Clients should NOT include the "
            "resource \"id\" in the JSON body because it will result in an error. The web service will "
            "identify whether the resource already exists based on the natural key values provided, and "
            "update or create the resource appropriately. It is recommended to use POST for both create and "
            "update except while updating natural key of a resource in which case PUT operation must be "
            "used.")
        self._body(op, res)
        op["responses"] = self._responses(("200", "201", "400", "401", "403", "405", "409", "412", "500"))
        return op

    def get_by_id(self, res: Resource) -> JSON:
        ok = self.style.response("The requested resource was successfully retrieved.",
                                 self.style.schema_ref(res.schema_name))
        op = self._operation(
            res, f"get{_upper_first(res.name)}ById",
            "Retrieves a specific resource using the resource's identifier (using the \"Get By Id\" pattern).",
            "This GET operation retrieves a resource by the specified resource identifier.")
        params = [self._id_param(), *self._refs("If-None-Match"), *self._snapshot_params()]
        return self._get_op(op, params, self._responses(
            ("200", "304", "400", "401", "403", "404", "500"), read=True, **{"200": ok}))

    def put(self, res: Resource) -> JSON:
        if res.key_updatable:
            description = (
                "The PUT operation is used to update a resource by identifier. If the resource identifier "
                "(\"id\") is provided in the JSON body, it will be ignored. Additionally, if natural key values "
                "are being updated by the JSON body, those changes will be applied to the resource and will "
                "also cascade through to dependent resources.")
        else:
            description = (
                "The PUT operation is used to update a resource by identifier. If the resource identifier "
                "(\"id\") is provided in the JSON body, it will be ignored. Additionally, this API resource is "
                "not configured for cascading natural key updates. Natural key values for this resource cannot "
                "be changed using PUT operation, so the recommendation is to use POST as that supports upsert "
                "behavior.")
        op = self._operation(res, f"put{_upper_first(res.entity)}",
                             "Updates a resource based on the resource identifier.", description)
        op["parameters"] = [self._id_param(), self._if_match("PUT from updating")]
        self._body(op, res)
        op["responses"] = self._responses(("204", "400", "401", "403", "404", "405", "409", "412", "500"))
        if res.key_updatable:
            op["x-Ed-Fi-isUpdatable"] = True
        return op

    def delete(self, res: Resource) -> JSON:
        op = self._operation(
            res, f"delete{_upper_first(res.entity)}ById",
            "Deletes an existing resource using the resource identifier.",
            "The DELETE operation is used to delete an existing resource by identifier. If the resource "
            "doesn't exist, an error will result (the resource will not be found).")
        if self.style.swagger2:
            op["consumes"] = [JSON_MEDIA]
        op["parameters"] = [self._id_param(), self._if_match("DELETE from removing")]
        op["responses"] = self._responses(("204", "400", "401", "403", "404", "405", "409", "412", "500"),
                                          **{"204": self.style.response_ref("Deleted")})
        return op

    def tracked_changes(self, res: Resource, kind: str, item_schema: str) -> JSON:
        if kind == "deletes":
            summary = "Retrieves deleted resources based on change version."
            description = ("This operation is used to retrieve identifying information about resources that "
                           "have been deleted.")
        else:
            summary = "Retrieves resources key changes based on change version."
            description = ("This operation is used to retrieve identifying information about resources whose "
                           "key values have been changed.")
        op = self._operation(res, f"{kind}{_upper_first(res.name)}", summary, description)
        params = [*self._refs("offset", "limit", "MinChangeVersion", "MaxChangeVersion", "totalCount"),
                  *self._snapshot_params()]
        ok = self.style.response("The requested resource was successfully retrieved.",
                                 self._array_of(item_schema))
        return self._get_op(op, params, self._responses(
            ("200", "304", "400", "401", "403", "404", "500"), read=True, **{"200": ok}))

    def partitions(self, res: Resource) -> JSON:
        op = self._operation(
            res, f"get{_upper_first(res.name)}Partitions",
            "Retrieves a set of page tokens to be used for efficient client-side parallel processing.",
            "Computes an evenly distributed set of partitions over the accessible data and returns a set of "
            "page tokens, each representing the first page of one of the partitions.")
        params = [*self._refs("numberOfPartitions", "MinChangeVersion", "MaxChangeVersion"),
                  *self._filters(res), *self._snapshot_params()]
        return self._get_op(op, params, self._responses(
            ("200", "400", "401", "403", "500"), **{"200": self.style.response_ref("Partitions")}))

    def _body(self, op: JSON, res: Resource) -> None:
        self.style.set_body(
            op, res.schema_name, res.entity,
            f"The JSON representation of the \"{res.entity}\" resource to be created or updated.")


# -- documents ---------------------------------------------------------------------------------------
def _source_tags(model: ApiModel) -> dict[str, JSON]:
    tags: dict[str, JSON] = {}
    for doc in model.documents:
        for tag in doc.get("tags") or []:
            if isinstance(tag, dict) and "name" in tag:
                tags.setdefault(tag["name"], tag)
    return tags


class DocumentBuilder:
    """Builds the served documents of one model for one version and format."""

    def __init__(self, model: ApiModel, rules: VersionRules, data_api_url: str, oauth_url: str) -> None:
        self.model = model
        self.rules = rules
        self.style = style_for(rules)
        self.data_api_url = data_api_url
        self.oauth_url = oauth_url
        self.pool = SchemaPool(model, self.style)
        self.tags = _source_tags(model)
        self.parameters = _shared_parameters(rules)

    def document(self, resources: list[Resource]) -> JSON:
        factory = OperationFactory(self.rules, self.style)
        paths: JSON = {}
        extra_schemas: JSON = {}
        for res in resources:
            paths.update(factory.path_items(res))
            if res.name != "schoolYearTypes" or self.rules.dms:
                extra_schemas.update(tracked_change_schemas(res, self.rules, self.pool, self.style))
        schemas = self.pool.closure(r.schema_name for r in resources)
        schemas.update(extra_schemas)
        tag_names = dict.fromkeys(r.name for r in resources)
        tags = [self.tags.get(name) or {"name": name} for name in tag_names]
        parameters = {key: self.style.param(p) for key, p in self.parameters.items()}
        doc = _skeleton(self.style, self.rules, dict(INFO), self.data_api_url)
        return _assemble(self.style, doc, paths=paths, schemas=schemas, parameters=parameters,
                         responses=_shared_responses(self.rules, self.style), token_url=self.oauth_url,
                         tags=tags)


def served_documents(model: ApiModel, api_version: str, data_api_url: str, oauth_url: str, *,
                     swagger2: bool | None = None) -> dict[str, JSON]:
    """The ``resources`` and ``descriptors`` documents an ODS/API of ``api_version`` serves for ``model``.

    ``data_api_url`` is the data API's base (``https://host/data/v3``: Swagger 2 ``host`` and
    ``basePath``, OpenAPI 3 ``servers``); ``oauth_url`` the token URL. ``swagger2`` None gives the
    version's own format (Swagger 2 before 7.1, OpenAPI 3 from 7.1); True is what 7.1+ serves on
    ``?version=2``.
    """
    rules = version_rules(api_version, swagger2)
    builder = DocumentBuilder(model, rules, data_api_url, oauth_url)
    groups = {"resources": [r for r in model if not r.is_descriptor],
              "descriptors": [r for r in model if r.is_descriptor]}
    docs = {name: builder.document(group) for name, group in groups.items()}
    logger.debug("built %s documents for ODS/API %s (%d resources)",
                 "Swagger 2" if rules.swagger2 else "OpenAPI 3", api_version, len(model))
    return docs


# -- change queries ----------------------------------------------------------------------------------
def change_queries_document(api_version: str, url: str, *, oauth_url: str = "",
                            swagger2: bool | None = None) -> JSON:
    """The change-queries API document (``availableChangeVersions``; ``snapshots`` on 5.2 to 6.x).

    ``url`` is the change-queries base (``https://host/changeQueries/v1``).
    """
    rules = version_rules(api_version, swagger2)
    style = style_for(rules)
    schemas: JSON = {"availableChangeVersion": {
        "type": "object",
        "required": ["oldestChangeVersion", "newestChangeVersion"],
        "properties": {"oldestChangeVersion": {"type": "integer", "format": "int64"},
                       "newestChangeVersion": {"type": "integer", "format": "int64"}},
    }}
    paths: JSON = {"/availableChangeVersions": {"get": _available_change_versions_op(rules, style)}}
    tags = [{"name": "availableChangeVersions",
             "description": "Gets the change versions for the earliest (oldest) and most recent (newest) "
                            "changes available."}]
    if rules.snapshot_identifier:
        schemas["snapshot"] = {"type": "object", "properties": {
            "id": {"type": "string", "description": "The unique identifier of the snapshot."},
            "snapshotIdentifier": {"type": "string",
                                   "description": "The value to send in the Snapshot-Identifier header."},
            "snapshotDateTime": {"type": "string", "format": "date-time",
                                 "description": "The date and time the snapshot was taken."},
        }}
        paths["/snapshots"] = {"get": _snapshots_op(style)}
        tags.append({"name": "snapshots", "description": "The snapshots available for change queries."})
    info = {
        "title": "Available Change Versions API Endpoint",
        "description": "The Available Change Versions API Endpoint provides the change versions for the "
                       "earliest (oldest) and most recent (newest) changes available.  This endpoint is used "
                       "to determine the range of change versions that can be used in change queries.\n",
        "version": "1.0.0",
    }
    doc = _skeleton(style, rules, info, url)
    responses = {
        "Unauthorized": style.response(
            "Unauthorized. The request requires authentication. The OAuth bearer token was either not "
            "provided or is invalid. The operation may succeed once authentication has been successfully "
            "completed."),
        "Error": style.response("An unhandled error occurred on the server. See the response body for "
                                "details.", json_content=True),
    }
    return _assemble(style, doc, paths=paths, schemas=schemas, parameters={}, responses=responses,
                     token_url=oauth_url, tags=tags)


def discovery_document(root_url: str) -> JSON:
    """DMS's ``discovery-spec.json`` (the "Discovery" section of ``/metadata/specifications``): the root
    document's one operation."""
    return {
        "openapi": "3.0.1",
        "info": {"title": "Ed-Fi Discovery API", "version": "1"},
        "servers": [{"url": root_url}],
        "paths": {"/": {"get": {
            "summary": "Information about the API: version, data models and URLs.",
            "operationId": "getDiscovery",
            "responses": {"200": {"description": "The discovery document."}},
        }}},
    }


def _available_change_versions_op(rules: VersionRules, style: Style) -> JSON:
    responses: JSON = {
        "200": style.response("The resource was successfully retrieved.",
                              style.schema_ref("availableChangeVersion")),
        "401": style.response_ref("Unauthorized"),
        "403": style.response(
            "Forbidden.  The request cannot be completed in the current authorization context.  Contact "
            "your administrator if you believe this operation should be allowed."),
    }
    if rules.use_snapshot:
        responses["404"] = style.response(
            "Not Found.  An attempt to connect to the database snapshot, enabled by the Use-Snapshot header, "
            "was unsuccessful (indicating the snapshot may have been removed).")
    responses["500"] = style.response_ref("Error")
    op: JSON = {"tags": ["availableChangeVersions"],
                "summary": "Gets the change versions for the earliest (oldest) and most recent (newest) "
                           "changes available.",
                "operationId": "getAvailableChangeVersions"}
    if style.swagger2:
        op["produces"] = [JSON_MEDIA]
    op["responses"] = responses
    return op


def _snapshots_op(style: Style) -> JSON:
    op: JSON = {"tags": ["snapshots"], "summary": "Lists the snapshots available for change queries.",
                "operationId": "getSnapshots"}
    if style.swagger2:
        op["produces"] = [JSON_MEDIA]
    op["responses"] = {
        "200": style.response("The snapshots were successfully retrieved.",
                              {"type": "array", "items": style.schema_ref("snapshot")}),
        "401": style.response_ref("Unauthorized"),
        "500": style.response_ref("Error"),
    }
    return op


__all__ = [
    "SUPPORTED_VERSIONS",
    "VersionRules",
    "change_queries_document",
    "served_documents",
    "tracked_change_names",
    "version_rules",
]
