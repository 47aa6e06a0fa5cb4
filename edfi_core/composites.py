"""The Ed-Fi enrollment composites (``/composites/v1/ed-fi/enrollment/...``), described for both plugins.

An ODS/API 5.x to 7.x serves read-only *composites*: documents that join a base resource with what is linked to it
(a student with its school enrollments and demographics, a section with its staff, students, session and class
periods). Their shapes come from the ``Composites.xml`` of ``Application/EdFi.Ods.Composites.Enrollment`` in
Ed-Fi-ODS (docs/composites.md names the file and tag of each point); this module writes them down in its own
terms: the sandbox builds documents of these shapes (``edfi_sandbox.composites``) and tap-edfi derives its stream
schemas from them (``tap_edfi.composites``).

* A composite has a base resource, properties (scalar values, named as the API names them), single objects (a
  reference that is not flattened, e.g. a section's ``session``) and lists (collections and linked collections,
  e.g. a student's ``studentSchoolEnrollments``). Null values are left out of a document (the API's default
  ``NullValueHandling.Ignore``); a list without items is ``[]`` and an object without a row is ``null``.
* Routes: ``/{composite}`` (the collection, ``offset``/``limit`` 1..100, default 25, no ``totalCount``, no change
  versions), ``/{composite}/{id}`` (one item), and the filtered forms ``/{parent}/{parentId}/{composite}`` for the
  parents each composite's specification accepts (:attr:`Composite.parents`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ORGANIZATION = "ed-fi"
CATEGORY = "enrollment"
#: the largest ``limit`` a composite accepts (CompositeResourceController: "between 1 and 100"); default 25
MAX_LIMIT = 100
DEFAULT_LIMIT = 25


@dataclass(frozen=True)
class Prop:
    """A scalar property of a composite document: its name there and its JSON type (``date``: a string)."""

    name: str
    kind: str = "string"  # string | integer | number | boolean | date


@dataclass(frozen=True)
class Part:
    """A nested object (``many=False``: a reference shown as an object) or list of objects."""

    name: str
    many: bool
    props: tuple[Prop, ...]
    parts: tuple[Part, ...] = ()


@dataclass(frozen=True)
class Composite:
    """One composite of the enrollment category: ``name`` is its route segment (plural, as resources are)."""

    name: str
    resource: str  # the base resource: /ed-fi/students
    props: tuple[Prop, ...]
    parts: tuple[Part, ...] = ()
    #: the parent routes its specification accepts: ``/{parent}/{id}/{name}``
    parents: tuple[str, ...] = ()
    #: ODS/API versions before 7 show these properties instead of the ones named (Data Standard 3 and 4 course)
    older: dict[str, str] = field(default_factory=dict)

    def props_for(self, api_version: str) -> tuple[Prop, ...]:
        if api_version >= "7" or not self.older:
            return self.props
        return tuple(Prop(self.older.get(p.name, p.name), p.kind) for p in self.props)


def _s(*names: str) -> tuple[Prop, ...]:
    return tuple(Prop(n) for n in names)


ADDRESSES = Part("addresses", True, _s("addressTypeDescriptor", "streetNumberName", "city",
                                         "stateAbbreviationDescriptor", "postalCode", "nameOfCounty"))
IDENTIFICATION_CODES = Part("identificationCodes", True, _s("educationOrganizationIdentificationSystemDescriptor",
                                                            "identificationCode"))
INSTITUTION_TELEPHONES = Part("institutionTelephones", True, _s("institutionTelephoneNumberTypeDescriptor",
                                                                "telephoneNumber"))
EDORG = (Prop("educationOrganizationId", "integer"), Prop("educationOrganizationType"))

COMPOSITES: dict[str, Composite] = {c.name: c for c in (
    Composite(
        "localEducationAgencies", "/ed-fi/localEducationAgencies",
        (Prop("id"), Prop("localEducationAgencyId", "integer"), Prop("stateEducationAgencyId", "integer"),
         *_s("nameOfInstitution", "shortNameOfInstitution", "webSite", "localEducationAgencyCategoryDescriptor",
             "charterStatusDescriptor")),
        (ADDRESSES, IDENTIFICATION_CODES, INSTITUTION_TELEPHONES),
    ),
    Composite(
        "schools", "/ed-fi/schools",
        (Prop("id"), Prop("schoolId", "integer"),
         *_s("nameOfInstitution", "shortNameOfInstitution", "webSite", "schoolTypeDescriptor")),
        (Part("localEducationAgency", False, (Prop("id"), Prop("localEducationAgencyId", "integer"))),
         ADDRESSES,
         Part("educationOrganizationCategories", True, _s("category")),
         IDENTIFICATION_CODES, INSTITUTION_TELEPHONES,
         Part("schoolCategories", True, _s("category")),
         Part("gradeLevels", True, _s("gradeLevelDescriptor"))),
        parents=("localEducationAgencies", "sections", "staffs", "students"),
    ),
    Composite(
        "sections", "/ed-fi/sections",
        (Prop("id"), Prop("sectionIdentifier"), Prop("sequenceOfCourse", "integer"),
         Prop("educationalEnvironmentDescriptor"), Prop("availableCredits", "number"),
         Prop("maximumAvailableCreditTypeDescriptor"), Prop("localCourseCode"), Prop("localCourseTitle")),
        (Part("staff", True, _s("id", "staffUniqueId")),
         Part("students", True, (Prop("id"), Prop("studentUniqueId"), Prop("enrollmentBeginDate", "date"),
                                 Prop("enrollmentEndDate", "date"))),
         Part("session", False, (Prop("id"), Prop("schoolId", "integer"), Prop("schoolYear", "integer"),
                                 Prop("termDescriptor"), Prop("sessionName"), Prop("beginDate", "date"),
                                 Prop("endDate", "date"), Prop("totalInstructionalDays", "integer"))),
         Part("classPeriods", True, _s("classPeriodName")),
         Part("location", False, (Prop("id"), Prop("schoolId", "integer"), Prop("classroomIdentificationCode")))),
        parents=("localEducationAgencies", "schools", "staffs", "students"),
        # Composites.xml at v5.3 and v6.1 (Data Standard 3.x/4.0) takes the course's academicSubjectDescriptor
        older={"maximumAvailableCreditTypeDescriptor": "academicSubjectDescriptor"},
    ),
    Composite(
        "students", "/ed-fi/students",
        (*_s("id", "studentUniqueId", "personalTitlePrefix", "firstName", "middleName", "lastSurname"),
         Prop("birthDate", "date")),
        (Part("studentSchoolEnrollments", True, (Prop("id"), Prop("schoolId", "integer"), Prop("nameOfInstitution"),
                                                 Prop("entryGradeLevelDescriptor"),
                                                 Prop("enrollmentBeginDate", "date"),
                                                 Prop("enrollmentEndDate", "date"))),
         Part("studentDemographics", True, (*EDORG, Prop("loginId"), Prop("sexDescriptor"),
                                            Prop("hispanicLatinoEthnicity", "boolean")),
              (Part("languages", True, _s("languageDescriptor")), Part("races", True, _s("raceDescriptor"))))),
        parents=("localEducationAgencies", "schools", "sections", "staffs"),
    ),
    Composite(
        "staffs", "/ed-fi/staffs",
        (*_s("id", "staffUniqueId", "personalTitlePrefix", "firstName", "lastSurname", "loginId", "sexDescriptor"),
         Prop("hispanicLatinoEthnicity", "boolean")),
        (Part("electronicMails", True, _s("electronicMailTypeDescriptor", "electronicMailAddress")),
         Part("identificationCodes", True, _s("staffIdentificationSystemDescriptor", "identificationCode")),
         Part("languages", True, _s("languageDescriptor")),
         Part("races", True, _s("raceDescriptor")),
         Part("telephones", True, (Prop("telephoneNumberTypeDescriptor"), Prop("orderOfPriority", "integer"),
                                   Prop("telephoneNumber"))),
         Part("educationOrganizationAssignments", True, (Prop("staffClassificationDescriptor"), *EDORG))),
        parents=("localEducationAgencies", "schools", "sections", "students"),
    ),
)}

#: the parent route segments of the category (Composites.xml ``<Routes>``) and the resource each stands for
PARENTS: dict[str, str] = {
    "localEducationAgencies": "/ed-fi/localEducationAgencies",
    "schools": "/ed-fi/schools",
    "sections": "/ed-fi/sections",
    "staffs": "/ed-fi/staffs",
    "students": "/ed-fi/students",
}
#: singular forms, for stream names (``composite_enrollment_students_of_section_<id>``)
SINGULAR = {"localEducationAgencies": "localEducationAgency", "schools": "school", "sections": "section",
            "staffs": "staff", "students": "student"}


def lookup(name: str) -> Composite | None:
    """The composite named ``name`` (route segments match case-insensitively, singular or plural)."""
    low = name.lower()
    for comp in COMPOSITES.values():
        if low in (comp.name.lower(), SINGULAR[comp.name].lower()):
            return comp
    return None


def parent_name(name: str) -> str | None:
    low = name.lower()
    return next((p for p in PARENTS if low in (p.lower(), SINGULAR[p].lower())), None)


# -- JSON Schema ------------------------------------------------------------------------------------------
_TYPES = {"string": "string", "date": "string", "integer": "integer", "number": "number", "boolean": "boolean"}


def _prop_schema(prop: Prop) -> dict[str, Any]:
    out: dict[str, Any] = {"type": [_TYPES[prop.kind], "null"]}
    if prop.kind == "date":
        out["format"] = "date"
    return out


def _part_schema(part: Part) -> dict[str, Any]:
    node = {"type": ["object", "null"], "properties": _properties(part.props, part.parts)}
    return {"type": ["array", "null"], "items": node} if part.many else node


def _properties(props: tuple[Prop, ...], parts: tuple[Part, ...]) -> dict[str, Any]:
    out = {p.name: _prop_schema(p) for p in props}
    out.update({p.name: _part_schema(p) for p in parts})
    return out


def document_schema(comp: Composite, api_version: str = "7.3") -> dict[str, Any]:
    """The JSON Schema of one document of ``comp`` as that ODS/API version serves it (every value nullable but
    ``id``)."""
    props = _properties(comp.props_for(api_version), comp.parts)
    props["id"] = {"type": "string", "description": "The base resource's unique identifier (GUID)."}
    return {"type": "object", "properties": props}
