"""edfi-api-client (0.4.1) does not work against an Ed-Fi Data Management Service, and this says how it fails.

It hard-codes the ODS/API's routes (``version_url_string = "data/v3"`` in edfi_client.py): its OpenAPI documents
at ``metadata/data/v3/{component}/swagger.json`` and its data at ``data/v3/{ns}/{resource}``. A DMS serves
``/metadata/specifications/*-spec.json`` and ``/data/{ns}/{resource}`` (docs/dms.md): the client authenticates
and reads ``availableChangeVersions`` (the same route on both), then fails at its first document and its first
page. tap-edfi reads every URL from the discovery document instead (test_tap_dms.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from edfi_api_client import EdFiClient
from requests.exceptions import HTTPError

from edfi_sandbox.server import Sandbox
from tests.loopback import loopback_guard


@pytest.fixture(scope="module", params=["8.0", "8.1"])
def dms(request: pytest.FixtureRequest) -> Iterator[tuple[Sandbox, EdFiClient]]:
    with loopback_guard("edfi-api-client"), Sandbox(request.param, seed=5) as sb:
        client = EdFiClient(sb.api_root, sb.client_id, sb.client_secret)
        client.connect()  # HTTP Basic at the discovered oauth URL: this part works on DMS
        yield sb, client


def test_what_still_works(dms: tuple[Sandbox, EdFiClient]) -> None:
    sb, client = dms
    assert client.get_ods_version() == sb.app.config.api_version + ".0"  # "8.0.0": read, not understood
    assert client.api_mode is None  # DMS's discovery has no apiMode
    assert client.get_newest_change_version() == sb.store.change_version  # /changeQueries/v1/ is the same route


def test_documents_are_not_found_where_it_looks(dms: tuple[Sandbox, EdFiClient]) -> None:
    """``metadata/data/v3/resources/swagger.json`` is a 404 problem-details body; the client parses it as an
    OpenAPI document and fails on its missing ``tags``."""
    _, client = dms
    with pytest.raises(KeyError, match="tags"):
        client.resources  # noqa: B018 - the property fetches the document


def test_data_is_not_found_where_it_looks(dms: tuple[Sandbox, EdFiClient]) -> None:
    sb, client = dms
    students = client.resource("students")
    assert "/data/v3/ed-fi/students" in students.url  # the hard-coded segment
    with pytest.raises(HTTPError, match="404"):
        list(students.get_rows())
    assert sb.data_url.endswith("/data") and "/v3" not in sb.data_url
