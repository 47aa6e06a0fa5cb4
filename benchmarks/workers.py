"""Processes the benchmark runs and measures (each in its own interpreter).

``sink``
    A Singer sink: reads a tap's stdout line by line, JSON-parses every line, counts RECORD messages per stream
    and keeps the last STATE; writes a summary (JSON) at the end. What a target does before it does its own work.
``bare``
    The ceiling: a bare HTTP client (``http.client``, N threads, one keep-alive connection each) reading the
    same resource the cheapest way the API allows (7.3 cursor paging over ``/partitions``, else offset pages),
    counting the items of each page and keeping nothing. What any Python client could do at that concurrency on
    this machine and server.
``bare-load``
    The ceiling of a load: a bare HTTP client POSTing a lightbeam data directory in the API's dependency order
    (``/metadata/data/v3/dependencies``, descriptors first), one order group after the other, N threads with a
    keep-alive ``http.client`` connection each, nothing checked beyond the status. What any Python loader could
    do at that concurrency here.
``eac``
    ``edfi-api-client`` extracting resources the way its docs recommend (``get_rows``: change-version stepping
    with reverse offset paging, 500 rows a page), iterating every row; writes a summary (JSON).

    python benchmarks/workers.py sink --summary out.json < singer.jsonl
    python benchmarks/workers.py eac --base-url URL --resource /ed-fi/students --summary out.json
"""

from __future__ import annotations

import argparse
import http.client
import logging
import sys
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

CLIENT_ID, CLIENT_SECRET = "sandbox-client", "sandbox-secret"


def sink(args: argparse.Namespace) -> int:
    records: Counter[str] = Counter()
    lines = 0
    state: Any = None
    streams: set[str] = set()
    nbytes = 0
    started = time.perf_counter()
    for line in sys.stdin.buffer:
        lines += 1
        nbytes += len(line)
        message = orjson.loads(line)
        kind = message.get("type")
        if kind == "RECORD":
            records[message["stream"]] += 1
        elif kind == "STATE":
            state = message.get("value")
        elif kind == "SCHEMA":
            streams.add(message["stream"])
    summary = {"lines": lines, "bytes": nbytes, "records": sum(records.values()), "by_stream": dict(records),
               "schemas": sorted(streams), "state": state, "seconds": time.perf_counter() - started}
    Path(args.summary).write_bytes(orjson.dumps(summary))
    return 0


def eac(args: argparse.Namespace) -> int:
    from edfi_api_client import EdFiClient

    client = EdFiClient(args.base_url, CLIENT_ID, CLIENT_SECRET)
    client.connect()
    paths = list(args.resource or [])
    if not paths:  # every resource and every descriptor the API documents
        paths = [f"/{ns}/{name}" for ns, name in [*client.resources, *client.descriptors]]
    newest = client.get_newest_change_version()
    params = {"minChangeVersion": 0, "maxChangeVersion": newest}
    by_resource: dict[str, int] = {}
    for path in paths:
        namespace, name = path.strip("/").split("/")
        endpoint = (client.descriptor(name, namespace=namespace) if name.endswith("Descriptors")
                    else client.resource(name, namespace=namespace))
        if args.mode == "get_rows":  # the library's own choice: cursor paging on 7.3+, stepping before
            rows = endpoint.get_rows(params=params, page_size=args.page_size, step_change_version=True,
                                     reverse_paging=True)
        else:  # what get_rows does before 7.3, and what its docs recommend: stepping with reverse offset paging
            rows = (row for page in endpoint.get_pages(params=params, page_size=args.page_size,
                                                       step_change_version=True, reverse_paging=True)
                    for row in page)
        count = 0
        for row in rows:
            count += 1
            assert row["id"]
        by_resource[path] = count
    Path(args.summary).write_bytes(orjson.dumps({"rows": sum(by_resource.values()), "by_resource": by_resource,
                                                 "newest": newest}))
    return 0


