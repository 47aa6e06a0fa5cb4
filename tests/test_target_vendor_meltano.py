"""A vendor's SIS database into an Ed-Fi API with real components: ``meltano run tap-postgres target-edfi``.

A SIS schema in the machine's PostgreSQL (schools, students, enrollments and a grade level code table) and views in
a second schema that build Ed-Fi payloads with ``json_build_object`` (references, descriptor URIs from the code
table); MeltanoLabs tap-postgres from PyPI reads the views (full table, ``emit_activate_version_messages``), and
target-edfi writes them to a sandbox with ``delete_missing`` and ``source_keys`` (views have no primary key). Then
the SIS changes a row, a natural key (an enrollment's entry date), hard-deletes an enrollment and its student and
sets an exit date; the rerun brings the API level with the database.

The same with CSV files: ``meltano run tap-csv-folder target-edfi`` (project ``tests/meltano_csv/meltano.yml``), one
file per Ed-Fi resource with snake_case and flattened (``studentReference__studentUniqueId``) headers.

The meltano project is ``tests/meltano_vendor/meltano.yml``, the file the README shows. Its plugins are installed once
into ``.meltano-vendor/`` of the repo (gitignored, ``MELTANO_SYS_DIR_ROOT``) and reused by later runs; each test has
its own schemas, transaction log and Meltano system database. Nothing here is skipped: a missing meltano or
database fails.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from edfi_core.keys import canonical
from edfi_sandbox.server import Sandbox
from tests.target_support import RequestCounter, content, diff_content

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
PROJECT = REPO / "tests" / "meltano_vendor"
SYS_DIR = REPO / ".meltano-vendor"
MELTANO = shutil.which("meltano") or str(REPO / ".venv-meltano" / "bin" / "meltano")
DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
PATHS = ("/ed-fi/schools", "/ed-fi/students", "/ed-fi/studentSchoolAssociations")


def _meltano(args: list[str], env: dict[str, str], timeout: float = 600,
             project: Path = PROJECT) -> subprocess.CompletedProcess:
    assert Path(MELTANO).exists(), "meltano is not installed: run `make meltano` (it installs .venv-meltano)"
    env = {**os.environ, "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false", "MELTANO_SYS_DIR_ROOT": str(SYS_DIR), **env}
    return subprocess.run([MELTANO, *args], cwd=project, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def vendor_plugins() -> None:
    """tap-postgres and target-edfi installed once into .meltano-vendor/ (kept between runs of the suite)."""
    installed = [SYS_DIR / "extractors" / "tap-postgres" / "venv" / "bin" / "tap-postgres",
                 SYS_DIR / "loaders" / "target-edfi" / "venv" / "bin" / "target-edfi"]
    if all(p.exists() for p in installed):
        return
    started = time.monotonic()
    proc = _meltano(["install"], {})
    assert proc.returncode == 0, f"meltano install failed: {proc.stderr[-3000:]}"
    logger.warning("meltano install of the vendor plugins took %.0fs", time.monotonic() - started)


SIS = """
CREATE TABLE {s}.grade_levels (code text PRIMARY KEY, edfi_code text NOT NULL);
CREATE TABLE {s}.schools (id serial PRIMARY KEY, school_number integer NOT NULL, name text NOT NULL);
CREATE TABLE {s}.students (id serial PRIMARY KEY, student_number text NOT NULL, first_name text NOT NULL,
                           last_name text NOT NULL, birth_date date NOT NULL);
CREATE TABLE {s}.enrollments (id serial PRIMARY KEY, student_id integer NOT NULL REFERENCES {s}.students,
                              school_id integer NOT NULL REFERENCES {s}.schools, entry_date date NOT NULL,
                              grade text NOT NULL REFERENCES {s}.grade_levels, exit_date date);
