"""A coherent subset of Ed-Fi Data Standard 5.0, written as a compact Python description.

The sandbox serves an API described by OpenAPI documents. When no real documents are supplied it uses
this model: :func:`builtin_documents` generates a resources document and a descriptors document
shaped like the ones a DS 5.0 ODS/API serves (``components.schemas.edFi_*``, ``edFi_*Reference``
schemas with a ``link``, shared ``components.parameters``, one query parameter per flattened field
with ``x-Ed-Fi-isIdentity`` on the natural key, ``x-Ed-Fi-isUpdatable`` on the PUT of key-updatable
resources). Identities, references, required fields and key-updatability follow DS 5.0; optional
fields are a small, realistic selection.

:data:`DESCRIPTOR_VALUES` lists the descriptor values the seeder loads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

logger = logging.getLogger(__name__)

JSON = dict[str, Any]

PREFIX = "edFi"
NAMESPACE = "ed-fi"
DESCRIPTOR_MAX_LENGTH = 306
DESCRIPTOR_NAMESPACE_BASE = "uri://ed-fi.org/"


# -- the description language ---------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    """A scalar property. ``kind``: string, int32, int64, double, boolean, date, time, descriptor."""

    name: str
    kind: str
    required: bool = False
    key: bool = False
    max_length: int | None = None
    min_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    description: str = ""


@dataclass(frozen=True)
class Ref:
    """A reference property (``schoolReference``) to the entity ``target`` (``school``)."""

    name: str
    target: str
    required: bool = False
    key: bool = False
    description: str = ""
    #: query parameter names that differ from the flattened name: (reference field, parameter)
    param_names: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Collection:
    """An array of child objects, each described by the schema ``edFi_{item}``."""

    name: str
    item: str
    members: tuple[Member, ...]
    required: bool = False
    description: str = ""


Member = Field | Ref | Collection


@dataclass(frozen=True)
class Entity:
    """A resource: entity name (``studentSchoolAssociation``) and collection segment."""

    name: str
    collection: str
    members: tuple[Member, ...]
    key_updatable: bool = False
    description: str = ""
    #: abstract base entity (``educationOrganization``): its fields are no query parameters
    base: str | None = None

    @property
    def schema_name(self) -> str:
        return f"{PREFIX}_{self.name}"

    @property
    def path(self) -> str:
        return f"/{NAMESPACE}/{self.collection}"


def _string(name: str, max_length: int, min_length: int | None = 1, **kw: Any) -> Field:
    return Field(name, "string", max_length=max_length, min_length=min_length, **kw)


def _int32(name: str, **kw: Any) -> Field:
    return Field(name, "int32", **kw)


def _int64(name: str, **kw: Any) -> Field:
    return Field(name, "int64", **kw)


def _double(name: str, **kw: Any) -> Field:
    return Field(name, "double", **kw)


def _bool(name: str, **kw: Any) -> Field:
    return Field(name, "boolean", **kw)


def _date(name: str, **kw: Any) -> Field:
    return Field(name, "date", **kw)


def _time(name: str, **kw: Any) -> Field:
    return Field(name, "time", **kw)


def _desc(name: str, **kw: Any) -> Field:
    return Field(name, "descriptor", **kw)


def _key(member: Field | Ref) -> Field | Ref:
    """The same member, as part of the natural key (and so required)."""
    return replace(member, key=True, required=True)


def _req(member: Field | Ref) -> Field | Ref:
    """The same member, required."""
    return replace(member, required=True)


# -- shared pieces ---------------------------------------------------------------------------------
def _address(item: str, required: bool = False) -> Collection:
    return Collection(
        "addresses",
        item,
        (
            _desc("addressTypeDescriptor", key=True, required=True, description="The type of address."),
            _desc("stateAbbreviationDescriptor", key=True, required=True,
                  description="The abbreviation for the state of the address."),
            _string("city", 30, 2, key=True, required=True, description="The city of the address."),
            _string("postalCode", 17, key=True, required=True, description="The postal (ZIP) code."),
            _string("streetNumberName", 150, key=True, required=True,
                    description="The street number and name of the address."),
            _string("apartmentRoomSuiteNumber", 50, description="The apartment, room or suite number."),
            _string("nameOfCounty", 30, description="The county of the address."),
        ),
        required=required,
        description="The addresses of the organization or person.",
    )


def _edorg_categories(name: str) -> Collection:
    return Collection(
        name,
        "educationOrganizationCategory",
        (_desc("educationOrganizationCategoryDescriptor", key=True, required=True,
               description="The classification of the education organization."),),
        required=True,
        description="The classifications of the education organization.",
    )


def _grade_levels(item: str, name: str = "gradeLevels", required: bool = False) -> Collection:
    return Collection(
        name,
        item,
        (_desc("gradeLevelDescriptor", key=True, required=True, description="A grade level."),),
        required=required,
        description="The grade levels.",
    )


def _electronic_mails(item: str) -> Collection:
    return Collection(
        "electronicMails",
        item,
        (
            _desc("electronicMailTypeDescriptor", key=True, required=True,
                  description="The type of email listed."),
            _string("electronicMailAddress", 128, 7, key=True, required=True,
                    description="The electronic mail address."),
            _bool("primaryEmailAddressIndicator", description="Whether this is the primary address."),
        ),
        description="The email addresses of the person.",
    )


def _telephones(item: str) -> Collection:
    return Collection(
        "telephones",
        item,
        (
            _desc("telephoneNumberTypeDescriptor", key=True, required=True,
                  description="The type of telephone number."),
            _string("telephoneNumber", 24, key=True, required=True, description="The telephone number."),
            _int32("orderOfPriority", minimum=1, description="The order in which to try the numbers."),
        ),
        description="The telephone numbers of the person.",
    )


def _person_names() -> tuple[Field, ...]:
    return (
        _string("firstName", 75, required=True, description="The given name of the person."),
        _string("lastSurname", 75, required=True, description="The family name of the person."),
        _string("middleName", 75, description="The middle name of the person."),
    )


SCHOOL_REF = Ref("schoolReference", "school", description="The school.")
SCHOOL_YEAR_REF = Ref("schoolYearTypeReference", "schoolYearType", description="The school year.")
STUDENT_REF = Ref("studentReference", "student", description="The student.")
SECTION_REF = Ref("sectionReference", "section", description="The section.")
SESSION_REF = Ref("sessionReference", "session", description="The session.")
EDORG_REF = Ref("educationOrganizationReference", "educationOrganization",
                description="The education organization.")
SESSION_DATES = (
    _date("beginDate", required=True, description="The first day of the period."),
    _date("endDate", required=True, description="The last day of the period."),
    _int32("totalInstructionalDays", required=True, minimum=0,
           description="The number of instructional days in the period."),
)
ATTENDANCE_FIELDS = (
    _key(_desc("attendanceEventCategoryDescriptor", description="The category of the attendance event.")),
    _key(_date("eventDate", description="The date of the attendance event.")),
    _string("attendanceEventReason", 255, description="The reported reason for the event."),
    _desc("educationalEnvironmentDescriptor", description="The setting of the instruction missed."),
    _double("eventDuration", minimum=0, maximum=1, description="The fraction of the day the event covers."),
)

#: Fields an entity inherits from an abstract base; the API offers no query parameter for them
#: (nor for ``id``) on the derived resources.
BASE_FIELDS: dict[str, frozenset[str]] = {
    "educationOrganization": frozenset({"nameOfInstitution", "shortNameOfInstitution"}),
}

#: Abstract entities: no resource of their own, but a reference schema made of these key fields.
ABSTRACT_KEYS: dict[str, tuple[Field, ...]] = {
    "educationOrganization": (_int64("educationOrganizationId", key=True, required=True,
                                     description="The identifier of an education organization."),),
}


# -- the resources ---------------------------------------------------------------------------------
ENTITIES: tuple[Entity, ...] = (
    Entity("schoolYearType", "schoolYearTypes", (
        _key(_int32("schoolYear", description="The school year, by the calendar year it ends in.")),
        _bool("currentSchoolYear", required=True, description="Whether this is the current school year."),
        _string("schoolYearDescription", 50, None, required=True, description="The school year, as text."),
    ), description="The school years known to the system."),
    Entity("localEducationAgency", "localEducationAgencies", (
        _key(_int64("localEducationAgencyId", description="The identifier of the local education agency.")),
        _string("nameOfInstitution", 75, required=True, description="The full name of the organization."),
        _string("shortNameOfInstitution", 75, description="A short name for the organization."),
        _desc("localEducationAgencyCategoryDescriptor", required=True,
              description="The category of local education agency."),
        _edorg_categories("categories"),
        _address("educationOrganizationAddress"),
    ), description="An administrative unit that operates public schools: a school district.",
        base="educationOrganization"),
    Entity("school", "schools", (
        _key(_int64("schoolId", description="The identifier of the school.")),
        _string("nameOfInstitution", 75, required=True, description="The full name of the school."),
        _string("shortNameOfInstitution", 75, description="A short name for the school."),
        Ref("localEducationAgencyReference", "localEducationAgency", description="The district."),
        _desc("schoolTypeDescriptor", description="The type of school."),
        _edorg_categories("educationOrganizationCategories"),
        _grade_levels("schoolGradeLevel", required=True),
        Collection("schoolCategories", "schoolCategory", (
            _desc("schoolCategoryDescriptor", key=True, required=True, description="A school category."),
        ), description="The categories of the school."),
        _address("educationOrganizationAddress"),
    ), description="An educational organization that provides instruction to students.",
        base="educationOrganization"),
    Entity("classPeriod", "classPeriods", (
        _key(_string("classPeriodName", 60, description="The name of the class period.")),
        _key(SCHOOL_REF),
        _bool("officialAttendancePeriod", description="Whether daily attendance is taken in this period."),
        Collection("meetingTimes", "classPeriodMeetingTime", (
            _time("startTime", key=True, required=True, description="The time the period starts."),
            _time("endTime", key=True, required=True, description="The time the period ends."),
        ), description="The times the class period meets."),
    ), key_updatable=True, description="A scheduled period of the school day."),
    Entity("gradingPeriod", "gradingPeriods", (
        _key(_desc("gradingPeriodDescriptor", description="The state's name for the grading period.")),
        _key(_string("gradingPeriodName", 60, description="The school's name for the grading period.")),
        _key(SCHOOL_REF),
        _key(SCHOOL_YEAR_REF),
        *SESSION_DATES,
        _int32("periodSequence", description="The position of the period in the school year."),
    ), description="A period of the school year for which grades are reported."),
    Entity("session", "sessions", (
        _key(_string("sessionName", 60, description="The name of the session.")),
        _key(SCHOOL_REF),
        _key(SCHOOL_YEAR_REF),
        _desc("termDescriptor", required=True, description="The term of the session."),
        *SESSION_DATES,
        Collection("gradingPeriods", "sessionGradingPeriod", (
            Ref("gradingPeriodReference", "gradingPeriod", required=True, description="A grading period."),
        ), description="The grading periods of the session."),
    ), key_updatable=True, description="A term of the school year (a semester, a trimester)."),
    Entity("calendar", "calendars", (
        _key(_string("calendarCode", 60, description="The code of the calendar.")),
        _key(SCHOOL_REF),
        _key(SCHOOL_YEAR_REF),
        _desc("calendarTypeDescriptor", required=True, description="The type of calendar."),
        _grade_levels("calendarGradeLevel"),
    ), description="A school's calendar for a school year."),
    Entity("calendarDate", "calendarDates", (
        _key(_date("date", description="The date.")),
        _key(Ref("calendarReference", "calendar", description="The calendar.")),
        Collection("calendarEvents", "calendarDateCalendarEvent", (
            _desc("calendarEventDescriptor", key=True, required=True, description="An event of the day."),
        ), required=True, description="What happens on the date."),
    ), description="A day of a school calendar and its events."),
    Entity("course", "courses", (
        _key(_string("courseCode", 60, description="The code of the course.")),
        _key(EDORG_REF),
        _string("courseTitle", 60, required=True, description="The title of the course."),
        _int32("numberOfParts", required=True, minimum=1, maximum=8,
               description="The number of parts the course is taught in."),
        _string("courseDescription", 1024, description="A description of the course."),
        Collection("identificationCodes", "courseIdentificationCode", (
            _desc("courseIdentificationSystemDescriptor", key=True, required=True,
                  description="The system the code comes from."),
            _string("identificationCode", 60, required=True, description="The code."),
        ), required=True, description="The codes that identify the course."),
        Collection("academicSubjects", "courseAcademicSubject", (
            _desc("academicSubjectDescriptor", key=True, required=True, description="An academic subject."),
        ), description="The subjects of the course."),
        _grade_levels("courseOfferedGradeLevel", "offeredGradeLevels"),
    ), description="A course of study in a district's or school's catalog."),
    Entity("courseOffering", "courseOfferings", (
        _key(_string("localCourseCode", 60, description="The school's code for the offering.")),
        _key(SCHOOL_REF),
        _key(SESSION_REF),
        _req(Ref("courseReference", "course", description="The course offered.")),
        _string("localCourseTitle", 60, description="The school's title for the offering."),
        _int32("instructionalTimePlanned", minimum=1, description="The planned instructional minutes."),
    ), description="A course offered by a school in a session."),
    Entity("section", "sections", (
        _key(_string("sectionIdentifier", 255, description="The identifier of the section.")),
        _key(Ref("courseOfferingReference", "courseOffering", description="The course offering.")),
        _string("sectionName", 100, description="A display name for the section."),
        _double("availableCredits", minimum=0, description="The credits the section awards."),
        _desc("educationalEnvironmentDescriptor", description="The setting of the instruction."),
        Collection("classPeriods", "sectionClassPeriod", (
            Ref("classPeriodReference", "classPeriod", required=True, description="A class period."),
        ), description="The class periods the section meets in."),
    ), key_updatable=True, description="A group of students taught a course offering together."),
    Entity("staff", "staffs", (
        _key(_string("staffUniqueId", 32, description="The identifier of the staff member.")),
        *_person_names(),
        _date("birthDate", description="The date of birth."),
        _desc("sexDescriptor", description="The sex of the staff member."),
        _bool("highlyQualifiedTeacher", description="Whether the teacher is highly qualified."),
        _electronic_mails("staffElectronicMail"),
    ), description="A person employed by an education organization."),
    Entity("staffSectionAssociation", "staffSectionAssociations", (
        _key(_date("beginDate", description="The first day of the assignment.")),
        _key(SECTION_REF),
        _key(Ref("staffReference", "staff", description="The staff member.")),
        _desc("classroomPositionDescriptor", required=True, description="The role in the classroom."),
        _date("endDate", description="The last day of the assignment."),
    ), description="A staff member's assignment to a section."),
    Entity("student", "students", (
        _key(_string("studentUniqueId", 32, description="The identifier of the student.")),
        *_person_names(),
        _date("birthDate", required=True, description="The date of birth."),
        _string("birthCity", 30, 2, description="The city of birth."),
        _desc("birthSexDescriptor", description="The sex recorded at birth."),
    ), description="A person enrolled in a school."),
    Entity("contact", "contacts", (
        _key(_string("contactUniqueId", 32, description="The identifier of the contact.")),
        *_person_names(),
        _desc("sexDescriptor", description="The sex of the contact."),
        _electronic_mails("contactElectronicMail"),
        _telephones("contactTelephone"),
    ), description="A parent, guardian or other contact person of a student."),
    Entity("studentSchoolAssociation", "studentSchoolAssociations", (
        _key(_date("entryDate", description="The date the student entered the school.")),
        _key(SCHOOL_REF),
        _key(STUDENT_REF),
        _desc("entryGradeLevelDescriptor", required=True, description="The grade level entered."),
        Ref("calendarReference", "calendar", description="The calendar the student follows."),
        SCHOOL_YEAR_REF,
        Ref("classOfSchoolYearTypeReference", "schoolYearType",
            description="The projected graduation year."),
        _desc("entryTypeDescriptor", description="How the student entered the school."),
        _date("exitWithdrawDate", description="The date the student left the school."),
        _desc("exitWithdrawTypeDescriptor", description="Why the student left the school."),
        _bool("primarySchool", description="Whether this is the student's primary enrollment."),
    ), key_updatable=True, description="A student's enrollment in a school."),
    Entity("studentEducationOrganizationAssociation", "studentEducationOrganizationAssociations", (
        _key(EDORG_REF),
        _key(STUDENT_REF),
        _desc("sexDescriptor", description="The sex of the student."),
        _bool("hispanicLatinoEthnicity", description="Whether the student is Hispanic or Latino."),
        _desc("limitedEnglishProficiencyDescriptor", description="The English proficiency status."),
        _address("studentEducationOrganizationAssociationAddress"),
        Collection("races", "studentEducationOrganizationAssociationRace", (
            _desc("raceDescriptor", key=True, required=True, description="A race."),
        ), description="The races of the student."),
    ), description="What an education organization records about a student."),
    Entity("studentSectionAssociation", "studentSectionAssociations", (
        _key(_date("beginDate", description="The first day of the enrollment in the section.")),
        _key(SECTION_REF),
        _key(STUDENT_REF),
        _date("endDate", description="The last day of the enrollment in the section."),
        _bool("homeroomIndicator", description="Whether the section is the student's homeroom."),
    ), key_updatable=True, description="A student's enrollment in a section."),
    Entity("studentContactAssociation", "studentContactAssociations", (
        _key(Ref("contactReference", "contact", description="The contact.")),
        _key(STUDENT_REF),
        _desc("relationDescriptor", description="How the contact is related to the student."),
        _bool("emergencyContactStatus", description="Whether the contact is an emergency contact."),
        _bool("primaryContactStatus", description="Whether the contact is the primary contact."),
        _bool("livesWith", description="Whether the student lives with the contact."),
        _int32("contactPriority", description="The order in which to call the contacts."),
    ), description="The relation between a student and a contact."),
    Entity("studentSchoolAttendanceEvent", "studentSchoolAttendanceEvents", (
        *ATTENDANCE_FIELDS,
        _key(SCHOOL_REF),
        _key(SESSION_REF),
        _key(STUDENT_REF),
    ), description="A student's attendance at school on a day."),
    Entity("studentSectionAttendanceEvent", "studentSectionAttendanceEvents", (
        *ATTENDANCE_FIELDS,
        _key(SECTION_REF),
        _key(STUDENT_REF),
        Collection("classPeriods", "studentSectionAttendanceEventClassPeriod", (
            Ref("classPeriodReference", "classPeriod", required=True, description="A class period."),
        ), description="The class periods the event covers."),
    ), description="A student's attendance in a section on a day."),
    Entity("grade", "grades", (
        _key(_desc("gradeTypeDescriptor", description="The type of grade.")),
        _key(Ref("gradingPeriodReference", "gradingPeriod", description="The grading period.",
                 param_names=(("schoolYear", "gradingPeriodSchoolYear"),))),
        _key(Ref("studentSectionAssociationReference", "studentSectionAssociation",
                 description="The student's enrollment in the section.")),
        _string("letterGradeEarned", 20, description="The letter grade."),
        _double("numericGradeEarned", description="The numeric grade."),
        _bool("currentGradeIndicator", description="Whether the grade is an interim grade."),
    ), key_updatable=True, description="A grade a student earned in a section for a grading period."),
)


# -- descriptors -----------------------------------------------------------------------------------
def _grade_level_values() -> list[str]:
    return ["Kindergarten", "First grade", "Second grade", "Third grade", "Fourth grade", "Fifth grade",
            "Sixth grade", "Seventh grade", "Eighth grade", "Ninth grade", "Tenth grade",
            "Eleventh grade", "Twelfth grade"]


#: Descriptor resource path -> code values loaded by the seeder (namespace ``uri://ed-fi.org/{Name}``).
DESCRIPTOR_VALUES: dict[str, list[str]] = {
    "/ed-fi/academicSubjectDescriptors": [
        "English Language Arts", "Mathematics", "Science", "Social Studies", "Fine and Performing Arts",
        "Physical, Health, and Safety Education", "Foreign Language and Literature",
        "Career and Technical Education"],
    "/ed-fi/addressTypeDescriptors": ["Home", "Mailing", "Physical"],
    "/ed-fi/attendanceEventCategoryDescriptors": [
        "In Attendance", "Excused Absence", "Unexcused Absence", "Tardy", "Early departure"],
    "/ed-fi/calendarEventDescriptors": [
        "Instructional day", "Holiday", "Teacher only day", "Make-up day", "Weather day",
        "Non-instructional day"],
    "/ed-fi/calendarTypeDescriptors": ["School", "Student Specific", "IEP"],
    "/ed-fi/classroomPositionDescriptors": [
        "Teacher of Record", "Assistant Teacher", "Support Teacher", "Substitute Teacher"],
    "/ed-fi/courseIdentificationSystemDescriptors": ["LEA course code", "State course code", "NCES"],
    "/ed-fi/educationOrganizationCategoryDescriptors": [
        "School", "Local Education Agency", "State Education Agency", "Other"],
    "/ed-fi/educationalEnvironmentDescriptors": [
        "Classroom", "Homebound", "Hospital class", "Resource room", "Virtual"],
    "/ed-fi/electronicMailTypeDescriptors": ["Home/Personal", "Work", "Organization", "Other"],
    "/ed-fi/entryTypeDescriptors": [
        "Next year school", "Transfer from public school", "Transfer from private school",
        "Original entry", "Re-entry", "Other"],
    "/ed-fi/exitWithdrawTypeDescriptors": ["Graduated", "Transferred", "Dropped out", "Expelled", "Other"],
    "/ed-fi/gradeLevelDescriptors": _grade_level_values(),
    "/ed-fi/gradeTypeDescriptors": ["Grading Period", "Semester", "Final", "Exam", "Progress Report"],
    "/ed-fi/gradingPeriodDescriptors": [
        "First Six Weeks", "Second Six Weeks", "Third Six Weeks", "Fourth Six Weeks", "Fifth Six Weeks",
        "Sixth Six Weeks", "First Semester", "Second Semester"],
    "/ed-fi/limitedEnglishProficiencyDescriptors": ["Limited", "NotLimited", "Formerly Limited"],
    "/ed-fi/localEducationAgencyCategoryDescriptors": [
        "Independent", "Regular public school district", "Charter"],
    "/ed-fi/raceDescriptors": [
        "American Indian - Alaska Native", "Asian", "Black - African American",
        "Native Hawaiian - Pacific Islander", "White"],
    "/ed-fi/relationDescriptors": [
        "Mother", "Father", "Guardian", "Grandmother", "Grandfather", "Aunt", "Uncle", "Other"],
    "/ed-fi/schoolCategoryDescriptors": [
        "Elementary School", "Middle School", "High School", "Elementary/Secondary School"],
    "/ed-fi/schoolTypeDescriptors": ["Regular", "Alternative", "Special Education",
                                     "Career and Technical Education"],
    "/ed-fi/sexDescriptors": ["Female", "Male", "Not Selected"],
    "/ed-fi/stateAbbreviationDescriptors": ["TX", "OK", "NM", "LA", "AR"],
    "/ed-fi/telephoneNumberTypeDescriptors": ["Home", "Mobile", "Work", "Emergency 1"],
    "/ed-fi/termDescriptors": ["Fall Semester", "Spring Semester", "Summer Semester", "Year Round"],
}


def descriptor_entity(path: str) -> str:
    """``/ed-fi/gradeLevelDescriptors`` -> ``gradeLevelDescriptor``."""
    return path.rsplit("/", 1)[-1][:-1]


def descriptor_namespace(path: str) -> str:
    """``/ed-fi/gradeLevelDescriptors`` -> ``uri://ed-fi.org/GradeLevelDescriptor``."""
    entity = descriptor_entity(path)
    return DESCRIPTOR_NAMESPACE_BASE + entity[0].upper() + entity[1:]


