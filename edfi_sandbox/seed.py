"""A deterministic synthetic school district for the sandbox.

:func:`seed_district` plans a district of N students (schools, calendars, courses, sections, staff,
enrollments, contacts, a term's attendance and first grades) with ``random.Random(seed)`` and loads
it into a store, resource by resource in dependency order, as API-shaped payloads (what a client
would POST: natural keys, references, descriptor URIs; no ``id``, ``_etag`` or ``link``).

The plan is small (a few objects per student); the payloads are produced lazily by generators, with
precomputed strings, so a district of 20,000 students (over a million attendance events) streams
through in seconds. Every payload is a fresh dict: the store may keep or change it.

Shape of the district, per student: one school enrollment, one district record, six sections (one
per core subject of the grade, ~25 students a section), one or two contacts, daily school
attendance for the first :data:`ATTENDANCE_DAYS` instructional days, section attendance on the days
the student was absent, tardy or left early, and a grade per section for the first grading period.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Protocol

from edfi_sandbox.builtin_model import DESCRIPTOR_VALUES, descriptor_namespace, descriptor_uri

logger = logging.getLogger(__name__)

JSON = dict[str, Any]


class BulkStore(Protocol):
    def bulk_load(self, resource_path: str, docs: Iterable[JSON]) -> int:
        """Insert payloads without per-row validation; return how many were loaded."""
        ...


# -- the district's constants ----------------------------------------------------------------------
LEA_ID = 867530
LEA_NAME = "Cedar Valley Independent School District"
LEA_SHORT_NAME = "Cedar Valley ISD"
SCHOOL_YEAR = 2025
YEAR_LABEL = "2024-2025"
SCHOOL_YEARS = range(2020, 2041)
STUDENTS_PER_SCHOOL = 500
STUDENTS_PER_SECTION = 25
SECTIONS_PER_TEACHER = 5
CLASS_PERIODS = 8
ATTENDANCE_DAYS = 40  # instructional days with attendance taken (term to date)
GRADED_PERIOD = 0  # index of the grading period that has grades
FALL = (date(2024, 8, 19), date(2024, 12, 20))
SPRING = (date(2025, 1, 6), date(2025, 5, 30))
HOLIDAYS = frozenset(
    [date(2024, 9, 2), date(2025, 1, 20), date(2025, 2, 17), date(2025, 4, 18), date(2025, 5, 26)]
    + [date(2024, 11, 25) + timedelta(days=i) for i in range(5)]  # Thanksgiving week
    + [date(2024, 12, 23) + timedelta(days=i) for i in range(12)]  # winter break
    + [date(2025, 3, 10) + timedelta(days=i) for i in range(5)]  # spring break
)
TEACHER_DAYS = frozenset([date(2024, 10, 14), date(2025, 2, 14)])

GRADE_LEVELS = DESCRIPTOR_VALUES["/ed-fi/gradeLevelDescriptors"]  # Kindergarten .. Twelfth grade
GRADE_CODES = ["K"] + [f"{g:02d}" for g in range(1, 13)]
#: school bands: grades served, school category, name suffix, short name suffix
BANDS: dict[str, tuple[range, str, str, str]] = {
    "K12": (range(0, 13), "Elementary/Secondary School", "Academy", "AC"),
    "K8": (range(0, 9), "Elementary School", "Elementary School", "ES"),
    "ELEM": (range(0, 6), "Elementary School", "Elementary School", "ES"),
    "MID": (range(6, 9), "Middle School", "Middle School", "MS"),
    "HIGH": (range(9, 13), "High School", "High School", "HS"),
}
#: course code prefix, title, academic subject
SUBJECTS = [
    ("ELA", "English Language Arts", "English Language Arts"),
    ("MATH", "Mathematics", "Mathematics"),
    ("SCI", "Science", "Science"),
    ("SS", "Social Studies", "Social Studies"),
    ("PE", "Physical Education and Health", "Physical, Health, and Safety Education"),
    ("ART", "Fine Arts", "Fine and Performing Arts"),
]
#: school attendance category weights: In Attendance, Excused, Unexcused, Tardy, Early departure
ATTENDANCE_WEIGHTS = (0.87, 0.05, 0.04, 0.03, 0.01)
ABSENCE_REASONS = ("", "Illness", "No reason given", "Arrived late", "Appointment")

FIRST_NAMES = [
    ("Olivia", 0), ("Emma", 0), ("Ava", 0), ("Sophia", 0), ("Isabella", 0), ("Mia", 0), ("Amelia", 0),
    ("Harper", 0), ("Evelyn", 0), ("Camila", 0), ("Luna", 0), ("Sofia", 0), ("Aaliyah", 0), ("Grace", 0),
    ("Chloe", 0), ("Priya", 0), ("Mei", 0), ("Nadia", 0), ("Zoe", 0), ("Lucia", 0),
    ("Liam", 1), ("Noah", 1), ("Oliver", 1), ("Elijah", 1), ("James", 1), ("Mateo", 1), ("Lucas", 1),
    ("Benjamin", 1), ("Henry", 1), ("Theodore", 1), ("Jackson", 1), ("Santiago", 1), ("Ethan", 1),
    ("Daniel", 1), ("Samuel", 1), ("Arjun", 1), ("Wei", 1), ("Omar", 1), ("Diego", 1), ("Caleb", 1),
]
FIRST_NAMES_BY_SEX = ([f for f, s in FIRST_NAMES if s == 0], [f for f, s in FIRST_NAMES if s == 1])
LAST_NAMES = [
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
    "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez",
    "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen",
    "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell",
    "Carter", "Roberts", "Patel", "Kim", "Chen", "Okafor",
]
SCHOOL_NAMES = [
    "Oak Ridge", "Pecan Grove", "Bluebonnet", "Cedar Creek", "Mesa Verde", "Live Oak", "Riverside",
    "Willow Bend", "Prairie View", "Stonegate", "Red Bluff", "Sycamore", "Hidden Springs", "Eagle Pass",
    "Lakeview", "Sunset Hills", "Mockingbird", "Granite Falls", "Brushy Creek", "Magnolia",
]
CITIES = [("Cedar Valley", "78610"), ("Buda", "78610"), ("Kyle", "78640"), ("Dripping Springs", "78620"),
          ("Wimberley", "78676")]
STREETS = ["Main", "Oak", "Pecan", "Elm", "Mesquite", "Cypress", "Ranch Road", "Hillside", "Creek",
           "Bluebonnet", "Maple", "Lone Star"]
STREET_TYPES = ["St", "Ave", "Dr", "Ln", "Blvd", "Trl"]
RELATIONS = [("Mother", 0), ("Father", 1), ("Guardian", 0), ("Grandmother", 0), ("Grandfather", 1),
             ("Aunt", 0), ("Uncle", 1)]
RACES = DESCRIPTOR_VALUES["/ed-fi/raceDescriptors"]


def uri(resource: str, code_value: str) -> str:
    """A descriptor value of the built-in model: ``uri("gradeLevel", "Ninth grade")``."""
    path = f"/ed-fi/{resource}Descriptors"
    if code_value not in DESCRIPTOR_VALUES.get(path, ()):
        raise KeyError(f"{code_value!r} is not a value of {path}")
    return descriptor_uri(path, code_value)


# -- the calendar ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class GradingPeriodPlan:
    descriptor: str  # code value, "First Six Weeks"
    name: str  # "2024-2025 First Six Weeks"
    begin: str
    end: str
    days: int
    sequence: int
    session: int  # index into Calendar.sessions


@dataclass(frozen=True)
class SessionPlan:
    name: str
    term: str
    begin: str
    end: str
    days: int


@dataclass
class Calendar:
    """One school year's calendar, shared by every school."""

    dates: list[tuple[str, str]]  # (ISO date, calendar event code)
    sessions: list[SessionPlan]
    grading_periods: list[GradingPeriodPlan]
    fall_days: list[str]  # ISO dates of the fall instructional days

    @classmethod
    def build(cls) -> Calendar:
        dates: list[tuple[str, str]] = []
        instructional: list[list[date]] = [[], []]
        day = FALL[0]
        while day <= SPRING[1]:
            if day.weekday() < 5:
                term = 0 if day <= FALL[1] else 1 if day >= SPRING[0] else None
                if day in HOLIDAYS or term is None:
                    event = "Holiday"
                elif day in TEACHER_DAYS:
                    event = "Teacher only day"
                else:
                    event = "Instructional day"
                    instructional[term].append(day)
                dates.append((day.isoformat(), event))
            day += timedelta(days=1)
        sessions = [
            SessionPlan(f"{YEAR_LABEL} {term}", term, begin.isoformat(), end.isoformat(), len(days))
            for term, (begin, end), days in zip(
                ("Fall Semester", "Spring Semester"), (FALL, SPRING), instructional, strict=True)
        ]
        codes = DESCRIPTOR_VALUES["/ed-fi/gradingPeriodDescriptors"][:6]
        periods: list[GradingPeriodPlan] = []
        for s, days in enumerate(instructional):
            size = math.ceil(len(days) / 3)
            for p in range(3):
                chunk = days[p * size:(p + 1) * size]
                code = codes[s * 3 + p]
                periods.append(GradingPeriodPlan(code, f"{YEAR_LABEL} {code}", chunk[0].isoformat(),
                                                 chunk[-1].isoformat(), len(chunk), s * 3 + p + 1, s))
        return cls(dates, sessions, periods, [d.isoformat() for d in instructional[0]])


