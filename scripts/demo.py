"""The quickstart's main job: tap-edfi reads a seeded Ed-Fi sandbox into local JSONL files.

Starts an Ed-Fi ODS/API sandbox (7.3 by default) seeded with a synthetic district, runs
``tap-edfi`` against it into ``output/demo/`` (one ``<stream>.jsonl`` per stream, the latest row
per id, deleted rows marked with ``_sdc_deleted_at``, and ``state.json``), then changes a few
items in the API and runs the tap again from that state, and prints what was extracted.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from edfi_sandbox.server import Sandbox

logger = logging.getLogger("demo")
OUTPUT = Path("output") / "demo"


class JsonlTarget:
    """The smallest useful target: upserts by id into one JSONL file per stream."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tables: dict[str, dict[str, Any]] = {}
        self.state: dict[str, Any] | None = None
        self.received: dict[str, int] = {}

    def load(self) -> None:
        for path in self.folder.glob("*.jsonl"):
            self.tables[path.stem] = {}
            for line in path.read_bytes().splitlines():
                row = orjson.loads(line)
                self.tables[path.stem][row.get("id") or line.decode()] = row

    def consume(self, lines: bytes) -> None:
        for line in lines.splitlines():
            msg = orjson.loads(line)
            if msg["type"] == "SCHEMA":
                self.tables.setdefault(msg["stream"], {})
            elif msg["type"] == "RECORD":
                rec = msg["record"]
                key = rec.get("id") if "changeVersion" not in rec else f"{rec['id']}:{rec['changeVersion']}"
                self.tables.setdefault(msg["stream"], {})[key] = rec
                self.received[msg["stream"]] = self.received.get(msg["stream"], 0) + 1
            elif msg["type"] == "STATE":
                self.state = msg["value"]

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for stream, rows in self.tables.items():
            with (self.folder / f"{stream}.jsonl").open("wb") as fh:
                for row in rows.values():
                    fh.write(orjson.dumps(row) + b"\n")
        if self.state is not None:
            (self.folder / "state.json").write_text(json.dumps(self.state, indent=1))


def run_tap(config: dict[str, Any], state: dict[str, Any] | None) -> bytes:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    cfg = OUTPUT / "tap-config.json"
    cfg.write_text(json.dumps(config, indent=1))
    cmd = [str(Path(sys.executable).parent / "tap-edfi"), "--config", str(cfg)]
    if state:
        st = OUTPUT / "state-in.json"
        st.write_text(json.dumps(state))
        cmd += ["--state", str(st)]
    logger.info("running: %s", " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, check=True)  # the tap's log goes to this terminal
    return proc.stdout


def change_some_items(sb: Sandbox) -> None:
    """A night's worth of changes: updates and deletes, through the store's own rules."""
    churn = sb.start_churn(200, seed=1)
    time.sleep(1.0)
    sb.stop_churn()
    logger.info("changed the API: %d updates, %d deletes", churn.updates, churn.deletes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", type=int, default=500)
    parser.add_argument("--api-version", default="7.3")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    started = time.perf_counter()
    target = JsonlTarget(OUTPUT)
    with Sandbox(args.api_version, seed=args.students) as sb:
        logger.info("sandbox %s with %s students on %s (seeded in %.1fs)", args.api_version, args.students,
                    sb.base_url, time.perf_counter() - started)
        config = {"base_url": sb.api_root, "client_id": sb.client_id, "client_secret": sb.client_secret}
        target.consume(run_tap(config, None))
        first = dict(target.received)
        change_some_items(sb)
        target.received.clear()
        target.consume(run_tap(config, target.state))
        second = dict(target.received)
        expected = {res.path: sum(1 for _ in sb.store.iter_docs(res.path)) for res in sb.model}
    target.save()
    out = sys.stdout
    width = max(len(s) for s in target.tables)
    out.write(f"\ntap-edfi read an Ed-Fi ODS/API {args.api_version} sandbox into {OUTPUT}/\n")
    out.write(f"  {'stream':<{width}} {'1st run':>9} {'2nd run':>9} {'live rows':>10} {'deleted':>8}\n")
    for stream in sorted(target.tables):
        rows = target.tables[stream]
        deleted = sum(1 for r in rows.values() if r.get("_sdc_deleted_at"))
        if rows or first.get(stream) or second.get(stream):
            out.write(f"  {stream:<{width}} {first.get(stream, 0):>9,} {second.get(stream, 0):>9,} "
                      f"{len(rows) - deleted:>10,} {deleted:>8,}\n")
    live = sum(sum(1 for r in t.values() if not r.get("_sdc_deleted_at")) for n, t in target.tables.items()
               if not n.endswith("_key_changes"))
    out.write(f"  {'total':<{width}} {sum(first.values()):>9,} {sum(second.values()):>9,} {live:>10,}\n")
    verdict = "matches" if live == sum(expected.values()) else "DOES NOT match"
    out.write(f"the extracted live rows ({live:,}) {verdict} the API's items ({sum(expected.values()):,}); "
              f"done in {time.perf_counter() - started:.1f}s\nlook at {OUTPUT}/students.jsonl, "
              f"{OUTPUT}/state.json\n")
    return 0 if verdict == "matches" else 1


if __name__ == "__main__":
    sys.exit(main())