def descriptor_uri(path: str, code_value: str) -> str:
    """The value a descriptor property holds: ``uri://ed-fi.org/GradeLevelDescriptor#Ninth grade``."""
    return f"{descriptor_namespace(path)}#{code_value}"


# -- generating OpenAPI ----------------------------------------------------------------------------
def _cap(name: str) -> str:
    return name[0].upper() + name[1:]


def _schema_ref(entity: str) -> JSON:
    return {"$ref": f"#/components/schemas/{PREFIX}_{entity}"}


def _field_schema(f: Field, *, for_param: bool = False) -> JSON:
    """The JSON schema of a scalar, as a property (``for_param=False``) or a query parameter."""
    out: JSON = {}
    if f.kind in ("string", "descriptor"):
        out["maxLength"] = DESCRIPTOR_MAX_LENGTH if f.kind == "descriptor" else f.max_length
        if f.min_length is not None and not for_param:
            out["minLength"] = f.min_length
    if f.minimum is not None and not for_param:
        out["minimum"] = f.minimum
    if f.maximum is not None and not for_param:
        out["maximum"] = f.maximum
    out.update(_TYPE_FORMATS[f.kind])
    return out


_TYPE_FORMATS: dict[str, JSON] = {
    "string": {"type": "string"},
    "descriptor": {"type": "string"},
    "time": {"type": "string"},
    "date": {"type": "string", "format": "date"},
    "int32": {"type": "integer", "format": "int32"},
    "int64": {"type": "integer", "format": "int64"},
    "double": {"type": "number", "format": "double"},
    "boolean": {"type": "boolean"},
}


