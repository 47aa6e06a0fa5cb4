"""Collections: paging, counts, change-version windows, natural-key queries, deletes, key changes."""

from __future__ import annotations

import pytest

from tests.conftest import VERSIONS, Api, enrollment, load_basics, student

N = 30


#: the ODS/API versions and DMS 8.0/8.1 (whose differences are asserted where they are: default limit)
READ_VERSIONS = (*VERSIONS, "8.0", "8.1")


def default_limit(api: Api) -> int:
    """25 on the ODS/API; AppSettings:MaximumPageSize (500) on DMS (``Limit ?? MaximumPageSize``)."""
    return 500 if api.sb.config.is_dms else 25


@pytest.fixture(params=READ_VERSIONS)
def api(request, make_sandbox, ds5_model) -> Api:
    sb = make_sandbox(request.param, model=ds5_model)
    api = Api(sb)
    load_basics(api, students=N)
    return api


def newest(api: Api) -> int:
    return api.newest()


def test_limit_offset_and_total_count(api: Api) -> None:
    first = api.get("/ed-fi/students", params={"limit": 10, "totalCount": "true"})
    assert first.status_code == 200
    assert first.headers["Total-Count"] == str(N)
    assert len(first.json()) == 10
    assert "Total-Count" not in api.get("/ed-fi/students").headers
    assert len(api.get("/ed-fi/students").json()) == min(N, default_limit(api))  # default limit
    pages = [api.get("/ed-fi/students", params={"limit": 7, "offset": o}).json() for o in range(0, N, 7)]
    ids = [i["id"] for page in pages for i in page]
    assert len(ids) == N == len(set(ids))
    assert api.get("/ed-fi/students", params={"offset": N}).json() == []


def test_limit_bounds_by_version(api: Api) -> None:
    assert api.get("/ed-fi/students", params={"limit": 500}).status_code == 200
    assert api.get("/ed-fi/students", params={"limit": 501}).status_code == 400
    assert api.get("/ed-fi/students", params={"offset": -1}).status_code == 400
    # limit=0 is a count-only request on every version (the ODS/API rejects only < 0 and > max)
    zero = api.get("/ed-fi/students", params={"limit": 0, "totalCount": "true"})
    assert zero.status_code == 200
    assert zero.json() == []
    assert zero.headers["Total-Count"] == str(N)


def test_change_versions_are_one_global_inclusive_sequence(api: Api) -> None:
    top = newest(api)
    # every write took one version: descriptors, school, students and enrollments
    assert top == 3 + 1 + 2 * N
    students = api.all("/ed-fi/students", minChangeVersion=0, maxChangeVersion=top)
    enrollments = api.all("/ed-fi/studentSchoolAssociations", minChangeVersion=0, maxChangeVersion=top)
    assert len(students) == len(enrollments) == N
    # inclusive bounds: the window [v, v] holds exactly the item written at v
    last = api.get("/ed-fi/studentSchoolAssociations", params={"minChangeVersion": top, "maxChangeVersion": top})
    assert len(last.json()) == 1
    assert api.get("/ed-fi/students", params={"minChangeVersion": top, "maxChangeVersion": top}).json() == []
    api.post("/ed-fi/students", student("S0003", first="Changed"))
    assert newest(api) == top + 1
    window = api.get("/ed-fi/students", params={"minChangeVersion": top + 1, "maxChangeVersion": top + 1,
                                                "totalCount": "true"})
    assert window.headers["Total-Count"] == "1"
    assert window.json()[0]["studentUniqueId"] == "S0003"


def test_natural_key_query_parameters(api: Api) -> None:
    found = api.get("/ed-fi/studentSchoolAssociations", params={"studentUniqueId": "S0007", "schoolId": 1})
    assert [i["studentReference"]["studentUniqueId"] for i in found.json()] == ["S0007"]
    assert api.get("/ed-fi/students", params={"studentUniqueId": "nope"}).json() == []
    found = api.get("/ed-fi/studentSchoolAssociations", params={"entryDate": "2024-08-20"}).json()
    assert len(found) == min(N, default_limit(api))


def test_get_by_id_and_if_none_match(api: Api) -> None:
    item = api.get("/ed-fi/students", params={"limit": 1}).json()[0]
    resp = api.get(f"/ed-fi/students/{item['id']}")
    assert resp.status_code == 200
    assert resp.json() == item
    assert resp.headers["ETag"] == f'"{item["_etag"]}"'
    assert api.get(f"/ed-fi/students/{item['id']}", headers={"If-None-Match": resp.headers["ETag"]}).status_code == 304
    assert api.get("/ed-fi/students/" + "0" * 32).status_code == 404


