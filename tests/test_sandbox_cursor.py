"""7.3 cursor paging: /partitions, pageToken/pageSize, Next-Page-Token, and the 400s for mixing."""

from __future__ import annotations

import base64

import pytest

from tests.conftest import Api, load_basics, student

N = 40


@pytest.fixture
def api(make_sandbox, ds5_model) -> Api:
    api = Api(make_sandbox("7.3", model=ds5_model))
    load_basics(api, students=N)
    return api


def read_partition(api: Api, token: str, size: int, **params) -> list[dict]:
    out: list[dict] = []
    while True:
        resp = api.get("/ed-fi/students", params={"pageToken": token, "pageSize": size, **params})
        assert resp.status_code == 200
        items = resp.json()
        if not items:
            assert "Next-Page-Token" not in resp.headers
            return out
        out.extend(items)
        token = resp.headers["Next-Page-Token"]


@pytest.mark.parametrize("number", [1, 3, 7, 200])
def test_partitions_cover_every_item_once(api: Api, number: int) -> None:
    resp = api.get("/ed-fi/students/partitions", params={"number": number})
    tokens = resp.json()["pageTokens"]
    assert 1 <= len(tokens) <= min(number, N)
    for t in tokens:
        low, high = base64.urlsafe_b64decode(t + "=" * (-len(t) % 4)).decode().split(",")
        assert int(low) <= int(high)
    ids = [i["id"] for t in tokens for i in read_partition(api, t, 6)]
    assert len(ids) == N == len(set(ids))


def test_partitions_respect_change_versions(api: Api) -> None:
    top = api.newest()
    api.post("/ed-fi/students", student("S0001", first="New"))
    api.post("/ed-fi/students", student("S0002", first="New"))
    window = {"minChangeVersion": top + 1, "maxChangeVersion": top + 2}
    tokens = api.get("/ed-fi/students/partitions", params={"number": 4, **window}).json()["pageTokens"]
    got = [i["studentUniqueId"] for t in tokens for i in read_partition(api, t, 500, **window)]
    assert sorted(got) == ["S0001", "S0002"]
    empty = {"minChangeVersion": top + 10}
    assert api.get("/ed-fi/students/partitions", params=empty).json() == {"pageTokens": []}


def test_offset_pages_carry_next_page_token(api: Api) -> None:
    resp = api.get("/ed-fi/students", params={"limit": 10})
    token = resp.headers["Next-Page-Token"]
    rest = read_partition(api, token, 100)
    assert len(rest) == N - 10


def test_mixing_cursor_and_offset_is_400(api: Api) -> None:
    token = api.get("/ed-fi/students/partitions").json()["pageTokens"][0]
    cases = [
        ({"pageToken": token, "offset": 0}, "offset and pageToken"),
        ({"pageToken": token, "limit": 10}, "Use pageSize instead of limit"),
        ({"pageSize": 10}, "PageToken is required"),
        ({"pageToken": token, "totalCount": "true"}, "TotalCount"),
        ({"pageToken": token, "pageSize": 501}, "PageSize"),
        ({"pageToken": "!!!"}, "The request construction was invalid."),  # errors: the page token was invalid
    ]
    for params, text in cases:
        resp = api.get("/ed-fi/students", params=params)
        assert resp.status_code == 400, params
        assert text in resp.json()["detail"], resp.text
    assert api.get("/ed-fi/students/partitions", params={"number": 201}).status_code == 400


def test_no_cursor_paging_before_73(make_sandbox, ds5_model) -> None:
    api = Api(make_sandbox("7.1", model=ds5_model))
    load_basics(api, students=2)
    assert api.get("/ed-fi/students/partitions").status_code == 404
    assert "Next-Page-Token" not in api.get("/ed-fi/students").headers
