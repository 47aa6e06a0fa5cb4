"""Data sets for the load benchmarks, read from a seeded sandbox over HTTP and kept in the cache directory.

A load data set is a set of Ed-Fi payloads (server fields removed: ``id``, ``_etag``, ``_lastModifiedDate``,
reference ``link``s, a descriptor's integer id) written twice, with the same records in both:

* ``lightbeam/<resource>.jsonl``: one file per endpoint, what ``lightbeam send`` reads;
* ``singer.jsonl``: a SCHEMA message per stream (the schema ``tap-edfi --discover`` gives the resource, no key
  properties, so target-edfi keys records by their natural key) followed by its RECORD messages, what
  ``target-edfi`` reads on stdin.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from harness import BIN, CLIENT_ID, CLIENT_SECRET, SandboxProcess

from edfi_core.openapi import without_server_fields

logger = logging.getLogger("bench.datasets")

#: Resources nothing else refers to, trimmed (by the same fraction) to bring a data set to an exact size.
LEAVES = ("/ed-fi/studentSchoolAttendanceEvents", "/ed-fi/studentSectionAttendanceEvents", "/ed-fi/grades")


def payload(path: str, item: dict[str, Any]) -> dict[str, Any]:
    doc = without_server_fields(item)
    if path.endswith("Descriptors"):  # the integer {name}DescriptorId is the server's, never sent
        doc = {k: v for k, v in doc.items() if not (k.endswith("DescriptorId") and isinstance(v, int))}
    return doc


def iter_items(sandbox: SandboxProcess, path: str, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Every item of a resource, in offset order, 500 at a time (prep only: not measured)."""
    offset = 0
    while limit is None or offset < limit:
        page = orjson.loads(sandbox.get(f"/data/v3{path}", {"offset": offset, "limit": 500}).content)
        yield from page[: None if limit is None else limit - offset]
        if len(page) < 500:
            return
        offset += 500


def discover_schemas(sandbox: SandboxProcess, workdir: Path) -> dict[str, dict[str, Any]]:
    """Stream name -> JSON schema, from ``tap-edfi --discover`` against the sandbox."""
    cfg = workdir / "discover-config.json"
    cfg.write_bytes(orjson.dumps({"base_url": sandbox.base_url, "client_id": CLIENT_ID,
                                  "client_secret": CLIENT_SECRET}))
    out = subprocess.run([str(BIN / "tap-edfi"), "--config", str(cfg), "--discover"], capture_output=True,
                         check=True, timeout=600)
    catalog = orjson.loads(out.stdout)
    return {s["tap_stream_id"]: s["schema"] for s in catalog["streams"]}


def stream_name(path: str) -> str:
    return path.rsplit("/", 1)[1]


def write_dataset(dest: Path, items: dict[str, list[dict[str, Any]]], schemas: dict[str, dict[str, Any]]) -> dict:
    """Write ``items`` (resource path -> payloads) as a lightbeam data dir and a Singer file."""
    lb = dest / "lightbeam"
    lb.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with open(dest / "singer.jsonl", "wb") as singer:
        for path in sorted(items):
            docs = items[path]
            if not docs:
                continue
            name = stream_name(path)
            counts[path] = len(docs)
            with open(lb / f"{name}.jsonl", "wb") as fh:
                fh.writelines(orjson.dumps(doc) + b"\n" for doc in docs)
            schema = schemas.get(name) or {"type": "object", "properties": {}}
            singer.write(orjson.dumps({"type": "SCHEMA", "stream": name, "schema": schema, "key_properties": []})
                         + b"\n")
            singer.writelines(orjson.dumps({"type": "RECORD", "stream": name, "record": doc}) + b"\n"
                              for doc in docs)
    info = {"records": sum(counts.values()), "by_resource": counts}
    (dest / "dataset.json").write_bytes(orjson.dumps(info))
    return info


def district_dataset(sandbox: SandboxProcess, dest: Path, records: int) -> dict:
    """``records`` payloads of a whole seeded district (every resource and descriptor it has), cut to size by
    leaving out items of resources nothing refers to; loads into an empty API in dependency order."""
    done = dest / "dataset.json"
    if done.exists():
        return orjson.loads(done.read_bytes())
    dest.mkdir(parents=True, exist_ok=True)
    items = {path: [payload(path, item) for item in iter_items(sandbox, path)] for path in sandbox.resource_paths()}
    total = sum(len(v) for v in items.values())
    if total < records:
        raise RuntimeError(f"the district has {total} items, fewer than the {records} records asked for: "
                           "seed more students")
    excess = total - records
    leaves = {leaf: len(items.get(leaf, [])) for leaf in LEAVES}
    if excess > sum(leaves.values()):
        raise RuntimeError(f"cannot trim the district to {records} records with leaf resources only: "
                           "seed fewer students")
    keep = 1 - excess / max(1, sum(leaves.values()))  # every leaf resource cut by the same fraction
    kept = {leaf: int(n * keep) for leaf, n in leaves.items()}
    kept[LEAVES[0]] += sum(leaves.values()) - excess - sum(kept.values())
    for leaf, n in kept.items():
        if leaf in items:
            items[leaf] = items[leaf][:n]
    info = write_dataset(dest, items, discover_schemas(sandbox, dest))
    logger.info("load data set: %d records of %d resources in %s", info["records"], len(info["by_resource"]), dest)
    return info


def resource_dataset(sandbox: SandboxProcess, dest: Path, path: str, sizes: list[int]) -> dict[int, Path]:
    """Singer files of the first N items of one resource, for each N in ``sizes`` (loaded into a copy of the
    database they came from, whose references they all find)."""
    out = {n: dest / f"singer-{n}.jsonl" for n in sizes}
    if all(p.exists() for p in out.values()):
        return out
    dest.mkdir(parents=True, exist_ok=True)
    name = stream_name(path)
    schema = discover_schemas(sandbox, dest).get(name) or {"type": "object", "properties": {}}
    head = orjson.dumps({"type": "SCHEMA", "stream": name, "schema": schema, "key_properties": []}) + b"\n"
    files = {n: open(out[n].with_suffix(".tmp"), "wb") for n in sizes}  # noqa: SIM115  # closed below
    try:
        for fh in files.values():
            fh.write(head)
        for i, item in enumerate(iter_items(sandbox, path, max(sizes))):
            line = orjson.dumps({"type": "RECORD", "stream": name, "record": payload(path, item)}) + b"\n"
            for n, fh in files.items():
                if i < n:
                    fh.write(line)
    finally:
        for fh in files.values():
            fh.close()
    for n in sizes:
        out[n].with_suffix(".tmp").rename(out[n])
    return out
