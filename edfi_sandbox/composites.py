"""The enrollment composites of an ODS/API, served from the sandbox's store (docs/composites.md).

``/composites/v1[/{instance}][/{year}]/ed-fi/enrollment/{composite}[/{id}]`` and the filtered forms
``.../{parent}/{parentId}/{composite}`` (under ``/{tenant}/{context}`` on 7.x) answer documents shaped as
:mod:`edfi_core.composites` describes, built from the stored resources:

* the collection is ordered by the base resource's primary key (people by their USI, which is the order they were
  created in), read with ``offset``/``limit`` (1..100, default 25); there is no ``totalCount`` and there are no
  change versions: any query parameter that is not ``offset``, ``limit``, ``fields``, ``q`` or ``correlationId`` is
  an equality filter on a property of the base resource, and an unknown one is a 400 (``totalCount`` included);
* ``fields=id,firstName`` keeps those top-level properties (and lists or objects named);
* null values are left out; lists without items are ``[]``, objects without a row ``null``;
* one item by id is an object (404 when there is none); a filtered form the composite's specification does not
  accept, an unknown composite or category is an empty 404.

The documents of a store state are built once per change version and kept until the next write.
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from edfi_core.composites import (
    CATEGORY,
    COMPOSITES,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    ORGANIZATION,
    PARENTS,
    Composite,
    Part,
    Prop,
    lookup,
    parent_name,
)

JSON = dict[str, Any]
#: Composites.xml: the special query parameters (SpecialQueryStringParameters.Names) and ``fields``
SPECIAL = {"offset", "limit", "q", "correlationid", "fields"}
EDORG_TYPES = {"/ed-fi/schools": "edfi.School", "/ed-fi/localEducationAgencies": "edfi.LocalEducationAgency",
               "/ed-fi/stateEducationAgencies": "edfi.StateEducationAgency",
               "/ed-fi/educationServiceCenters": "edfi.EducationServiceCenter"}


class CompositeError(Exception):
    """An answer other than 200: status, error kind, message and the extra ``errors`` of problem details."""

    def __init__(self, status: int, kind: str = "", message: str = "", extra: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.extra = status, kind, message, extra


def _get(doc: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


def _pick(values: dict[str, Any], props: Iterable[Prop]) -> JSON:
    """The non-null values of ``props``, in their order (nulls are left out, as NullValueHandling.Ignore does)."""
    return {p.name: values[p.name] for p in props if values.get(p.name) is not None}


def _list(items: Iterable[dict[str, Any]], part: Part) -> list[JSON]:
    return [_pick(item, part.props) for item in items]


def _section_key(ref: Any) -> tuple:
    """A section's primary key (LocalCourseCode, SchoolId, SchoolYear, SectionIdentifier, SessionName) from a
    section document or a sectionReference."""
    if not isinstance(ref, dict):
        return ()
    co = ref.get("courseOfferingReference") if "courseOfferingReference" in ref else ref
    return (_get(co, "localCourseCode"), _get(co, "schoolId"), _get(co, "schoolYear"), ref.get("sectionIdentifier"),
            _get(co, "sessionName"))


class _World:
    """The stored resources a store state's composites are built from, indexed for the joins of Composites.xml."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.docs: dict[str, list[JSON]] = {}
        model = store.model
        for path in {*PARENTS.values(), "/ed-fi/sessions", "/ed-fi/courseOfferings", "/ed-fi/courses",
                     "/ed-fi/locations", "/ed-fi/studentSchoolAssociations", "/ed-fi/studentSectionAssociations",
                     "/ed-fi/staffSectionAssociations", "/ed-fi/studentEducationOrganizationAssociations",
                     "/ed-fi/staffEducationOrganizationAssignmentAssociations", *EDORG_TYPES}:
            self.docs[path] = list(store.iter_docs(path)) if model.get(path) is not None else []
        d = self.docs
        self.by_id = {doc["id"]: doc for path in PARENTS.values() for doc in d[path]}
        self.path_of = {doc["id"]: path for path in PARENTS.values() for doc in d[path]}
        self.schools = {s.get("schoolId"): s for s in d["/ed-fi/schools"]}
        self.leas = {s.get("localEducationAgencyId"): s for s in d["/ed-fi/localEducationAgencies"]}
        self.edorg_type = {self._edorg_id(doc): kind for p, kind in EDORG_TYPES.items() for doc in d[p]}
        self.sessions = {(_get(s, "schoolReference", "schoolId"), _get(s, "schoolYearTypeReference", "schoolYear"),
                          s.get("sessionName")): s for s in d["/ed-fi/sessions"]}
        self.offerings = {(o.get("localCourseCode"), _get(o, "schoolReference", "schoolId"),
                           _get(o, "sessionReference", "schoolYear"), _get(o, "sessionReference", "sessionName")): o
                          for o in d["/ed-fi/courseOfferings"]}
        self.courses = {(c.get("courseCode"), _get(c, "educationOrganizationReference", "educationOrganizationId")): c
                        for c in d["/ed-fi/courses"]}
        self.locations = {(loc.get("classroomIdentificationCode"), _get(loc, "schoolReference", "schoolId")): loc
                          for loc in d["/ed-fi/locations"]}
        self.students = {s.get("studentUniqueId"): s for s in d["/ed-fi/students"]}
        self.staffs = {s.get("staffUniqueId"): s for s in d["/ed-fi/staffs"]}
        self.sections = {_section_key(s): s for s in d["/ed-fi/sections"]}
        self.ssa_by_student: dict[Any, list[JSON]] = defaultdict(list)
        for a in d["/ed-fi/studentSchoolAssociations"]:
            self.ssa_by_student[_get(a, "studentReference", "studentUniqueId")].append(a)
        self.stusec_by_student: dict[Any, list[JSON]] = defaultdict(list)
        self.stusec_by_section: dict[tuple, list[JSON]] = defaultdict(list)
        for a in d["/ed-fi/studentSectionAssociations"]:
            self.stusec_by_student[_get(a, "studentReference", "studentUniqueId")].append(a)
            self.stusec_by_section[_section_key(a.get("sectionReference"))].append(a)
        self.stasec_by_staff: dict[Any, list[JSON]] = defaultdict(list)
        self.stasec_by_section: dict[tuple, list[JSON]] = defaultdict(list)
        for a in d["/ed-fi/staffSectionAssociations"]:
            self.stasec_by_staff[_get(a, "staffReference", "staffUniqueId")].append(a)
            self.stasec_by_section[_section_key(a.get("sectionReference"))].append(a)
        self.seoa_by_student: dict[Any, list[JSON]] = defaultdict(list)
        for a in d["/ed-fi/studentEducationOrganizationAssociations"]:
            self.seoa_by_student[_get(a, "studentReference", "studentUniqueId")].append(a)
        self.assign_by_staff: dict[Any, list[JSON]] = defaultdict(list)
        for a in d["/ed-fi/staffEducationOrganizationAssignmentAssociations"]:
            self.assign_by_staff[_get(a, "staffReference", "staffUniqueId")].append(a)
        self._built: dict[str, list[JSON]] = {}

    @staticmethod
    def _edorg_id(doc: JSON) -> Any:
        for key in ("schoolId", "localEducationAgencyId", "stateEducationAgencyId", "educationServiceCenterId"):
            if key in doc:
                return doc[key]
        return None

    # -- relations: the filter paths of the composites' specifications -----------------------------------------
    @staticmethod
    def section_school(section: JSON) -> Any:
        return _get(section, "courseOfferingReference", "schoolId")

    def school_lea(self, school_id: Any) -> Any:
        return _get(self.schools.get(school_id), "localEducationAgencyReference", "localEducationAgencyId")

    def sections_of_student(self, uid: Any) -> list[JSON]:
        out = [self.sections.get(_section_key(a.get("sectionReference"))) for a in self.stusec_by_student.get(uid, [])]
        return [s for s in out if s is not None]

    def sections_of_staff(self, uid: Any) -> list[JSON]:
        out = [self.sections.get(_section_key(a.get("sectionReference"))) for a in self.stasec_by_staff.get(uid, [])]
        return [s for s in out if s is not None]

    def matches(self, comp: Composite, doc: JSON, parent: str, pdoc: JSON) -> bool:
        """Whether ``doc`` of ``comp`` is among the items of the filtered route ``/{parent}/{pdoc.id}/{comp}``."""
        name = comp.name
        if name == "schools":
            sid = doc.get("schoolId")
            if parent == "localEducationAgencies":
                return self.school_lea(sid) == pdoc.get("localEducationAgencyId")
            if parent == "sections":
                return self.section_school(pdoc) == sid
            sections = (self.sections_of_staff(pdoc.get("staffUniqueId")) if parent == "staffs"
                        else self.sections_of_student(pdoc.get("studentUniqueId")))
            return any(self.section_school(s) == sid for s in sections)
        if name == "sections":
            key = _section_key(doc)
            if parent == "localEducationAgencies":
                return self.school_lea(self.section_school(doc)) == pdoc.get("localEducationAgencyId")
            if parent == "schools":
                return self.section_school(doc) == pdoc.get("schoolId")
            if parent == "staffs":
                return any(_section_key(s) == key for s in self.sections_of_staff(pdoc.get("staffUniqueId")))
            return any(_section_key(s) == key for s in self.sections_of_student(pdoc.get("studentUniqueId")))
        if name == "students":
            uid = doc.get("studentUniqueId")
            if parent in ("localEducationAgencies", "schools"):
                schools = [_get(a, "schoolReference", "schoolId") for a in self.ssa_by_student.get(uid, [])]
                if parent == "schools":
                    return pdoc.get("schoolId") in schools
                return any(self.school_lea(s) == pdoc.get("localEducationAgencyId") for s in schools)
            keys = {_section_key(s) for s in self.sections_of_student(uid)}
            if parent == "sections":
                return _section_key(pdoc) in keys
            return any(_section_key(s) in keys for s in self.sections_of_staff(pdoc.get("staffUniqueId")))
        # staffs: through the sections they are assigned to
        sections = self.sections_of_staff(doc.get("staffUniqueId"))
        if parent == "localEducationAgencies":
            return any(self.school_lea(self.section_school(s)) == pdoc.get("localEducationAgencyId") for s in sections)
        if parent == "schools":
            return any(self.section_school(s) == pdoc.get("schoolId") for s in sections)
        if parent == "sections":
            return any(_section_key(s) == _section_key(pdoc) for s in sections)
        keys = {_section_key(s) for s in self.sections_of_student(pdoc.get("studentUniqueId"))}
        return any(_section_key(s) in keys for s in sections)

    # -- documents ------------------------------------------------------------------------------------------------
    def documents(self, comp: Composite, api_version: str) -> list[tuple[JSON, JSON]]:
        """(document, base resource item) of every item of ``comp``, in the API's order."""
        base = self.docs[comp.resource]
        if comp.name == "localEducationAgencies":
            base = sorted(base, key=lambda d: d.get("localEducationAgencyId") or 0)
        elif comp.name == "schools":
            base = sorted(base, key=lambda d: d.get("schoolId") or 0)
        elif comp.name == "sections":
            base = sorted(base, key=lambda d: tuple(str(v) for v in _section_key(d)))
        build: Callable[[JSON, str], JSON] = getattr(self, f"_{comp.name}")
        return [(build(doc, api_version), doc) for doc in base]

    def _addresses(self, doc: JSON) -> list[JSON]:
        return _list(doc.get("addresses") or [], COMPOSITES["schools"].parts[1])

    @staticmethod
    def _codes(doc: JSON, part: Part) -> list[JSON]:
        return _list(doc.get(part.name) or [], part)

    def _localEducationAgencies(self, doc: JSON, api_version: str) -> JSON:  # noqa: N802
        comp = COMPOSITES["localEducationAgencies"]
        values = {**doc, "stateEducationAgencyId": _get(doc, "stateEducationAgencyReference", "stateEducationAgencyId")}
        out = _pick(values, comp.props)
        out["addresses"] = self._addresses(doc)
        out["identificationCodes"] = self._codes(doc, comp.parts[1])
        out["institutionTelephones"] = self._codes(doc, comp.parts[2])
        return out

    def _schools(self, doc: JSON, api_version: str) -> JSON:
        comp = COMPOSITES["schools"]
        out = _pick(doc, comp.props)
        lea_id = _get(doc, "localEducationAgencyReference", "localEducationAgencyId")
        lea = self.leas.get(lea_id)
        out["localEducationAgency"] = ({"id": lea["id"], "localEducationAgencyId": lea_id} if lea is not None
                                       else None)
        out["addresses"] = self._addresses(doc)
        out["educationOrganizationCategories"] = [
            {"category": c["educationOrganizationCategoryDescriptor"]}
            for c in doc.get("educationOrganizationCategories") or []
            if c.get("educationOrganizationCategoryDescriptor")]
        out["identificationCodes"] = self._codes(doc, comp.parts[3])
        out["institutionTelephones"] = self._codes(doc, comp.parts[4])
        out["schoolCategories"] = [{"category": c["schoolCategoryDescriptor"]}
                                   for c in doc.get("schoolCategories") or [] if c.get("schoolCategoryDescriptor")]
        out["gradeLevels"] = self._codes(doc, comp.parts[6])
        return out

    def _sections(self, doc: JSON, api_version: str) -> JSON:
        comp = COMPOSITES["sections"]
        key = _section_key(doc)
        co_ref = doc.get("courseOfferingReference") or {}
        offering = self.offerings.get((co_ref.get("localCourseCode"), co_ref.get("schoolId"), co_ref.get("schoolYear"),
                                       co_ref.get("sessionName"))) or {}
        course_ref = offering.get("courseReference") or {}
        course = self.courses.get((course_ref.get("courseCode"), course_ref.get("educationOrganizationId"))) or {}
        values = {**doc, "localCourseCode": co_ref.get("localCourseCode"),
                  "localCourseTitle": offering.get("localCourseTitle"),
                  "maximumAvailableCreditTypeDescriptor": course.get("maximumAvailableCreditTypeDescriptor"),
                  "academicSubjectDescriptor": course.get("academicSubjectDescriptor")}
        out = _pick(values, comp.props_for(api_version))
        staff = []
        for a in self.stasec_by_section.get(key, []):
            person = self.staffs.get(_get(a, "staffReference", "staffUniqueId"))
            if person is not None:
                staff.append({"id": person["id"], "staffUniqueId": person.get("staffUniqueId")})
        out["staff"] = staff
        students = []
        for a in self.stusec_by_section.get(key, []):
            person = self.students.get(_get(a, "studentReference", "studentUniqueId"))
            if person is not None:
                students.append(_pick({"id": person["id"], "studentUniqueId": person.get("studentUniqueId"),
                                       "enrollmentBeginDate": a.get("beginDate"),
                                       "enrollmentEndDate": a.get("endDate")}, comp.parts[1].props))
        out["students"] = students
        session = self.sessions.get((co_ref.get("schoolId"), co_ref.get("schoolYear"), co_ref.get("sessionName")))
        out["session"] = None if session is None else _pick({
            **session, "schoolId": co_ref.get("schoolId"), "schoolYear": co_ref.get("schoolYear")},
            comp.parts[2].props)
        out["classPeriods"] = [{"classPeriodName": name} for cp in doc.get("classPeriods") or []
                               if (name := _get(cp, "classPeriodReference", "classPeriodName"))]
        loc_ref = doc.get("locationReference") or {}
        loc = self.locations.get((loc_ref.get("classroomIdentificationCode"), loc_ref.get("schoolId")))
        out["location"] = None if loc is None else _pick({
            "id": loc["id"], "schoolId": loc_ref.get("schoolId"),
            "classroomIdentificationCode": loc_ref.get("classroomIdentificationCode")}, comp.parts[4].props)
        return out

    def _edorg(self, edorg_id: Any) -> JSON:
        return {"educationOrganizationId": edorg_id, "educationOrganizationType": self.edorg_type.get(edorg_id)}

    def _students(self, doc: JSON, api_version: str) -> JSON:
        comp = COMPOSITES["students"]
        uid = doc.get("studentUniqueId")
        out = _pick(doc, comp.props)
        enrollments = []
        for a in self.ssa_by_student.get(uid, []):
            school = self.schools.get(_get(a, "schoolReference", "schoolId"))
            if school is None:
                continue
            enrollments.append(_pick({"id": school["id"], "schoolId": school.get("schoolId"),
                                      "nameOfInstitution": school.get("nameOfInstitution"),
                                      "entryGradeLevelDescriptor": a.get("entryGradeLevelDescriptor"),
                                      "enrollmentBeginDate": a.get("entryDate"),
                                      "enrollmentEndDate": a.get("exitWithdrawDate")}, comp.parts[0].props))
        out["studentSchoolEnrollments"] = enrollments
        demographics = []
        for a in self.seoa_by_student.get(uid, []):
            edorg_id = _get(a, "educationOrganizationReference", "educationOrganizationId")
            item = _pick({**a, **self._edorg(edorg_id)}, comp.parts[1].props)
            item["educationOrganizationType"] = self.edorg_type.get(edorg_id)  # a pass-through value: kept if null
            item["languages"] = [{"languageDescriptor": v} for lang in a.get("languages") or []
                                 if (v := lang.get("languageDescriptor"))]
            item["races"] = [{"raceDescriptor": r["raceDescriptor"]} for r in a.get("races") or []
                             if r.get("raceDescriptor")]
            demographics.append(item)
        out["studentDemographics"] = demographics
        return out

    def _staffs(self, doc: JSON, api_version: str) -> JSON:
        comp = COMPOSITES["staffs"]
        out = _pick(doc, comp.props)
        for part in comp.parts[:5]:
            if part.name in ("languages", "races"):
                field = part.props[0].name
                out[part.name] = [{field: v} for x in doc.get(part.name) or [] if (v := x.get(field))]
            else:
                out[part.name] = self._codes(doc, part)
        assignments = []
        for a in self.assign_by_staff.get(doc.get("staffUniqueId"), []):
            edorg_id = _get(a, "educationOrganizationReference", "educationOrganizationId")
            item = _pick({**a, **self._edorg(edorg_id)}, comp.parts[5].props)
            item["educationOrganizationType"] = self.edorg_type.get(edorg_id)
            assignments.append(item)
        out["educationOrganizationAssignments"] = assignments
        return out