def test_deletes_endpoint(api: Api) -> None:
    start = newest(api)
    victims = api.get("/ed-fi/studentSchoolAssociations", params={"limit": 3}).json()
    for v in victims:
        assert api.delete(f"/ed-fi/studentSchoolAssociations/{v['id']}").status_code == 204
    resp = api.get("/ed-fi/studentSchoolAssociations/deletes",
                   params={"minChangeVersion": start + 1, "maxChangeVersion": newest(api), "totalCount": "true"})
    assert resp.status_code == 200
    items = resp.json()
    if api.sb.config.api_version < "6":
        # 5.x: C# property names, no keyValues, no Total-Count
        assert "Total-Count" not in resp.headers
        assert [i["Id"] for i in items] == [v["id"] for v in victims]
        assert [i["ChangeVersion"] for i in items] == [start + 1, start + 2, start + 3]
        assert all(set(i) == {"Id", "ChangeVersion"} for i in items)
    else:
        assert resp.headers["Total-Count"] == "3"
        assert [i["id"] for i in items] == [v["id"] for v in victims]
        assert [i["changeVersion"] for i in items] == [start + 1, start + 2, start + 3]
        assert items[0]["keyValues"] == {
            "entryDate": victims[0]["entryDate"],
            "schoolId": 1,
            "studentUniqueId": victims[0]["studentReference"]["studentUniqueId"],
        }
    # paging and the window's bounds apply to deletes too
    assert len(api.get("/ed-fi/studentSchoolAssociations/deletes", params={"limit": 2}).json()) == 2
    later = {"minChangeVersion": newest(api) + 1}
    assert api.get("/ed-fi/studentSchoolAssociations/deletes", params=later).json() == []
    # schoolYearTypes never has change-query paths on the ODS/API; DMS treats it as a regular resource
    # (change-queries.md "SchoolYearType", v8.0.0 and main)
    expected = 200 if api.sb.config.is_dms else 404
    assert api.get("/ed-fi/schoolYearTypes/deletes").status_code == expected


def test_key_changes_collapse_to_first_old_and_last_new(api: Api) -> None:
    if api.sb.config.api_version < "6":
        assert api.get("/ed-fi/studentSchoolAssociations/keyChanges").status_code == 404
        return
    item = api.get("/ed-fi/studentSchoolAssociations", params={"studentUniqueId": "S0005"}).json()[0]
    start = newest(api)
    for day in ("2024-08-21", "2024-08-22"):
        assert api.put(f"/ed-fi/studentSchoolAssociations/{item['id']}",  # DMS PUTs need the id
                       {"id": item["id"], **enrollment("S0005", 1, day)}).status_code == 204
    changes = api.get("/ed-fi/studentSchoolAssociations/keyChanges",
                      params={"minChangeVersion": start + 1, "totalCount": "true"})
    assert changes.headers["Total-Count"] == "1"
    [change] = changes.json()
    assert change["changeVersion"] == start + 2
    assert change["oldKeyValues"]["entryDate"] == "2024-08-20"
    assert change["newKeyValues"]["entryDate"] == "2024-08-22"
    # a window holding only the second change sees only that one
    [second] = api.get("/ed-fi/studentSchoolAssociations/keyChanges",
                       params={"minChangeVersion": start + 2}).json()
    assert second["oldKeyValues"]["entryDate"] == "2024-08-21"


def test_profiles_filter_what_a_readable_content_type_returns(make_sandbox) -> None:
    sb = make_sandbox("7.3", seed=5, profiles={"Directory": {"/ed-fi/students": ["firstName"]}})
    api = Api(sb)
    media = "application/vnd.ed-fi.student.directory.readable+json"
    resp = api.get("/ed-fi/students", headers={"Accept": media})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == media
    items = resp.json()
    assert len(items) == 5
    assert all(set(i) == {"id", "studentUniqueId", "firstName", "_etag", "_lastModifiedDate"} for i in items)
    one = api.get(f"/ed-fi/students/{items[0]['id']}", headers={"Accept": media}).json()
    assert set(one) == set(items[0])
    assert "lastSurname" in api.get("/ed-fi/students").json()[0]
    unknown = api.get("/ed-fi/students", headers={"Accept": "application/vnd.ed-fi.student.nope.readable+json"})
    assert unknown.status_code == 406
    other = api.get("/ed-fi/schools", headers={"Accept": "application/vnd.ed-fi.school.directory.readable+json"})
    assert other.status_code == 406
