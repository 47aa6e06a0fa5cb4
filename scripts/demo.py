"""The quickstart's main job: ``meltano run tap-edfi target-duckdb`` from a seeded Ed-Fi sandbox into DuckDB.

Starts an Ed-Fi ODS/API sandbox (7.3 by default) seeded with a synthetic district, runs the pipeline of this
repo's ``meltano.yml`` (``meltano run --full-refresh tap-edfi target-duckdb``) into the embedded warehouse
``output/demo/warehouse.duckdb``, changes some items in the API (updates and deletes), runs
``meltano run tap-edfi target-duckdb`` again from the state Meltano kept, and prints the rows per table
(checked against the API's items) and one SQL query over the warehouse: students per grade level.
Exits 1 when a table does not hold what the API holds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edfi_sandbox.server import Sandbox

logger = logging.getLogger("demo")
REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "output" / "demo"
WAREHOUSE = OUTPUT / "warehouse.duckdb"
MELTANO = REPO / ".venv-meltano" / "bin" / "meltano"
#: the Python of target-duckdb's venv (what `meltano install` made): the DuckDB that wrote the file reads it
DUCKDB_PYTHON = REPO / ".meltano" / "loaders" / "target-duckdb" / "venv" / "bin" / "python"
STATE_ID = "dev:tap-edfi-to-target-duckdb"
SCHEMA = "edfi"
GRADE_QUERY = f"""
SELECT replace(entryGradeLevelDescriptor, 'uri://ed-fi.org/GradeLevelDescriptor#', '') AS grade_level,
       count(DISTINCT studentReference->>'studentUniqueId') AS students
FROM {SCHEMA}.studentSchoolAssociations
WHERE _sdc_deleted_at IS NULL
GROUP BY ALL ORDER BY students DESC, grade_level
""".strip()
#: run with target-duckdb's Python: rows per table (live, marked deleted) and the query's rows, as JSON
QUERY_SCRIPT = """
import json, sys
import duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
tables = {}
for (name,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
                           [sys.argv[2]]).fetchall():
    live, deleted = con.execute(f'SELECT count(*) FILTER (WHERE _sdc_deleted_at IS NULL), '
                                f'count(*) FILTER (WHERE _sdc_deleted_at IS NOT NULL) FROM {sys.argv[2]}."{name}"'
                                ).fetchall()[0]
    tables[name] = [live, deleted]
