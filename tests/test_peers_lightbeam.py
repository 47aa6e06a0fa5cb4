"""lightbeam, a published Ed-Fi loader nobody here wrote, against the sandbox over loopback HTTP.

lightbeam (``lightbeam==0.1.12``) is driven through its own CLI, in a child process, as its users run it:
``lightbeam send|count|fetch|delete -c lightbeam.yaml`` (as ``python -m lightbeam``: the same ``main``). It reads the
root payload for the OAuth, dependencies and OpenAPI metadata URLs, orders endpoints by
``/metadata/data/v3/dependencies``, POSTs every JSONL line of ``tests/peer_data`` (a small district: descriptors,
school years, a district, schools, students, sessions, courses, offerings, sections and enrollments), counts with
``GET …?limit=0&totalCount=true``, fetches with limit/offset pages, checks fetch query parameters against the
Resources OpenAPI document and deletes by natural-key lookups.

Whatever it gets is checked against the sandbox's store. A ``sitecustomize`` guard in the child refuses any
connection or name lookup that is not loopback, so the client can only have talked to the sandbox.

Where lightbeam fails because the sandbox differs from a real ODS/API, the test is marked ``xfail(strict=True)``
with the evidence; the sandbox is what must change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightbeam  # noqa: F401  (a dev dependency: fail loudly when it is missing)
import pytest

from edfi_core.openapi import without_server_fields
from edfi_sandbox.server import Sandbox

PEER_DATA = Path(__file__).resolve().parent / "peer_data"
#: the ``lightbeam`` console script, run with this interpreter (whose environment has lightbeam installed)
LIGHTBEAM = [sys.executable, "-m", "lightbeam"]
NAMESPACE = "/ed-fi/"

#: id -> (api version, sandbox options, lightbeam ``edfi_api.mode``, lightbeam ``edfi_api.year``)
VARIANTS: dict[str, tuple[str, dict[str, Any], str | None, int | None]] = {
    "5.3": ("5.3", {}, "sandbox", None),
    "6.1-year": ("6.1", {"api_mode": "year", "school_year": 2026}, "year_specific", 2026),
    "7.1": ("7.1", {}, None, None),
    "7.3": ("7.3", {}, None, None),
    "7.3-tenant-context": ("7.3", {"tenant": "gbisd", "context": "2026"}, None, None),
}

#: Parents before children, as the data set needs them (lightbeam must send in this order).
REFERENCED_BEFORE = [
    ("gradeLevelDescriptors", "schools"),
    ("educationOrganizationCategoryDescriptors", "localEducationAgencies"),
    ("localEducationAgencies", "schools"),
    ("schoolYearTypes", "sessions"),
    ("schools", "sessions"),
    ("termDescriptors", "sessions"),
    ("localEducationAgencies", "courses"),
    ("sessions", "courseOfferings"),
    ("courses", "courseOfferings"),
    ("courseOfferings", "sections"),
    ("students", "studentSchoolAssociations"),
    ("schools", "studentSchoolAssociations"),
    ("sections", "studentSectionAssociations"),
    ("students", "studentSectionAssociations"),
]


GUARD = '''
import os
import socket

_LOG = os.environ.get("PEER_NET_LOG")
_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex
_getaddrinfo = socket.getaddrinfo


def _refuse(what):
    with open(_LOG, "a") as fh:
        fh.write(repr(what) + "\\n")
    raise OSError("peer-test guard: refused non-loopback network access to %r" % (what,))


def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        if not (host in _LOOPBACK or str(host).startswith("127.")):
            _refuse(address)


def connect(self, address):
    _check(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name is not None and not (name in _LOOPBACK or str(name).startswith("127.")):
        _refuse(host)
    return _getaddrinfo(host, *args, **kwargs)


if _LOG:
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
    open(os.environ["PEER_NET_LOADED"], "w").close()
'''


# -- the data set ---------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


DATA_SET: dict[str, list[dict[str, Any]]] = {p.stem: read_jsonl(p) for p in sorted(PEER_DATA.glob("*.jsonl"))}




def assert_same_payload(served: dict[str, Any], sent: dict[str, Any], where: str) -> None:
    """What the API holds is what was sent: same fields and values; besides server fields (id, _etag,
    _lastModifiedDate, reference links, a descriptor's integer ``{name}DescriptorId``) a real ODS/API only adds
    collections the payload left out, as []."""
    served = {k: v for k, v in without_server_fields(served).items()
              if not (k.endswith("DescriptorId") and isinstance(v, int) and k not in sent)}
    for name, value in sent.items():
        assert served.get(name) == value, f"{where}: {name} is {served.get(name)!r}, sent {value!r}"
    extra = {k: v for k, v in served.items() if k not in sent}
    assert all(v == [] for v in extra.values()), f"{where}: fields that were not sent: {extra}"


def same_payload(served: dict[str, Any], sent: dict[str, Any]) -> bool:
    try:
        assert_same_payload(served, sent, "")
    except AssertionError:
        return False
    return True


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {row["id"]: row for row in rows}
    assert len(out) == len(rows), "duplicate ids"
    return out


# -- running lightbeam ------------------------------------------------------------------------------------
@dataclass
class LightbeamSite:
    """A sandbox and everything needed to point the lightbeam CLI at it."""

    name: str
    sandbox: Sandbox
    mode: str | None
    year: int | None
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    net_log: Path = Path()
    net_loaded: Path = Path()

    @property
    def version(self) -> str:
        return self.sandbox.config.api_version

    def config(self, data_dir: Path, **extra: Any) -> Path:
        sb = self.sandbox
        cfg: dict[str, Any] = {
            "data_dir": str(data_dir) + "/",
            "namespace": "ed-fi",
            "edfi_api": {
                "base_url": sb.api_root,
                "version": 3,
                "mode": self.mode,
                "client_id": sb.client_id,
                "client_secret": sb.client_secret,
            },
            "connection": {
                "pool_size": 4,
                "timeout": 30,
                "num_retries": 2,
                "backoff_factor": 0.1,
                "retry_statuses": [429, 500, 502, 503, 504],
                "verify_ssl": False,
            },
            "force_delete": True,
            "log_level": "INFO",
            "show_stacktrace": True,
            **extra,
        }
        if self.year is not None:
            cfg["edfi_api"]["year"] = self.year
        path = self.workdir / f"lightbeam-{data_dir.name}.yaml"
        path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
        return path

    def run(self, command: str, *args: str, data_dir: Path = PEER_DATA, **extra: Any) -> subprocess.CompletedProcess:
        cfg = self.config(data_dir, **extra)
        self.net_loaded.unlink(missing_ok=True)
        proc = subprocess.run(
            [*LIGHTBEAM, command, "-c", str(cfg), *args],
            cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=120,
        )
        assert self.net_loaded.exists(), "the loopback guard was not loaded in the lightbeam process"
        refused = self.net_log.read_text() if self.net_log.exists() else ""
        assert not refused, f"lightbeam tried to reach non-loopback addresses: {refused}"
        return proc


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def guarded_env(workdir: Path) -> tuple[dict[str, str], Path, Path]:
    guard_dir = workdir / "guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(GUARD)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(guard_dir), env.get("PYTHONPATH", "")) if p)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    net_log, loaded = workdir / "refused.log", workdir / "guard.loaded"
    env["PEER_NET_LOG"], env["PEER_NET_LOADED"] = str(net_log), str(loaded)
    return env, net_log, loaded


def start_site(name: str, workdir: Path) -> LightbeamSite:
    version, options, mode, year = VARIANTS[name]
    sb = Sandbox(version, **options).start()
    env, net_log, loaded = guarded_env(workdir)
    return LightbeamSite(name, sb, mode, year, workdir, env, net_log, loaded)



@dataclass
class Outcome:
    """One lightbeam session against one fresh sandbox: send, count, fetch, fetch with a query, delete.

    The commands run in that order once per API variant (lightbeam starts in about a second); what each saw is
    kept here and every test checks one part of it, against the store as it was at that point."""

    site: LightbeamSite
    send: subprocess.CompletedProcess
    send_results: dict[str, Any]
    stored: dict[str, list[dict[str, Any]]]  # resource path -> items, after send
    count: subprocess.CompletedProcess
    count_lines: list[str]
    fetch: subprocess.CompletedProcess
    fetched: dict[str, list[dict[str, Any]]]  # endpoint -> rows written by fetch
    query: subprocess.CompletedProcess
    queried: list[dict[str, Any]]
    delete: subprocess.CompletedProcess
    remaining: dict[str, int]  # data-set endpoint -> items left after delete


def run_session(site: LightbeamSite) -> Outcome:
    work, store, model = site.workdir, site.sandbox.store, site.sandbox.model
    results, count_file = work / "send-results.json", work / "count.tsv"
    fetched_dir, queried_dir = work / "fetched", work / "queried"
    fetched_dir.mkdir()
    queried_dir.mkdir()

    send = site.run("send", "--results-file", str(results))
    send_results = json.loads(results.read_text()) if results.exists() else {}
    stored = {res.path: list(store.iter_docs(res.path)) for res in model}
    count = site.run("count", "--results-file", str(count_file))
    fetch = site.run("fetch", data_dir=fetched_dir, fetch={"page_size": 10})
    query = site.run(
        "fetch", "-s", "studentSchoolAssociations", "-q", json.dumps({"schoolId": 255901044}),
        "-d", "id,_etag,_lastModifiedDate", data_dir=queried_dir, fetch={"page_size": 2},
    )
    delete = site.run("delete")
    queried_file = queried_dir / "studentSchoolAssociations.jsonl"
    return Outcome(
        site=site,
        send=send,
        send_results=send_results,
        stored=stored,
        count=count,
        count_lines=count_file.read_text().splitlines() if count_file.exists() else [],
        fetch=fetch,
        fetched={f.stem: read_jsonl(f) for f in fetched_dir.glob("*.jsonl")},
        query=query,
        queried=read_jsonl(queried_file) if queried_file.exists() else [],
        delete=delete,
        remaining={name: store.count(NAMESPACE + name) for name in DATA_SET},
    )


@pytest.fixture(scope="module", params=list(VARIANTS))
def outcome(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    site = start_site(request.param, tmp_path_factory.mktemp(f"lightbeam-{request.param}"))
    try:
        yield run_session(site)
    finally:
        site.sandbox.stop()


# -- tests ------------------------------------------------------------------------------------------------
def test_loopback_guard_refuses_other_addresses(tmp_path: Path) -> None:
    """The guard every lightbeam run gets: connections and name lookups off loopback fail before any packet
    leaves, and are logged (a logged refusal fails the lightbeam run that caused it)."""
    env, log, loaded = guarded_env(tmp_path)
    for target in ("('192.0.2.1', 9)", "('example.invalid', 80)"):
        code = f"import socket; socket.create_connection({target}, timeout=1)"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and "peer-test guard: refused" in proc.stderr, describe(proc)
    assert loaded.exists()
    assert log.read_text().splitlines() == ["'192.0.2.1'", "'example.invalid'"]


def test_send_loads_every_record_in_dependency_order(outcome: Outcome) -> None:
    assert outcome.send.returncode == 0, describe(outcome.send)
    resources = outcome.send_results["resources"]
    assert set(resources) == set(DATA_SET), "lightbeam did not process exactly the data set's endpoints"
    for name, rows in DATA_SET.items():
        assert resources[name] == {
            "successes": [{"status_code": 201, "count": len(rows)}],
            "records_processed": len(rows),
            "records_skipped": 0,
            "records_failed": 0,
        }, f"{name}: {resources[name]}"
    total = sum(len(rows) for rows in DATA_SET.values())
    assert outcome.send_results["total_records_processed"] == total
    assert outcome.send_results["total_records_failed"] == 0

    order = list(resources)  # lightbeam sends (and reports) endpoints one after the other
    for parent, child in REFERENCED_BEFORE:
        assert order.index(parent) < order.index(child), f"{child} was sent before {parent}: {order}"

    # the store holds exactly the data set: for every record sent, one item with the same fields and values
    assert sum(len(docs) for docs in outcome.stored.values()) == total
    for name, rows in DATA_SET.items():
        path = NAMESPACE + name
        assert len(outcome.stored[path]) == len(rows), path
        for row in rows:
            hits = [doc for doc in outcome.stored[path] if same_payload(doc, row)]
            assert len(hits) == 1, f"{path}: {len(hits)} stored items match {row}"


def test_count_agrees_with_store(request: pytest.FixtureRequest, outcome: Outcome) -> None:
    assert outcome.count.returncode == 0, describe(outcome.count)
    assert outcome.count_lines[0] == "Records\tEndpoint"
    counts: dict[str, str] = {}
    for line in outcome.count_lines[1:]:
        records, endpoint = line.split("\t", 1)
        counts[endpoint] = records
    # every resource the API serves, each with the number of items the store holds
    expected = {path.removeprefix(NAMESPACE): str(len(docs)) for path, docs in outcome.stored.items()}
    assert counts == expected


def test_fetch_agrees_with_store(request: pytest.FixtureRequest, outcome: Outcome) -> None:
    assert outcome.fetch.returncode == 0, describe(outcome.fetch)
    for path, docs in outcome.stored.items():
        fetched = outcome.fetched.get(path.removeprefix(NAMESPACE), [])
        assert by_id(fetched) == by_id(docs), path  # the items exactly as served: ids, etags, links
    assert set(outcome.fetched) == {p.removeprefix(NAMESPACE) for p, docs in outcome.stored.items() if docs}


def test_fetch_with_query_agrees_with_store(request: pytest.FixtureRequest, outcome: Outcome) -> None:
    """lightbeam checks a query's keys against the endpoint's GET parameters in the Resources OpenAPI document,
    then passes them on; ``-d`` drops keys from what it writes."""
    assert outcome.query.returncode == 0, describe(outcome.query)
    assert "Query contains keys that are not params" not in outcome.query.stderr, describe(outcome.query)
    dropped = ("id", "_etag", "_lastModifiedDate")
    expected = [
        {k: v for k, v in doc.items() if k not in dropped}
        for doc in outcome.stored["/ed-fi/studentSchoolAssociations"]
        if doc["schoolReference"]["schoolId"] == 255901044
    ]
    assert len(expected) == 3
    assert sorted(outcome.queried, key=json.dumps) == sorted(expected, key=json.dumps)


def test_delete_removes_the_data_set(request: pytest.FixtureRequest, outcome: Outcome) -> None:
    """lightbeam deletes in reverse dependency order, finding each item's id by its natural key (identity
    parameters read from the OpenAPI documents); descriptors it finds with its fetch."""
    assert outcome.delete.returncode == 0, describe(outcome.delete)
    assert "(reason:" not in outcome.delete.stderr, describe(outcome.delete)  # lightbeam logs skips and failures
    assert outcome.remaining == dict.fromkeys(DATA_SET, 0), describe(outcome.delete)
