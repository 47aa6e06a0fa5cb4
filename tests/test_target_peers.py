"""target-edfi next to two published Ed-Fi clients nobody here wrote, over loopback HTTP only.

* What target-edfi loaded reads back identically through ``edfi-api-client`` (every row of every resource, the
  payload sent plus only what the server adds).
* ``lightbeam send`` and target-edfi, given the same data set (``tests/peer_data``), leave two sandboxes with equal
  content.

The same guards as the peer tests refuse any non-loopback connection: in this process while edfi-api-client
runs, and (``sitecustomize``) in the lightbeam child process.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from edfi_api_client import EdFiClient as PeerClient

from edfi_core.keys import canonical
from tests.loopback import loopback_guard
from tests.target_support import content, diff_content, payload_of, run_target, singer_messages, target_config
from tests.test_peers_lightbeam import DATA_SET, describe, start_site


@pytest.fixture
def loopback_only() -> Iterator[list[Any]]:
    with loopback_guard() as refused:
        yield refused


def peer_data_messages(seed: int = 3) -> bytes:
    records = [(stream, row) for stream, rows in DATA_SET.items() for row in rows]
    random.Random(seed).shuffle(records)
    return singer_messages(records)


# not on DMS (8.0, 8.1): edfi-api-client builds every URL as {base}/data/v3/... (it does not read the root's urls),
# and DMS serves data at {base}/data/...
@pytest.mark.parametrize("version", ["6.1", "7.3"])
def test_loaded_items_read_back_identically_through_edfi_api_client(version: str, make_sandbox: Any, tmp_path: Path,
                                                                    loopback_only: list[Any]) -> None:
    source = make_sandbox(version, seed=3)
    sent: dict[str, dict[str, dict[str, Any]]] = {}
    records = []
    for res in source.model:
        for doc in source.store.iter_docs(res.path):
            body = payload_of(res, doc)
            sent.setdefault(res.path, {})[canonical(res.natural_key(body)).decode()] = body
            records.append((res.name, body))
    random.Random(5).shuffle(records)
    sb = make_sandbox(version)
    run = run_target(target_config(sb, tmp_path / "log.db"), singer_messages(records))
    assert run.exit_code == 0, run.results

    peer = PeerClient(sb.api_root, sb.client_id, sb.client_secret)
    peer.connect()
    for res in sb.model:
        namespace, name = res.path.strip("/").split("/")
        endpoint = peer.descriptor(name, namespace=namespace) if res.is_descriptor else \
            peer.resource(name, namespace=namespace)
        rows = list(endpoint.get_rows(page_size=100))
        got = {}
        for row in rows:
            body = payload_of(res, row)
            got[canonical(res.natural_key(row)).decode()] = body
        expected = sent.get(res.path, {})
        assert set(got) == set(expected), res.path
        for key, body in expected.items():
            served = {k: v for k, v in got[key].items() if not (v == [] and k not in body)}  # collections left out
            assert served == body, f"{res.path} {key}"
        assert all(row["id"] and row["_etag"] for row in rows)


def test_lightbeam_and_target_edfi_leave_equal_content(make_sandbox: Any, tmp_path: Path) -> None:
    (tmp_path / "lightbeam").mkdir()
    site = start_site("7.3", tmp_path / "lightbeam")
    try:
        proc = site.run("send")
        assert proc.returncode == 0, describe(proc)
        by_lightbeam = content(site.sandbox)
    finally:
        site.sandbox.stop()
    sb = make_sandbox("7.3")
    run = run_target(target_config(sb, tmp_path / "log.db"), peer_data_messages())
    assert run.exit_code == 0, run.results
    assert run.totals["created"] == sum(len(rows) for rows in DATA_SET.values())
    assert sum(len(items) for items in by_lightbeam.values()) == run.totals["created"]
    assert diff_content(by_lightbeam, content(sb)) == []