# -- the plan --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SchoolPlan:
    school_id: int
    name: str
    short_name: str
    band: str
    street: str

    @property
    def grades(self) -> range:
        return BANDS[self.band][0]


@dataclass(slots=True)
class SectionPlan:
    school_id: int
    course: int  # index into District.courses
    identifier: str
    name: str
    period: int  # 0-based class period
    staff: int = -1  # index into District.staff


@dataclass(slots=True)
class PersonPlan:
    unique_id: str
    first: str
    last: str
    sex: str  # SexDescriptor code value
    birth: str


@dataclass(slots=True)
class StudentPlan:
    person: PersonPlan
    school: int  # index into District.schools
    grade: int  # 0 = Kindergarten
    entry_day: int  # index into the fall instructional days
    city: int
    street: str
    race: str
    hispanic: bool
    sections: list[int] = field(default_factory=list)  # indices into District.sections, by subject
    absences: dict[int, int] = field(default_factory=dict)  # day index -> attendance category index
    contacts: list[tuple[int, str]] = field(default_factory=list)  # (contact index, relation)


@dataclass(frozen=True)
class CoursePlan:
    code: str
    title: str
    subject: int
    grade: int


class District:
    """The plan of a synthetic district and the payloads that load it."""

    def __init__(self, students: int, seed: int = 0) -> None:
        if students < 1:
            raise ValueError("a district needs at least one student")
        self.seed = seed
        self.rng = random.Random(seed)
        self.calendar = Calendar.build()
        self.schools = self._plan_schools(max(1, round(students / STUDENTS_PER_SCHOOL)))
        self.courses = [
            CoursePlan(f"{prefix}-{GRADE_CODES[g]}", f"{title}, {GRADE_LEVELS[g]}", s, g)
            for g in range(len(GRADE_LEVELS))
            for s, (prefix, title, _) in enumerate(SUBJECTS)
        ]
        self._schools_by_grade = [[n for n, s in enumerate(self.schools) if g in s.grades]
                                  for g in range(len(GRADE_LEVELS))]
        self.students = [self._plan_student(i) for i in range(students)]
        self.sections: list[SectionPlan] = []
        self._plan_sections()
        self.staff: list[PersonPlan] = []
        self._plan_staff()
        self.contacts: list[PersonPlan] = []
        self._plan_contacts()
        self._plan_attendance()
        self._strings()

    # -- planning ---------------------------------------------------------------------------------
    def _plan_schools(self, count: int) -> list[SchoolPlan]:
        if count == 1:
            bands = ["K12"]
        elif count == 2:
            bands = ["K8", "HIGH"]
        else:
            high = max(1, round(count * 4 / 13))
            mid = max(1, round(count * 3 / 13))
            bands = ["ELEM"] * (count - high - mid) + ["MID"] * mid + ["HIGH"] * high
        schools = []
        for n, band in enumerate(bands):
            base = SCHOOL_NAMES[n % len(SCHOOL_NAMES)]
            suffix = f" {n // len(SCHOOL_NAMES) + 1}" if n >= len(SCHOOL_NAMES) else ""
            _, _, kind, short = BANDS[band]
            schools.append(SchoolPlan(LEA_ID * 1000 + n + 1, f"{base}{suffix} {kind}", f"{base}{suffix} {short}",
                                      band, self._street()))
        return schools

    def _street(self) -> str:
        rng = self.rng
        return f"{rng.randint(100, 9999)} {rng.choice(STREETS)} {rng.choice(STREET_TYPES)}"

    def _person(self, unique_id: str, last: str | None, birth_year: int) -> PersonPlan:
        rng = self.rng
        first, sex = rng.choice(FIRST_NAMES)
        birth = date(birth_year, 1, 1) + timedelta(days=rng.randrange(365))
        return PersonPlan(unique_id, first, last or rng.choice(LAST_NAMES), ("Female", "Male")[sex],
                          birth.isoformat())

    def _plan_student(self, i: int) -> StudentPlan:
        rng = self.rng
        grade = rng.randrange(len(GRADE_LEVELS))
        candidates = self._schools_by_grade[grade]
        school = candidates[i % len(candidates)]
        entry = 0 if rng.random() < 0.95 else rng.randint(1, ATTENDANCE_DAYS - 10)
        person = self._person(str(100000 + i), None, SCHOOL_YEAR - 6 - grade)
        return StudentPlan(person, school, grade, entry, rng.randrange(len(CITIES)), self._street(),
                           rng.choice(RACES), rng.random() < 0.3)

    def _plan_sections(self) -> None:
        """About 25 students a section; each student takes the six subjects of the grade."""
        groups: dict[tuple[int, int], list[StudentPlan]] = {}
        for st in self.students:
            groups.setdefault((st.school, st.grade), []).append(st)
        for (school, grade), members in sorted(groups.items()):
            count = math.ceil(len(members) / STUDENTS_PER_SECTION)
            school_id = self.schools[school].school_id
            for s in range(len(SUBJECTS)):
                course = grade * len(SUBJECTS) + s
                plan = self.courses[course]
                first = len(self.sections)
                for k in range(count):
                    self.sections.append(SectionPlan(
                        school_id, course, f"{school_id}-{plan.code}-{k + 1:02d}",
                        f"{plan.title} ({k + 1})", (s + k) % CLASS_PERIODS))
                for p, st in enumerate(members):
                    st.sections.append(first + (p + s * 7) % count)

    def _plan_staff(self) -> None:
        by_school: dict[int, list[SectionPlan]] = {}
        for sec in self.sections:
            by_school.setdefault(sec.school_id, []).append(sec)
        for school_id in sorted(by_school):
            for n, sec in enumerate(by_school[school_id]):
                if n % SECTIONS_PER_TEACHER == 0:
                    self.staff.append(self._person(str(200000 + len(self.staff)), None,
                                                   1960 + self.rng.randrange(40)))
                sec.staff = len(self.staff) - 1

    def _plan_contacts(self) -> None:
        rng = self.rng
        for st in self.students:
            relations = rng.sample(RELATIONS[:2], 2) if rng.random() < 0.6 else [rng.choice(RELATIONS)]
            for relation, sex in relations:
                contact = self._person(str(500000 + len(self.contacts)), st.person.last,
                                       SCHOOL_YEAR - 30 - st.grade - rng.randrange(15))
                contact.first = rng.choice(FIRST_NAMES_BY_SEX[sex])
                contact.sex = ("Female", "Male")[sex]
                st.contacts.append((len(self.contacts), relation))
                self.contacts.append(contact)

    def _plan_attendance(self) -> None:
        """Days a student was not simply present: geometric gaps, then a weighted category."""
        rng = random.Random(f"{self.seed}:attendance")
        log_present = math.log(ATTENDANCE_WEIGHTS[0])
        others = range(1, len(ATTENDANCE_WEIGHTS))
        weights = ATTENDANCE_WEIGHTS[1:]
        for st in self.students:
            day = st.entry_day + int(math.log(1.0 - rng.random()) / log_present)
            while day < ATTENDANCE_DAYS:
                st.absences[day] = rng.choices(others, weights)[0]
                day += 1 + int(math.log(1.0 - rng.random()) / log_present)

    def _strings(self) -> None:
        """Strings every payload reuses."""
        self.u_categories = [uri("attendanceEventCategory", c)
                             for c in DESCRIPTOR_VALUES["/ed-fi/attendanceEventCategoryDescriptors"]]
        self.u_grades = [uri("gradeLevel", g) for g in GRADE_LEVELS]
        self.u_sex = {s: uri("sex", s) for s in ("Female", "Male")}
        self.u_classroom = uri("educationalEnvironment", "Classroom")
        self.fall = self.calendar.sessions[0]
        self.days = self.calendar.fall_days

    # -- loading ----------------------------------------------------------------------------------
    def loads(self) -> list[tuple[str, Callable[[], Iterator[JSON]]]]:
        """(resource path, payload generator) in dependency order."""
        return [
            *[(path, self._descriptor_docs(path)) for path in DESCRIPTOR_VALUES],
            ("/ed-fi/schoolYearTypes", self.school_year_types),
            ("/ed-fi/localEducationAgencies", self.local_education_agencies),
            ("/ed-fi/schools", self.school_docs),
            ("/ed-fi/classPeriods", self.class_periods),
            ("/ed-fi/courses", self.course_docs),
            ("/ed-fi/gradingPeriods", self.grading_periods),
            ("/ed-fi/sessions", self.session_docs),
            ("/ed-fi/calendars", self.calendars),
            ("/ed-fi/calendarDates", self.calendar_dates),
            ("/ed-fi/courseOfferings", self.course_offerings),
            ("/ed-fi/sections", self.section_docs),
            ("/ed-fi/staffs", self.staff_docs),
            ("/ed-fi/staffSectionAssociations", self.staff_section_associations),
            ("/ed-fi/students", self.student_docs),
            ("/ed-fi/studentSchoolAssociations", self.student_school_associations),
            ("/ed-fi/studentEducationOrganizationAssociations", self.student_edorg_associations),
            ("/ed-fi/studentSectionAssociations", self.student_section_associations),
            ("/ed-fi/contacts", self.contact_docs),
            ("/ed-fi/studentContactAssociations", self.student_contact_associations),
            ("/ed-fi/studentSchoolAttendanceEvents", self.school_attendance_events),
            ("/ed-fi/studentSectionAttendanceEvents", self.section_attendance_events),
            ("/ed-fi/grades", self.grade_docs),
        ]

    @staticmethod
    def _descriptor_docs(path: str) -> Callable[[], Iterator[JSON]]:
        namespace = descriptor_namespace(path)

        def docs() -> Iterator[JSON]:
            for code in DESCRIPTOR_VALUES[path]:
                yield {"namespace": namespace, "codeValue": code, "shortDescription": code,
                       "description": code}

        return docs

    def school_year_types(self) -> Iterator[JSON]:
        for year in SCHOOL_YEARS:
            yield {"schoolYear": year, "currentSchoolYear": year == SCHOOL_YEAR,
                   "schoolYearDescription": f"{year - 1}-{year}"}

    @staticmethod
    def _address(kind: str, street: str, city: int) -> JSON:
        name, postal = CITIES[city]
        return {"addressTypeDescriptor": uri("addressType", kind),
                "stateAbbreviationDescriptor": uri("stateAbbreviation", "TX"),
                "city": name, "postalCode": postal, "streetNumberName": street, "nameOfCounty": "Hays"}

    def local_education_agencies(self) -> Iterator[JSON]:
        yield {
            "localEducationAgencyId": LEA_ID,
            "nameOfInstitution": LEA_NAME,
            "shortNameOfInstitution": LEA_SHORT_NAME,
            "localEducationAgencyCategoryDescriptor": uri("localEducationAgencyCategory", "Independent"),
            "categories": [{"educationOrganizationCategoryDescriptor":
                            uri("educationOrganizationCategory", "Local Education Agency")}],
            "addresses": [self._address("Physical", "1200 Main St", 0)],
        }

    def school_docs(self) -> Iterator[JSON]:
        for school in self.schools:
            category = BANDS[school.band][1]
            yield {
                "schoolId": school.school_id,
                "nameOfInstitution": school.name,
                "shortNameOfInstitution": school.short_name,
                "localEducationAgencyReference": {"localEducationAgencyId": LEA_ID},
                "schoolTypeDescriptor": uri("schoolType", "Regular"),
                "educationOrganizationCategories": [
                    {"educationOrganizationCategoryDescriptor": uri("educationOrganizationCategory", "School")}],
                "gradeLevels": [{"gradeLevelDescriptor": self.u_grades[g]} for g in school.grades],
                "schoolCategories": [{"schoolCategoryDescriptor": uri("schoolCategory", category)}],
                "addresses": [self._address("Physical", school.street, 0)],
            }

    def class_periods(self) -> Iterator[JSON]:
        for school in self.schools:
            for p in range(CLASS_PERIODS):
                start = 8 * 60 + p * 55
                yield {
                    "classPeriodName": f"{p + 1:02d} - Period {p + 1}",
                    "schoolReference": {"schoolId": school.school_id},
                    "officialAttendancePeriod": p == 1,
                    "meetingTimes": [{"startTime": f"{start // 60:02d}:{start % 60:02d}:00",
                                      "endTime": f"{(start + 50) // 60:02d}:{(start + 50) % 60:02d}:00"}],
                }

    def course_docs(self) -> Iterator[JSON]:
        for course in self.courses:
            yield {
                "courseCode": course.code,
                "educationOrganizationReference": {"educationOrganizationId": LEA_ID},
                "courseTitle": course.title,
                "numberOfParts": 1,
                "courseDescription": f"{course.title} for the {YEAR_LABEL} school year.",
                "identificationCodes": [{"courseIdentificationSystemDescriptor":
                                         uri("courseIdentificationSystem", "LEA course code"),
                                         "identificationCode": course.code}],
                "academicSubjects": [{"academicSubjectDescriptor":
                                      uri("academicSubject", SUBJECTS[course.subject][2])}],
                "offeredGradeLevels": [{"gradeLevelDescriptor": self.u_grades[course.grade]}],
            }

    def grading_periods(self) -> Iterator[JSON]:
        for school in self.schools:
            for gp in self.calendar.grading_periods:
                yield {
                    "gradingPeriodDescriptor": uri("gradingPeriod", gp.descriptor),
                    "gradingPeriodName": gp.name,
                    "schoolReference": {"schoolId": school.school_id},
                    "schoolYearTypeReference": {"schoolYear": SCHOOL_YEAR},
                    "beginDate": gp.begin,
                    "endDate": gp.end,
                    "totalInstructionalDays": gp.days,
                    "periodSequence": gp.sequence,
                }

    def _grading_period_ref(self, gp: GradingPeriodPlan, school_id: int) -> JSON:
        return {"gradingPeriodDescriptor": uri("gradingPeriod", gp.descriptor),
                "gradingPeriodName": gp.name, "schoolId": school_id, "schoolYear": SCHOOL_YEAR}

    def session_docs(self) -> Iterator[JSON]:
        for school in self.schools:
            for n, session in enumerate(self.calendar.sessions):
                yield {
                    "sessionName": session.name,
                    "schoolReference": {"schoolId": school.school_id},
                    "schoolYearTypeReference": {"schoolYear": SCHOOL_YEAR},
                    "termDescriptor": uri("term", session.term),
                    "beginDate": session.begin,
                    "endDate": session.end,
                    "totalInstructionalDays": session.days,
                    "gradingPeriods": [
                        {"gradingPeriodReference": self._grading_period_ref(gp, school.school_id)}
                        for gp in self.calendar.grading_periods if gp.session == n
                    ],
                }

    def _calendar_code(self, school_id: int) -> str:
        return f"{school_id}-{SCHOOL_YEAR}"

    def calendars(self) -> Iterator[JSON]:
        for school in self.schools:
            yield {
                "calendarCode": self._calendar_code(school.school_id),
                "schoolReference": {"schoolId": school.school_id},
                "schoolYearTypeReference": {"schoolYear": SCHOOL_YEAR},
                "calendarTypeDescriptor": uri("calendarType", "School"),
                "gradeLevels": [{"gradeLevelDescriptor": self.u_grades[g]} for g in school.grades],
            }

    def calendar_dates(self) -> Iterator[JSON]:
        events = {e: uri("calendarEvent", e) for e in {e for _, e in self.calendar.dates}}
        for school in self.schools:
            code = self._calendar_code(school.school_id)
            for day, event in self.calendar.dates:
                yield {
                    "date": day,
                    "calendarReference": {"calendarCode": code, "schoolId": school.school_id,
                                          "schoolYear": SCHOOL_YEAR},
                    "calendarEvents": [{"calendarEventDescriptor": events[event]}],
                }

    def course_offerings(self) -> Iterator[JSON]:
        for school in self.schools:
            for session in self.calendar.sessions:
                for course in self.courses:
                    if course.grade not in school.grades:
                        continue
                    yield {
                        "localCourseCode": course.code,
                        "schoolReference": {"schoolId": school.school_id},
                        "sessionReference": {"schoolId": school.school_id, "schoolYear": SCHOOL_YEAR,
                                             "sessionName": session.name},
                        "courseReference": {"courseCode": course.code, "educationOrganizationId": LEA_ID},
                        "localCourseTitle": course.title,
                        "instructionalTimePlanned": session.days * 50,
                    }

    def _section_ref(self, sec: SectionPlan) -> JSON:
        return {"localCourseCode": self.courses[sec.course].code, "schoolId": sec.school_id,
                "schoolYear": SCHOOL_YEAR, "sectionIdentifier": sec.identifier,
                "sessionName": self.fall.name}

    def section_docs(self) -> Iterator[JSON]:
        for sec in self.sections:
            course = self.courses[sec.course]
            yield {
                "sectionIdentifier": sec.identifier,
                "courseOfferingReference": {"localCourseCode": course.code, "schoolId": sec.school_id,
                                            "schoolYear": SCHOOL_YEAR, "sessionName": self.fall.name},
                "sectionName": sec.name,
                "availableCredits": 0.5 if course.grade >= 9 else 0.0,
                "educationalEnvironmentDescriptor": self.u_classroom,
                "classPeriods": [{"classPeriodReference": {
                    "classPeriodName": f"{sec.period + 1:02d} - Period {sec.period + 1}",
                    "schoolId": sec.school_id}}],
            }

    def staff_docs(self) -> Iterator[JSON]:
        work = uri("electronicMailType", "Work")
        for person in self.staff:
            yield {
                "staffUniqueId": person.unique_id,
                "firstName": person.first,
                "lastSurname": person.last,
                "birthDate": person.birth,
                "sexDescriptor": self.u_sex[person.sex],
                "highlyQualifiedTeacher": True,
                "electronicMails": [{
                    "electronicMailTypeDescriptor": work,
                    "electronicMailAddress":
                        f"{person.first}.{person.last}.{person.unique_id}@cedarvalley.example.org".lower(),
                    "primaryEmailAddressIndicator": True}],
            }

    def staff_section_associations(self) -> Iterator[JSON]:
        teacher = uri("classroomPosition", "Teacher of Record")
        for sec in self.sections:
            yield {
                "beginDate": self.fall.begin,
                "sectionReference": self._section_ref(sec),
                "staffReference": {"staffUniqueId": self.staff[sec.staff].unique_id},
                "classroomPositionDescriptor": teacher,
                "endDate": self.fall.end,
            }

    def student_docs(self) -> Iterator[JSON]:
        for st in self.students:
            p = st.person
            yield {"studentUniqueId": p.unique_id, "firstName": p.first, "lastSurname": p.last,
                   "birthDate": p.birth, "birthCity": CITIES[st.city][0], "birthSexDescriptor": self.u_sex[p.sex]}

    def student_school_associations(self) -> Iterator[JSON]:
        returning = uri("entryType", "Next year school")
        transfer = uri("entryType", "Transfer from public school")
        for st in self.students:
            school_id = self.schools[st.school].school_id
            yield {
                "entryDate": self.days[st.entry_day],
                "schoolReference": {"schoolId": school_id},
                "studentReference": {"studentUniqueId": st.person.unique_id},
                "entryGradeLevelDescriptor": self.u_grades[st.grade],
                "calendarReference": {"calendarCode": self._calendar_code(school_id), "schoolId": school_id,
                                      "schoolYear": SCHOOL_YEAR},
                "schoolYearTypeReference": {"schoolYear": SCHOOL_YEAR},
                "classOfSchoolYearTypeReference": {"schoolYear": SCHOOL_YEAR + 12 - st.grade},
                "entryTypeDescriptor": returning if st.entry_day == 0 else transfer,
                "primarySchool": True,
            }

    def student_edorg_associations(self) -> Iterator[JSON]:
        not_limited = uri("limitedEnglishProficiency", "NotLimited")
        limited = uri("limitedEnglishProficiency", "Limited")
        races = {r: uri("race", r) for r in RACES}
        for n, st in enumerate(self.students):
            yield {
                "educationOrganizationReference": {"educationOrganizationId": LEA_ID},
                "studentReference": {"studentUniqueId": st.person.unique_id},
                "sexDescriptor": self.u_sex[st.person.sex],
                "hispanicLatinoEthnicity": st.hispanic,
                "limitedEnglishProficiencyDescriptor": limited if n % 11 == 0 else not_limited,
                "addresses": [self._address("Home", st.street, st.city)],
                "races": [{"raceDescriptor": races[st.race]}],
            }

    def student_section_associations(self) -> Iterator[JSON]:
        for st in self.students:
            begin = self.days[st.entry_day]
            student = st.person.unique_id
            for n, s in enumerate(st.sections):
                yield {
                    "beginDate": begin,
                    "sectionReference": self._section_ref(self.sections[s]),
                    "studentReference": {"studentUniqueId": student},
                    "endDate": self.fall.end,
                    "homeroomIndicator": n == 0,
                }

    def contact_docs(self) -> Iterator[JSON]:
        home = uri("electronicMailType", "Home/Personal")
        mobile = uri("telephoneNumberType", "Mobile")
        for person in self.contacts:
            n = int(person.unique_id)
            yield {
                "contactUniqueId": person.unique_id,
                "firstName": person.first,
                "lastSurname": person.last,
                "sexDescriptor": self.u_sex[person.sex],
                "electronicMails": [{"electronicMailTypeDescriptor": home,
                                     "electronicMailAddress": f"{person.first}.{person.last}{n}@example.com".lower(),
                                     "primaryEmailAddressIndicator": True}],
                "telephones": [{"telephoneNumberTypeDescriptor": mobile,
                                "telephoneNumber": f"(512) 555-{n % 10000:04d}", "orderOfPriority": 1}],
            }

    def student_contact_associations(self) -> Iterator[JSON]:
        relations = {r: uri("relation", r) for r, _ in RELATIONS}
        for st in self.students:
            for n, (c, relation) in enumerate(st.contacts):
                yield {
                    "contactReference": {"contactUniqueId": self.contacts[c].unique_id},
                    "studentReference": {"studentUniqueId": st.person.unique_id},
                    "relationDescriptor": relations[relation],
                    "emergencyContactStatus": True,
                    "primaryContactStatus": n == 0,
                    "livesWith": True,
                    "contactPriority": n + 1,
                }

    def school_attendance_events(self) -> Iterator[JSON]:
        categories = self.u_categories
        days = self.days
        session = self.fall.name
        for st in self.students:
            school_id = self.schools[st.school].school_id
            student = st.person.unique_id
            absences = st.absences
            for day in range(st.entry_day, ATTENDANCE_DAYS):
                cat = absences.get(day, 0)
                doc = {
                    "attendanceEventCategoryDescriptor": categories[cat],
                    "eventDate": days[day],
                    "schoolReference": {"schoolId": school_id},
                    "sessionReference": {"schoolId": school_id, "schoolYear": SCHOOL_YEAR,
                                         "sessionName": session},
                    "studentReference": {"studentUniqueId": student},
                }
                if cat:
                    doc["attendanceEventReason"] = ABSENCE_REASONS[cat]
                yield doc

    def section_attendance_events(self) -> Iterator[JSON]:
        """Absences in every section of the day; tardies in the first section, departures in the last."""
        categories = self.u_categories
        days = self.days
        classroom = self.u_classroom
        refs = [self._section_ref(sec) for sec in self.sections]
        for st in self.students:
            student = st.person.unique_id
            for day, cat in sorted(st.absences.items()):
                for s in _sections_missed(st.sections, cat):
                    yield {
                        "attendanceEventCategoryDescriptor": categories[cat],
                        "eventDate": days[day],
                        "sectionReference": dict(refs[s]),
                        "studentReference": {"studentUniqueId": student},
                        "attendanceEventReason": ABSENCE_REASONS[cat],
                        "educationalEnvironmentDescriptor": classroom,
                    }

    def grade_docs(self) -> Iterator[JSON]:
        rng = random.Random(f"{self.seed}:grades")
        grade_type = uri("gradeType", "Grading Period")
        gp = self.calendar.grading_periods[GRADED_PERIOD]
        period_refs = {s.school_id: self._grading_period_ref(gp, s.school_id) for s in self.schools}
        refs = [self._section_ref(sec) for sec in self.sections]
        for st in self.students:
            begin = self.days[st.entry_day]
            student = st.person.unique_id
            for s in st.sections:
                score = min(100, max(50, round(rng.gauss(84, 9))))
                ssa = dict(refs[s])
                ssa["beginDate"] = begin
                ssa["studentUniqueId"] = student
                yield {
                    "gradeTypeDescriptor": grade_type,
                    "gradingPeriodReference": dict(period_refs[self.sections[s].school_id]),
                    "studentSectionAssociationReference": ssa,
                    "letterGradeEarned": _letter(score),
                    "numericGradeEarned": float(score),
                    "currentGradeIndicator": False,
                }