INSERT INTO {s}.grade_levels VALUES ('09', 'Ninth grade'), ('10', 'Tenth grade');
INSERT INTO {s}.schools (school_number, name) VALUES (255901001, 'Grand Bend High'), (255901002, 'Bend North High');
INSERT INTO {s}.students (student_number, first_name, last_name, birth_date)
  SELECT 'S' || (700 + n), 'First' || n, 'Last' || n, date '2009-01-01' + n * 17 FROM generate_series(1, 8) n;
INSERT INTO {s}.enrollments (student_id, school_id, entry_date, grade)
  SELECT n, 1 + n % 2, date '2024-08-20', CASE WHEN n % 3 = 0 THEN '10' ELSE '09' END FROM generate_series(1, 8) n;

CREATE VIEW {v}.grade_level_descriptors AS
  SELECT 'uri://ed-fi.org/GradeLevelDescriptor' AS namespace, edfi_code AS code_value,
         edfi_code AS short_description, edfi_code AS description FROM {s}.grade_levels;
CREATE VIEW {v}.education_organization_category_descriptors AS
  SELECT 'uri://ed-fi.org/EducationOrganizationCategoryDescriptor' AS namespace, 'School' AS code_value,
         'School' AS short_description, 'School' AS description;
CREATE VIEW {v}.schools AS
  SELECT sc.id AS sis_id, sc.school_number AS school_id, sc.name AS name_of_institution,
         json_build_array(json_build_object('educationOrganizationCategoryDescriptor',
                          'uri://ed-fi.org/EducationOrganizationCategoryDescriptor#School'))
           AS education_organization_categories,
         (SELECT json_agg(json_build_object('gradeLevelDescriptor', 'uri://ed-fi.org/GradeLevelDescriptor#'
                          || g.edfi_code) ORDER BY g.code) FROM {s}.grade_levels g) AS grade_levels
  FROM {s}.schools sc;
CREATE VIEW {v}.students AS
  SELECT id AS sis_id, student_number AS student_unique_id, first_name, last_name AS last_surname, birth_date
  FROM {s}.students;
CREATE VIEW {v}.student_school_associations AS
  SELECT e.id AS sis_id, json_build_object('studentUniqueId', st.student_number) AS student_reference,
         json_build_object('schoolId', sc.school_number) AS school_reference, e.entry_date,
         'uri://ed-fi.org/GradeLevelDescriptor#' || g.edfi_code AS entry_grade_level_descriptor,
         e.exit_date AS exit_withdraw_date
  FROM {s}.enrollments e JOIN {s}.students st ON st.id = e.student_id JOIN {s}.schools sc ON sc.id = e.school_id
  JOIN {s}.grade_levels g ON g.code = e.grade;
"""


def _without_empty(node: Any) -> Any:
    """The API answers collections nothing was sent for as empty arrays (``addresses: []``)."""
    if isinstance(node, dict):
        return {k: _without_empty(v) for k, v in node.items() if v != []}
    if isinstance(node, list):
        return [_without_empty(v) for v in node]
    return node


def api(sb: Sandbox) -> dict[str, dict[str, dict[str, Any]]]:
    """What the sandbox holds of the SIS's resources, by natural key."""
    return {path: {k: _without_empty(doc) for k, doc in items.items()} for path, items in content(sb, PATHS).items()}


def _key(doc: dict[str, Any], *fields: str) -> str:
    return canonical({f: doc[f] for f in fields}).decode()


