"""The sandbox's commit delay: a write's change version is the newest at once, its item visible only later."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import requests

from edfi_sandbox.server import Sandbox


def test_a_write_holds_its_change_version_until_it_commits(make_sandbox: Callable[..., Sandbox],
                                                           api_for: Callable) -> None:
    sb = make_sandbox("7.3", seed=3)
    api = api_for(sb)
    doc = next(iter(sb.store.iter_docs("/ed-fi/students")))
    before = api.newest()
    sb.set_faults(commit_delay_ms=1500)
    body = {k: v for k, v in doc.items() if k not in ("id", "_etag", "_lastModifiedDate")}
    body["firstName"] = "Late"
    done: list[requests.Response] = []
    writer = threading.Thread(target=lambda: done.append(api.put(f"/ed-fi/students/{doc['id']}", body)))
    started = time.monotonic()
    writer.start()
    deadline = started + 1.0
    while api.newest() == before and time.monotonic() < deadline:
        time.sleep(0.02)
    newest = api.newest()
    assert newest == before + 1  # the version is taken (and reported as the newest) ...
    window = api.get("/ed-fi/students", params={"minChangeVersion": newest, "maxChangeVersion": newest}).json()
    assert window == []  # ... but no item has it yet
    assert api.get(f"/ed-fi/students/{doc['id']}").json()["firstName"] != "Late"
    writer.join(timeout=10)
    assert done and done[0].status_code == 204
    assert time.monotonic() - started >= 1.4
    window = api.get("/ed-fi/students", params={"minChangeVersion": newest, "maxChangeVersion": newest}).json()
    assert [d["id"] for d in window] == [doc["id"]] and window[0]["firstName"] == "Late"
    assert api.newest() == newest
    sb.clear_faults()
    assert sb.faults.config.commit_delay_ms == 0