def _property(f: Field) -> JSON:
    prop = _field_schema(f)
    prop["description"] = f.description
    if f.key:
        prop["x-Ed-Fi-isIdentity"] = True
    elif not f.required:
        prop["x-nullable"] = True
    return prop


def _ordered(members: Iterable[Member]) -> list[Member]:
    """Schema order as the ODS/API writes it: key scalars, references by name, the rest by name."""
    members = list(members)
    keys = [m for m in members if isinstance(m, Field) and m.key]
    refs = sorted((m for m in members if isinstance(m, Ref)), key=lambda m: m.name)
    rest = sorted((m for m in members if not isinstance(m, Ref) and m not in keys), key=lambda m: m.name)
    return [*keys, *refs, *rest]


def _object_schema(members: Iterable[Member]) -> JSON:
    members = list(members)
    props: JSON = {}
    for m in members:
        if isinstance(m, Field):
            props[m.name] = _property(m)
        elif isinstance(m, Ref):
            props[m.name] = _schema_ref(m.target + "Reference")
        else:
            props[m.name] = {"type": "array", "description": m.description, "items": _schema_ref(m.item)}
    required = [m.name for m in members if m.required]
    schema: JSON = {"required": required} if required else {}
    schema.update({"type": "object", "properties": props})
    return schema


