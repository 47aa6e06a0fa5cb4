"""What an extraction DAG runs: the APIs, the stream groups, Meltano and the shared stores (a JSON file).

Nothing here imports Airflow: the DAG (:mod:`edfi_airflow.dag`) and the jobs (:mod:`edfi_airflow.meltano_job`)
read this. The file's keys are documented in ``edfi_airflow/README.md``; an example is
``edfi_airflow/example_dags/edfi_extract.example.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: what an API id and a group name may hold: they become Airflow task ids, pool names and Meltano state ids
NAME = re.compile(r"^[A-Za-z0-9_-]{1,60}$")


class ConfigError(ValueError):
    """The DAG's configuration is wrong; the message names the key and what to do."""


def _name(value: Any, what: str) -> str:
    text = str(value)
    if not NAME.match(text):
        raise ConfigError(f"{what} {text!r}: use 1-60 letters, digits, '_' or '-' (it names tasks, pools and "
                          "Meltano state ids)")
    return text


@dataclass(frozen=True)
class Api:
    """One Ed-Fi API (a tenant and school year of an ODS/API): its credentials are an Airflow connection."""

    id: str
    conn_id: str
    tenant: str | None = None
    year: int | None = None
    #: concurrent tasks against this API (the Airflow pool ``edfi_<id>``)
    pool_slots: int = 2
    #: tap-edfi settings for this API only (over the DAG's ``tap_settings``)
    tap_settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def pool(self) -> str:
        return f"edfi_{self.id}"


@dataclass(frozen=True)
class Group:
    """Streams extracted by one task per API: ``resources`` (tap-edfi's setting), or every resource that no other
    group names (``rest``: resources added to the API later land there, so a plan never leaves one out)."""

    name: str
    resources: tuple[str, ...] = ()
    rest: bool = False


@dataclass(frozen=True)
class MeltanoSettings:
    executable: str = "meltano"
    project_dir: str = "."
    environment: str = "dev"
    extractor: str = "tap-edfi"
    loader: str = "target-postgres"
    #: where each task gets its own Meltano system directory (``MELTANO_SYS_DIR_ROOT``)
    work_dir: str = "/tmp/edfi-airflow"


@dataclass(frozen=True)
class DagConfig:
    dag_id: str
    apis: tuple[Api, ...]
    groups: tuple[Group, ...]
    meltano: MeltanoSettings
    #: the system database holding Meltano's state: an Airflow connection (preferred) or a URI; else the workers'
    #: ``MELTANO_DATABASE_URI``. Never a local SQLite file: the tasks of one run are on many workers.
    state_database_conn_id: str | None = None
    state_database_uri: str | None = None
    #: tap-edfi's ``token_cache`` for every task: an Airflow connection to PostgreSQL, a ``postgresql://`` URL, or
    #: a file path on storage every worker shares
    token_cache_conn_id: str | None = None
    token_cache: str | None = None
    tap_settings: Mapping[str, Any] = field(default_factory=dict)
    #: loader settings; ``{api}``, ``{tenant}``, ``{year}`` and ``{group}`` in string values are filled per task
    target_settings: Mapping[str, Any] = field(default_factory=dict)
    max_workers: int = 4
    retries: int = 2
    retry_delay_seconds: float = 60.0
    execution_timeout_seconds: float | None = None
    schedule: str | None = None
    tags: tuple[str, ...] = ("edfi",)

    def job_names(self) -> list[tuple[Api, Group]]:
        return [(api, group) for api in self.apis for group in self.groups]

    def exclusions(self, group: Group) -> list[str]:
        """The resources a ``rest`` group leaves out: those of every other group."""
        return sorted({r for g in self.groups if g.name != group.name for r in g.resources})

    def pools(self) -> dict[str, dict[str, Any]]:
        """The Airflow pools the DAG uses, in the format of ``airflow pools import``."""
        return {api.pool: {"slots": api.pool_slots, "include_deferred": False,
                           "description": f"Ed-Fi API {api.id}: concurrent extraction tasks (each makes up to "
                                          f"{self.max_workers} concurrent requests)"}
                for api in self.apis}


