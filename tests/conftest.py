"""Shared test fixtures: sandboxes on loopback and paths to the real Ed-Fi artifacts."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from edfi_sandbox.server import Sandbox

# the plugins share bearer tokens through a cache file by default: tests that do not test the cache get none (a
# sandbox started later on the same port would be sent the token of an earlier one); tests/test_token_cache.py
# sets token_cache itself
os.environ.setdefault("EDFI_SINGER_TOKEN_CACHE", "off")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "edfi"
OPENAPI = SHARED / "openapi"
VERSIONS = ("5.3", "6.1", "7.1", "7.3")
DS5_SPECS = (OPENAPI / "standards_resources-ds-5.0.oas3.yml", OPENAPI / "standards_descriptors-ds-5.0.oas3.yml")


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., Sandbox]]:
    """Start sandboxes on free ports; all are stopped at the end of the test."""
    started: list[Sandbox] = []

    def factory(api_version: str = "7.3", **kwargs: Any) -> Sandbox:
        sb = Sandbox(api_version, **kwargs).start()
        started.append(sb)
        return sb

    yield factory
    for sb in started:
        sb.stop()


class Api:
    """A tiny authenticated client for sandbox tests (raw requests, nothing of ours in between)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sb = sandbox
        self.http = requests.Session()
        self.http.headers["Authorization"] = "Bearer " + sandbox.token()

    def url(self, path: str) -> str:
        return self.sb.data_url + path

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.url(path), timeout=30, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> requests.Response:
        return self.http.post(self.url(path), json=body, timeout=30, **kw)

    def put(self, path: str, body: Any, **kw: Any) -> requests.Response:
        return self.http.put(self.url(path), json=body, timeout=30, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.http.delete(self.url(path), timeout=30, **kw)

    def changes(self, what: str, **kw: Any) -> requests.Response:
        layout = self.sb.app.layout
        url = f"{self.sb.base_url}{layout.root}/changeQueries/v1{layout.segment}/{what}"
        return self.http.get(url, timeout=30, **kw)

    def newest(self, **kw: Any) -> int:
        """newestChangeVersion (5.x writes it NewestChangeVersion)."""
        body = self.changes("availableChangeVersions", **kw).json()
        return body["NewestChangeVersion" if self.sb.config.api_version < "6" else "newestChangeVersion"]

    def all(self, path: str, **params: Any) -> list[dict]:
        out: list[dict] = []
        offset = 0
        size = min(500, self.sb.config.maximum_page_size)  # DMS: AppSettings:MaximumPageSize may be lower
        while True:
            page = self.get(path, params={**params, "offset": offset, "limit": size})
            page.raise_for_status()
            items = page.json()
            out.extend(items)
            if len(items) < size:
                return out
            offset += size


@pytest.fixture
def api_for() -> Callable[[Sandbox], Api]:
    return Api


@pytest.fixture(scope="session")
def ds5_model():
    """The real DS 5.0 resources and descriptors documents, parsed once."""
    from edfi_core.openapi import ApiModel

    return ApiModel.from_files(DS5_SPECS)


DESCRIPTORS = {
    "/ed-fi/educationOrganizationCategoryDescriptors": ("EducationOrganizationCategoryDescriptor", "School"),
    "/ed-fi/gradeLevelDescriptors": ("GradeLevelDescriptor", "Ninth grade"),
    "/ed-fi/termDescriptors": ("TermDescriptor", "Fall Semester"),
}


def uri(name: str, code: str) -> str:
    return f"uri://ed-fi.org/{name}#{code}"


def school(school_id: int, name: str = "Grand Bend High") -> dict:
    return {
        "schoolId": school_id,
        "nameOfInstitution": name,
        "educationOrganizationCategories": [
            {"educationOrganizationCategoryDescriptor": uri("EducationOrganizationCategoryDescriptor", "School")}
        ],
        "gradeLevels": [{"gradeLevelDescriptor": uri("GradeLevelDescriptor", "Ninth grade")}],
    }


def student(unique_id: str, first: str = "Ada") -> dict:
    return {"studentUniqueId": unique_id, "firstName": first, "lastSurname": "Lovelace", "birthDate": "2010-05-01"}


def enrollment(unique_id: str, school_id: int, entry: str = "2024-08-20") -> dict:
    return {
        "studentReference": {"studentUniqueId": unique_id},
        "schoolReference": {"schoolId": school_id},
        "entryDate": entry,
        "entryGradeLevelDescriptor": uri("GradeLevelDescriptor", "Ninth grade"),
    }


def load_basics(api: Api, schools: int = 1, students: int = 3) -> None:
    """Descriptors, schools, students and enrollments through the API (POST, dependency order)."""
    for path, (name, code) in DESCRIPTORS.items():
        assert api.post(path, {"namespace": f"uri://ed-fi.org/{name}", "codeValue": code,
                               "shortDescription": code}).status_code in (200, 201)
    for s in range(1, schools + 1):
        assert api.post("/ed-fi/schools", school(s)).status_code in (200, 201)
    for i in range(students):
        assert api.post("/ed-fi/students", student(f"S{i:04d}")).status_code in (200, 201)
        assert api.post("/ed-fi/studentSchoolAssociations", enrollment(f"S{i:04d}", 1)).status_code in (200, 201)
