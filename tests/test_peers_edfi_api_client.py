"""edfi-api-client, a published Ed-Fi client nobody here wrote, against the sandbox over loopback HTTP.

``edfi-api-client==0.4.1`` reads the root payload (``apiMode``, ``version``), the Resources and Descriptors OpenAPI
documents at ``metadata/data/v3[/{instance}][/{year}]/{component}/swagger.json``, authenticates with HTTP Basic at
``[{instance}/]oauth/token``, counts with ``GET …?totalCount=true&limit=0`` (``Total-Count``), reads
``changeQueries/v1[/…]/availableChangeVersions`` and pages ``GET data/v3[/…]/{ns}/{resource}[/deletes|/keyChanges]``:

* on 7.3 ``get_rows`` pages by cursor: a first plain GET, then ``pageToken`` (from ``Next-Page-Token``) and
  ``pageSize`` until a page comes without that header;
* otherwise, and always for ``/deletes`` and ``/keyChanges``: ``limit``/``offset``, optionally in change-version
  windows (``step_change_version``), optionally from the last page down (``reverse_paging``, which counts each
  window first).

Every answer is checked against the sandbox's store (a seeded district of 60 students). A guard refuses any
non-loopback connection or name lookup while these tests run. Where the client fails because the sandbox differs
from a real ODS/API, the test is ``xfail(strict=True)`` with the evidence; the sandbox is what must change.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from edfi_api_client import EdFiClient
from requests.exceptions import HTTPError

from edfi_sandbox.server import Sandbox
from edfi_sandbox.store import Store
from tests.loopback import loopback_guard

SEED_STUDENTS = 60
STEP = 700  # change-version window of the stepping paginator (the seeded district spans ~5,400 versions)
PAGE = 97  # page size: never a divisor of a count, so pages end mid-window and mid-resource

#: id -> (api version, sandbox options, edfi-api-client options, the api_mode the client must infer)
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any], str | None]] = {
    "5.3": ("5.3", {}, {}, "sandbox"),
    "5.3-instance-year": (
        "5.3", {"api_mode": "instance-year", "instance": "gbisd", "school_year": 2025},
        {"api_year": 2025, "instance_code": "gbisd"}, "instance_year_specific",
    ),
    "6.1-year": ("6.1", {"api_mode": "year", "school_year": 2025}, {"api_year": 2025}, "year_specific"),
    "7.1": ("7.1", {}, {}, None),
    "7.3": ("7.3", {}, {}, None),
    "7.3-tenant-context": ("7.3", {"tenant": "gbisd", "context": "2025"}, {}, None),
}

#: Resources read with every pagination method: the biggest, a key-updatable one, a person, descriptors.
PAGED = (
    "/ed-fi/studentSchoolAttendanceEvents",
    "/ed-fi/studentSectionAssociations",
    "/ed-fi/studentSchoolAssociations",
    "/ed-fi/students",
    "/ed-fi/calendarDates",
    "/ed-fi/gradeLevelDescriptors",
)




# -- loopback only ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loopback_only() -> Iterator[list[Any]]:
    with loopback_guard("edfi-api-client") as refused:
        yield refused


# -- the sandbox and the client ----------------------------------------------------------------------------
@dataclass
class Site:
    name: str
    sandbox: Sandbox
    client: EdFiClient
    client_options: dict[str, Any]
    expected_mode: str | None

    @property
    def version(self) -> str:
        return self.sandbox.config.api_version

    @property
    def store(self) -> Store:
        return self.sandbox.store

    def endpoint(self, path: str, **kwargs: Any) -> Any:
        namespace, name = path.strip("/").split("/")
        if name.endswith("Descriptors"):
            return self.client.descriptor(name, namespace=namespace, **kwargs)
        return self.client.resource(name, namespace=namespace, **kwargs)

    def store_ids(self, path: str, min_cv: int | None = None, max_cv: int | None = None) -> set[str]:
        rows = self.store.page(path, 0, 10**9, min_cv, max_cv)
        return {orjson.loads(blob)["id"] for _, blob in rows}


@pytest.fixture(scope="module", params=list(VARIANTS))
def site(request: pytest.FixtureRequest, loopback_only: list[Any]) -> Iterator[Site]:
    version, options, client_options, mode = VARIANTS[request.param]
    sb = Sandbox(version, seed=SEED_STUDENTS, **options).start()
    try:
        client = EdFiClient(sb.api_root, sb.client_id, sb.client_secret, **client_options)
        client.connect()
        yield Site(request.param, sb, client, client_options, mode)
    finally:
        sb.stop()


def ids_of(rows: list[dict[str, Any]]) -> set[str]:
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} rows returned twice"
    return set(ids)



# -- discovery ---------------------------------------------------------------------------------------------
def test_loopback_guard_is_active(loopback_only: list[Any]) -> None:
    for address in (("192.0.2.1", 9), ("example.invalid", 80)):
        with pytest.raises(OSError, match="peer-test guard: refused"):
            socket.create_connection(address, timeout=1)
    assert loopback_only == ["192.0.2.1", "example.invalid"]
    loopback_only.clear()


def test_client_reads_root_metadata_and_swagger(site: Site) -> None:
    client, model = site.client, site.sandbox.model
    assert client.api_mode == site.expected_mode
    assert client.get_ods_version() == site.version
    resources = {f"/{ns}/{name}" for ns, name in client.resources}
    descriptors = {f"/{ns}/{name}" for ns, name in client.descriptors}
    assert resources == {res.path for res in model if not res.is_descriptor}
    assert descriptors == {res.path for res in model if res.is_descriptor}
    assert site.endpoint("/ed-fi/studentSchoolAssociations").has_deletes
    assert not site.endpoint("/ed-fi/schoolYearTypes").has_deletes  # never /deletes for school years (WIRE.md)
    newest = client.get_newest_change_version()
    assert newest == site.store.change_version > 0




def test_token_info_describes_the_callers_token(request: pytest.FixtureRequest, site: Site) -> None:
    info = site.client.get_token_info()
    assert info["active"] is True
    assert info["client_id"] == site.sandbox.client_id
    assert {"namespace_prefixes", "education_organizations", "claim_set"} <= set(info)


# -- counts ------------------------------------------------------------------------------------------------
def test_total_counts_equal_store(request: pytest.FixtureRequest, site: Site) -> None:
    counts = {res.path: site.endpoint(res.path).get_total_count() for res in site.sandbox.model}
    assert counts == {res.path: site.store.count(res.path) for res in site.sandbox.model}
    newest = site.client.get_newest_change_version()
    window = {"minChangeVersion": newest // 3, "maxChangeVersion": 2 * newest // 3}
    windowed = {path: site.endpoint(path).get_total_count(params=window) for path in PAGED}
    assert windowed == {path: site.store.count(path, newest // 3, 2 * newest // 3) for path in PAGED}
    assert sum(windowed.values()) > 0


# -- get_rows ----------------------------------------------------------------------------------------------
def test_get_rows_returns_exactly_the_stored_ids(site: Site) -> None:
    """Default paging: cursor on 7.3 (first page, then pageToken/pageSize), limit/offset before."""
    for res in site.sandbox.model:
        rows = list(site.endpoint(res.path).get_rows(page_size=PAGE))
        assert ids_of(rows) == site.store_ids(res.path), res.path


@pytest.mark.parametrize("reverse_paging", [False, True], ids=["forward", "reverse"])
def test_get_rows_stepping_change_versions(request: pytest.FixtureRequest, site: Site, reverse_paging: bool) -> None:
    """``step_change_version`` over [0, newest] in windows of STEP versions; forward, or reverse offset paging
    (which counts each window first). ``get_rows`` on 7.3 keeps cursor paging with the window as a filter, so the
    stepping paginator ``get_pages`` is also called directly."""
    if reverse_paging:
        pass
    newest = site.client.get_newest_change_version()
    params = {"minChangeVersion": 0, "maxChangeVersion": newest}
    options = {"page_size": PAGE, "step_change_version": True, "reverse_paging": reverse_paging,
               "change_version_step_size": STEP}
    for path in PAGED:
        endpoint = site.endpoint(path)
        expected = site.store_ids(path)
        assert ids_of(list(endpoint.get_rows(params=params, **options))) == expected, path
        pages = endpoint.get_pages(params=params, **options)
        assert ids_of([row for page in pages for row in page]) == expected, path

    # a window in the middle: exactly the items whose change version lies in it (both bounds inclusive)
    low, high = newest // 4, newest // 2
    path = "/ed-fi/studentSchoolAttendanceEvents"
    rows = site.endpoint(path).get_pages(params={"minChangeVersion": low, "maxChangeVersion": high}, **options)
    expected = site.store_ids(path, low, high)
    assert expected and ids_of([row for page in rows for row in page]) == expected


# -- deletes and key changes -------------------------------------------------------------------------------
#: top-level natural-key properties of the resources whose deletes and key changes are checked
KEYS = {
    "/ed-fi/studentSchoolAttendanceEvents": (
        "attendanceEventCategoryDescriptor", "eventDate", "schoolReference", "sessionReference", "studentReference",
    ),
    "/ed-fi/staffSectionAssociations": ("beginDate", "sectionReference", "staffReference"),
    "/ed-fi/studentSchoolAssociations": ("entryDate", "schoolReference", "studentReference"),
}


def key_values(doc: dict[str, Any], path: str) -> dict[str, Any]:
    """The natural key as /deletes and /keyChanges report it: references flattened, descriptors as URIs."""
    out: dict[str, Any] = {}
    for prop in KEYS[path]:
        value = doc[prop]
        if isinstance(value, dict):
            out.update({k: v for k, v in value.items() if k != "link"})
        else:
            out[prop] = value
    return out


def writable(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("id", "_etag", "_lastModifiedDate")}


@dataclass
class Changes:
    before: int  # newest change version before any of it
    deleted: dict[str, list[tuple[str, dict[str, Any]]]]  # path -> [(id, key values)] in the order deleted
    after_deletes: int
    key_changed: dict[str, tuple[dict[str, Any], dict[str, Any]]]  # SSA id -> (old key, final new key)
    after: int


@pytest.fixture(scope="module")
def changes(site: Site) -> Changes:
    """Deletes (two resources) then key changes (one item changed twice), through the client's own session."""
    client, store = site.client, site.store
    before = client.get_newest_change_version()
    deleted: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for path, count in (("/ed-fi/studentSchoolAttendanceEvents", 9), ("/ed-fi/staffSectionAssociations", 4)):
        url = site.endpoint(path).url
        docs = list(store.iter_docs(path))[5 : 5 + count * 7 : 7]
        for doc in docs:
            response = client.session.delete_response(url, doc["id"])
            assert response.status_code == 204, response.text
            deleted.setdefault(path, []).append((doc["id"], key_values(doc, path)))
    after_deletes = client.get_newest_change_version()

    # key changes: three enrollments get a new entry date; the second one twice, the last thing done
    path = "/ed-fi/studentSchoolAssociations"
    url = site.endpoint(path).url
    docs = list(store.iter_docs(path))[10:13]
    moves = [(docs[0], "2024-08-27"), (docs[1], "2024-08-26"), (docs[2], "2024-08-28"), (docs[1], "2024-09-02")]
    key_changed: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for doc, new_date in moves:
        response = client.session.put_response(url, doc["id"], {**writable(doc), "entryDate": new_date})
        assert response.status_code == 204, response.text
        old = key_values(doc, path)
        key_changed[doc["id"]] = (old, {**old, "entryDate": new_date})
    return Changes(before, deleted, after_deletes, key_changed, client.get_newest_change_version())