print(json.dumps({"tables": tables, "query": con.execute(sys.argv[3]).fetchall()}))
"""


def meltano(args: list[str], env: dict[str, str], log: Path) -> tuple[float, str]:
    """Run meltano in the repo; its log goes to ``log``. Fails naming the log's last lines."""
    started = time.perf_counter()
    logger.info("running: meltano %s (log: %s)", " ".join(args), log.relative_to(REPO))
    proc = subprocess.run([str(MELTANO), *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False)
    log.write_text(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise SystemExit(f"meltano {' '.join(args)} failed (exit {proc.returncode}); the end of {log}:\n{tail}")
    return time.perf_counter() - started, proc.stdout


def loaded_rows(meltano_log: str) -> int:
    """Rows target-duckdb loaded in a run (its ``Loading N rows into ...`` lines)."""
    return sum(int(n) for n in re.findall(r"Loading (\d+) rows into", meltano_log))


def change_some_items(sb: Sandbox) -> tuple[int, int]:
    """A night's worth of changes: updates and deletes, through the store's own rules."""
    churn = sb.start_churn(200, seed=1)
    time.sleep(1.0)
    sb.stop_churn()
    return churn.updates, churn.deletes


def warehouse() -> dict[str, Any]:
    proc = subprocess.run([str(DUCKDB_PYTHON), "-c", QUERY_SCRIPT, str(WAREHOUSE), SCHEMA, GRADE_QUERY],
                          capture_output=True, text=True, check=True, timeout=120)
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", type=int, default=500)
    parser.add_argument("--api-version", default="7.3")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for path in (MELTANO, DUCKDB_PYTHON):
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `make demo` (it runs `make meltano`, which installs meltano "
                             "and the plugins of meltano.yml)")
    started = time.perf_counter()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    WAREHOUSE.unlink(missing_ok=True)
    with Sandbox(args.api_version, seed=args.students) as sb:
        logger.info("sandbox %s with %s students on %s (seeded in %.1fs)", args.api_version, args.students,
                    sb.base_url, time.perf_counter() - started)
        env = {**os.environ, "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
               "TAP_EDFI_BASE_URL": sb.api_root, "TAP_EDFI_CLIENT_ID": sb.client_id,
               "TAP_EDFI_CLIENT_SECRET": sb.client_secret, "TARGET_DUCKDB_PATH": str(WAREHOUSE),
               "TARGET_DUCKDB_DEFAULT_TARGET_SCHEMA": SCHEMA}
        first_s, first_log = meltano(["run", "--full-refresh", "tap-edfi", "target-duckdb"], env,
                                     OUTPUT / "meltano-run-1.log")
        updates, deletes = change_some_items(sb)
        logger.info("changed the API: %d updates, %d deletes", updates, deletes)
        second_s, second_log = meltano(["run", "tap-edfi", "target-duckdb"], env, OUTPUT / "meltano-run-2.log")
        expected = {res.name: sum(1 for _ in sb.store.iter_docs(res.path)) for res in sb.model}
    _, state_out = meltano(["state", "get", STATE_ID], env, OUTPUT / "meltano-state.log")
    state = json.loads(state_out[state_out.index("{"):])
    result = warehouse()
    tables: dict[str, list[int]] = result["tables"]
    out = sys.stdout
    out.write(f"\nmeltano run tap-edfi target-duckdb: an Ed-Fi ODS/API {args.api_version} sandbox into "
              f"{WAREHOUSE.relative_to(REPO)}\n"
              f"  1st run (--full-refresh): {loaded_rows(first_log):>7,} rows in {first_s:.1f}s\n"
              f"  changed the API: {updates} updates, {deletes} deletes\n"
              f"  2nd run (from Meltano's state {STATE_ID}): {loaded_rows(second_log):,} rows in {second_s:.1f}s\n\n")
    width = max(len(name) for name in expected)
    out.write(f"  {'table':<{width}} {'rows':>8} {'deleted':>8} {'API items':>10}\n")
    wrong = []
    for name in sorted(expected):
        live, deleted = tables.get(name.lower(), [0, 0])
        flag = "" if live == expected[name] else "   <- DOES NOT match the API"
        if flag:
            wrong.append(name)
        out.write(f"  {name:<{width}} {live:>8,} {deleted:>8,} {expected[name]:>10,}{flag}\n")
    live_total = sum(tables.get(name.lower(), [0, 0])[0] for name in expected)
    out.write(f"  {'total':<{width}} {live_total:>8,} {'':>8} {sum(expected.values()):>10,}\n\n")
    out.write(f"{GRADE_QUERY};\n")
    out.write("".join(f"  {grade:<16} {students:>5}\n" for grade, students in result["query"]))
    students = state.get("singer_state", state).get("bookmarks", {}).get("students", {})
    out.write(f"\nMeltano's state of students: {json.dumps(students)}\n")
    verdict = f"{len(wrong)} tables DO NOT match the API: {', '.join(wrong)}" if wrong else \
        "every table holds the API's items"
    out.write(f"{verdict}; done in {time.perf_counter() - started:.1f}s\n"
              f"look at it: {DUCKDB_PYTHON.relative_to(REPO)} -c \"import duckdb; "
              f"print(duckdb.connect('{WAREHOUSE.relative_to(REPO)}').sql('FROM {SCHEMA}.students LIMIT 5'))\"\n")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
