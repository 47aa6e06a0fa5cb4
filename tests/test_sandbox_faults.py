"""Injected faults and churn: what tests and benchmarks of clients stand on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from edfi_sandbox.server import free_port
from tests.conftest import Api, load_basics


@pytest.fixture
def sb(make_sandbox, ds5_model):
    sb = make_sandbox("7.3", model=ds5_model)
    load_basics(Api(sb), students=3)
    return sb


def test_latency(sb) -> None:
    api = Api(sb)
    sb.set_faults(latency_ms=150)
    started = time.perf_counter()
    assert api.get("/ed-fi/students").status_code == 200
    assert time.perf_counter() - started >= 0.15
    sb.clear_faults()
    started = time.perf_counter()
    api.get("/ed-fi/students")
    assert time.perf_counter() - started < 0.15


@pytest.mark.parametrize("code", [429, 500, 502, 503])
def test_error_rates(sb, code: int) -> None:
    api = Api(sb)
    sb.set_faults(**{f"rate_{code}": 1.0}, retry_after=3)
    resp = api.get("/ed-fi/students")
    assert resp.status_code == code
    if code == 429:
        assert resp.headers["Retry-After"] == "3"
    sb.clear_faults()
    assert api.get("/ed-fi/students").status_code == 200


def test_partial_rates_are_reproducible(sb) -> None:
    api = Api(sb)

    def run() -> list[int]:
        sb.set_faults(rate_500=0.3, seed=7)
        codes = [api.get("/ed-fi/students").status_code for _ in range(40)]
        sb.clear_faults()
        return codes

    first, second = run(), run()
    assert first == second
    assert 3 <= first.count(500) <= 25 and first.count(200) >= 15


def test_dropped_connections(sb) -> None:
    api = Api(sb)
    sb.set_faults(rate_drop=1.0)
    with pytest.raises(requests.exceptions.RequestException):
        api.get("/ed-fi/students")
    sb.clear_faults()
    assert api.get("/ed-fi/students").status_code == 200


def test_faults_over_http_admin(sb) -> None:
    url = sb.base_url + "/_sandbox/faults"
    api = Api(sb)
    admin = sb.admin_headers
    assert requests.put(url, json={"rate_503": 1}, headers=admin, timeout=5).json()["rate_503"] == 1
    assert api.get("/ed-fi/students").status_code == 503
    assert requests.put(url, json={"rate_503": 0}, headers=admin, timeout=5).status_code == 200
    assert requests.put(url, json={"nope": 1}, headers=admin, timeout=5).status_code == 400
    assert requests.put(url, json={"rate_500": 2}, headers=admin, timeout=5).status_code == 400
    stats = sb.admin("GET", "stats", timeout=5).json()
    assert stats["faultsInjected"]["503"] >= 1


def pull(api: Api, top: int, reverse: bool, limit: int = 10) -> set[str]:
    params = {"minChangeVersion": 0, "maxChangeVersion": top}
    total = int(api.get("/ed-fi/studentSchoolAssociations", params={**params, "totalCount": "true",
                                                                    "limit": 0})
                .headers["Total-Count"])
    offsets = list(range(0, total, limit))
    seen: set[str] = set()
    for offset in reversed(offsets) if reverse else offsets:
        page = api.get("/ed-fi/studentSchoolAssociations", params={**params, "offset": offset, "limit": limit})
        seen.update(i["id"] for i in page.json())
    return seen


def test_churn_reproduces_the_paging_desync(make_sandbox, ds5_model) -> None:
    """Forward offset paging under churn skips items that never left the window; reverse paging does not."""
    results = {}
    for reverse in (False, True):
        sb = make_sandbox("7.3", model=ds5_model)
        api = Api(sb)
        load_basics(api, students=300)
        top = api.newest()
        sb.set_faults(latency_ms=8)
        churn = sb.start_churn(150, resources=["/ed-fi/studentSchoolAssociations"], delete_fraction=0.0, seed=3)
        seen = pull(api, top, reverse)
        sb.stop_churn()
        sb.clear_faults()
        assert churn.updates > 10
        # items still in the window never changed during the pull: a complete pull has them all
        stayed = {i["id"] for i in api.all("/ed-fi/studentSchoolAssociations", minChangeVersion=0,
                                            maxChangeVersion=top)}
        results[reverse] = stayed - seen
    assert results[False], "forward paging should lose items under churn"
    assert results[True] == set(), "reverse paging must not lose items"


def test_churn_deletes_only_unreferenced_items(make_sandbox, ds5_model) -> None:
    sb = make_sandbox("7.3", model=ds5_model)
    load_basics(Api(sb), students=20)
    churn = sb.start_churn(200, delete_fraction=1.0, seed=1)
    time.sleep(0.5)
    sb.stop_churn()
    assert churn.deletes > 0
    assert sb.store.count("/ed-fi/studentSchoolAssociations") == 20 - churn.deletes
    assert sb.store.count("/ed-fi/students") == 20


def test_cli_serve_subprocess(tmp_path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edfi_sandbox.cli", "serve", "--port", str(port), "--api-version", "6.1",
         "--seed", "5", "--latency-ms", "1", "--api-mode", "year", "--school-year", "2025",
         "--db", str(tmp_path / "sb.db"), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                root = requests.get(f"http://127.0.0.1:{port}/", timeout=2).json()
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert root["apiMode"] == "Year Specific"
        assert root["urls"]["dataManagementApi"].endswith("/data/v3/2025")
        token = requests.post(root["urls"]["oauth"], data={"grant_type": "client_credentials"},
                              auth=("sandbox-client", "sandbox-secret"), timeout=5).json()["access_token"]
        students = requests.get(root["urls"]["dataManagementApi"] + "/ed-fi/students",
                                params={"totalCount": "true"}, headers={"Authorization": f"Bearer {token}"},
                                timeout=5)
        assert students.headers["Total-Count"] == "5"
    finally:
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    assert (tmp_path / "sb.db").exists()
