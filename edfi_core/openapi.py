"""The Ed-Fi API model read from OpenAPI documents (Swagger 2.0 or OpenAPI 3.x).

An Ed-Fi resources or descriptors document describes every resource as a pair of paths
(``/{namespace}/{collection}`` and ``/{namespace}/{collection}/{id}``) and a schema named
``{prefix}_{entity}`` (``edFi_studentSchoolAssociation``). Identity properties carry
``x-Ed-Fi-isIdentity``, references are ``$ref``s to ``{prefix}_{entity}Reference`` schemas, and
key-updatable resources carry ``x-Ed-Fi-isUpdatable`` on their PUT operation. This module turns
such documents into :class:`ApiModel`, the one description of an API that the tap, the target and
the sandbox all use.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

JSON = dict[str, Any]

#: Person resources: listed twice in the dependency order from DS 4.0 on.
PERSON_RESOURCES = ("students", "staffs", "parents", "contacts")

#: Metadata fields the API adds to every item it returns; a client must never send them.
SERVER_FIELDS = frozenset({"id", "_etag", "_lastModifiedDate", "link"})


def without_server_fields(node: Any) -> Any:
    """An item as a client would send it: ``SERVER_FIELDS`` dropped at every level."""
    if isinstance(node, dict):
        return {k: without_server_fields(v) for k, v in node.items() if k not in SERVER_FIELDS}
    if isinstance(node, list):
        return [without_server_fields(v) for v in node]
    return node


class SpecError(ValueError):
    """An OpenAPI document that cannot be read as an Ed-Fi API description."""


@dataclass(frozen=True)
class Reference:
    """A reference property: ``studentReference`` -> the entity ``edFi_student``."""

    path: tuple[str, ...]  # JSON path to the reference object; "[]" marks an array
    target_schema: str  # schema name of the referenced entity, e.g. "edFi_student"
    fields: tuple[str, ...]  # identity fields of the target, as named in the reference
    required: bool
    identity: bool

    @property
    def prop(self) -> str:
        return self.path[-1]

    @property
    def top_level(self) -> bool:
        return len(self.path) == 1


@dataclass
class Resource:
    """One Ed-Fi resource or descriptor collection."""

    namespace: str  # "ed-fi", "tpdm", "sample"
    name: str  # collection segment: "studentSchoolAssociations"
    schema_name: str  # "edFi_studentSchoolAssociation"
    raw_schema: JSON  # the schema as written, with $refs
    schema: JSON  # every $ref resolved
    identity: tuple[str, ...]  # top-level identity properties, scalars and references
    key_paths: dict[str, tuple[str, ...]]  # flattened natural key field -> path in the document
    references: list[Reference]
    field_paths: dict[str, tuple[str, ...]]  # every flattened top-level field (query parameters)
    descriptor_paths: list[tuple[str, ...]]
    is_descriptor: bool
    key_updatable: bool
    query_params: list[JSON] = field(default_factory=list)
    has_deletes: bool = True
    has_key_changes: bool = True
    has_partitions: bool = False  # the documents show a ``/partitions`` path (cursor paging: ODS/API 7.3, DMS main)

    @property
    def path(self) -> str:
        return f"/{self.namespace}/{self.name}"

    @property
    def key_fields(self) -> tuple[str, ...]:
        return tuple(self.key_paths)

    @property
    def is_person(self) -> bool:
        return self.namespace == "ed-fi" and self.name in PERSON_RESOURCES

    @property
    def entity(self) -> str:
        """The entity name, ``studentSchoolAssociation`` for ``edFi_studentSchoolAssociation``."""
        return self.schema_name.split("_", 1)[1] if "_" in self.schema_name else self.schema_name

    def natural_key(self, doc: JSON) -> dict[str, Any]:
        """The flattened natural key of a document (missing parts are ``None``)."""
        return {name: value_at(doc, path) for name, path in self.key_paths.items()}

    def __repr__(self) -> str:  # dataclass repr would print whole schemas
        return f"Resource({self.path})"


def value_at(doc: Any, path: tuple[str, ...]) -> Any:
    """The value at a path of nested objects (None where an object or the value is missing)."""
    for part in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


class ApiModel:
    """All resources and descriptors of one API, keyed by path (``/ed-fi/students``)."""

    def __init__(self, resources: Iterable[Resource], documents: Iterable[JSON] = ()) -> None:
        self.resources: dict[str, Resource] = {}
        for res in resources:
            self.resources[res.path] = res
        self.documents = list(documents)
        self._by_schema = {r.schema_name: r for r in self.resources.values()}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_documents(cls, docs: Iterable[JSON]) -> ApiModel:
        docs = list(docs)
        resources: list[Resource] = []
        for doc in docs:
            resources.extend(parse_document(doc))
        return cls(resources, docs)

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> ApiModel:
        return cls.from_documents(load_document(p) for p in paths)

    # -- lookups ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Resource]:
        return iter(self.resources.values())

    def __len__(self) -> int:
        return len(self.resources)

    def __contains__(self, path: object) -> bool:
        return path in self.resources

    def get(self, path: str) -> Resource | None:
        return self.resources.get(path)

    def by_schema(self, schema_name: str) -> Resource | None:
        return self._by_schema.get(schema_name)

    @cached_property
    def descriptors(self) -> list[Resource]:
        return [r for r in self if r.is_descriptor]

    @cached_property
    def _descriptor_by_lower_entity(self) -> dict[str, Resource]:
        return {r.entity.lower(): r for r in self.descriptors}

    def descriptor_for(self, prop: str) -> Resource | None:
        """The descriptor resource a descriptor property points to (role names resolved by suffix).

        ``entryGradeLevelDescriptor`` -> ``gradeLevelDescriptors``; the longest matching suffix wins.
        """
        low = prop.lower()
        cache = self._descriptor_for_cache
        if low in cache:
            return cache[low]
        best: Resource | None = None
        for entity, res in self._descriptor_by_lower_entity.items():
            if low.endswith(entity) and (best is None or len(entity) > len(best.entity)):
                best = res
        cache[low] = best
        return best

    @cached_property
    def _descriptor_for_cache(self) -> dict[str, Resource | None]:
        return {}

    def reference_targets(self, ref: Reference) -> list[Resource]:
        """Concrete resources a reference may point to.

        A reference to a concrete entity has one target. A reference to an abstract entity
        (``educationOrganizationReference``) may be satisfied by any resource whose flattened
        key is made of the same number of fields, one of them named like the abstract id.
        """
        res = self.by_schema(ref.target_schema)
        if res is not None:
            return [res]
        return self.abstract_members(ref.target_schema)

    def abstract_members(self, schema_name: str) -> list[Resource]:
        entity = schema_name.split("_", 1)[-1]
        members = ABSTRACT_ENTITIES.get(entity)
        if not members:
            return []
        prefix = schema_name.split("_", 1)[0] + "_"
        return [r for m in members if (r := self.by_schema(prefix + m)) is not None]


#: Abstract entities of the Ed-Fi data standard and the concrete entities that implement them.
ABSTRACT_ENTITIES: dict[str, tuple[str, ...]] = {
    "educationOrganization": (
        "school",
        "localEducationAgency",
        "stateEducationAgency",
        "educationServiceCenter",
        "communityOrganization",
        "communityProvider",
        "postSecondaryInstitution",
        "educationOrganizationNetwork",
        "organizationDepartment",
        "educatorPreparationProgram",
    ),
    "generalStudentProgramAssociation": (
        "studentProgramAssociation",
        "studentSpecialEducationProgramAssociation",
        "studentTitleIPartAProgramAssociation",
        "studentMigrantEducationProgramAssociation",
        "studentHomelessProgramAssociation",
        "studentCTEProgramAssociation",
        "studentNeglectedOrDelinquentProgramAssociation",
        "studentSchoolFoodServiceProgramAssociation",
        "studentLanguageInstructionProgramAssociation",
    ),
}


# -- reading documents ----------------------------------------------------------------------------
def load_document(path: str | Path) -> JSON:
    """Read a Swagger 2 or OpenAPI 3 document, JSON or YAML."""
    text = Path(path).read_text(encoding="utf-8")
    return parse_text(text, str(path))


def parse_text(text: str, origin: str = "<document>") -> JSON:
    stripped = text.lstrip()
    if stripped.startswith("{"):
        doc = json.loads(text)
    else:
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        doc = yaml.load(text, Loader=loader)
    if not isinstance(doc, dict) or not ("swagger" in doc or "openapi" in doc):
        raise SpecError(f"{origin}: not a Swagger 2 or OpenAPI 3 document")
    return doc


def schemas_of(doc: JSON) -> dict[str, JSON]:
    if "swagger" in doc:
        return doc.get("definitions") or {}
    return (doc.get("components") or {}).get("schemas") or {}


_REF = re.compile(r"^#/(?:definitions|components/schemas)/(.+)$")
_COLLECTION = re.compile(r"^/([^/{}]+)/([^/{}]+)$")


def ref_name(ref: str) -> str:
    m = _REF.match(ref)
    if not m:
        raise SpecError(f"unsupported $ref {ref!r}")
    return m.group(1)


class _Resolver:
    def __init__(self, schemas: dict[str, JSON]) -> None:
        self.schemas = schemas
        self.cache: dict[str, JSON] = {}

    def resolve(self, node: Any, stack: tuple[str, ...] = ()) -> Any:
        if isinstance(node, dict):
            if node.get("$ref") == "":  # seen in converted specs: an open schema
                return {"type": "object"}
            if "$ref" in node:
                name = ref_name(node["$ref"])
                if name in stack:  # recursive schema: stop with an open object
                    return {"type": "object"}
                if name not in self.cache:
                    target = self.schemas.get(name)
                    if target is None:
                        raise SpecError(f"$ref to unknown schema {name!r}")
                    self.cache[name] = self.resolve(target, (*stack, name))
                return copy.deepcopy(self.cache[name])
            return {k: self.resolve(v, stack) for k, v in node.items()}
        if isinstance(node, list):
            return [self.resolve(v, stack) for v in node]
        return node


def _item_schema_name(doc: JSON, ops: JSON) -> str | None:
    post = ops.get("post") or {}
    if "swagger" in doc:
        for p in post.get("parameters") or []:
            if p.get("in") == "body" and "$ref" in (p.get("schema") or {}):
                return ref_name(p["schema"]["$ref"])
    else:
        body = post.get("requestBody") or {}
        for media in (body.get("content") or {}).values():
            if "$ref" in (media.get("schema") or {}):
                return ref_name(media["schema"]["$ref"])
    get = ops.get("get") or {}
    for code in ("200",):
        resp = (get.get("responses") or {}).get(code) or {}
        schema = resp.get("schema")
        if schema is None:
            for media in (resp.get("content") or {}).values():
                schema = media.get("schema")
        if isinstance(schema, dict):
            items = schema.get("items") or {}
            if "$ref" in items:
                return ref_name(items["$ref"])
    return None


def _query_params(doc: JSON, ops: JSON) -> list[JSON]:
    params = []
    shared = doc.get("parameters") or (doc.get("components") or {}).get("parameters") or {}
    for p in (ops.get("get") or {}).get("parameters") or []:
        if "$ref" in p:
            p = shared.get(p["$ref"].rsplit("/", 1)[-1], {})
        if p.get("in") == "query":
            params.append(p)
    return params


def parse_document(doc: JSON) -> list[Resource]:
    """Every resource described by one Swagger 2 or OpenAPI 3 document."""
    schemas = schemas_of(doc)
    resolver = _Resolver(schemas)
    paths: JSON = doc.get("paths") or {}
    resources: list[Resource] = []
    for path, ops in paths.items():
        m = _COLLECTION.match(path)
        if not m or not isinstance(ops, dict) or "get" not in ops:
            continue
        namespace, name = m.groups()
        if name in ("deletes", "keyChanges", "partitions"):
            continue
        schema_name = _item_schema_name(doc, ops)
        if schema_name is None or schema_name not in schemas:
            logger.debug("skipping %s: no item schema", path)
            continue
        raw = schemas[schema_name]
        item_ops = paths.get(f"{path}/{{id}}") or {}
        key_updatable = bool((item_ops.get("put") or {}).get("x-Ed-Fi-isUpdatable"))
        resources.append(
            build_resource(
                namespace,
                name,
                schema_name,
                raw,
                schemas,
                resolver,
                key_updatable=key_updatable,
                query_params=_query_params(doc, ops),
                has_deletes=f"{path}/deletes" in paths or _has_change_paths(paths, name),
                has_key_changes=f"{path}/keyChanges" in paths or _has_change_paths(paths, name),
                has_partitions=f"{path}/partitions" in paths,
            )
        )
    return resources


def _has_change_paths(paths: JSON, name: str) -> bool:
    # Documents converted without change-query paths: every resource but schoolYearTypes has them.
    return not any(p.endswith("/deletes") for p in paths) and name != "schoolYearTypes"


def build_resource(
    namespace: str,
    name: str,
    schema_name: str,
    raw: JSON,
    schemas: dict[str, JSON],
    resolver: _Resolver | None = None,
    *,
    key_updatable: bool = False,
    query_params: list[JSON] | None = None,
    has_deletes: bool = True,
    has_key_changes: bool = True,
    has_partitions: bool = False,
) -> Resource:
    resolver = resolver or _Resolver(schemas)
    resolved = resolver.resolve(raw)
    is_descriptor = name.endswith("Descriptors")
    props: JSON = raw.get("properties") or {}
    references: list[Reference] = []
    descriptor_paths: list[tuple[str, ...]] = []
    _walk(raw, schemas, (), references, descriptor_paths, set(raw.get("required") or []), True, set())

    per_prop = flattened_by_property(raw, schemas)
    ident_params = {p["name"] for p in query_params or [] if p.get("x-Ed-Fi-isIdentity")}
    flats = {flat for fields in per_prop.values() for flat, _ in fields}
    identity: list[str] = []
    if is_descriptor:
        identity = ["namespace", "codeValue"]
    else:
        for prop in per_prop:
            spec = props.get(prop) or {}
            if ident_params:
                named = identity_names([prop], per_prop, raw, schemas, ident_params, flats)
                is_ident = bool(named) and all(name in ident_params for name in named)
            else:
                is_ident = bool(spec.get("x-Ed-Fi-isIdentity"))
            if is_ident:
                identity.append(prop)
    if is_descriptor:
        key_paths: dict[str, tuple[str, ...]] = {"namespace": ("namespace",), "codeValue": ("codeValue",)}
    else:
        key_paths = identity_names(identity, per_prop, raw, schemas, ident_params, flats)
    # identity properties claim unified key fields (schoolId) before other references do
    field_paths: dict[str, tuple[str, ...]] = dict(key_paths)
    for prop in [*identity, *per_prop]:
        for flat, fpath in per_prop.get(prop, []):
            field_paths.setdefault(flat, fpath)
    idset = set(identity)
    references = [
        Reference(r.path, r.target_schema, r.fields, r.required, r.top_level and r.prop in idset)
        for r in references
    ]
    return Resource(
        namespace=namespace,
        name=name,
        schema_name=schema_name,
        raw_schema=raw,
        schema=resolved,
        identity=tuple(identity),
        key_paths=key_paths,
        references=references,
        field_paths=field_paths,
        descriptor_paths=descriptor_paths,
        is_descriptor=is_descriptor,
        key_updatable=key_updatable,
        query_params=query_params or [],
        has_deletes=has_deletes,
        has_key_changes=has_key_changes,
        has_partitions=has_partitions,
    )


def _words(name: str) -> list[str]:
    return re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", name[:1].upper() + name[1:])


def _role_named(entity: str, sub: str) -> list[str]:
    """How the ODS names a reference field in its referencing entity: the referenced entity's name before the
    field's (``gradingPeriod`` + ``schoolYear`` -> ``gradingPeriodSchoolYear``), words they share said once
    (``gradingPeriod`` + ``periodSequence`` -> ``gradingPeriodSequence``)."""
    ew, sw = _words(entity), _words(sub)
    names = []
    for n in range(min(len(ew), len(sw)), 0, -1):
        if [w.lower() for w in ew[-n:]] == [w.lower() for w in sw[:n]]:
            names.append("".join(ew) + "".join(sw[n:]))
    names.append("".join(ew) + "".join(sw))
    return [name[0].lower() + name[1:] for name in names]


def identity_names(
    identity: list[str],
    per_prop: dict[str, list[tuple[str, tuple[str, ...]]]],
    raw: JSON,
    schemas: dict[str, JSON],
    ident_params: Iterable[str],
    flats: set[str] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Natural key field name -> path in the document, named as the ODS names its identifying properties: the
    identity query parameters and the ``keyValues`` of ``/deletes`` and ``/keyChanges`` (docs/change-queries.md).

    A reference field whose plain name another identity part already has is role-named by the referenced entity
    (studentProgramAssociations: ``educationOrganizationId`` of the education organization and
    ``programEducationOrganizationId`` of the program; grades: ``gradingPeriodSchoolYear``) when the resource's
    identity query parameters say so; fields the ODS unifies (``schoolId`` of grades) stay one key part.
    """
    params = ident_params if isinstance(ident_params, set) else set(ident_params)
    props: JSON = raw.get("properties") or {}
    if flats is None:
        flats = {flat for fields in per_prop.values() for flat, _ in fields}
    key_paths: dict[str, tuple[str, ...]] = {}
    for prop in identity:
        ref = (props.get(prop) or {}).get("$ref")
        entity = ref_name(ref)[: -len("Reference")].split("_", 1)[-1] if ref else ""
        for flat, fpath in per_prop[prop]:
            name = flat
            sub = fpath[-1]
            # a reference without a role name of its own is named by its entity, one with a role by the role
            prefix = entity if flat == sub else flat[: len(flat) - len(sub)]
            if entity and params and prefix:
                for candidate in _role_named(prefix, sub):
                    if candidate in params and (candidate not in flats or flat != sub):
                        name = candidate
                        break
            key_paths.setdefault(name, fpath)
    return key_paths


