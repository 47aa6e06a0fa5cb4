"""tap-edfi at scale on Apache Airflow 3: parallel Meltano jobs, one per (API, stream group).

:mod:`edfi_airflow.config` reads the DAG's configuration, :mod:`edfi_airflow.meltano_job` builds and runs one job,
:mod:`edfi_airflow.dag` (the only module that imports Airflow) makes the DAG. See ``edfi_airflow/README.md``.
"""