def test_writes_are_visible_to_get_rows(site: Site, changes: Changes) -> None:
    for path, items in changes.deleted.items():
        ids = ids_of(list(site.endpoint(path).get_rows(page_size=PAGE)))
        assert ids == site.store_ids(path)
        assert not ids & {item_id for item_id, _ in items}
    rows = {row["id"]: row for row in site.endpoint("/ed-fi/studentSchoolAssociations").get_rows(page_size=PAGE)}
    for item_id, (_, new) in changes.key_changed.items():
        assert rows[item_id]["entryDate"] == new["entryDate"]


def expected_deletes(site: Site, changes: Changes, path: str) -> list[dict[str, Any]]:
    if site.version < "6":
        return [{"Id": item_id} for item_id, _ in changes.deleted[path]]
    return [{"id": item_id, "keyValues": keys} for item_id, keys in changes.deleted[path]]


def check_deletes(site: Site, changes: Changes, path: str, rows: list[dict[str, Any]]) -> None:
    """Exactly what was deleted, in order, each with a change version of its own inside the window."""
    cv_field = "ChangeVersion" if site.version < "6" else "changeVersion"
    ordered = sorted(rows, key=lambda row: row.get(cv_field, 0))
    assert [{k: v for k, v in row.items() if k != cv_field} for row in ordered] == expected_deletes(
        site, changes, path
    )
    versions = [row[cv_field] for row in ordered]
    assert len(set(versions)) == len(versions)
    assert all(changes.before < cv <= changes.after_deletes for cv in versions)


