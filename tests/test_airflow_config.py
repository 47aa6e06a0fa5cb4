"""edfi_airflow's configuration and jobs without Airflow: what each task would run, and what is refused.

The DAG itself runs under Airflow in tests/test_airflow.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edfi_airflow.config import ConfigError, load_config
from edfi_airflow.meltano_job import ConnectionValues, MeltanoJob, api_settings, postgres_uri
from tests.tap_support import REPO


def raw(tmp_path: Path, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "dag_id": "d", "meltano": {"project_dir": str(tmp_path), "work_dir": str(tmp_path / "work")},
        "state_database_uri": "postgresql+psycopg://u@db/meltano", "token_cache": "postgresql://u@db/tokens",
        "target_settings": {"default_target_schema": "edfi_{api}_{year}"},
        "apis": [{"id": "a_2025", "conn_id": "edfi_a", "tenant": "a", "year": 2025, "pool_slots": 3}],
        "groups": [{"name": "big", "resources": ["studentSchoolAttendanceEvents"]},
                   {"name": "small", "resources": ["students", "schools"]}, {"name": "rest", "rest": True}],
    }
    base.update(over)
    return base


def without_groups(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k != "groups"}


CONN = ConnectionValues("edfi_a", host="https://ods.example/api/a/2025", login="key", password="s3cret",
                        extra={"scope": "255901"})


def test_each_job_has_its_state_id_pool_and_settings(tmp_path: Path) -> None:
    cfg = load_config(raw(tmp_path))
    jobs = [MeltanoJob(cfg, api, group) for api, group in cfg.job_names()]
    assert [j.task_id for j in jobs] == ["a_2025.big", "a_2025.small", "a_2025.rest"]
    assert jobs[0].state_id == "dev:tap-edfi-to-target-postgres:a_2025.big"
    assert jobs[0].command() == ["meltano", "run", "--state-id-suffix", "a_2025.big", "tap-edfi", "target-postgres"]
    assert "--force" in jobs[0].command(force=True)
    assert cfg.pools() == {"edfi_a_2025": {"slots": 3, "include_deferred": False, "description":
                           "Ed-Fi API a_2025: concurrent extraction tasks (each makes up to 4 concurrent requests)"}}
    env = jobs[1].environment(CONN, "postgresql+psycopg://u@db/meltano", "postgresql://u@db/tokens", base={})
    assert json.loads(env["TAP_EDFI_RESOURCES"]) == ["students", "schools"]
    assert (env["TAP_EDFI_BASE_URL"], env["TAP_EDFI_CLIENT_ID"], env["TAP_EDFI_CLIENT_SECRET"]) == \
        ("https://ods.example/api/a/2025", "key", "s3cret")
    assert (env["TAP_EDFI_SCOPE"], env["TAP_EDFI_TENANT_CODE"], env["TAP_EDFI_API_YEAR"]) == ("255901", "a", "2025")
    assert env["TAP_EDFI_TOKEN_CACHE"] == "postgresql://u@db/tokens"
    assert env["TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA"] == "edfi_a_2025_2025"
    assert env["MELTANO_DATABASE_URI"] == "postgresql+psycopg://u@db/meltano"
    assert env["MELTANO_SYS_DIR_ROOT"] == str((tmp_path / "work" / "a_2025.small" / ".meltano").resolve())
    # the rest group: every resource no other group names
    rest = jobs[2].environment(CONN, "postgresql+psycopg://u@db/meltano", "/shared/tokens.json", base={})
    assert "TAP_EDFI_RESOURCES" not in rest
    assert json.loads(rest["TAP_EDFI_EXCLUDE_RESOURCES"]) == ["schools", "studentSchoolAttendanceEvents", "students"]


def test_each_job_gets_its_own_meltano_run_dir_with_the_projects_plugins(tmp_path: Path) -> None:
    (tmp_path / ".meltano" / "extractors" / "tap-edfi").mkdir(parents=True)
    (tmp_path / ".meltano" / "loaders").mkdir()
    cfg = load_config(raw(tmp_path))
    a, b = (MeltanoJob(cfg, cfg.apis[0], g) for g in cfg.groups[:2])
    sys_a, sys_b = a.prepare_system_dir(), b.prepare_system_dir()
    assert sys_a != sys_b
    assert (sys_a / "extractors").resolve() == (tmp_path / ".meltano" / "extractors").resolve()
    assert (sys_a / "loaders").is_symlink() and not (sys_a / "run").exists()
    assert a.prepare_system_dir() == sys_a  # again: the links stay


@pytest.mark.parametrize(("change", "message"), [
    ({"groups": [{"name": "x", "resources": ["students"]}, {"name": "y", "resources": ["students"]}]},
     "resource students is in groups x and y"),
    ({"groups": [{"name": "x", "rest": True}, {"name": "y", "rest": True}]}, "at most one group"),
    ({"groups": [{"name": "bad name", "resources": ["students"]}]}, "group name 'bad name'"),
    ({"groups": [{"name": "x"}]}, "give its 'resources'"),
    ({"apis": []}, "'apis' is empty"),
    ({"apis": [{"id": "a"}]}, "'conn_id'"),
    ({"state_database_uri": "sqlite:///.meltano/meltano.db"}, "SQLite"),
    ({"counts": {"a": 1}}, "one way"),
])
def test_a_wrong_configuration_is_refused_with_what_to_do(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(raw(tmp_path, **change))


def test_a_job_without_shared_state_or_token_cache_is_refused(tmp_path: Path) -> None:
    cfg = load_config(raw(tmp_path))
    job = MeltanoJob(cfg, cfg.apis[0], cfg.groups[0])
    with pytest.raises(ConfigError, match="every worker reaches"):
        job.environment(CONN, "sqlite:////tmp/meltano.db", "postgresql://u@db/t", base={})
    with pytest.raises(ConfigError, match="token_cache"):
        job.environment(CONN, "postgresql+psycopg://u@db/m", "off", base={})
    with pytest.raises(ConfigError, match="Airflow connection edfi_a: set its host"):
        api_settings(ConnectionValues("edfi_a", host="h", login="key"))


def test_groups_planned_from_counts_or_read_from_a_plan_file(tmp_path: Path) -> None:
    counts = {"big": 10_000, **{f"small{i}": 10 for i in range(20)}}
    cfg = load_config(without_groups(raw(tmp_path, counts=counts, max_groups=4, rest_group=True)))
    assert cfg.groups[0].resources == ("big",)  # the large resource alone
    assert cfg.groups[-1].rest and sum(len(g.resources) for g in cfg.groups) == 21
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"groups": [{"name": "group01", "resources": ["big"]},
                                           {"name": "group02", "resources": ["small0"]}]}))
    path = tmp_path / "dag.json"
    path.write_text(json.dumps(without_groups(raw(tmp_path, groups_file="plan.json"))))
    cfg = load_config(path)  # groups_file relative to the configuration's folder
    assert [g.name for g in cfg.groups] == ["group01", "group02"]


def test_postgres_uri_of_a_connection_quotes_secrets() -> None:
    conn = ConnectionValues("pg", host="db", port=6432, schema="meltano", login="me", password="p@ss/word",
                            extra={"sslmode": "require"})
    assert postgres_uri(conn, "postgresql+psycopg") == \
        "postgresql+psycopg://me:p%40ss%2Fword@db:6432/meltano?sslmode=require"


def test_the_pools_command_prints_what_airflow_pools_import_reads(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw(tmp_path)))
    out = subprocess.run([sys.executable, "-m", "edfi_airflow", "pools", str(path)], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    assert json.loads(out)["edfi_a_2025"]["slots"] == 3
