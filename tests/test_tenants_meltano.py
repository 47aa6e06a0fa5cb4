"""Two tenants times two school years into one table set: ``tests/meltano_tenants/meltano.yml``, the README's project.

Four ODS/API 7.3 sandboxes with tenant and context routing (``/north/2024``, ``/north/2025``, ``/south/2024``,
``/south/2025``: a sandbox serves one tenant and context, as one ODS per tenant and year does), seeded so that
the same ids exist in every slice (an ODS made for a new school year from a copy of the last keeps its ids). One
``meltano run`` runs the four inherited taps into MeltanoLabs target-postgres (the machine's PostgreSQL, database
``test``); every table holds the four slices, each with the API's count, and each tap has its own state. Then one
slice changes (updates, deletes of items whose ids the other slices have too) and the next run changes that slice
only. Plugins are installed once into ``.meltano-tenants/`` (gitignored, ``MELTANO_SYS_DIR_ROOT``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from edfi_sandbox.server import Sandbox
from tests.tap_support import Mutator

REPO = Path(__file__).resolve().parents[1]
PROJECT = REPO / "tests" / "meltano_tenants"
SYS_DIR = REPO / ".meltano-tenants"
MELTANO = shutil.which("meltano") or str(REPO / ".venv-meltano" / "bin" / "meltano")
DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
#: tenant, school year and students of each slice: more students, the same ids (ids come from natural keys)
SLICES = [("north", 2024, 4), ("north", 2025, 5), ("south", 2024, 6), ("south", 2025, 7)]


def _meltano(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    assert Path(MELTANO).exists(), "meltano is not installed: run `make meltano` (it installs .venv-meltano)"
    env = {**os.environ, "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false", "MELTANO_SYS_DIR_ROOT": str(SYS_DIR), **env}
    return subprocess.run([MELTANO, *args], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout)


def tap_name(tenant: str, year: int) -> str:
    return f"tap-edfi-{tenant}-{year}"


@pytest.fixture(scope="session")
def tenant_plugins() -> None:
    """tap-edfi (shared by the inherited taps) and target-postgres installed once into .meltano-tenants/."""
    installed = [SYS_DIR / "extractors" / "tap-edfi" / "venv" / "bin" / "tap-edfi",
                 SYS_DIR / "loaders" / "target-postgres" / "venv" / "bin" / "target-postgres"]
    if all(p.exists() for p in installed):
        return
    proc = _meltano(["install"], {})
    assert proc.returncode == 0, f"meltano install failed: {proc.stderr[-3000:]}"


@pytest.fixture
def sandboxes() -> Iterator[dict[tuple[str, int], Sandbox]]:
    started: dict[tuple[str, int], Sandbox] = {}
    try:
        for tenant, year, students in SLICES:
            started[(tenant, year)] = Sandbox("7.3", seed=students, tenant=tenant, context=str(year)).start()
        yield started
    finally:
        for sb in started.values():
            sb.stop()


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"edfi_tenants_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def rows(schema: str, table: str) -> dict[tuple[str, int, str], dict[str, Any]]:
    """A table's rows by (tenant_code, api_year, id)."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        cur = conn.execute(f'SELECT * FROM "{schema}"."{table}"')
        names = [d.name for d in cur.description or []]
        found = [dict(zip(names, row, strict=True)) for row in cur]
    return {(r["tenant_code"], r["api_year"], r["id"]): r for r in found}