def expected(conn: psycopg.Connection, s: str) -> dict[str, dict[str, dict[str, Any]]]:
    """What the API must hold, from the SIS's base tables (not its views)."""
    grades = [row[0] for row in conn.execute(f"SELECT edfi_code FROM {s}.grade_levels ORDER BY code")]
    schools = {}
    for number, name in conn.execute(f"SELECT school_number, name FROM {s}.schools"):
        doc = {"schoolId": number, "nameOfInstitution": name,
               "educationOrganizationCategories": [{"educationOrganizationCategoryDescriptor":
                                                    "uri://ed-fi.org/EducationOrganizationCategoryDescriptor#School"}],
               "gradeLevels": [{"gradeLevelDescriptor": f"uri://ed-fi.org/GradeLevelDescriptor#{g}"} for g in grades]}
        schools[_key(doc, "schoolId")] = doc
    students = {}
    for number, first, last, birth in conn.execute(
            f"SELECT student_number, first_name, last_name, birth_date FROM {s}.students"):
        doc = {"studentUniqueId": number, "firstName": first, "lastSurname": last, "birthDate": birth.isoformat()}
        students[_key(doc, "studentUniqueId")] = doc
    enrollments = {}
    for number, school, entry, grade, exit_date in conn.execute(
            f"SELECT st.student_number, sc.school_number, e.entry_date, g.edfi_code, e.exit_date "
            f"FROM {s}.enrollments e "
            f"JOIN {s}.students st ON st.id = e.student_id JOIN {s}.schools sc ON sc.id = e.school_id "
            f"JOIN {s}.grade_levels g ON g.code = e.grade"):
        doc = {"studentReference": {"studentUniqueId": number}, "schoolReference": {"schoolId": school},
               "entryDate": entry.isoformat(), "entryGradeLevelDescriptor": f"uri://ed-fi.org/GradeLevelDescriptor#{grade}"}
        if exit_date is not None:
            doc["exitWithdrawDate"] = exit_date.isoformat()
        key = {"entryDate": doc["entryDate"], "schoolId": school, "studentUniqueId": number}
        enrollments[canonical(key).decode()] = doc
    return {"/ed-fi/schools": schools, "/ed-fi/students": students, "/ed-fi/studentSchoolAssociations": enrollments}


@pytest.fixture
def sis() -> Iterator[tuple[psycopg.Connection, str, str]]:
    """A SIS schema and its Ed-Fi views schema (unique names), dropped at the end."""
    s = f"sis_{uuid.uuid4().hex[:8]}"
    v = f"{s}_edfi"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {s}; CREATE SCHEMA {v}")
        try:
            conn.execute(SIS.format(s=s, v=v))
            yield conn, s, v
        finally:
            conn.execute(f"DROP SCHEMA {v} CASCADE; DROP SCHEMA {s} CASCADE")


