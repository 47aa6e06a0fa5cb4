"""``edfi-sandbox``: serve a local Ed-Fi ODS/API, take snapshots, change faults."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from pathlib import Path

import requests

from edfi_sandbox.config import API_VERSIONS, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

logger = logging.getLogger("edfi_sandbox")
ADMIN_ENV = "EDFI_SANDBOX_ADMIN_TOKEN"
#: where the sandbox says it listens and its admin token: shown whatever --log-level says
started = logging.getLogger("edfi_sandbox.started")
started.setLevel(logging.INFO)


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a sandbox Ed-Fi API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--api-version", choices=API_VERSIONS, default="7.3")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed a synthetic district of N students (with --spec: every resource of the documents that"
                        " can be generated, docs/seeding.md)")
    p.add_argument("--seed-value", type=int, default=0, help="random seed of the synthetic district")
    p.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    p.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET)
    p.add_argument("--client", action="append", default=[], metavar="ID:SECRET:CLAIMSET[:EDORG,...][:NAMESPACE]",
                   help="another API client with a claim set ('SIS Vendor', 'District Hosted SIS Vendor', 'Ed-Fi"
                        " Sandbox'), its education organization ids and namespace prefix, e.g."
                        " 'school:secret:SIS Vendor:255901001:uri://ed-fi.org' (repeatable; the --client-id client"
                        " keeps the Ed-Fi Sandbox claim set)")
    p.add_argument("--db", help="SQLite file to keep the data in (default: a temporary file)")
    p.add_argument("--spec", action="append", default=[], metavar="PATH",
                   help="serve the resources of this OpenAPI document (Swagger 2 or OpenAPI 3; repeatable)")
    p.add_argument("--forbid", action="append", default=[], metavar="PATH",
                   help="answer 403 for this resource, e.g. /ed-fi/staffs (repeatable)")
    p.add_argument("--profiles", metavar="FILE",
                   help='API profiles, JSON: {"Name": {"/ed-fi/students": ["firstName", ...]}}; read them with'
                        " Accept: application/vnd.ed-fi.student.name.readable+json")
    p.add_argument("--token-ttl", type=int, default=1800, help="bearer token lifetime in seconds")
    p.add_argument("--api-mode", choices=("sandbox", "year", "instance-year"), default="sandbox",
                   help="5.3/6.1 routing: year-specific and instance-year-specific URL segments")
    p.add_argument("--school-year", type=int)
    p.add_argument("--instance")
    p.add_argument("--tenant", help="7.x tenant route segment")
    p.add_argument("--context", help="7.x context route segment (e.g. a school year)")
    p.add_argument("--route-qualifiers", default="",
                   help="8.x (DMS) route qualifier values, comma separated (e.g. 255901,2024): /{tenant}/255901/2024")
    p.add_argument("--latency-ms", type=float, default=0.0, help="fixed latency added to every request")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="random extra latency, 0..N ms")
    for code in ("429", "500", "502", "503"):
        p.add_argument(f"--rate-{code}", type=float, default=0.0, help=f"fraction of requests answered {code}")
    p.add_argument("--rate-drop", type=float, default=0.0, help="fraction of connections dropped mid-response")
    p.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds of injected 429s")
    p.add_argument("--fault-seed", type=int)
    p.add_argument("--commit-delay-ms", type=float, default=0.0,
                   help="a write takes its change version, then commits (becomes visible) this much later, as when "
                        "a real ODS/API's transaction is still open")
    p.add_argument("--churn", type=float, default=0.0, metavar="PER_SEC",
                   help="update/delete random items at this rate while clients read")
    p.add_argument("--admin-token", default=os.environ.get(ADMIN_ENV),
                   help=f"the token the /_sandbox/* admin endpoints require (header X-Sandbox-Admin-Token; default "
                        f"${ADMIN_ENV}, else a random one, printed at start)")
    p.add_argument("--header-timeout", type=float, default=10.0, help="seconds for a request's headers (408)")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds for a request's body (408)")
    p.add_argument("--max-body-bytes", type=int, default=30_000_000, help="largest request body (413)")
    p.add_argument("--log-level", default="info")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edfi-sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    snap = sub.add_parser("snapshot", help="take a snapshot of a running sandbox")
    snap.add_argument("--url", default="http://127.0.0.1:8765", help="the sandbox's base URL")
    faults = sub.add_parser("faults", help="show or change the faults of a running sandbox")
    faults.add_argument("--url", default="http://127.0.0.1:8765")
    for admin_parser in (snap, faults):
        admin_parser.add_argument("--admin-token", default=os.environ.get(ADMIN_ENV),
                           help=f"the admin token the sandbox printed at start (default ${ADMIN_ENV})")
    faults.add_argument("settings", nargs="*", metavar="NAME=VALUE", help="e.g. rate_429=0.1 latency_ms=20")
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(getattr(args, "log_level", "info")).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command == "serve":
        return _serve(args)
    admin = {"X-Sandbox-Admin-Token": args.admin_token or ""}
    if args.command == "snapshot":
        resp = requests.post(args.url.rstrip("/") + "/_sandbox/snapshots", headers=admin, timeout=600)
        if not resp.ok:
            logger.error("POST %s/_sandbox/snapshots: HTTP %s %s", args.url.rstrip("/"), resp.status_code,
                         resp.text[:300])
            return 1
        sys.stdout.write(json.dumps(resp.json()) + "\n")
        return 0
    values = {}
    for item in args.settings:
        name, _, value = item.partition("=")
        values[name] = value
    resp = requests.put(args.url.rstrip("/") + "/_sandbox/faults", json=values, headers=admin, timeout=30)
    sys.stdout.write(resp.text + "\n")
    return 0 if resp.ok else 1


#: what the server needs beyond the plugins (the ``sandbox`` extra of edfi-singer)
SERVER_MODULES = ("starlette", "uvicorn", "httptools", "uvloop", "websockets", "watchfiles")


def _serve(args: argparse.Namespace) -> int:
    try:
        from edfi_sandbox.faults import FaultConfig
        from edfi_sandbox.server import Sandbox
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in SERVER_MODULES:
            raise
        logger.error("edfi-sandbox serve needs %s, which the plugins do not install: "
                     "pip install 'edfi-singer[sandbox]'", exc.name)
        return 2

    try:  # bind first: a port in use fails now, before seeding (uvicorn listens on the socket once it serves)
        sock = _bind(args.host, args.port)
    except OSError as exc:
        logger.error("cannot listen on %s:%s: %s", args.host, args.port, exc.strerror or exc)
        return 2
    faults = FaultConfig(
        latency_ms=args.latency_ms, jitter_ms=args.jitter_ms, rate_429=args.rate_429, rate_500=args.rate_500,
        rate_502=args.rate_502, rate_503=args.rate_503, rate_drop=args.rate_drop,
        retry_after=args.retry_after, seed=args.fault_seed, commit_delay_ms=args.commit_delay_ms,
    )
    try:
        sandbox = Sandbox(
            args.api_version, seed=args.seed, seed_value=args.seed_value, host=args.host,
            port=sock.getsockname()[1],
            db=args.db, specs=args.spec, faults=faults, log_level=args.log_level,
            client_id=args.client_id, client_secret=args.client_secret, token_ttl=args.token_ttl,
            api_mode=args.api_mode, school_year=args.school_year, instance=args.instance,
            tenant=args.tenant, context=args.context,
            route_qualifiers=tuple(q for q in args.route_qualifiers.split(",") if q), forbidden=frozenset(args.forbid),
            profiles=json.loads(Path(args.profiles).read_text()) if args.profiles else {},
            admin_token=args.admin_token, header_timeout=args.header_timeout, body_timeout=args.body_timeout,
            max_body_bytes=args.max_body_bytes, clients=tuple(args.client),
        )
    except (ValueError, OSError) as exc:
        sock.close()
        logger.error("cannot start the sandbox: %s", exc)
        return 2
    if args.churn:
        sandbox.start_churn(args.churn)
    def listening() -> None:  # printed once the server accepts connections, not before
        started.info("Ed-Fi sandbox %s listening on %s (client id %s); root payload at %s", args.api_version,
                     sandbox.base_url, args.client_id, sandbox.api_root + "/")
        started.info("admin endpoints /_sandbox/* need the header X-Sandbox-Admin-Token: %s", sandbox.admin_token)

    sandbox.serve_forever(sock, on_listening=listening)
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, not yet listening (connections are refused until the server serves)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


if __name__ == "__main__":
    sys.exit(main())
