"""DMS reads: query parameters, page sizes, Next-Page-Token, cursor paging and /partitions (CURSOR-PAGING.md),
Use-Snapshot ignored (docs/dms.md "Reads and change queries", "Cursor paging and partitions")."""

from __future__ import annotations

import pytest

from tests.conftest import Api

DMS = ("8.0", "8.1")
PARAMETER_VALIDATION = "urn:ed-fi:api:bad-request:parameter-validation-failed"


@pytest.fixture(scope="module")
def small_pages():
    """Seeded DMS sandboxes whose AppSettings:MaximumPageSize is 4 (so partitions of 5 pages are 20 items)."""
    from edfi_sandbox.server import Sandbox

    running = {v: Sandbox(v, seed=50, maximum_page_size=4).start() for v in DMS}
    yield {v: Api(sb) for v, sb in running.items()}
    for sb in running.values():
        sb.stop()


def walk(api: Api, first: dict, path: str = "/ed-fi/students", **filters) -> tuple[list[dict], int]:
    """Follow Next-Page-Token from a first request until a response has none: (items, requests)."""
    resp = api.get(path, params={**first, **filters})
    assert resp.status_code == 200, resp.text
    items, calls = list(resp.json()), 1
    while "Next-Page-Token" in resp.headers:
        resp = api.get(path, params={"pageToken": resp.headers["Next-Page-Token"], **filters})
        assert resp.status_code == 200, resp.text
        items += resp.json()
        calls += 1
    return items, calls


@pytest.mark.parametrize("version", DMS)
def test_limit_defaults_to_maximum_page_size(small_pages, version) -> None:
    api = small_pages[version]
    assert len(api.get("/ed-fi/students").json()) == 4  # not 25: Limit ?? MaximumPageSize
    assert len(api.get("/ed-fi/students", params={"limit": 0}).json()) == 0
    bad = api.get("/ed-fi/students", params={"limit": 5})
    assert bad.status_code == 400
    assert bad.json()["errors"] == ["Limit must be omitted or set to a numeric value between 0 and 4."]
    # 8.0 answers with the Bad Request shell, main with parameter validation (ValidateQueryMiddleware)
    expected = PARAMETER_VALIDATION if version == "8.1" else "urn:ed-fi:api:bad-request"
    assert bad.json()["type"] == expected


@pytest.mark.parametrize("version", DMS)
def test_unknown_query_fields_are_refused(small_pages, version) -> None:
    api = small_pages[version]
    for name in ("notAField", "LIMIT", "q"):  # paging names are case-sensitive: LIMIT is a query field
        resp = api.get("/ed-fi/students", params={name: "1"})
        assert resp.status_code == 400
        assert resp.json()["errors"] == [f"The query field '{name}' is not valid for this resource."]
    # query fields and change versions are matched in any case
    student = api.get("/ed-fi/students", params={"limit": 1}).json()[0]
    found = api.get("/ed-fi/students", params={"STUDENTUNIQUEID": student["studentUniqueId"],
                                               "MinChangeVersion": 0})
    assert [s["id"] for s in found.json()] == [student["id"]]
    token = api.get("/ed-fi/students", params={"pageToken": "x"})
    if version == "8.0":  # no cursor paging at v8.0.0: pageToken is just an unknown query field
        assert token.json()["errors"] == ["The query field 'pageToken' is not valid for this resource."]
        assert api.get("/ed-fi/students/partitions").status_code == 404
    else:
        assert token.json()["errors"] == ["The page token provided was invalid."]


def test_next_page_token_walks_everything(small_pages) -> None:
    api = small_pages["8.1"]
    everything = api.all("/ed-fi/students")
    items, calls = walk(api, {"limit": 4})
    assert sorted(i["id"] for i in items) == sorted(i["id"] for i in everything) and len(items) == 50
    assert calls == 13 + 1  # 13 pages with items, then one more (the last page with items has a token)
    # a page of pageSize=0 selects nothing and has nowhere to continue from
    first = api.get("/ed-fi/students", params={"limit": 4})
    empty = api.get("/ed-fi/students", params={"pageToken": first.headers["Next-Page-Token"], "pageSize": 0})
    assert empty.json() == [] and "Next-Page-Token" not in empty.headers