def reference_role(prop: str, target_schema: str) -> str:
    """The role name of a reference: ``nextYearSchoolReference`` to a school -> ``nextYear``."""
    base = prop[: -len("Reference")] if prop.endswith("Reference") else prop
    entity = target_schema.split("_", 1)[-1]
    if base.lower().endswith(entity.lower()):
        return base[: len(base) - len(entity)]
    return ""


def flattened_by_property(raw: JSON, schemas: dict[str, JSON]) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """Top-level fields as the API names them in query parameters and key values, per property.

    Scalars keep their names; reference fields are lifted out of the reference, prefixed with the
    reference's role name (``nextYearSchoolReference.schoolId`` -> ``nextYearSchoolId``).
    """
    out: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for prop, spec in (raw.get("properties") or {}).items():
        if prop in ("id", "_etag", "_lastModifiedDate", "_ext", "link"):
            continue
        ref = spec.get("$ref")
        if ref:
            name = ref_name(ref)
            if not name.endswith("Reference"):
                continue
            role = reference_role(prop, name[: -len("Reference")])
            out[prop] = [
                (role + sub[0].upper() + sub[1:] if role else sub, (prop, sub))
                for sub in (schemas.get(name) or {}).get("properties") or {}
                if sub != "link"
            ]
        elif spec.get("type") not in ("array", "object"):
            out[prop] = [(prop, (prop,))]
    return out