class CompositeServer:
    """Answers the composite routes of one sandbox (see the module docstring)."""

    def __init__(self, store: Any, api_version: str) -> None:
        self.store = store
        self.api_version = api_version
        self._lock = threading.Lock()
        self._world: tuple[int, _World] | None = None
        self._docs: dict[str, list[tuple[JSON, JSON]]] = {}

    def world(self) -> _World:
        version = self.store.change_version
        with self._lock:
            if self._world is None or self._world[0] != version:
                self._world = (version, _World(self.store))
                self._docs = {}
            return self._world[1]

    def documents(self, comp: Composite) -> list[tuple[JSON, JSON]]:
        world = self.world()
        with self._lock:
            docs = self._docs.get(comp.name)
        if docs is None:
            docs = world.documents(comp, self.api_version)
            with self._lock:
                self._docs[comp.name] = docs
        return docs

    def get(self, rest: str, query: dict[str, str]) -> bytes:
        """The body of ``GET .../composites/v1{segment}/{rest}``; :class:`CompositeError` otherwise."""
        parts = [p for p in rest.strip("/").split("/") if p]
        if len(parts) < 3 or parts[0].lower() != ORGANIZATION or parts[1].lower() != CATEGORY:
            raise CompositeError(404)
        route = parts[2:]
        item_id = parent = parent_id = None
        if len(route) == 1 or len(route) == 2:
            comp = lookup(route[0])
            item_id = route[1] if len(route) == 2 else None
        elif len(route) == 3:
            parent, parent_id, comp = parent_name(route[0]), route[1], lookup(route[2])
            if parent is None:
                raise CompositeError(404)
        else:
            raise CompositeError(404)
        if comp is None:  # the controller singularizes the segment and looks the definition up by that name
            raise CompositeError(404)
        if parent is not None and parent not in comp.parents:
            raise CompositeError(404)  # a route value the composite's specification does not use
        params = {k.lower().replace("_", "."): (k, v) for k, v in query.items()}
        offset, limit = self._paging(params)
        fields = [f.strip() for f in params.get("fields", ("", ""))[1].split(",") if f.strip()]
        filters = {k: v for k, v in params.values() if k.lower().replace("_", ".") not in SPECIAL}
        docs = self.documents(comp)
        if filters:
            docs = [(d, base) for d, base in docs if self._filter(comp, base, filters)]
        if item_id is not None:
            self._guid(item_id)
            found = next((d for d, base in docs if base["id"] == item_id), None)
            if found is None:
                raise CompositeError(404, "not-found", "The specified data could not be found.")
            return orjson.dumps(self._fields(found, fields))
        if parent is not None:
            assert parent_id is not None
            self._guid(parent_id)
            world = self.world()
            pdoc = world.by_id.get(parent_id)
            if pdoc is None or world.path_of.get(parent_id) != PARENTS[parent]:
                return b"[]"
            docs = [(d, base) for d, base in docs if world.matches(comp, base, parent, pdoc)]
        page = [self._fields(d, fields) for d, _ in docs[offset:offset + limit]]
        return orjson.dumps(page)

    def _bad(self, detail: str, errors: list[str], older: str | None = None) -> CompositeError:
        if self.api_version >= "7.2":
            return CompositeError(400, "bad-request:parameter-validation-failed", detail, errors)
        return CompositeError(400, "bad-request", older or errors[0])

    def _paging(self, params: dict[str, tuple[str, str]]) -> tuple[int, int]:
        limit = DEFAULT_LIMIT
        raw = params.get("limit", (None, None))[1]
        if raw is not None:
            try:
                limit = int(raw)
            except ValueError:
                raise self._bad("The 'limit' parameter must be a number.",
                                [f"Limit parameter value '{raw[:15]}' is not a number."]) from None
            if limit <= 0 or limit > MAX_LIMIT:
                raise self._bad("The limit parameter was incorrect.",
                                [f"Limit must be omitted or set to a value between 1 and {MAX_LIMIT}."])
        offset = 0
        raw = params.get("offset", (None, None))[1]
        if raw is not None:
            try:
                offset = int(raw)
            except ValueError:
                raise self._bad("The 'offset' parameter must be a number.",
                                [f"Offset parameter value '{raw[:15]}' is not a number."]) from None
        return max(offset, 0), limit

    def _filter(self, comp: Composite, base: JSON, filters: dict[str, str]) -> bool:
        res = self.store.model.get(comp.resource)
        props = (res.schema.get("properties") or {}) if res is not None else {}
        names = {n.lower(): n for n in props} | {"id": "id"}
        for key, value in filters.items():
            name = names.get(key.lower())
            if name is None:
                if self.api_version >= "7.3":
                    raise CompositeError(
                        400, "bad-request:parameter-validation-failed",
                        f"Filter value was supplied for an unrecognized data element named '{key[:75]}'.",
                        [f"The property '{key[:75]}' does not exist or is not available."])
                raise CompositeError(400, "bad-request", f"The property '{key[:75]}' does not exist or is not "
                                                         "available.")
            if str(base.get(name)).lower() != value.lower() and base.get(name) != value:
                return False
        return True

    def _guid(self, value: str) -> None:
        try:
            uuid.UUID(value)
        except ValueError:
            raise self._bad("The supplied data identifier is invalid.",
                            ["The identifier could not be processed as a GUID."],
                            "The supplied resource identifier is invalid.") from None

    @staticmethod
    def _fields(doc: JSON, fields: list[str]) -> JSON:
        if not fields or "*" in fields:
            return doc
        keep = {f.split("(")[0] for f in fields}
        return {k: v for k, v in doc.items() if k in keep}