def test_cursor_parameter_rules(small_pages) -> None:
    api = small_pages["8.1"]
    token = api.get("/ed-fi/students", params={"limit": 2}).headers["Next-Page-Token"]
    cases = {
        (("pageSize", 2),): "PageToken is required when pageSize is specified.",
        (("pageSize", 2), ("offset", 2)): "Use limit instead of pageSize when using limit/offset paging.",
        (("pageToken", token), ("offset", 2)): "Both offset and pageToken parameters were provided, but they "
                                               "support alternative paging approaches and cannot be used together.",
        (("pageToken", token), ("limit", 2)): "Use pageSize instead of limit when using cursor paging with "
                                              "pageToken.",
        (("pageToken", token), ("totalCount", "true")): "The totalCount parameter cannot be set to true when "
                                                        "using cursor paging with pageToken.",
        (("pageToken", token), ("pageSize", 5)): "PageSize must be a value between 0 and 4.",
        (("pageToken", "bm90IGEgdG9rZW4"),): "The page token provided was invalid.",
    }
    for params, message in cases.items():
        resp = api.get("/ed-fi/students", params=dict(params))
        assert resp.status_code == 400, params
        assert resp.json()["type"] == PARAMETER_VALIDATION and resp.json()["errors"] == [message], params


def test_partitions_are_at_least_five_pages_and_cover_everything(small_pages) -> None:
    api = small_pages["8.1"]
    tokens = api.get("/ed-fi/students/partitions", params={"number": 8}).json()["pageTokens"]
    assert len(tokens) == 2  # 50 items, partitions of at least 5 pages of 4: 2, not 8
    assert len(api.get("/ed-fi/students/partitions").json()["pageTokens"]) == 2  # number defaults to 10
    seen: list[str] = []
    for token in tokens:
        items, _ = walk(api, {"pageToken": token, "pageSize": 3})
        seen += [i["id"] for i in items]
    assert sorted(seen) == sorted(i["id"] for i in api.all("/ed-fi/students"))
    assert len(seen) == len(set(seen))  # partitions do not overlap
    # filters and a window narrow what is partitioned; nothing accessible: no token at all
    assert api.get("/ed-fi/students/partitions", params={"studentUniqueId": "nobody"}).json() == {"pageTokens": []}
    newest = api.newest()
    assert api.get("/ed-fi/students/partitions",
                   params={"minChangeVersion": newest + 1}).json() == {"pageTokens": []}


def test_partitions_parameter_rules(small_pages) -> None:
    api = small_pages["8.1"]
    for value in ("0", "201", "abc", ""):
        resp = api.get("/ed-fi/students/partitions", params={"number": value})
        assert resp.status_code == 400 and resp.json()["errors"] == ["Number of partitions must be between 1 and 200."]
    resp = api.get("/ed-fi/students/partitions", params={"totalCount": "true", "limit": 5, "pageToken": "x"})
    assert resp.json()["errors"] == [
        "The 'pageToken' parameter is not supported by the partitions endpoint.",
        "The 'limit' parameter is not supported by the partitions endpoint.",
        "The 'totalCount' parameter is not supported by the partitions endpoint."]
    # an unknown field answers alone, before number (partitioned-cursor-paging.md, "Partition validation")
    resp = api.get("/ed-fi/students/partitions", params={"number": "abc", "notAField": 1})
    assert resp.json()["errors"] == ["The query field 'notAField' is not valid for this resource."]