class _Builder:
    """Turns :data:`ENTITIES` and :data:`DESCRIPTOR_VALUES` into the two OpenAPI documents."""

    def __init__(self, entities: Iterable[Entity]) -> None:
        self.entities = {e.name: e for e in entities}

    # key fields of an entity as they appear in its reference schema
    def reference_fields(self, entity: str) -> dict[str, Field]:
        if entity in ABSTRACT_KEYS:
            return {f.name: f for f in ABSTRACT_KEYS[entity]}
        fields: dict[str, Field] = {}
        for m in self.entities[entity].members:
            if isinstance(m, Field) and m.key:
                fields.setdefault(m.name, m)
            elif isinstance(m, Ref) and m.key:
                role = _role(m)
                for name, f in self.reference_fields(m.target).items():
                    fields.setdefault(role + _cap(name) if role else name, f)
        return {name: fields[name] for name in sorted(fields)}

    def reference_schema(self, entity: str) -> JSON:
        fields = self.reference_fields(entity)
        props: JSON = {}
        for name, f in fields.items():
            prop = _field_schema(f)
            prop["description"] = f.description
            prop["x-Ed-Fi-isIdentity"] = True
            props[name] = prop
        props["link"] = {"$ref": "#/components/schemas/link"}
        return {"required": list(fields), "type": "object", "properties": props}

    def flattened(self, ref: Ref) -> list[tuple[str, Field]]:
        """Query parameters a reference contributes: (parameter name, field)."""
        role = _role(ref)
        renames = dict(ref.param_names)
        return [
            (renames.get(name, role + _cap(name) if role else name), f)
            for name, f in self.reference_fields(ref.target).items()
        ]

    def query_parameters(self, entity: Entity) -> list[JSON]:
        ordered = _ordered(entity.members)
        seen: set[str] = set()
        identity: list[JSON] = []
        refs: list[JSON] = []
        descriptors: list[JSON] = []
        others: list[JSON] = []

        def add(bucket: list[JSON], name: str, f: Field, key: bool) -> None:
            if name in seen:
                return
            seen.add(name)
            param: JSON = {"name": name, "in": "query", "description": f.description,
                           "schema": _field_schema(f, for_param=True)}
            if key:
                param["x-Ed-Fi-isIdentity"] = True
            bucket.append(param)

        for m in ordered:
            if isinstance(m, Field) and m.key:
                add(identity, m.name, m, True)
            elif isinstance(m, Ref) and m.key:
                for name, f in self.flattened(m):
                    add(identity, name, f, True)
        for m in ordered:
            if isinstance(m, Ref) and not m.key:
                for name, f in self.flattened(m):
                    add(refs, name, f, False)
        inherited = BASE_FIELDS.get(entity.base or "", frozenset())
        for m in sorted((m for m in ordered if isinstance(m, Field) and not m.key), key=lambda m: m.name):
            if m.name not in inherited:
                add(descriptors if m.kind == "descriptor" else others, m.name, m, False)
        if entity.base is None:
            others.append({"name": "id", "in": "query", "description": "", "schema": {"type": "string"}})
        others.sort(key=lambda p: p["name"])
        return [*identity, *refs, *descriptors, *others]

    def resource_schema(self, entity: Entity) -> JSON:
        schema = _object_schema(_ordered(entity.members))
        schema["properties"] = {"id": {"type": "string", "description": ""}, **schema["properties"],
                                **_SERVER_PROPERTIES}
        return schema

    def collection_schemas(self, members: Iterable[Member]) -> Iterator[tuple[str, JSON]]:
        for m in members:
            if isinstance(m, Collection):
                yield f"{PREFIX}_{m.item}", _object_schema(m.members)
                yield from self.collection_schemas(m.members)

    def referenced_entities(self) -> set[str]:
        found: set[str] = set()

        def walk(members: Iterable[Member]) -> None:
            for m in members:
                if isinstance(m, Ref):
                    found.add(m.target)
                elif isinstance(m, Collection):
                    walk(m.members)

        for e in self.entities.values():
            walk(e.members)
        return found

    def resources_document(self) -> JSON:
        schemas: JSON = {}
        paths: JSON = {}
        entities = sorted(self.entities.values(), key=lambda e: e.collection)
        for e in entities:
            schemas[e.schema_name] = self.resource_schema(e)
            schemas.update(self.collection_schemas(e.members))
            paths.update(_paths(e.path, e.name, e.collection, self.query_parameters(e),
                                key_updatable=e.key_updatable, descriptors=False))
        for target in sorted(self.referenced_entities()):
            schemas[f"{PREFIX}_{target}Reference"] = self.reference_schema(target)
        schemas["link"] = {"type": "object", "properties": {
            "rel": {"type": "string", "description": "The relation of the linked resource."},
            "href": {"type": "string", "description": "The URL of the linked resource."},
        }}
        return _document(
            "Ed-Fi Resources API (Data Standard 5.0 subset)",
            "The resources of the edfi_sandbox built-in model: a subset of Ed-Fi Data Standard 5.0.",
            paths, dict(sorted(schemas.items())), _tags(entities), descriptors=False,
        )

    def descriptors_document(self) -> JSON:
        schemas: JSON = {}
        paths: JSON = {}
        tags: list[JSON] = []
        for path in sorted(DESCRIPTOR_VALUES):
            entity = descriptor_entity(path)
            collection = path.rsplit("/", 1)[-1]
            schemas[f"{PREFIX}_{entity}"] = _descriptor_schema(entity)
            paths.update(_paths(path, entity, collection, [], key_updatable=False, descriptors=True))
            tags.append({"name": collection, "description": f"The values of the {_cap(entity)}."})
        return _document(
            "Ed-Fi Descriptors API (Data Standard 5.0 subset)",
            "The descriptors of the edfi_sandbox built-in model: a subset of Ed-Fi Data Standard 5.0.",
            paths, schemas, tags, descriptors=True,
        )