# -- metadata ----------------------------------------------------------------------------------------------------
def openapi_document(api_version: str, server_url: str) -> JSON:
    """The composites section's document (``/metadata/composites/v1/ed-fi/enrollment/swagger.json``): a path per
    collection, item and filtered form, and a schema per composite (no ``totalCount``)."""
    from edfi_core.composites import document_schema

    paths: JSON = {}
    schemas: JSON = {}
    paging = [{"name": "offset", "in": "query", "schema": {"type": "integer", "format": "int32"}},
              {"name": "limit", "in": "query",
               "schema": {"type": "integer", "format": "int32", "minimum": 1, "maximum": MAX_LIMIT}}]
    for comp in COMPOSITES.values():
        ref = f"{CATEGORY}_{comp.name[:-1] if comp.name != 'staffs' else 'staff'}"
        schemas[ref] = document_schema(comp, api_version)
        many = {"200": {"description": "The requested composite documents.", "content": {"application/json": {
            "schema": {"type": "array", "items": {"$ref": f"#/components/schemas/{ref}"}}}}}}
        one = {"200": {"description": "The requested composite document.", "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{ref}"}}}}}
        paths[f"/{CATEGORY}/{comp.name}"] = {"get": {"operationId": f"get{comp.name}", "parameters": paging,
                                                     "responses": many}}
        paths[f"/{CATEGORY}/{comp.name}/{{id}}"] = {"get": {
            "operationId": f"get{comp.name}ById",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": one}}
        for parent in comp.parents:
            param = f"{parent[:-1] if parent != 'staffs' else 'staff'}_id"
            paths[f"/{CATEGORY}/{parent}/{{{param}}}/{comp.name}"] = {"get": {
                "operationId": f"get{comp.name}By{parent}",
                "parameters": [{"name": param, "in": "path", "required": True, "schema": {"type": "string"}},
                               *paging],
                "responses": many}}
    return {"openapi": "3.0.1", "info": {"title": "Ed-Fi Enrollment Composites", "version": "1"},
            "servers": [{"url": server_url}], "paths": paths, "components": {"schemas": schemas}}