def test_a_walk_whose_first_request_has_max_change_version_ends_early(make_sandbox) -> None:
    """CURSOR-PAGING.md's warning: a bounded window must start from /partitions."""
    sb = make_sandbox("8.1", seed=30, maximum_page_size=4)
    api = Api(sb)
    newest = api.newest()
    window = {"minChangeVersion": 0, "maxChangeVersion": newest}
    first = api.get("/ed-fi/students", params={"limit": 4, **window})
    assert len(first.json()) == 4 and "Next-Page-Token" not in first.headers  # a full page, and no token
    tokens = api.get("/ed-fi/students/partitions", params=window).json()["pageTokens"]
    seen = []
    for token in tokens:
        items, _ = walk(api, {"pageToken": token}, **window)
        seen += [i["id"] for i in items]
    assert len(seen) == len(set(seen)) == 30
    # a max-bearing page is selected in change-version order: change the lowest student, then page again
    everything = api.all("/ed-fi/students")
    changed = dict(everything[0])
    item_id = changed["id"]  # DMS PUT bodies carry the id (ValidateMatchingDocumentUuidsMiddleware)
    changed.pop("_etag"), changed.pop("_lastModifiedDate", None)
    changed["firstName"] = "Changed"
    assert api.put(f"/ed-fi/students/{item_id}", changed).status_code == 204
    last_page = api.get("/ed-fi/students", params={"minChangeVersion": 0, "maxChangeVersion": api.newest(),
                                                   "offset": 28, "limit": 4}).json()
    assert item_id in [i["id"] for i in last_page]  # its new change version puts it on the last page


def test_a_new_item_is_read_by_the_last_partition(make_sandbox) -> None:
    sb = make_sandbox("8.1", seed=40, maximum_page_size=4)
    api = Api(sb)
    tokens = api.get("/ed-fi/students/partitions").json()["pageTokens"]
    assert len(tokens) == 2
    first = dict(api.get("/ed-fi/students", params={"limit": 1}).json()[0])
    for key in ("id", "_etag", "_lastModifiedDate"):
        first.pop(key, None)
    first["studentUniqueId"] = "LATE-1"
    assert api.post("/ed-fi/students", first).status_code == 201
    items, _ = walk(api, {"pageToken": tokens[-1]})
    assert "LATE-1" in [i["studentUniqueId"] for i in items]


@pytest.mark.parametrize("version", DMS)
def test_use_snapshot_is_ignored(make_sandbox, version) -> None:
    """DMS v1 silently ignores Use-Snapshot (change-queries.md, "Snapshot support is deferred")."""
    sb = make_sandbox(version, seed=3)
    api = Api(sb)
    snapshot = {"Use-Snapshot": "true"}
    before = api.newest(headers=snapshot)
    assert before == api.newest()
    student = api.get("/ed-fi/students", headers=snapshot).json()[0]
    body = {k: v for k, v in student.items() if k not in ("_etag", "_lastModifiedDate")}  # DMS PUTs carry the id
    body["firstName"] = "Live"
    assert api.put(f"/ed-fi/students/{student['id']}", body).status_code == 204
    assert api.newest(headers=snapshot) > before  # no isolation: the header changes nothing
    got = api.get(f"/ed-fi/students/{student['id']}", headers=snapshot).json()
    assert got["firstName"] == "Live"


@pytest.mark.parametrize("version", DMS)
def test_deletes_and_key_changes_page_with_maximum_page_size(make_sandbox, version) -> None:
    sb = make_sandbox(version, seed=5, maximum_page_size=3)
    api = Api(sb)
    for student in api.all("/ed-fi/studentSchoolAssociations")[:4]:
        assert api.delete(f"/ed-fi/studentSchoolAssociations/{student['id']}").status_code == 204
    assert len(api.get("/ed-fi/studentSchoolAssociations/deletes").json()) == 3  # limit defaults to 3
    counted = api.get("/ed-fi/studentSchoolAssociations/deletes", params={"totalCount": "true", "offset": 3})
    assert counted.headers["Total-Count"] == "4" and len(counted.json()) == 1
    assert api.get("/ed-fi/studentSchoolAssociations/deletes", params={"limit": 4}).status_code == 400
    assert api.get("/ed-fi/students/keyChanges").json() == []