def _content(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_sdc_") or k == "_sdc_deleted_at"}


def test_four_inherited_taps_fill_one_table_set(tenant_plugins: None, sandboxes: dict[tuple[str, int], Sandbox],
                                                schema: str, tmp_path: Path) -> None:
    first = next(iter(sandboxes.values()))
    env = {"TAP_EDFI_CLIENT_ID": first.client_id, "TAP_EDFI_CLIENT_SECRET": first.client_secret,
           "TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": schema, "MELTANO_DATABASE_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    for (tenant, year), sb in sandboxes.items():  # the sandboxes' hosts instead of https://edfi.example.org/api
        env[f"{tap_name(tenant, year).upper().replace('-', '_')}_BASE_URL"] = sb.base_url
    blocks = [arg for tenant, year, _ in SLICES for arg in (tap_name(tenant, year), "target-postgres")]

    # 1. one run, four taps: every table holds every slice with the API's items (the same ids in several slices)
    proc = _meltano(["run", *blocks], env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    model = first.model
    for res in model:
        table = rows(schema, res.name)
        for (tenant, year), sb in sandboxes.items():
            docs = {d["id"] for d in sb.store.iter_docs(res.path)}
            got = {i for (t, y, i) in table if (t, y) == (tenant, year)}
            assert got == docs, f"{res.name} of {tenant} {year}: {len(got)} rows, the API has {len(docs)}"
        assert len(table) == sum(sum(1 for _ in sb.store.iter_docs(res.path)) for sb in sandboxes.values())
    students = rows(schema, "students")
    shared = {i for (_, _, i) in students if all((t, y, i) in students for t, y, _ in SLICES)}
    assert len(shared) == 4  # the first four students are in every slice, under the same ids
    descriptors = rows(schema, "gradeLevelDescriptors")
    assert {(t, y) for (t, y, _) in descriptors} == {(t, y) for t, y, _ in SLICES}

    # 2. each tap has its own state
    listed = _meltano(["state", "list"], env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    ids = {line.strip() for line in listed.stdout.splitlines() if line.strip().startswith("dev:")}
    assert ids == {f"dev:{tap_name(t, y)}-to-target-postgres" for t, y, _ in SLICES}, listed.stdout

    # 3. the next run re-reads each slice's last change versions once (change_version_lookback: a write still open
    # while the first run read may show up below its bookmark): the same rows again, nothing else
    data = {res.name: {k: _content(r) for k, r in rows(schema, res.name).items()} for res in model}
    proc = _meltano(["run", *blocks], env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert {res.name: {k: _content(r) for k, r in rows(schema, res.name).items()} for res in model} == data

    # 4. north 2025 changes: two students renamed and three attendance events deleted, ids all slices have
    sb = sandboxes[("north", 2025)]
    m = Mutator(sb)
    m.update("/ed-fi/students", 2, "firstName", lambda d: "Renamed")
    events = "/ed-fi/studentSchoolAttendanceEvents"
    assert m.delete(events, 3) == 3
    renamed = {i for op, path, i in m.log if op == "update"}
    deleted = {i for op, path, i in m.log if op == "delete"}
    assert renamed <= shared
    before = {t: rows(schema, t) for t in ("students", "studentSchoolAttendanceEvents", "schools")}
    proc = _meltano(["run", *blocks], env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    after = {t: rows(schema, t) for t in before}
    for table in before:
        assert set(after[table]) == set(before[table]), table
        for key, row in before[table].items():
            if key[:2] == ("north", 2025) and key[2] in renamed | deleted:
                continue
            assert after[table][key] == row, (table, key)  # _sdc_* too: the row was not written again
    for i in renamed:
        assert after["students"][("north", 2025, i)]["firstName"] == "Renamed"
        assert all(after["students"][(t, y, i)]["firstName"] != "Renamed" for t, y, _ in SLICES if (t, y) !=
                   ("north", 2025))
    live = {i for (t, y, i), r in after["studentSchoolAttendanceEvents"].items()
            if (t, y) == ("north", 2025) and r["_sdc_deleted_at"] is None}
    assert live == {d["id"] for d in sb.store.iter_docs(events)}
    for i in deleted:
        assert after["studentSchoolAttendanceEvents"][("north", 2025, i)]["_sdc_deleted_at"] is not None
        for t, y, _ in SLICES:
            if (t, y) != ("north", 2025) and (t, y, i) in after["studentSchoolAttendanceEvents"]:
                assert after["studentSchoolAttendanceEvents"][(t, y, i)]["_sdc_deleted_at"] is None


def test_the_readme_shows_the_meltano_yml_the_test_runs() -> None:
    readme = (REPO / "README.md").read_text()
    assert f"```yaml\n{(PROJECT / 'meltano.yml').read_text()}```" in readme


def test_the_inherited_taps_differ_only_in_route_and_columns() -> None:
    """Each inherited tap sets its tenant and context route and the same values as its columns, nothing else."""
    project = yaml.safe_load((PROJECT / "meltano.yml").read_text())
    taps = [p for p in project["plugins"]["extractors"] if p.get("inherit_from") == "tap-edfi"]
    assert [(p["name"]) for p in taps] == [tap_name(t, y) for t, y, _ in SLICES]
    for p, (tenant, year, _) in zip(taps, SLICES, strict=True):
        assert p["config"] == {"tenant": tenant, "context": str(year), "tenant_code": tenant, "api_year": year}