@pytest.mark.parametrize("method", ["offset", "step-forward", "step-reverse"])
def test_deletes_return_what_was_deleted(
    request: pytest.FixtureRequest, site: Site, changes: Changes, method: str
) -> None:
    if site.version < "6" and method == "step-reverse":
        pytest.skip("real ODS/API 5.3 /deletes sends no Total-Count (DeletesController.cs v5.3), which "
                    "reverse paging needs: edfi-api-client cannot do this against a real 5.3 either")
    window = {"minChangeVersion": changes.before + 1, "maxChangeVersion": changes.after}
    options: dict[str, Any] = {"page_size": 3}
    if method != "offset":
        options.update(step_change_version=True, reverse_paging=method == "step-reverse", change_version_step_size=5)
    for path in changes.deleted:
        endpoint = site.endpoint(path, get_deletes=True)
        check_deletes(site, changes, path, list(endpoint.get_rows(params=window, **options)))
        if method == "offset":  # no window at all: the seeded district had no deletes before these
            check_deletes(site, changes, path, list(endpoint.get_rows(page_size=3)))


@pytest.mark.parametrize("method", ["offset", "step-forward", "step-reverse"])
def test_key_changes_return_what_was_changed(
    request: pytest.FixtureRequest, site: Site, changes: Changes, method: str
) -> None:
    endpoint = site.endpoint("/ed-fi/studentSchoolAssociations", get_key_changes=True)
    window = {"minChangeVersion": changes.before + 1, "maxChangeVersion": changes.after}
    if site.version < "6" and method != "offset":
        pytest.skip("ODS/API 5.x has no /keyChanges")
    if site.version < "6":  # ODS/API 5.x has no /keyChanges route: 404, which the client raises
        with pytest.raises(HTTPError) as raised:
            list(endpoint.get_rows(params=window, page_size=3))
        assert raised.value.response.status_code == 404
        return
    options: dict[str, Any] = {"page_size": 2}
    if method != "offset":
        options.update(step_change_version=True, reverse_paging=method == "step-reverse", change_version_step_size=2)
    rows = list(endpoint.get_rows(params=window, **options))
    assert all(changes.after_deletes < row["changeVersion"] <= changes.after for row in rows), rows
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda row: row["changeVersion"]):
        grouped.setdefault(row["id"], []).append(row)
    assert set(grouped) == set(changes.key_changed)
    for item_id, entries in grouped.items():
        old, new = changes.key_changed[item_id]
        # a window reports each item once, from its key before the window to its key at the end of it; small
        # steps can split an item's changes over windows, and the entries then chain
        assert entries[0]["oldKeyValues"] == old, entries
        assert entries[-1]["newKeyValues"] == new, entries
        for earlier, later in itertools.pairwise(entries):
            assert earlier["newKeyValues"] == later["oldKeyValues"], entries
    if method == "offset":
        # one window: one entry per item, with the change version of its last key change, in that order
        # (Ed-Fi-ODS v6.1 KeyChangesQueryTemplatePreparer: "FinalChangeVersion AS ChangeVersion", ORDER BY it)
        first, twice, third = list(changes.key_changed)
        assert [row["id"] for row in rows] == [first, third, twice]
