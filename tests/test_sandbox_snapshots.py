"""Snapshots: Snapshot-Identifier on 5.3/6.1, Use-Snapshot on 7.x; reads see the data as it was."""

from __future__ import annotations

import pytest

from tests.conftest import VERSIONS, Api, load_basics, student


@pytest.fixture(params=VERSIONS)
def api(request, make_sandbox, ds5_model) -> Api:
    api = Api(make_sandbox(request.param, model=ds5_model))
    load_basics(api, students=5)
    return api


def snapshot_header(api: Api, identifier: str) -> dict[str, str]:
    if api.sb.config.is_v7:
        return {"Use-Snapshot": "true"}
    return {"Snapshot-Identifier": identifier}


def test_no_snapshot(api: Api) -> None:
    if api.sb.config.is_v7:
        resp = api.get("/ed-fi/students", headers={"Use-Snapshot": "true"})
        assert resp.status_code == 404
        assert "Snapshot not found" in resp.text
        # anything but "true" means no snapshot
        assert api.get("/ed-fi/students", headers={"Use-Snapshot": "no"}).status_code == 200
    else:
        assert api.changes("snapshots").json() == []
        resp = api.get("/ed-fi/students", headers={"Snapshot-Identifier": "missing"})
        assert resp.status_code == 410
        assert "Snapshot not available" in resp.text


def test_snapshot_reads_see_the_past(api: Api) -> None:
    taken = api.sb.admin("POST", "snapshots")
    assert taken.status_code == 201
    ident = taken.json()["snapshotIdentifier"]
    before = api.newest()
    if not api.sb.config.is_v7:
        [listed] = api.changes("snapshots").json()
        assert listed["snapshotIdentifier"] == ident and listed["snapshotDateTime"]
    api.post("/ed-fi/students", student("S0000", first="After"))
    api.post("/ed-fi/students", student("LATE"))
    gone = api.get("/ed-fi/studentSchoolAssociations", params={"studentUniqueId": "S0004"}).json()[0]
    assert api.delete(f"/ed-fi/studentSchoolAssociations/{gone['id']}").status_code == 204
    headers = snapshot_header(api, ident)
    live = api.get("/ed-fi/students", params={"totalCount": "true"})
    snap = api.get("/ed-fi/students", params={"totalCount": "true"}, headers=headers)
    assert live.headers["Total-Count"] == "6" and snap.headers["Total-Count"] == "5"
    first = next(s for s in snap.json() if s["studentUniqueId"] == "S0000")
    assert first["firstName"] == "Ada"
    assert api.get(f"/ed-fi/studentSchoolAssociations/{gone['id']}", headers=headers).status_code == 200
    assert api.newest(headers=headers) == before
    assert api.get("/ed-fi/studentSchoolAssociations/deletes", headers=headers).json() == []
    assert len(api.get("/ed-fi/studentSchoolAssociations/deletes").json()) == 1


def test_snapshot_header_on_writes_is_405(api: Api) -> None:
    ident = api.sb.take_snapshot()
    resp = api.post("/ed-fi/students", student("W1"), headers=snapshot_header(api, ident))
    assert resp.status_code == 405


def test_snapshot_cli(make_sandbox) -> None:
    from edfi_sandbox.cli import main

    sb = make_sandbox("6.1")
    assert main(["snapshot", "--url", sb.base_url]) == 1  # without the admin token
    assert main(["snapshot", "--url", sb.base_url, "--admin-token", sb.admin_token]) == 0
    assert len(sb.store.snapshots) == 1
