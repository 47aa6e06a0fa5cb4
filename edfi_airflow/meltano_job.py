"""One extraction job: ``meltano run`` of tap-edfi into the loader for one API and one stream group.

What makes parallel Meltano jobs safe (each is an Airflow task, many run at once on many workers):

* **A state id per job**: ``--state-id-suffix <api>.<group>`` gives ``<env>:<tap>-to-<target>:<api>.<group>``, so a
  job resumes from its own bookmarks and a failed job reruns alone.
* **State every worker reaches**: ``MELTANO_DATABASE_URI`` points Meltano's system database (state and job rows)
  at PostgreSQL. Meltano writes the target's STATE messages there as they come (incremental state), so a killed
  job resumes from its last STATE.
* **A system directory per job**: Meltano writes a plugin's config, catalog and state files to
  ``.meltano/run/<plugin>/`` of the project, the same path for every run of that plugin; parallel runs in one
  project would overwrite each other's files (another API's URL, another group's catalog) and delete them when
  they end. Each job gets ``MELTANO_SYS_DIR_ROOT=<work_dir>/<state id>/.meltano``, whose plugin folders are links
  to the project's installed plugins (installed once, by ``meltano install``).
* **One token per client**: the same ``token_cache`` (PostgreSQL or a shared file) for every job, so all jobs of
  one API client share its bearer token (7.3 allows 15 live tokens per client).
* **No orphans**: meltano runs in its own process group and dies with the task's process (Linux
  ``PR_SET_PDEATHSIG``); a retry after a crash passes ``--force``, since the crashed job's row still says running.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from edfi_airflow.config import Api, ConfigError, DagConfig, Group

logger = logging.getLogger(__name__)

#: folders of an installed Meltano project's system directory that hold plugins (linked, not copied)
PLUGIN_DIRS = ("extractors", "loaders", "mappers", "utilities", "transformers", "orchestrators", "files")
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ConnectionValues:
    """The parts of an Airflow connection a job uses (kept apart from Airflow's class, for tests and mypy)."""

    conn_id: str
    host: str | None = None
    port: int | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    conn_type: str | None = None


def api_settings(conn: ConnectionValues) -> dict[str, Any]:
    """tap-edfi settings from an API's connection: ``base_url`` from the extra's ``base_url`` or the host (a URL,
    or a host name with port and schema as the path), ``client_id`` = login, ``client_secret`` = password; any other
    extra key is a tap setting (``tenant``, ``context``, ``school_year``, ``scope``, ``oauth_url`` ...)."""
    extra = dict(conn.extra)
    base_url = extra.pop("base_url", None)
    if not base_url and conn.host:
        host = conn.host.rstrip("/")
        if "://" not in host:
            host = f"https://{host}{f':{conn.port}' if conn.port else ''}"
            if conn.schema:
                host += "/" + conn.schema.strip("/")
        base_url = host
    if not base_url or not conn.login or not conn.password:
        raise ConfigError(f"Airflow connection {conn.conn_id}: set its host (the API root URL, or extra "
                          "'base_url'), login (client id) and password (client secret)")
    return {**extra, "base_url": base_url, "client_id": conn.login, "client_secret": conn.password}


def postgres_uri(conn: ConnectionValues, scheme: str = "postgresql") -> str:
    """``scheme://login:password@host:port/schema`` of a connection to PostgreSQL (its extra as query options)."""
    if not conn.host:
        raise ConfigError(f"Airflow connection {conn.conn_id}: no host (a PostgreSQL connection is needed)")
    auth = ""
    if conn.login:
        auth = quote(conn.login, safe="")
        if conn.password:
            auth += ":" + quote(conn.password, safe="")
        auth += "@"
    query = "&".join(f"{quote(str(k), safe='')}={quote(str(v), safe='')}" for k, v in conn.extra.items())
    return (f"{scheme}://{auth}{conn.host}:{conn.port or 5432}/{conn.schema or 'postgres'}"
            f"{'?' + query if query else ''}")


def env_name(plugin: str, setting: str) -> str:
    """The environment variable Meltano reads a plugin setting from (``tap-edfi``, ``max_workers`` ->
    ``TAP_EDFI_MAX_WORKERS``)."""
    return f"{plugin}_{setting}".upper().replace("-", "_").replace(".", "_")


def env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


@dataclass(frozen=True)
class MeltanoJob:
    config: DagConfig
    api: Api
    group: Group

    @property
    def task_id(self) -> str:
        return f"{self.api.id}.{self.group.name}"

    @property
    def state_id_suffix(self) -> str:
        return f"{self.api.id}.{self.group.name}"

    @property
    def state_id(self) -> str:
        m = self.config.meltano
        return f"{m.environment}:{m.extractor}-to-{m.loader}:{self.state_id_suffix}"

    def command(self, *, force: bool = False) -> list[str]:
        m = self.config.meltano
        return [m.executable, "run", "--state-id-suffix", self.state_id_suffix, *(["--force"] if force else []),
                m.extractor, m.loader]

    def fill(self, value: Any) -> Any:
        """``{api}``, ``{tenant}``, ``{year}``, ``{group}`` in a target setting."""
        if not isinstance(value, str):
            return value
        return value.format(api=self.api.id, tenant=self.api.tenant or "", year=self.api.year or "",
                            group=self.group.name)

    def tap_settings(self, api_conn: ConnectionValues, token_cache: str) -> dict[str, Any]:
        settings: dict[str, Any] = {"max_workers": self.config.max_workers, **self.config.tap_settings,
                                    **api_settings(api_conn), **self.api.tap_settings, "token_cache": token_cache}
        if self.api.tenant is not None:
            settings.setdefault("tenant_code", self.api.tenant)  # record_format edu's columns
        if self.api.year is not None:
            settings.setdefault("api_year", self.api.year)
        if self.group.resources and not self.group.rest:
            settings["resources"] = list(self.group.resources)
        if self.group.rest:
            settings.pop("resources", None)
            settings["exclude_resources"] = sorted({*settings.get("exclude_resources", []),
                                                    *self.config.exclusions(self.group)})
        return settings

    def environment(self, api_conn: ConnectionValues, state_uri: str, token_cache: str,
                    base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of ``meltano run`` (the worker's, plus the job's settings)."""
        if not state_uri or state_uri.startswith("sqlite"):
            raise ConfigError("Meltano's system database must be one every worker reaches (PostgreSQL): set the "
                              "DAG's state_database_conn_id (or MELTANO_DATABASE_URI on the workers), not a local "
                              "SQLite file")
        if not token_cache or token_cache == "off":
            raise ConfigError("the DAG's tasks share bearer tokens through one token_cache: set token_cache_conn_id "
                              "(PostgreSQL) or token_cache (a postgresql:// URL or a file every worker shares)")
        m = self.config.meltano
        env = dict(os.environ if base is None else base)
        env.update({"MELTANO_DATABASE_URI": state_uri, "MELTANO_ENVIRONMENT": m.environment,
                    "MELTANO_SYS_DIR_ROOT": str(self.system_dir()), "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
                    "MELTANO_PROJECT_ROOT": str(Path(m.project_dir).resolve())})
        for key, value in self.tap_settings(api_conn, token_cache).items():
            env[env_name(m.extractor, key)] = env_value(value)
        for key, value in self.config.target_settings.items():
            env[env_name(m.loader, key)] = env_value(self.fill(value))
        return env

    def system_dir(self) -> Path:
        return Path(self.config.meltano.work_dir).resolve() / self.state_id_suffix / ".meltano"

    def prepare_system_dir(self) -> Path:
        """This job's ``.meltano``: its own ``run`` and ``logs``, the project's installed plugins linked in."""
        project_sys = Path(self.config.meltano.project_dir).resolve() / ".meltano"
        if not (project_sys / "extractors" / self.config.meltano.extractor).exists():
            raise ConfigError(f"{project_sys}: {self.config.meltano.extractor} is not installed; run `meltano "
                              "install` in the Meltano project on every worker")
        target = self.system_dir()
        target.mkdir(parents=True, exist_ok=True)
        for name in PLUGIN_DIRS:
            source, link = project_sys / name, target / name
            if source.exists() and not link.is_symlink():
                link.symlink_to(source, target_is_directory=True)
        return target


def _die_with_parent() -> None:
    """In the child before exec: its own session (a process group ``on_kill`` can stop) and SIGKILL when the
    task's process dies (Linux), so a killed task leaves no meltano running beside its retry."""
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the process group is still stopped by on_kill
        pass


def run_meltano(command: list[str], env: Mapping[str, str], cwd: str | Path,
                on_start: Callable[[subprocess.Popen[str]], None] | None = None,
                log: logging.Logger = logger) -> int:
    """Run ``command``, logging its output line by line; its exit code."""
    log.info("running %s in %s", " ".join(command), cwd)
    with subprocess.Popen(command, cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, bufsize=1,
                          preexec_fn=_die_with_parent) as proc:
        if on_start is not None:
            on_start(proc)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.info("%s", line.rstrip())
        return proc.wait()


def stop(proc: subprocess.Popen[str], grace: float = 30.0) -> None:
    """SIGTERM to the job's process group (meltano stops its tap and target), SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