def _role(ref: Ref) -> str:
    base = ref.name[: -len("Reference")]
    if base.lower().endswith(ref.target.lower()):
        return base[: len(base) - len(ref.target)]
    return ""


_SERVER_PROPERTIES: JSON = {
    "_etag": {"type": "string", "description": "A value that changes whenever the item changes."},
    "_lastModifiedDate": {"type": "string", "format": "date-time",
                          "description": "When the item was last modified."},
}


def _descriptor_schema(entity: str) -> JSON:
    return {
        "required": ["codeValue", "namespace", "shortDescription"],
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": ""},
            f"{entity}Id": {"type": "integer", "format": "int32", "x-Ed-Fi-isIdentity": True,
                            "description": "The surrogate key of the descriptor value."},
            "codeValue": {"maxLength": 50, "type": "string", "description": "The code of the value."},
            "description": {"maxLength": 1024, "type": "string", "x-nullable": True,
                            "description": "A description of the value."},
            "effectiveBeginDate": {"type": "string", "format": "date", "x-nullable": True,
                                   "description": "The first day the value may be used."},
            "effectiveEndDate": {"type": "string", "format": "date", "x-nullable": True,
                                 "description": "The last day the value may be used."},
            "namespace": {"maxLength": 255, "type": "string",
                          "description": "The namespace of the value, a URI."},
            "shortDescription": {"maxLength": 75, "type": "string",
                                 "description": "A short description of the value."},
            **_SERVER_PROPERTIES,
        },
    }


