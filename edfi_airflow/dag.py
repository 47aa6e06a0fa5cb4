"""The Airflow side: one task per (API, stream group), each a ``meltano run`` with its own state id.

``build_dag(load_config(path))`` gives the DAG; the example DAG file (``example_dags/edfi_extract.py``) does just
that with the file named by ``$EDFI_AIRFLOW_CONFIG``. Needs apache-airflow 3 (``airflow.sdk``).
"""

from __future__ import annotations

import logging
import subprocess
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, BaseHook, BaseOperator

from edfi_airflow.config import ConfigError, DagConfig
from edfi_airflow.meltano_job import ConnectionValues, MeltanoJob, postgres_uri, run_meltano, stop

logger = logging.getLogger(__name__)


def connection(conn_id: str) -> ConnectionValues:
    """An Airflow connection (from the workers' secrets: environment ``AIRFLOW_CONN_*``, a secrets backend or the
    metadata database)."""
    conn = BaseHook.get_connection(conn_id)
    return ConnectionValues(conn_id, conn.host, conn.port, conn.schema, conn.login, conn.password,
                            dict(conn.extra_dejson or {}), conn.conn_type)


def state_database_uri(config: DagConfig) -> str:
    import os

    if config.state_database_conn_id:
        return postgres_uri(connection(config.state_database_conn_id), "postgresql+psycopg")
    uri = config.state_database_uri or os.environ.get("MELTANO_DATABASE_URI", "")
    if not uri:
        raise ConfigError("no system database for Meltano's state: set the DAG's state_database_conn_id (an Airflow "
                          "connection to PostgreSQL) or MELTANO_DATABASE_URI on the workers")
    return uri


def token_cache(config: DagConfig) -> str:
    if config.token_cache_conn_id:
        return postgres_uri(connection(config.token_cache_conn_id))
    return config.token_cache or ""


class MeltanoSystemDbOperator(BaseOperator):
    """Brings Meltano's system database to its schema once per DAG run, before the jobs (every ``meltano`` command
    would otherwise migrate it, and parallel first runs would race)."""

    def __init__(self, *, edfi_config: DagConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.edfi_config = edfi_config

    def execute(self, context: Any) -> None:
        import os

        m = self.edfi_config.meltano
        env = {**os.environ, "MELTANO_DATABASE_URI": state_database_uri(self.edfi_config),
               "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false"}
        code = run_meltano([m.executable, "upgrade", "database"], env, m.project_dir, log=self.log)
        if code != 0:
            raise RuntimeError(f"meltano upgrade database exited {code}: see the lines above")


class MeltanoRunOperator(BaseOperator):
    """``meltano run --state-id-suffix <api>.<group> <extractor> <loader>`` for one API and stream group."""

    template_fields = ()

    def __init__(self, *, job: MeltanoJob, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job = job
        self._proc: subprocess.Popen[str] | None = None

    def execute(self, context: Any) -> None:
        job = self.job
        ti = context["ti"]
        force = int(ti.try_number) > 1  # the crashed try's job row still says running
        env = job.environment(connection(job.api.conn_id), state_database_uri(job.config), token_cache(job.config))
        job.prepare_system_dir()
        self.log.info("API %s, group %s (%s), state id %s, try %s", job.api.id, job.group.name,
                      "the rest" if job.group.rest else f"{len(job.group.resources)} resources", job.state_id,
                      ti.try_number)

        def started(proc: subprocess.Popen[str]) -> None:
            self._proc = proc

        code = run_meltano(job.command(force=force), env, job.config.meltano.project_dir, on_start=started,
                           log=self.log)
        if code != 0:
            raise RuntimeError(f"meltano run for API {job.api.id}, group {job.group.name} (state id {job.state_id}) "
                               f"exited {code}: see the lines above; a retry resumes from the state it saved")

    def on_kill(self) -> None:
        if self._proc is not None:
            stop(self._proc)


def build_dag(config: DagConfig, **dag_kwargs: Any) -> DAG:
    """The DAG: ``meltano_systemdb``, then one :class:`MeltanoRunOperator` per (API, group), in the API's pool."""
    defaults = {"retries": config.retries, "retry_delay": timedelta(seconds=config.retry_delay_seconds)}
    if config.execution_timeout_seconds:
        defaults["execution_timeout"] = timedelta(seconds=float(config.execution_timeout_seconds))
    with DAG(dag_id=config.dag_id, schedule=config.schedule, catchup=False, tags=list(config.tags),
             default_args=defaults, max_active_runs=1, **dag_kwargs) as dag:
        systemdb = MeltanoSystemDbOperator(task_id="meltano_systemdb", edfi_config=config, retries=1)
        for api, group in config.job_names():
            job = MeltanoJob(config, api, group)
            task = MeltanoRunOperator(task_id=job.task_id, job=job, pool=api.pool, pool_slots=1,
                                      doc_md=f"Ed-Fi API `{api.id}` (connection `{api.conn_id}`), stream group "
                                             f"`{group.name}`; Meltano state id `{job.state_id}`.")
            systemdb >> task
    return dag