def _sections_missed(sections: list[int], category: int) -> list[int]:
    """Sections an attendance category touches: all on absences, the first on a tardy, else the last."""
    if category in (1, 2):
        return sections
    return sections[:1] if category == 3 else sections[-1:]


def _letter(score: int) -> str:
    for floor, letter in ((90, "A"), (80, "B"), (70, "C"), (60, "D")):
        if score >= floor:
            return letter
    return "F"


def district_loads(students: int, seed: int = 0) -> list[tuple[str, Callable[[], Iterator[JSON]]]]:
    """The district's (resource path, payload generator factory) pairs, in dependency order."""
    return District(students, seed).loads()


def seed_district(store: BulkStore, students: int, seed: int = 0) -> dict[str, int]:
    """Load a deterministic synthetic district of ``students`` students; return counts per resource."""
    started = time.perf_counter()
    loads = district_loads(students, seed)
    logger.info("planned a district of %d students in %.2fs", students, time.perf_counter() - started)
    counts: dict[str, int] = {}
    for path, docs in loads:
        t0 = time.perf_counter()
        counts[path] = store.bulk_load(path, docs())
        logger.debug("loaded %d %s in %.2fs", counts[path], path, time.perf_counter() - t0)
    logger.info("seeded %d items in %.2fs", sum(counts.values()), time.perf_counter() - started)
    return counts