def _responses(*pairs: tuple[str, str]) -> JSON:
    return {code: {"$ref": f"#/components/responses/{name}"} for code, name in pairs}


def _body(entity: str) -> JSON:
    return {
        "description": f'The JSON representation of the "{entity}" resource to be created or updated.',
        "content": {"application/json": {"schema": _schema_ref(entity)}},
        "required": True,
        "x-bodyName": entity,
    }


def _paths(path: str, entity: str, collection: str, params: list[JSON], *, key_updatable: bool,
           descriptors: bool) -> JSON:
    if_match = "If-Match" if descriptors else "IfMatch"
    if_none_match = "If-None-Match" if descriptors else "IfNoneMatch"
    not_found = "NotFoundUseSnapshot" if descriptors else "NotFound"
    shared = [{"$ref": f"#/components/parameters/{p}"}
              for p in ("offset", "limit", "MinChangeVersion", "MaxChangeVersion", "totalCount")]
    read_errors = (("304", "NotModified"), ("400", "BadRequest"), ("401", "Unauthorized"),
                   ("403", "Forbidden"), ("404", not_found), ("500", "Error"))
    write_errors = (("400", "BadRequest"), ("401", "Unauthorized"), ("403", "Forbidden"))
    conflict = (("409", "Conflict"), ("412", "PreconditionFailed"), ("500", "Error"))

    def ok(schema: JSON) -> JSON:
        return {"200": {"description": "The requested resource was successfully retrieved.",
                        "content": {"application/json": {"schema": schema}}}}

    tags = [collection]
    put: JSON = {
        "tags": tags,
        "summary": "Updates a resource based on the resource identifier.",
        "description": (
            "Updates the item with the given identifier. "
            + ("Natural key values may be changed; the change cascades to dependent items."
               if key_updatable else "Natural key values cannot be changed by PUT.")),
        "operationId": f"put{_cap(entity)}",
        "parameters": [{"$ref": "#/components/parameters/id"}, {"$ref": f"#/components/parameters/{if_match}"}],
        "requestBody": _body(entity),
        "responses": _responses(("204", "Updated"), *write_errors, ("404", "NotFound"), *conflict),
    }
    if key_updatable:
        put["x-Ed-Fi-isUpdatable"] = True
    return {
        path: {
            "get": {
                "tags": tags,
                "summary": 'Retrieves specific resources using the resource\'s property values (using the '
                           '"Get" pattern).',
                "description": "Returns the items whose properties match the values given.",
                "operationId": f"get{_cap(collection)}",
                "parameters": [*shared, *params],
                "responses": {**ok({"type": "array", "items": _schema_ref(entity)}),
                              **_responses(*read_errors)},
            },
            "post": {
                "tags": tags,
                "summary": "Creates or updates resources based on the natural key values of the supplied "
                           "resource.",
                "description": "Upserts an item by its natural key. Do not send the resource id.",
                "operationId": f"post{_cap(entity)}",
                "requestBody": _body(entity),
                "responses": _responses(("200", "Updated"), ("201", "Created"), *write_errors, *conflict),
            },
        },
        f"{path}/{{id}}": {
            "get": {
                "tags": tags,
                "summary": 'Retrieves a specific resource using the resource\'s identifier (using the '
                           '"Get By Id" pattern).',
                "description": "Returns the item with the given identifier.",
                "operationId": f"get{_cap(collection)}ById",
                "parameters": [{"$ref": "#/components/parameters/id"},
                               {"$ref": f"#/components/parameters/{if_none_match}"}],
                "responses": {**ok(_schema_ref(entity)), **_responses(*read_errors)},
            },
            "put": put,
            "delete": {
                "tags": tags,
                "summary": "Deletes an existing resource using the resource identifier.",
                "description": "Deletes the item with the given identifier.",
                "operationId": f"delete{_cap(entity)}ById",
                "parameters": [{"$ref": "#/components/parameters/id"},
                               {"$ref": f"#/components/parameters/{if_match}"}],
                "responses": _responses(("204", "Deleted"), *write_errors, ("404", "NotFound"), *conflict),
            },
        },
    }


