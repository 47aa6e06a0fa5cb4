"""One HTTP layer for every request of tap-edfi and target-edfi: the environment's proxies, NO_PROXY and CA bundles,
verify_ssl, deadlines, closed connections, and credentials that never leave their origin.

The plugins run as processes (their environment is what a user's shell or Meltano gives them) against sandboxes
through small loopback servers of ``tests/http_support.py``: a logging forward proxy, TLS fronts with a private CA,
a front that drips its responses, a port that never answers, a cleartext listener and another origin.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from edfi_sandbox.server import Sandbox
from tests.conftest import DESCRIPTORS
from tests.http_support import ForwardProxy, HungPort, ReverseProxy, private_ca
from tests.tap_support import Output, run_tap, run_tap_process, tap_config
from tests.target_support import (
    content,
    diff_content,
    run_target,
    run_target_process,
    singer_messages,
    target_config,
)

NO_ENV_CA = {"REQUESTS_CA_BUNDLE": "", "CURL_CA_BUNDLE": "", "SSL_CERT_FILE": ""}
NO_ENV_PROXY = {"HTTP_PROXY": "", "http_proxy": "", "HTTPS_PROXY": "", "https_proxy": "", "ALL_PROXY": "",
                "all_proxy": "", "NO_PROXY": "", "no_proxy": ""}
#: what Meltano runs plugins with is PYTHONWARNINGS=once; "always" shows every unclosed socket
WARN = {"PYTHONWARNINGS": "always::ResourceWarning"}


def total_items(sb: Sandbox) -> int:
    return sum(sb.store.count(res.path) for res in sb.model)


def root_via(front: Any, sb: Sandbox) -> str:
    return front.url + sb.app.layout.root


def descriptor_messages() -> bytes:
    rows = [(path.rsplit("/", 1)[-1], {"namespace": f"uri://ed-fi.org/{name}", "codeValue": code,
                                       "shortDescription": code}) for path, (name, code) in DESCRIPTORS.items()]
    return singer_messages(rows)


def stderr_of(proc: Any) -> str:
    return proc.stderr.decode("utf-8", "replace")


# -- 8. proxies ----------------------------------------------------------------------------------------------
def test_every_request_of_tap_and_target_goes_through_http_proxy_and_no_proxy_bypasses_it(
        make_sandbox: Any, tmp_path: Path) -> None:
    a = make_sandbox("7.3", seed=1)
    b = make_sandbox("7.3")
    total = total_items(a)
    with ForwardProxy() as proxy:
        env = {**NO_ENV_PROXY, "HTTP_PROXY": proxy.url, "http_proxy": proxy.url}
        served = a.app.requests
        tap = run_tap_process(tap_config(a, page_size=50, max_window_rows=200), tmp_path, env=env)
        assert tap.returncode == 0, stderr_of(tap)[-3000:]
        served = a.app.requests - served
        via_a = [s for s in proxy.seen if s.url.startswith(a.base_url)]
        # every request the API served came through the proxy: token, discovery, counts, pages
        assert len(via_a) == served > 10
        assert any(s.method == "POST" and "/oauth/token" in s.url for s in via_a)
        assert any(s.url.rstrip("/") == a.api_root.rstrip("/") for s in via_a)
        assert any("/metadata" in s.url for s in via_a)
        pages = [s for s in via_a if "/data/v3/" in s.url and "limit=50" in s.url]
        assert len(pages) > 20 and all(s.authorized for s in pages)
        assert len(Output(tap.stdout).records) == total

        served_b = b.app.requests
        target = run_target_process(target_config(b, tmp_path / "log.db"), tap.stdout, tmp_path, env=env)
        assert target.returncode == 0, stderr_of(target)[-3000:]
        via_b = [s for s in proxy.seen if s.url.startswith(b.base_url)]
        assert len(via_b) == b.app.requests - served_b
        assert sum(1 for s in via_b if s.method == "POST" and "/data/v3/" in s.url) == total
        assert diff_content(content(a), content(b)) == []

        # NO_PROXY names the API's host: nothing goes through the proxy
        seen = len(proxy.seen)
        bypass = {**env, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        again = run_tap_process(tap_config(a, page_size=50, max_window_rows=200), tmp_path, env=bypass)
        assert again.returncode == 0, stderr_of(again)[-3000:]
        assert len(Output(again.stdout).records) == total
        assert len(proxy.seen) == seen


# -- 8. CA bundles and verify_ssl ----------------------------------------------------------------------------
def test_a_private_ca_in_requests_ca_bundle_or_ca_bundle_is_trusted_by_every_request(
        make_sandbox: Any, tmp_path: Path) -> None:
    ca = private_ca(tmp_path / "ca")
    other = private_ca(tmp_path / "other", "other")
    a = make_sandbox("7.3", seed=1)
    b = make_sandbox("7.3")
    total = total_items(a)
    with ReverseProxy(a.base_url, tls=ca.server_context(), forwarded_proto="https") as front_a, \
            ReverseProxy(b.base_url, tls=ca.server_context(), forwarded_proto="https") as front_b:
        config = {**tap_config(a, page_size=50, max_window_rows=200), "base_url": root_via(front_a, a)}
        served = a.app.requests
        tap = run_tap_process(config, tmp_path, env={**NO_ENV_PROXY, **NO_ENV_CA,
                                                     "REQUESTS_CA_BUNDLE": str(ca.ca)})
        assert tap.returncode == 0, stderr_of(tap)[-3000:]
        assert len(Output(tap.stdout).records) == total
        # every request the API served came through the TLS front (the root payload names https URLs)
        assert a.app.requests - served == len(front_a.seen) > 10

        # target-edfi with the ca_bundle setting and no CA variable at all
        target = run_target_process({**target_config(b, tmp_path / "log.db"), "base_url": root_via(front_b, b),
                                     "ca_bundle": str(ca.ca)}, tap.stdout, tmp_path,
                                    env={**NO_ENV_PROXY, **NO_ENV_CA})
        assert target.returncode == 0, stderr_of(target)[-3000:]
        assert diff_content(content(a), content(b)) == []

        # verify_ssl false is not overridden by a CA bundle in the environment (here one that would fail), and
        # is said once
        insecure = run_tap_process({**config, "verify_ssl": False}, tmp_path,
                                   env={**NO_ENV_PROXY, "REQUESTS_CA_BUNDLE": str(other.ca)})
        assert insecure.returncode == 0, stderr_of(insecure)[-3000:]
        assert len(Output(insecure.stdout).records) == total
        assert stderr_of(insecure).count("verify_ssl is false") == 1

        # https through HTTPS_PROXY: every connection is a CONNECT tunnel through the proxy, TLS to the API inside
        with ForwardProxy() as proxy:
            served = len(front_a.seen)
            tunnelled = run_tap_process(config, tmp_path, env={
                **NO_ENV_PROXY, **NO_ENV_CA, "REQUESTS_CA_BUNDLE": str(ca.ca), "HTTPS_PROXY": proxy.url,
                "https_proxy": proxy.url})
            assert tunnelled.returncode == 0, stderr_of(tunnelled)[-3000:]
            assert len(Output(tunnelled.stdout).records) == total
            assert proxy.seen and {(s.method, s.url) for s in proxy.seen} == {("CONNECT", f"127.0.0.1:{front_a.port}")}
            assert len(front_a.seen) - served > 10

        # and without the CA the first request fails, naming the certificate problem
        untrusted = run_tap_process(config, tmp_path, env={**NO_ENV_PROXY, **NO_ENV_CA}, timeout=60)
        assert untrusted.returncode != 0
        assert "CERTIFICATE_VERIFY_FAILED" in stderr_of(untrusted)


# -- 4. deadlines ----------------------------------------------------------------------------------------------
def _drip_pages(method: str, path: str) -> float:
    return 2.0 if method == "GET" and "/data/v3/" in path else 0.0


def _drip_writes(method: str, path: str) -> float:
    return 2.0 if method == "POST" and "/data/v3/" in path else 0.0


def test_request_timeout_is_a_deadline_for_a_server_that_drips_its_answer(make_sandbox: Any,
                                                                           tmp_path: Path) -> None:
    a = make_sandbox("7.3", seed=1)
    b = make_sandbox("7.3")
    limits = {"request_timeout": 3, "max_tries": 2, "max_backoff_seconds": 0.5}
    with ReverseProxy(a.base_url, drip=_drip_pages) as front_a, ReverseProxy(b.base_url, drip=_drip_writes) as front_b:
        started = time.monotonic()
        tap = run_tap_process({**tap_config(a), "base_url": root_via(front_a, a), **limits}, tmp_path,
                              env=NO_ENV_PROXY, timeout=90)
        elapsed = time.monotonic() - started
        assert tap.returncode != 0
        err = stderr_of(tap)
        assert "no complete response within 3 s (request_timeout)" in err and "/data/v3/" in err
        assert elapsed < 2 * 3 + 20, elapsed  # max_tries x the deadline, a backoff and the start-up

        started = time.monotonic()
        target = run_target_process({**target_config(b, tmp_path / "log.db"), "base_url": root_via(front_b, b),
                                     **limits}, descriptor_messages(), tmp_path, env=NO_ENV_PROXY, timeout=90)
        elapsed = time.monotonic() - started
        assert target.returncode != 0
        assert "no complete response within 3 s (request_timeout)" in stderr_of(target)
        assert elapsed < 2 * 3 + 20, elapsed


def test_a_port_that_never_answers_fails_within_max_tries_deadlines(make_sandbox: Any, tmp_path: Path) -> None:
    with HungPort() as hung:
        config = {"base_url": hung.url, "client_id": "x", "client_secret": "y", "request_timeout": 2,
                  "max_tries": 3, "max_backoff_seconds": 0.5, "connect_timeout": 2}
        started = time.monotonic()
        tap = run_tap_process(config, tmp_path, env=NO_ENV_PROXY, timeout=90)
        elapsed = time.monotonic() - started
        assert tap.returncode != 0
        assert f"GET {hung.url}/ failed: no response: no complete response within 2 s (request_timeout) " \
               "(after 3 tries)" in stderr_of(tap)
        assert elapsed < 3 * 2 + 15, elapsed

        started = time.monotonic()
        target = run_target_process({**config, "transaction_log": str(tmp_path / "log.db")}, descriptor_messages(),
                                    tmp_path, env=NO_ENV_PROXY, timeout=90)
        elapsed = time.monotonic() - started
        assert target.returncode != 0
        assert "no complete response within 2 s (request_timeout) (after 3 tries)" in stderr_of(target)
        assert elapsed < 3 * 2 + 15, elapsed


# -- 9. closed connections -------------------------------------------------------------------------------------
def test_no_connection_is_left_unclosed(make_sandbox: Any, tmp_path: Path) -> None:
    a = make_sandbox("7.3", seed=1)
    b = make_sandbox("7.3")
    env = {**NO_ENV_PROXY, **WARN}
    discover = run_tap_process(tap_config(a), tmp_path, args=["--discover"], env=env)
    assert discover.returncode == 0 and "ResourceWarning" not in stderr_of(discover), stderr_of(discover)[-3000:]
    tap = run_tap_process(tap_config(a, page_size=50, max_window_rows=200), tmp_path, env=env)
    assert tap.returncode == 0, stderr_of(tap)[-3000:]
    assert "ResourceWarning" not in stderr_of(tap), stderr_of(tap)[-3000:]
    target = run_target_process(target_config(b, tmp_path / "log.db", max_workers=8), tap.stdout, tmp_path, env=env)
    assert target.returncode == 0, stderr_of(target)[-3000:]
    assert "ResourceWarning" not in stderr_of(target), stderr_of(target)[-3000:]
    assert diff_content(content(a), content(b)) == []


# -- 5. credentials stay at their origin -----------------------------------------------------------------------
def test_an_https_api_advertising_http_urls_gets_no_credential_in_cleartext(make_sandbox: Any,
                                                                            tmp_path: Path) -> None:
    """A TLS-terminating front whose API builds its URLs as http:// on another port of the same host (a listener
    there would see the client secret and the token): everything goes to https instead, with a warning."""
    ca = private_ca(tmp_path / "ca")
    a = make_sandbox("7.3", seed=1)
    b = make_sandbox("7.3")
    total = total_items(a)
    env = {**NO_ENV_PROXY, **NO_ENV_CA, "REQUESTS_CA_BUNDLE": str(ca.ca)}
    with ReverseProxy(a.base_url) as clear_a, ReverseProxy(b.base_url) as clear_b, \
            ReverseProxy(a.base_url, tls=ca.server_context(), host=f"127.0.0.1:{clear_a.port}") as front_a, \
            ReverseProxy(b.base_url, tls=ca.server_context(), host=f"127.0.0.1:{clear_b.port}") as front_b:
        config = {**tap_config(a), "base_url": root_via(front_a, a)}
        tap = run_tap_process(config, tmp_path, env=env)
        assert clear_a.seen == []  # not one request in cleartext, let alone with credentials
        assert tap.returncode == 0, stderr_of(tap)[-3000:]
        assert len(Output(tap.stdout).records) == total
        assert "lists http:// URLs" in stderr_of(tap)

        target = run_target_process({**target_config(b, tmp_path / "log.db"), "base_url": root_via(front_b, b)},
                                    tap.stdout, tmp_path, env=env)
        assert clear_b.seen == []
        assert target.returncode == 0, stderr_of(target)[-3000:]
        assert diff_content(content(a), content(b)) == []


def _listing_to(other: ReverseProxy, front: ReverseProxy) -> Any:
    """A rewrite that makes the metadata listing name ``other``'s origin for every document."""
    def rewrite(method: str, path: str, body: bytes) -> bytes:
        if method == "GET" and path.rstrip("/").endswith("/metadata") and body.lstrip()[:1] == b"[":
            return body.replace(f"127.0.0.1:{front.port}".encode(), f"127.0.0.1:{other.port}".encode())
        return body
    return rewrite