def groups_from(raw: Mapping[str, Any], base: Path) -> tuple[Group, ...]:
    """``groups`` (a list), ``groups_file`` (the JSON ``tap-edfi-groups`` prints) or ``counts`` with
    ``max_groups`` (planned here with :func:`tap_edfi.groups.plan_groups`)."""
    given = [k for k in ("groups", "groups_file", "counts") if k in raw]
    if len(given) != 1:
        raise ConfigError("give the stream groups one way: 'groups' (a list), 'groups_file' (the plan "
                          f"tap-edfi-groups printed) or 'counts' with 'max_groups'; got {given or 'none'}")
    items: Sequence[Mapping[str, Any]]
    if "groups" in raw:
        items = raw["groups"]
    elif "groups_file" in raw:
        path = Path(raw["groups_file"])
        path = path if path.is_absolute() else base / path
        try:
            items = json.loads(path.read_text())["groups"]
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"groups_file {path}: not a plan of tap-edfi-groups ({exc})") from exc
    else:
        from tap_edfi.groups import plan_groups

        planned = plan_groups({str(k): int(v) for k, v in raw["counts"].items()}, int(raw.get("max_groups", 4)))
        items = [{"name": f"group{i:02d}", "resources": names} for i, names in enumerate(planned, start=1)]
    groups = []
    for item in items:
        name = _name(item.get("name"), "group name")
        resources = tuple(str(r) for r in item.get("resources") or ())
        rest = bool(item.get("rest"))
        if not resources and not rest:
            raise ConfigError(f"group {name}: give its 'resources' or make it the 'rest' group")
        groups.append(Group(name, resources, rest))
    if raw.get("rest_group"):  # the last (smallest) planned group also takes every resource no group names
        last = groups[-1]
        groups[-1] = Group(last.name, last.resources, True)
    names = [g.name for g in groups]
    if len(set(names)) != len(names) or not groups:
        raise ConfigError(f"group names must be unique and there must be at least one: {names}")
    if sum(g.rest for g in groups) > 1:
        raise ConfigError("at most one group can be the 'rest' group")
    seen: dict[str, str] = {}
    for g in groups:
        for r in g.resources:
            if r in seen:
                raise ConfigError(f"resource {r} is in groups {seen[r]} and {g.name}: a stream must be read by one "
                                  "task (two would write the same table and keep two states)")
            seen[r] = g.name
    return tuple(groups)


def load_config(source: str | Path | Mapping[str, Any]) -> DagConfig:
    """A :class:`DagConfig` from a JSON file (or its parsed content)."""
    base = Path.cwd()
    if isinstance(source, Mapping):
        raw: Mapping[str, Any] = source
    else:
        path = Path(source)
        base = path.parent
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read the DAG configuration ({exc})") from exc
    apis = []
    for item in raw.get("apis") or []:
        api_id = _name(item.get("id"), "api id")
        if not item.get("conn_id"):
            raise ConfigError(f"api {api_id}: 'conn_id' (the Airflow connection with its URL and credentials) is "
                              "required")
        apis.append(Api(api_id, str(item["conn_id"]), item.get("tenant"),
                        int(item["year"]) if item.get("year") is not None else None,
                        int(item.get("pool_slots", raw.get("pool_slots", 2))), dict(item.get("tap_settings") or {})))
    if not apis:
        raise ConfigError("'apis' is empty: list the APIs to extract ({'id', 'conn_id', 'tenant', 'year'})")
    if len({a.id for a in apis}) != len(apis):
        raise ConfigError(f"api ids must be unique: {[a.id for a in apis]}")
    meltano = MeltanoSettings(**(raw.get("meltano") or {}))
    cfg = DagConfig(
        dag_id=str(raw.get("dag_id", "edfi_extract")), apis=tuple(apis), groups=groups_from(raw, base),
        meltano=meltano, state_database_conn_id=raw.get("state_database_conn_id"),
        state_database_uri=raw.get("state_database_uri"), token_cache_conn_id=raw.get("token_cache_conn_id"),
        token_cache=raw.get("token_cache"), tap_settings=dict(raw.get("tap_settings") or {}),
        target_settings=dict(raw.get("target_settings") or {}), max_workers=int(raw.get("max_workers", 4)),
        retries=int(raw.get("retries", 2)), retry_delay_seconds=float(raw.get("retry_delay_seconds", 60)),
        execution_timeout_seconds=raw.get("execution_timeout_seconds"), schedule=raw.get("schedule"),
        tags=tuple(raw.get("tags") or ("edfi",)))
    if (cfg.state_database_uri or "").startswith("sqlite"):
        raise ConfigError("state_database_uri is SQLite: the tasks run on many workers, give Meltano a system "
                          "database every worker reaches (postgresql+psycopg://...)")
    return cfg
