"""``python -m edfi_airflow pools CONFIG``: the pools the DAG of CONFIG uses, for ``airflow pools import``;
``python -m edfi_airflow jobs CONFIG``: its tasks and their Meltano state ids."""

from __future__ import annotations

import argparse
import json
import sys

from edfi_airflow.config import ConfigError, load_config
from edfi_airflow.meltano_job import MeltanoJob


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edfi_airflow", description=__doc__)
    parser.add_argument("what", choices=("pools", "jobs"))
    parser.add_argument("config", help="the DAG's JSON configuration")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if args.what == "pools":
        out: object = config.pools()
    else:
        out = [{"task_id": job.task_id, "pool": job.api.pool, "state_id": job.state_id,
                "resources": list(job.group.resources), "rest": job.group.rest}
               for job in (MeltanoJob(config, api, group) for api, group in config.job_names())]
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