def test_meltano_run_tap_postgres_target_edfi_follows_the_sis(vendor_plugins: None, sis: tuple, make_sandbox: Any,
                                                              tmp_path: Path) -> None:
    conn, s, v = sis
    sb: Sandbox = make_sandbox("7.3")
    counter = RequestCounter(sb)
    env = {"TAP_POSTGRES_FILTER_SCHEMAS": f'["{v}"]', "TAP_POSTGRES_PASSWORD": "postgres",
           "TARGET_EDFI_BASE_URL": sb.api_root,
           "TARGET_EDFI_CLIENT_ID": sb.client_id, "TARGET_EDFI_CLIENT_SECRET": sb.client_secret,
           "TARGET_EDFI_TRANSACTION_LOG": str(tmp_path / "log.db"),
           "MELTANO_DATABASE_URI": f"sqlite:///{tmp_path / 'meltano.db'}"}

    def run() -> subprocess.CompletedProcess:
        proc = _meltano(["run", "tap-postgres", "target-edfi"], env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc

    # 1. the first run loads the SIS: the API equals the database
    proc = run()
    assert diff_content(api(sb), expected(conn, s)) == []
    assert counter.counts["POST"] == 2 + 1 + 2 + 8 + 8  # descriptors, schools, students, enrollments
    assert "emit_activate_version_messages" not in proc.stderr  # every stream ended with ACTIVATE_VERSION
    assert "is not a property of" not in proc.stderr  # sis_id is each view's source key, not an unknown field

    # 2. the same database again: nothing is written
    counter.reset()
    run()
    assert counter.counts == {}

    # 3. the SIS changes: a row, a natural key, a hard delete (an enrollment and its student), an exit date
    conn.execute(f"UPDATE {s}.students SET first_name = 'Renamed' WHERE id = 2")
    conn.execute(f"UPDATE {s}.enrollments SET entry_date = date '2024-08-27' WHERE id = 3")
    conn.execute(f"DELETE FROM {s}.enrollments WHERE student_id = 4")
    conn.execute(f"DELETE FROM {s}.students WHERE id = 4")
    conn.execute(f"UPDATE {s}.enrollments SET exit_date = date '2025-01-31' WHERE id = 5")
    counter.reset()
    run()
    assert diff_content(api(sb), expected(conn, s)) == []
    # the changed row and the exit date (upserts: POST), the key change (a PUT on the key-updatable enrollment, the
    # same Ed-Fi item), the hard-deleted enrollment and student (DELETE by delete_missing): nothing else
    assert counter.counts == {"POST": 2, "PUT": 1, "DELETE": 2}, counter.counts


def test_the_readme_shows_the_meltano_yml_the_test_runs() -> None:
    readme = (REPO / "README.md").read_text()
    assert f"```yaml\n{(PROJECT / 'meltano.yml').read_text()}```" in readme


# -- CSV files: tap-csv-folder ------------------------------------------------------------------------------------
CSV_PROJECT = REPO / "tests" / "meltano_csv"
CATEGORIES = '[{"educationOrganizationCategoryDescriptor": "uri://ed-fi.org/EducationOrganizationCategoryDescriptor#School"}]'
GRADES = ('[{"gradeLevelDescriptor": "uri://ed-fi.org/GradeLevelDescriptor#Ninth grade"}, '
          '{"gradeLevelDescriptor": "uri://ed-fi.org/GradeLevelDescriptor#Tenth grade"}]')


@pytest.fixture(scope="session")
def csv_plugins() -> None:
    """tap-csv-folder and target-edfi installed once into .meltano-vendor/ (shared with the tap-postgres project)."""
    installed = [SYS_DIR / "extractors" / "tap-csv-folder" / "venv" / "bin" / "tap-csv-folder",
                 SYS_DIR / "loaders" / "target-edfi" / "venv" / "bin" / "target-edfi"]
    if all(p.exists() for p in installed):
        return
    started = time.monotonic()
    proc = _meltano(["install"], {}, project=CSV_PROJECT)
    assert proc.returncode == 0, f"meltano install failed: {proc.stderr[-3000:]}"
    logger.warning("meltano install of the CSV plugins took %.0fs", time.monotonic() - started)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def csv_files(folder: Path, students: list[list[Any]], enrollments: list[list[Any]]) -> None:
    """The files a SIS export writes: descriptors, schools, students, enrollments, one per Ed-Fi resource."""
    _write_csv(folder / "grade_level_descriptors.csv", ["namespace", "code_value", "short_description", "description"],
               [["uri://ed-fi.org/GradeLevelDescriptor", g, g, g] for g in ("Ninth grade", "Tenth grade")])
    _write_csv(folder / "education_organization_category_descriptors.csv",
               ["namespace", "code_value", "short_description", "description"],
               [["uri://ed-fi.org/EducationOrganizationCategoryDescriptor", "School", "School", "School"]])
    _write_csv(folder / "schools.csv", ["school_id", "name_of_institution", "education_organization_categories",
                                        "grade_levels"],
               [[255901001, "Grand Bend High", CATEGORIES, GRADES], [255901002, "Bend North High", CATEGORIES, GRADES]])
    _write_csv(folder / "students.csv", ["student_unique_id", "first_name", "last_surname", "birth_date"], students)
    _write_csv(folder / "student_school_associations.csv",
               ["studentReference__studentUniqueId", "school_reference__school_id", "entry_date",
                "entry_grade_level_descriptor"], enrollments)


def csv_expected(folder: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """What the API must hold, from the CSV files."""
    schools = {}
    for row in _read_csv(folder / "schools.csv"):
        doc = {"schoolId": int(row["school_id"]), "nameOfInstitution": row["name_of_institution"],
               "educationOrganizationCategories": json.loads(row["education_organization_categories"]),
               "gradeLevels": json.loads(row["grade_levels"])}
        schools[_key(doc, "schoolId")] = doc
    students = {}
    for row in _read_csv(folder / "students.csv"):
        doc = {"studentUniqueId": row["student_unique_id"], "firstName": row["first_name"],
               "lastSurname": row["last_surname"], "birthDate": row["birth_date"]}
        students[_key(doc, "studentUniqueId")] = doc
    enrollments = {}
    for row in _read_csv(folder / "student_school_associations.csv"):
        number, school = row["studentReference__studentUniqueId"], int(row["school_reference__school_id"])
        doc = {"studentReference": {"studentUniqueId": number}, "schoolReference": {"schoolId": school},
               "entryDate": row["entry_date"], "entryGradeLevelDescriptor": row["entry_grade_level_descriptor"]}
        key = {"entryDate": doc["entryDate"], "schoolId": school, "studentUniqueId": number}
        enrollments[canonical(key).decode()] = doc
    return {"/ed-fi/schools": schools, "/ed-fi/students": students, "/ed-fi/studentSchoolAssociations": enrollments}


def test_meltano_run_tap_csv_folder_target_edfi_follows_the_files(csv_plugins: None, make_sandbox: Any,
                                                                  tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    students = [[f"S{700 + n}", f"First{n}", f"Last{n}", f"2009-01-{n + 10:02d}"] for n in range(1, 9)]
    enrollments = [[f"S{700 + n}", 255901001 + n % 2, "2024-08-20",
                    f"uri://ed-fi.org/GradeLevelDescriptor#{'Tenth' if n % 3 == 0 else 'Ninth'} grade"]
                   for n in range(1, 9)]
    csv_files(folder, students, enrollments)
    sb: Sandbox = make_sandbox("7.3")
    counter = RequestCounter(sb)
    env = {"TAP_CSV_FOLDER_PATH": str(folder), "TARGET_EDFI_BASE_URL": sb.api_root,
           "TARGET_EDFI_CLIENT_ID": sb.client_id, "TARGET_EDFI_CLIENT_SECRET": sb.client_secret,
           "TARGET_EDFI_TRANSACTION_LOG": str(tmp_path / "log.db"),
           "MELTANO_DATABASE_URI": f"sqlite:///{tmp_path / 'meltano.db'}"}

    def run() -> subprocess.CompletedProcess:
        proc = _meltano(["run", "tap-csv-folder", "target-edfi"], env, project=CSV_PROJECT)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc

    # 1. the first run loads the files: the API equals them
    proc = run()
    assert diff_content(api(sb), csv_expected(folder)) == []
    assert counter.counts["POST"] == 2 + 1 + 2 + 8 + 8, counter.counts  # descriptors, schools, students, enrollments
    assert "is not a property of" not in proc.stderr  # every column is an Ed-Fi field

    # 2. the same files again: nothing is written
    counter.reset()
    run()
    assert counter.counts == {}

    # 3. the export changes: a student's name, and a new student and enrollment as the files' first rows (every
    # other row moves a line down: the natural key, not the line, is the source key)
    students[1][1] = "Renamed"
    csv_files(folder, [["S799", "New", "Student", "2009-03-03"], *students],
              [["S799", 255901002, "2024-09-02", "uri://ed-fi.org/GradeLevelDescriptor#Ninth grade"], *enrollments])
    counter.reset()
    run()
    assert diff_content(api(sb), csv_expected(folder)) == []
    assert counter.counts == {"POST": 3}, counter.counts  # the renamed student, the new student and enrollment

    # 4. and again unchanged: nothing is written
    counter.reset()
    run()
    assert counter.counts == {}


def test_the_readme_shows_the_csv_meltano_yml_the_test_runs() -> None:
    readme = (REPO / "README.md").read_text()
    assert f"```yaml\n{(CSV_PROJECT / 'meltano.yml').read_text()}```" in readme