def bare(args: argparse.Namespace) -> int:
    import msgspec
    import requests

    decode = msgspec.json.Decoder(list[msgspec.Raw]).decode
    base = args.base_url.rstrip("/")
    auth = requests.post(base + "/oauth/token", data={"grant_type": "client_credentials"},
                         auth=(CLIENT_ID, CLIENT_SECRET), timeout=60)
    auth.raise_for_status()
    headers = {"Authorization": f"Bearer {auth.json()['access_token']}"}
    url = f"{base}/data/v3{args.resource}"
    total = int(requests.get(url, params={"limit": 0, "totalCount": "true"}, headers=headers,
                             timeout=600).headers["Total-Count"])
    if args.cursor:
        number = max(1, min(200, -(-total // (args.page_size * 2))))
        parts = requests.get(url + "/partitions", params={"number": number}, headers=headers, timeout=600)
        parts.raise_for_status()
        work: list[Any] = list(parts.json()["pageTokens"])
    else:
        work = list(range(0, total, args.page_size))
    lock = threading.Lock()
    rows = [0]

    split = urllib.parse.urlsplit(url)

    def worker() -> None:
        conn = http.client.HTTPConnection(split.netloc, timeout=600)

        def get(params: dict[str, Any]) -> tuple[bytes, Any]:
            conn.request("GET", f"{split.path}?{urllib.parse.urlencode(params)}", headers=headers)
            resp = conn.getresponse()
            return resp.read(), resp.headers

        count = 0
        while True:
            with lock:
                if not work:
                    break
                item = work.pop()
            if args.cursor:
                token: str | None = item
                while token:
                    body, reply_headers = get({"pageToken": token, "pageSize": args.page_size})
                    page = decode(body)
                    count += len(page)
                    token = reply_headers.get("Next-Page-Token") if len(page) == args.page_size else None
            else:
                count += len(decode(get({"offset": item, "limit": args.page_size})[0]))
        with lock:
            rows[0] += count

    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    Path(args.summary).write_bytes(orjson.dumps({"rows": rows[0], "total": total}))
    return 0


def bare_load(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    import requests

    base = args.base_url.rstrip("/")
    auth = requests.post(base + "/oauth/token", data={"grant_type": "client_credentials"},
                         auth=(CLIENT_ID, CLIENT_SECRET), timeout=60)
    auth.raise_for_status()
    headers = {"Authorization": f"Bearer {auth.json()['access_token']}", "Content-Type": "application/json"}
    deps = requests.get(base + "/metadata/data/v3/dependencies", headers=headers, timeout=60).json()
    order: dict[str, int] = {}
    for item in deps:
        path = item["resource"]
        if "Create" in (item.get("operations") or ["Create"]) or path not in order:
            order[path] = min(order.get(path, item["order"]), item["order"])
    groups: dict[int, list[tuple[str, bytes]]] = {}
    for f in sorted(Path(args.data_dir).glob("*.jsonl")):
        path = f"/ed-fi/{f.stem}"
        rank = order.get(path, 0)  # descriptors (not listed) first
        groups.setdefault(rank, []).extend((path, line) for line in f.read_bytes().splitlines() if line.strip())
    local = threading.local()

    split = urllib.parse.urlsplit(base)

    def post(job: tuple[str, bytes]) -> int:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(split.netloc, timeout=600)
        conn.request("POST", f"{split.path}/data/v3{job[0]}", body=job[1], headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status

    statuses: Counter[int] = Counter()
    with ThreadPoolExecutor(args.threads) as pool:
        for rank in sorted(groups):
            statuses.update(pool.map(post, groups[rank]))
    Path(args.summary).write_bytes(orjson.dumps({"rows": sum(statuses.values()),
                                                 "statuses": {str(k): v for k, v in statuses.items()}}))
    return 0 if all(200 <= k < 300 for k in statuses) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sink")
    s.add_argument("--summary", required=True)
    e = sub.add_parser("eac")
    e.add_argument("--base-url", required=True)
    e.add_argument("--resource", action="append", help="/ns/name (repeatable); default: every resource")
    e.add_argument("--page-size", type=int, default=500)
    e.add_argument("--mode", choices=("stepping", "get_rows"), default="stepping")
    e.add_argument("--summary", required=True)
    b = sub.add_parser("bare")
    b.add_argument("--base-url", required=True)
    b.add_argument("--resource", required=True)
    b.add_argument("--page-size", type=int, default=500)
    b.add_argument("--threads", type=int, default=8)
    b.add_argument("--cursor", action="store_true", help="7.3 cursor paging over /partitions")
    b.add_argument("--summary", required=True)
    bl = sub.add_parser("bare-load")
    bl.add_argument("--base-url", required=True)
    bl.add_argument("--data-dir", required=True)
    bl.add_argument("--threads", type=int, default=8)
    bl.add_argument("--summary", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return {"sink": sink, "eac": eac, "bare": bare, "bare-load": bare_load}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
