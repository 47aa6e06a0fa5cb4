"""Example DAG: every Ed-Fi API of a state agency (tenants x school years) into one warehouse, in parallel.

The configuration is a JSON file named by ``$EDFI_AIRFLOW_CONFIG`` (an example: ``edfi_extract.example.json``
beside this file; every key: ``edfi_airflow/README.md``). Per API the DAG has one task per stream group, each a
``meltano run --state-id-suffix <api>.<group> tap-edfi <loader>`` with its own Meltano state in the shared system
database, in the API's pool ``edfi_<api>`` (create the pools with
``python -m edfi_airflow pools $EDFI_AIRFLOW_CONFIG > pools.json && airflow pools import pools.json``).
"""

from __future__ import annotations

import os
from pathlib import Path

from edfi_airflow.config import load_config
from edfi_airflow.dag import build_dag

CONFIG = os.environ.get("EDFI_AIRFLOW_CONFIG", str(Path(__file__).with_name("edfi_extract.example.json")))

dag = build_dag(load_config(CONFIG))