def _walk(
    schema: JSON,
    schemas: dict[str, JSON],
    path: tuple[str, ...],
    refs: list[Reference],
    descriptors: list[tuple[str, ...]],
    required: set[str],
    top: bool,
    seen: set[str],
) -> None:
    for prop, spec in (schema.get("properties") or {}).items():
        here = (*path, prop)
        if prop == "_ext" or not isinstance(spec, dict):
            continue  # extension data: not part of the core model's references
        if spec.get("$ref") == "":
            continue
        if "$ref" in spec:
            name = ref_name(spec["$ref"])
            target = schemas.get(name) or {}
            if name.endswith("Reference"):
                fields = tuple(p for p in (target.get("properties") or {}) if p != "link")
                refs.append(
                    Reference(
                        path=here,
                        target_schema=name[: -len("Reference")],
                        fields=fields,
                        required=prop in required,
                        identity=top and bool(spec.get("x-Ed-Fi-isIdentity")),
                    )
                )
            elif name not in seen and name != "link":
                _walk(target, schemas, here, refs, descriptors, set(target.get("required") or []), False,
                      seen | {name})
        elif spec.get("type") == "array":
            items = spec.get("items") or {}
            if "$ref" in items:
                name = ref_name(items["$ref"])
                if name not in seen:
                    target = schemas.get(name) or {}
                    _walk(target, schemas, (*here, "[]"), refs, descriptors,
                          set(target.get("required") or []), False, seen | {name})
        elif prop.endswith("Descriptor") and spec.get("type") == "string":
            descriptors.append(here)
