"""The sandbox serves the real Ed-Fi DS 5.0 specs: every resource and descriptor answers."""

from __future__ import annotations

import pytest
import requests

from edfi_core.openapi import ApiModel
from tests.conftest import DS5_SPECS, Api, load_basics


@pytest.fixture(scope="module")
def sandbox():
    from edfi_sandbox.server import Sandbox

    sb = Sandbox("7.3", specs=DS5_SPECS).start()
    yield sb
    sb.stop()


def test_every_real_resource_is_served(sandbox) -> None:
    source = ApiModel.from_files(DS5_SPECS)
    assert len(source) > 350  # 143 resources and 218 descriptors
    api = Api(sandbox)
    for res in source:
        resp = api.get(res.path, params={"limit": 1})
        assert resp.status_code == 200, res.path
        assert resp.json() == []
        if res.name != "schoolYearTypes":
            assert api.get(res.path + "/deletes").status_code == 200, res.path
            assert api.get(res.path + "/keyChanges").status_code == 200, res.path
            assert api.get(res.path + "/partitions").json() == {"pageTokens": []}


def test_served_documents_describe_the_real_model(sandbox) -> None:
    listing = requests.get(sandbox.base_url + "/metadata/", timeout=10).json()
    # the data documents; the Composites section (docs/composites.md) describes the enrollment composites
    assert {e["prefix"] for e in listing} == {"", "Composites"}
    data = [e for e in listing if e["prefix"] == ""]
    served = ApiModel.from_documents(requests.get(e["endpointUri"], timeout=60).json() for e in data)
    source = sandbox.model
    assert {r.path for r in served} == {r.path for r in source}
    for res in source:
        twin = served.get(res.path)
        assert twin.key_fields == res.key_fields, res.path
        assert twin.key_updatable == res.key_updatable, res.path
        assert sorted(r.target_schema for r in twin.references) == sorted(r.target_schema for r in res.references)


def test_writes_follow_the_real_schemas(sandbox) -> None:
    api = Api(sandbox)
    load_basics(api, students=2)
    assert sandbox.store.count("/ed-fi/studentSchoolAssociations") == 2