def _oauth_to(other: ReverseProxy) -> Any:
    """A rewrite that makes the root payload name ``other``'s origin as the token URL."""
    def rewrite(method: str, path: str, body: bytes) -> bytes:
        if method == "GET" and body.lstrip()[:1] == b"{" and b'"urls"' in body:
            doc = orjson.loads(body)
            doc["urls"]["oauth"] = other.url + "/oauth/token"
            return orjson.dumps(doc)
        return body
    return rewrite


def test_no_token_or_secret_goes_to_another_origin_the_api_names(make_sandbox: Any, tmp_path: Path) -> None:
    a = make_sandbox("7.3", seed=1)
    b = make_sandbox("7.3")
    env = NO_ENV_PROXY
    # another origin that asks for a token (401) and serves the sandbox's documents to whoever sends one
    with ReverseProxy(a.base_url, require_auth=True) as other, ReverseProxy(a.base_url) as front:
        front.rewrite = _listing_to(other, front)
        config = {**tap_config(a), "base_url": root_via(front, a)}
        refused = run_tap_process(config, tmp_path, args=["--discover"], env=env)
        assert other.seen, "the metadata listing did not name the other origin"
        assert not any(s.authorized for s in other.seen)  # asked for a token: not given one
        assert refused.returncode != 0
        assert "allowed_origins" in stderr_of(refused) and other.url in stderr_of(refused)

        # the user can trust it by setting
        allowed = run_tap_process({**config, "allowed_origins": [other.url]}, tmp_path, args=["--discover"], env=env)
        assert allowed.returncode == 0, stderr_of(allowed)[-3000:]
        assert any(s.authorized for s in other.seen)
        streams = {s["tap_stream_id"] for s in json.loads(allowed.stdout)["streams"]}
        assert "students" in streams

    # target-edfi: a root payload naming another origin as its token URL gets no client secret
    with ReverseProxy(b.base_url) as other, ReverseProxy(b.base_url) as front:
        front.rewrite = _oauth_to(other)
        target = run_target_process({**target_config(b, tmp_path / "log.db"), "base_url": root_via(front, b)},
                                    descriptor_messages(), tmp_path, env=env)
        assert other.seen == []
        assert target.returncode != 0
        assert "allowed_origins" in stderr_of(target) and other.url in stderr_of(target)
        assert b.store.change_version == 0


@pytest.mark.filterwarnings("error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning")
def test_in_process_runs_leave_no_connection_unclosed(make_sandbox: Any, tmp_path: Path) -> None:
    a = make_sandbox("7.3", seed=1)
    b = make_sandbox("7.3")
    out = run_tap(tap_config(a, page_size=50, max_window_rows=200))
    assert len(out.records) == total_items(a)
    run = run_target(target_config(b, tmp_path / "log.db", max_workers=8), out.raw)
    assert run.exit_code == 0
    assert diff_content(content(a), content(b)) == []
    del out, run
    gc.collect()  # a socket nobody closed would warn now, and the warning is an error