def _components_responses(descriptors: bool) -> JSON:
    json_body = {"application/json": {}}
    out: JSON = {
        "Created": {"description": "The resource was created. The ETag header holds its version and the "
                                   "Location header its URL."},
        "Updated": {"description": "The resource was updated. The ETag header holds its new version."},
        "Deleted": {"description": "The resource was successfully deleted."},
        "NotModified": {"description": "The resource has the version given in If-None-Match."},
        "BadRequest": {"description": "Bad Request. The request was invalid; the body tells why.",
                       "content": json_body},
        "Unauthorized": {"description": "Unauthorized. The bearer token is missing or invalid."},
        "Forbidden": {"description": "Forbidden. The client may not perform this request."},
        "NotFound": {"description": "The resource could not be found."},
        "Conflict": {"description": "Conflict. The request would leave the data in an invalid state.",
                     "content": json_body},
        "PreconditionFailed": {"description": "The resource's version does not match If-Match."},
        "Error": {"description": "An unhandled error occurred on the server.", "content": json_body},
    }
    if descriptors:
        out["NotFoundUseSnapshot"] = {"description": "The resource, or the requested snapshot, could not "
                                                     "be found."}
    return out


def _components_parameters(descriptors: bool) -> JSON:
    if_match = "If-Match" if descriptors else "IfMatch"
    if_none_match = "If-None-Match" if descriptors else "IfNoneMatch"
    out: JSON = {
        "offset": {"name": "offset", "in": "query", "description": "How many items to skip.",
                   "schema": {"type": "integer", "format": "int32", "default": 0}},
        "limit": {"name": "limit", "in": "query", "description": "The largest number of items to return.",
                  "schema": {"maximum": 500, "minimum": 0, "type": "integer", "format": "int32",
                             "default": 25}},
        "MinChangeVersion": {"name": "minChangeVersion", "in": "query",
                             "description": "The lowest change version to return (inclusive).",
                             "schema": {"type": "integer", "format": "int64"}},
        "MaxChangeVersion": {"name": "maxChangeVersion", "in": "query",
                             "description": "The highest change version to return (inclusive).",
                             "schema": {"type": "integer", "format": "int64"}},
        "id": {"name": "id", "in": "path", "description": "The identifier of the resource.",
               "required": True, "schema": {"type": "string"}},
        if_match: {"name": "If-Match", "in": "header",
                   "description": "The ETag the resource must still have for the request to proceed.",
                   "schema": {"type": "string"}},
        if_none_match: {"name": "If-None-Match", "in": "header",
                        "description": "The ETag of a copy the client already holds.",
                        "schema": {"type": "string"}},
        "totalCount": {"name": "totalCount", "in": "query",
                       "description": "Whether to return the number of matching items in the "
                                      "'Total-Count' header.",
                       "schema": {"type": "boolean", "default": False}},
    }
    if descriptors:
        out["Snapshot-Identifier"] = {"name": "Snapshot-Identifier", "in": "header",
                                      "description": "The snapshot to read from.",
                                      "schema": {"type": "string"}}
    return out


def _document(title: str, description: str, paths: JSON, schemas: JSON, tags: list[JSON], *,
              descriptors: bool) -> JSON:
    return {
        "openapi": "3.0.1",
        "info": {"title": title, "description": description, "version": "5.0"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": _components_responses(descriptors),
            "parameters": _components_parameters(descriptors),
            "securitySchemes": {
                "oauth2_client_credentials": {
                    "type": "oauth2",
                    "description": "Ed-Fi ODS/API OAuth 2.0 Client Credentials Grant Type authorization",
                    "flows": {"clientCredentials": {"tokenUrl": "", "scopes": {}}},
                },
            },
        },
        "security": [{"oauth2_client_credentials": []}],
        "tags": tags,
    }


def _tags(entities: Iterable[Entity]) -> list[JSON]:
    return [{"name": e.collection, "description": e.description} for e in entities]


def builtin_documents() -> list[JSON]:
    """The built-in model as OpenAPI 3.0 documents: ``[resources_document, descriptors_document]``."""
    builder = _Builder(ENTITIES)
    return [builder.resources_document(), builder.descriptors_document()]
