"""The sandbox ODS/API as an ASGI application."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.concurrency import run_in_threadpool

from edfi_core.dependencies import dependency_graph, dependency_items, graphml
from edfi_core.openapi import ApiModel, Resource
from edfi_sandbox.auth import OAuthError, TokenRegistry, TooManyTokens
from edfi_sandbox.authorization import AuthorizationDenied, ClientScope
from edfi_sandbox.config import SandboxConfig
from edfi_sandbox.errors import error_body
from edfi_sandbox.faults import FaultInjector
from edfi_sandbox.routing import Layout, Route, root_payload
from edfi_sandbox.store import Snapshot, Store, StoreError
from edfi_sandbox.validation import Validators

logger = logging.getLogger(__name__)

MAX_PAGE = 500
#: integer query parameters bind to C# ``int?`` (offset, limit, pageSize) or ``long?`` (change versions) in the
#: ODS/API (EdFi.Ods.Common/Models/Queries/UrlQueryParametersRequest.cs): a value outside is a binding error (400)
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
ADMIN_HEADER = "x-sandbox-admin-token"
PROFILE_MEDIA = re.compile(r"application/vnd\.ed-fi\.([A-Za-z0-9]+)\.([^.;,\s]+)\.readable\+json")
CHANGE_SUFFIXES = ("deletes", "keyChanges", "partitions")
#: query parameters every collection binds (UrlQueryParametersRequest and friends); ASP.NET Core model binding
#: matches their names case-insensitively, like the resource's own filter parameters
STANDARD_PARAMS = ("offset", "limit", "totalCount", "minChangeVersion", "maxChangeVersion", "pageToken", "pageSize",
                   "number", "q", "fields", "version")
WRITE_METHODS = frozenset({"POST", "PUT", "DELETE"})


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = "application/json; charset=utf-8"


class HttpError(Exception):
    def __init__(self, status: int, kind: str, message: str, errors: dict[str, list[str]] | None = None,
                 extra: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.errors, self.extra = status, kind, message, errors, extra


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    client_id: str | None = None  # the authenticated client (set by _authorize)


def encode_token(low: int, high: int) -> str:
    return base64.urlsafe_b64encode(f"{low},{high}".encode()).decode().rstrip("=")


def decode_token(token: str) -> tuple[int, int]:
    padded = token + "=" * (-len(token) % 4)
    low, high = base64.urlsafe_b64decode(padded.encode()).decode().split(",")
    return int(low), int(high)


class SandboxApp:
    """ASGI callable serving one Ed-Fi API over a :class:`Store`."""

    def __init__(self, store: Store, config: SandboxConfig, faults: FaultInjector | None = None) -> None:
        self.store = store
        self.model: ApiModel = store.model
        self.config = config
        store.api_version = config.api_version
        self.layout = Layout(config)
        self.faults = faults or FaultInjector()
        clients = {config.client_id: config.client_secret, **config.extra_clients}
        # authorization: one scope per client; the default and extra clients have the Ed-Fi Sandbox claim set
        self.scopes: dict[str, ClientScope] = {}
        for spec in config.clients:
            clients[spec.client_id] = spec.secret
            self.scopes[spec.client_id] = ClientScope(spec, self.model, store._tables, config.api_version)
        self.tokens = TokenRegistry(
            clients, config.token_ttl, config.max_tokens_per_client if config.api_version >= "7.3" else None
        )
        self.validators = Validators(config.api_version)
        self.admin_token = config.admin_token or secrets.token_urlsafe(18)
        self.requests = 0
        self.requests_by_area: dict[str, int] = {}
        self._doc_cache: dict[tuple[str, str, bool], bytes] = {}
        self._deps_cache: dict[str, bytes] = {}
        self._paths_lower: dict[str, str] | None = None
        self._param_names: dict[str, dict[str, str]] = {}
        self._suffixes = {s.lower(): s for s in CHANGE_SUFFIXES}
        store.commit_delay = lambda: self.faults.config.commit_delay_ms / 1000.0

    # -- ASGI ----------------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = await self._read_body(receive, send, headers)
        if body is None:
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        req = Request(scope["method"].upper(), scope["path"], query, headers, body)
        base = self._base_url(scope, headers)
        route = self.layout.match(req.path)
        fault = None
        if route is not None and route.area != "admin":
            self.requests += 1
            self.requests_by_area[route.area] = self.requests_by_area.get(route.area, 0) + 1
            delay = self.faults.delay()
            if delay:
                await asyncio.sleep(delay)
            fault = self.faults.pick()
        if fault == "drop":
            await self._drop(send)
            return
        if fault is not None:
            reply = self._fault_reply(int(fault))
        elif route is None:
            reply = self._error(404, "not-found", "The specified resource could not be found.")
        else:
            try:
                reply = await self._dispatch(route, req, base)
            except HttpError as exc:
                reply = self._error(exc.status, exc.kind, exc.message, exc.errors, exc.extra)
            except StoreError as exc:
                reply = self._error(exc.status, exc.kind, exc.message, exc.errors or None)
            except Exception:  # a sandbox bug must look like a server error, not a dropped socket
                logger.exception("unhandled error for %s %s", req.method, req.path)
                reply = self._error(500, "system", "An unexpected problem has occurred.")
        await self._send(send, reply)

    async def _read_body(self, receive: Callable, send: Callable, headers: dict[str, str]) -> bytes | None:
        """The request body, read in linear time (chunks joined once) within a size limit and a deadline.

        None when the request was answered here: 413 over ``max_body_bytes`` (from Content-Length before reading,
        or while reading a chunked body), 408 when the body does not arrive within ``body_timeout``; both close
        the connection (the rest of the body is not read).
        """
        limit = self.config.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self._send(send, self._limit_reply(413))
            return None
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                await self._send(send, self._limit_reply(408))
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    await self._send(send, self._limit_reply(413))
                    return None
                chunks.append(chunk)
            if not message.get("more_body"):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    def _limit_reply(status: int) -> Reply:
        """413 or 408 without a body (as Kestrel answers them), closing the connection."""
        return Reply(status, b"", {"Connection": "close"}, content_type=None)

    @staticmethod
    def _base_url(scope: dict, headers: dict[str, str]) -> str:
        host = headers.get("host")
        if not host:
            server = scope.get("server") or ("127.0.0.1", 80)
            host = f"{server[0]}:{server[1]}"
        return f"{scope.get('scheme', 'http')}://{host}"

    @staticmethod
    async def _send(send: Callable, reply: Reply) -> None:
        headers = [(b"content-length", str(len(reply.body)).encode())]
        if reply.content_type and (reply.body or reply.status >= 400):
            headers.append((b"content-type", reply.content_type.encode()))
        headers += [(k.lower().encode(), v.encode("latin-1")) for k, v in reply.headers.items()]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    @staticmethod
    async def _drop(send: Callable) -> None:
        """A connection that dies mid-response: headers promise more body than is sent."""
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"4096"), (b"content-type", b"application/json")],
        })
        await send({"type": "http.response.body", "body": b'[{"id": "', "more_body": False})

    def _fault_reply(self, status: int) -> Reply:
        if status == 429:
            reply = self._error(429, "throttled", "Too many requests.")
            reply.headers["Retry-After"] = str(self.faults.config.retry_after)
            return reply
        messages = {500: "An unexpected problem has occurred.", 502: "Bad Gateway", 503: "Service Unavailable"}
        if status == 500:
            return self._error(500, "system", messages[500])
        return Reply(status, f"<html><body><h1>{status} {messages[status]}</h1></body></html>".encode(),
                     content_type="text/html")

    def _error(self, status: int, kind: str, message: str, errors: dict[str, list[str]] | None = None,
               extra: list[str] | None = None) -> Reply:
        if status == 401 and not self.config.problem_details:
            # before 7.2 an unauthenticated request gets a bare challenge
            return Reply(401, b"", {"WWW-Authenticate": 'Bearer error="invalid_token"'}, content_type=None)
        body, ctype = error_body(self.config.problem_details, status, kind, message, errors, extra)
        return Reply(status, body, content_type=ctype)

    # -- dispatch ------------------------------------------------------------------------------
    async def _dispatch(self, route: Route, req: Request, base: str) -> Reply:
        area = route.area
        if area == "root":
            return self._json(root_payload(self.config, self.layout, base))
        if area == "oauth":
            return self._oauth(req)
        if area == "token_info":
            return self._token_info(req)
        if area == "metadata_list":
            return self._metadata_list(base)
        if area == "metadata_doc":
            return await run_in_threadpool(self._metadata_doc, route.rest.lower(), base,
                                           req.query.get("version") == "2")
        if area == "metadata_changes":
            from edfi_sandbox.specgen import change_queries_document

            url = f"{base}{self.layout.root}/changeQueries/v1{self.layout.segment}"
            return self._json(change_queries_document(self.config.api_version, url))
        if area == "dependencies":
            return self._dependencies(req)
        if area == "admin":
            given = req.headers.get(ADMIN_HEADER, "")
            if not secrets.compare_digest(given.encode(), self.admin_token.encode()):
                return Reply(401, orjson.dumps({
                    "message": "The sandbox admin endpoints (/_sandbox/*) need the admin token the sandbox printed "
                               "at start, in the X-Sandbox-Admin-Token header."}))
            return await run_in_threadpool(self._admin, route.rest, req)
        self._authorize(req)
        if area == "changes":
            return await run_in_threadpool(self._changes, route.rest, req)
        if area == "data":
            if req.method in WRITE_METHODS and not self.faults.config.commit_delay_ms:
                # writes are serialized on the store's one writer anyway and take well under a millisecond:
                # run on the event loop, sparing two thread hand-offs a request (reads, which can be long and
                # run concurrently on their own connections, go to the thread pool)
                return self._data(route.rest, req, base)
            return await run_in_threadpool(self._data, route.rest, req, base)
        raise HttpError(404, "not-found", "The specified resource could not be found.")

    @staticmethod
    def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return Reply(status, orjson.dumps(value), headers or {})

    # -- oauth -----------------------------------------------------------------------------------
    def _oauth(self, req: Request) -> Reply:
        if req.method != "POST":
            raise HttpError(405, "method-not-allowed", "The request method is not allowed.")
        ctype = req.headers.get("content-type", "")
        form: dict[str, str] = {}
        try:
            if "json" in ctype:
                parsed = orjson.loads(req.body or b"{}")
                form = {k: str(v) for k, v in parsed.items()} if isinstance(parsed, dict) else {}
            else:
                form = dict(parse_qsl(req.body.decode("utf-8"), keep_blank_values=True))
        except (orjson.JSONDecodeError, UnicodeDecodeError):
            return Reply(400, orjson.dumps({"error": "invalid_request"}))
        try:
            client_id, _ = self.tokens.authenticate(form, req.headers.get("authorization"))
            token = self.tokens.issue(client_id)
        except OAuthError as exc:
            return Reply(exc.status, orjson.dumps(exc.body()))
        except TooManyTokens:
            # EdFi.Ods.Common/Exceptions/TooManyTokensException.cs (v7.3.2); no Retry-After
            return self._error(
                429, "security:authentication:too-many-tokens",
                "The caller has authenticated too many times in too short of a time period.",
                extra=[f"Too many access tokens have been requested (limit is {self.config.max_tokens_per_client})."
                       " Access tokens should be reused until they expire."],
            )
        body = {"access_token": token.value, "expires_in": self.config.token_ttl, "token_type": "bearer"}
        if form.get("scope"):
            body["scope"] = form["scope"]
        return Reply(200, orjson.dumps(body), {"Cache-Control": "no-store"})

    def _token_info(self, req: Request) -> Reply:
        """Token introspection (``/oauth/token_info``): JSON or form body with ``token``."""
        if req.method != "POST":
            raise HttpError(405, "method-not-allowed", "The request method is not allowed.")
        try:
            if "json" in req.headers.get("content-type", ""):
                parsed = orjson.loads(req.body or b"{}")
                form = parsed if isinstance(parsed, dict) else {}
            else:
                form = dict(parse_qsl(req.body.decode("utf-8", "replace")))
        except orjson.JSONDecodeError:
            form = {}
        token = self.tokens.check("Bearer " + str(form.get("token", "")))
        if token is None:
            return self._json({"active": False})
        scope = self.scopes.get(token.client_id)
        return self._json({
            "active": True,
            "client_id": token.client_id,
            "namespace_prefixes": list(scope.spec.namespaces) if scope else ["uri://ed-fi.org"],
            "education_organizations": (
                [{"education_organization_id": e} for e in scope.spec.education_organizations] if scope else []),
            "assigned_profiles": [],
            "claim_set": {"name": scope.spec.claim_set if scope else "SIS Vendor"},
        })

    def _authorize(self, req: Request) -> None:
        header = req.headers.get("authorization")
        token = self.tokens.check(header)
        if token is not None:
            req.client_id = token.client_id
            return
        errors = ["Authorization header is missing."] if not header else ["Invalid Authorization header."]
        raise HttpError(401, "security:authentication", "The caller could not be authenticated.", extra=errors)

    # -- metadata ----------------------------------------------------------------------------------
    def _metadata_list(self, base: str) -> Reply:
        return self._json([
            {"name": "Descriptors", "endpointUri": self.layout.metadata_doc_url(base, "descriptors"),
             "prefix": ""},
            {"name": "Resources", "endpointUri": self.layout.metadata_doc_url(base, "resources"), "prefix": ""},
        ])

    def _metadata_doc(self, name: str, base: str, swagger2: bool) -> Reply:
        key = (name, base, swagger2)
        cached = self._doc_cache.get(key)
        if cached is None:
            from edfi_sandbox.specgen import served_documents

            docs = served_documents(
                self.model, self.config.api_version, self.layout.data_url(base), self.layout.oauth_url(base),
                swagger2=True if swagger2 else None,
            )
            for doc_name, doc in docs.items():
                self._doc_cache[(doc_name, base, swagger2)] = orjson.dumps(doc)
            cached = self._doc_cache[key]
        return Reply(200, cached)

    def _dependencies(self, req: Request) -> Reply:
        accept = req.headers.get("accept", "")
        kind = "graphml" if "graphml" in accept else "json"
        cached = self._deps_cache.get(kind)
        if cached is None:
            if kind == "graphml":
                cached = graphml(dependency_graph(self.model, self.config.person_retry)).encode()
            else:
                items = dependency_items(self.model, self.config.person_retry)
                cached = orjson.dumps([i.as_json() for i in items])
            self._deps_cache[kind] = cached
        ctype = "application/graphml" if kind == "graphml" else "application/json; charset=utf-8"
        return Reply(200, cached, content_type=ctype)

    # -- snapshots -------------------------------------------------------------------------------
    def _snapshot_for(self, req: Request) -> Snapshot | None:
        if self.config.is_v7:
            value = req.headers.get("use-snapshot")
            if value is None or value.strip().lower() != "true":
                return None
            if req.method != "GET":
                raise HttpError(405, "snapshots:method-not-allowed",
                                "Snapshots are read-only: only GET requests may use them.")
            snap = self.store.find_snapshot()
            if snap is None:
                raise HttpError(404, "not-found", "Snapshot not found.")
            return snap
        ident = req.headers.get("snapshot-identifier")
        if ident is None:
            return None
        if req.method != "GET":
            raise HttpError(405, "method-not-allowed", "Snapshots are read-only: only GET requests may use them.")
        snap = self.store.find_snapshot(ident.strip())
        if snap is None:
            raise HttpError(410, "snapshots:gone", "Snapshot not available.")
        return snap

    def _changes(self, what: str, req: Request) -> Reply:
        what = what.lower()  # routes are case-insensitive
        if what == "availablechangeversions":
            snap = self._snapshot_for(req)
            newest = snap.change_version if snap else self.store.change_version
            oldest = self.store.oldest_change_version()
            if self.config.api_version < "6":  # 5.x serializes the C# names as they are
                return self._json({"OldestChangeVersion": oldest, "NewestChangeVersion": newest})
            return self._json({"oldestChangeVersion": oldest, "newestChangeVersion": newest})
        if what == "snapshots" and not self.config.is_v7:
            return self._json([
                {"id": i + 1, "snapshotIdentifier": s.identifier, "snapshotDateTime": s.taken_at}
                for i, s in enumerate(self.store.snapshots)
            ])
        raise HttpError(404, "not-found", "The specified resource could not be found.")

    # -- admin (sandbox only) ------------------------------------------------------------------------
    def _admin(self, what: str, req: Request) -> Reply:
        what = what.strip("/")
        if what == "snapshots" and req.method == "POST":
            snap = self.store.take_snapshot()
            return self._json({"snapshotIdentifier": snap.identifier, "snapshotDateTime": snap.taken_at,
                               "changeVersion": snap.change_version}, 201)
        if what == "snapshots" and req.method == "DELETE":
            self.store.drop_snapshots()
            return Reply(204)
        if what == "faults":
            if req.method in ("PUT", "POST"):
                try:
                    self.faults.configure(orjson.loads(req.body or b"{}"))
                except (ValueError, orjson.JSONDecodeError) as exc:
                    raise HttpError(400, "bad-request", str(exc)) from exc
            return self._json(self.faults.config.as_dict())
        if what == "stats":
            return self._json({"requests": self.requests, "byArea": self.requests_by_area,
                               "tokensIssued": self.tokens.issued, "tokensRefused": self.tokens.refused,
                               "peakLiveTokens": dict(self.tokens.peak_live),
                               "changeVersion": self.store.change_version, "faultsInjected": self.faults.injected})
        if what == "purge-changes" and req.method == "POST":
            try:
                below = int(req.query.get("below", ""))
            except ValueError as exc:
                raise HttpError(400, "bad-request", "purge-changes needs ?below=<change version>") from exc
            purged = self.store.purge_changes(below)
            return self._json({"purged": purged, "oldestChangeVersion": self.store.oldest_change_version()})
        parts = what.split("/")
        if parts[0] == "items" and len(parts) == 4 and req.method == "DELETE":
            # an item removed without change tracking: no change version, no /deletes entry
            res = self._resource(parts[1], parts[2])
            if res is None:
                raise HttpError(404, "not-found", "The specified resource could not be found.")
            try:
                self.store.delete(res.path, parts[3], track=False)
            except StoreError as exc:
                raise HttpError(404, "not-found", str(exc)) from exc
            return Reply(204)
        if what == "tokens" and req.method == "DELETE":
            self.tokens.revoke_all()
            return Reply(204)
        raise HttpError(404, "not-found", "Unknown sandbox admin endpoint.")

    # -- data ------------------------------------------------------------------------------------
    def _data(self, rest: str, req: Request, base: str) -> Reply:
        parts = rest.strip("/").split("/")
        if len(parts) < 2:
            raise HttpError(404, "not-found", "The specified resource could not be found.")
        res = self._resource(parts[0], parts[1])
        if (res is None and len(parts) == 3 and parts[2].lower() in ("deletes", "keychanges")
                and self.config.has_key_changes):
            # DeletesController / KeyChangesController: an unknown resource is ControllerHelpers.NotFound(),
            # an empty 404 before 7.2, NotFoundException's default detail after
            if self.config.problem_details:
                raise HttpError(404, "not-found", "The specified data could not be found.")
            return Reply(404, b"", content_type=None)
        if res is None or len(parts) > 3:
            raise HttpError(404, "not-found", "The specified resource could not be found.")
        if res.path in self.config.forbidden:
            raise HttpError(403, "security:authorization",
                            "Access to the requested data could not be authorized. The caller is not authorized"
                            f" to perform the requested operation on {res.path}.")
        if len(parts) == 3:
            parts[2] = self._suffixes.get(parts[2].lower(), parts[2])
        req.query = self._canonical_query(res, req.query)
        snapshot = self._snapshot_for(req)
        profile = self._profile(res, req) if req.method == "GET" and parts[-1] not in CHANGE_SUFFIXES else None
        try:
            if profile is not None:
                reply = self._data_reply(res, parts, req, base, snapshot)
                return self._apply_profile(reply, res, profile)
            return self._data_reply(res, parts, req, base, snapshot)
        except AuthorizationDenied as exc:
            raise HttpError(403, exc.kind, exc.message, extra=exc.errors) from exc

    # authorization hooks (edfi_sandbox.authorization) ------------------------------------------------
    def _read_auth(self, res: Resource, req: Request, changes: bool = False) -> Callable | None:
        """The store filter keeping reads (``changes``: of /deletes and /keyChanges) to what the request's client
        may see (None: everything)."""
        scope = self.scopes.get(req.client_id or "")
        return scope.read_filter(res, changes) if scope is not None else None

    def _check_item(self, res: Resource, req: Request, action: str, doc: Any, *, proposed: bool = False,
                    snapshot: Snapshot | None = None) -> None:
        """Single-item authorization of ``doc`` for the request's client (403 when outside its scope)."""
        scope = self.scopes.get(req.client_id or "")
        if scope is not None and isinstance(doc, dict):
            scope.check_item(self.store.reader(snapshot), res, action, doc, proposed=proposed)

    def _resource(self, schema: str, name: str) -> Resource | None:
        """The resource at ``/{schema}/{name}``, matched case-insensitively as ASP.NET Core routes match."""
        res = self.model.get(f"/{schema}/{name}")
        if res is not None:
            return res
        if self._paths_lower is None:
            self._paths_lower = {p.lower(): p for p in self.model.resources}
        path = self._paths_lower.get(f"/{schema}/{name}".lower())
        return self.model.get(path) if path else None

    def _canonical_query(self, res: Resource, query: dict[str, str]) -> dict[str, str]:
        """Query parameter names as the API declares them: model binding ignores their case
        (``MinChangeVersion``, ``LIMIT``, ``SchoolId``)."""
        names = self._param_names.get(res.path)
        if names is None:
            declared: list[str] = [*STANDARD_PARAMS, *(str(p["name"]) for p in res.query_params if p.get("name")),
                                   *res.field_paths]
            names = self._param_names[res.path] = {n.lower(): n for n in reversed(declared)}
        out: dict[str, str] = {}
        for key, value in query.items():
            name = names.get(key.lower(), key)
            if name not in out or key == name:
                out[name] = value
        return out

    def _data_reply(self, res: Resource, parts: list[str], req: Request, base: str,
                    snapshot: Snapshot | None) -> Reply:
        if len(parts) == 2:
            if req.method == "GET":
                return self._get_collection(res, req, snapshot)
            if req.method == "POST":
                return self._post(res, req, base)
            raise HttpError(405, "method-not-allowed", "The request method is not allowed on a collection.")
        sub = parts[2]
        if sub in CHANGE_SUFFIXES and req.method == "GET":
            return self._change_query(res, sub, req, snapshot)
        if req.method == "GET":
            return self._get_item(res, sub, req, snapshot)
        if req.method == "PUT":
            return self._put(res, sub, req, base)
        if req.method == "DELETE":
            if req.client_id in self.scopes:
                self._check_item(res, req, "Delete", orjson.loads(self.store.get(res.path, sub)))
            self.store.delete(res.path, sub, req.headers.get("if-match"))
            return Reply(204)
        raise HttpError(405, "method-not-allowed", "The request method is not allowed on an item.")

    # profiles ------------------------------------------------------------------------------------
    def _profile(self, res: Resource, req: Request) -> tuple[str, list[str]] | None:
        """(media type, included properties) when the request reads through an API profile."""
        m = PROFILE_MEDIA.search(req.headers.get("accept", ""))
        if m is None:
            return None
        entity, name = m.groups()
        profile = next((v for k, v in self.config.profiles.items() if k.lower() == name.lower()), None)
        if profile is None or entity.lower() != res.entity.lower() or res.path not in profile:
            raise HttpError(406, "not-acceptable",
                            f"The profile specified by the content type in the 'Accept' header ('{m.group(0)}') is"
                            " not supported by this host.")
        return m.group(0), profile[res.path]

    @staticmethod
    def _apply_profile(reply: Reply, res: Resource, profile: tuple[str, list[str]]) -> Reply:
        """Keep what the profile's readable content type includes (and the identity, always)."""
        if reply.status != 200:
            return reply
        media, included = profile
        keep = {"id", "_etag", "_lastModifiedDate", *res.identity, *included}
        data = orjson.loads(reply.body)
        items = data if isinstance(data, list) else [data]
        trimmed = [{k: v for k, v in item.items() if k in keep} for item in items]
        body = orjson.dumps(trimmed if isinstance(data, list) else trimmed[0])
        return Reply(200, body, reply.headers, content_type=media)

    # query parameters ------------------------------------------------------------------------------
    def _int_param(self, req: Request, name: str, bounds: tuple[int, int] = INT32) -> int | None:
        raw = req.query.get(name)
        if raw is None or raw == "":
            return None
        try:
            value = int(raw) if len(raw) <= 40 else None
        except ValueError:
            value = None
        if value is None or not bounds[0] <= value <= bounds[1]:
            # ASP.NET model binding's message for a value the parameter's type cannot hold
            raise HttpError(400, "bad-request:parameter-validation-failed",
                            f"The value '{raw[:100]}' is not valid for {name}.")
        return value

    def _paging(self, req: Request) -> tuple[int, int]:
        v = self.config.api_version
        limit = self._int_param(req, "limit")
        offset = self._int_param(req, "offset") or 0
        if limit is None:
            limit = 25
        elif v < "7":
            # 5.x/6.x reject only a negative limit or one over the maximum: limit=0 counts
            if not 0 <= limit <= MAX_PAGE:
                raise HttpError(400, "bad-request:parameter-validation-failed",
                                "Limit must be omitted or set to a value between 1 and max value defined in"
                                " configuration file (defaultPageSizeLimit).")
        elif not 0 <= limit <= MAX_PAGE:
            msg = ("Limit must be a value between 0 and 500." if v >= "7.3"
                   else "Limit must be omitted or set to a value between 0 and 500.")
            raise HttpError(400, "bad-request:parameter-validation-failed", msg)
        if offset < 0:
            raise HttpError(400, "bad-request:parameter-validation-failed", "Offset cannot be a negative value.")
        return offset, limit

    def _change_paging(self, req: Request) -> tuple[int, int]:
        """``/deletes`` and ``/keyChanges`` (6.x, 7.x) check paging with
        ``UrlQueryParametersRequestExtensions.Validate``: a limit outside 0..500 and a negative offset, each with
        its own message; 6.1 and 7.1 join them in one ``message``, 7.3 lists them in ``errors``."""
        limit = self._int_param(req, "limit")
        offset = self._int_param(req, "offset")
        messages = []
        if limit is not None and not 0 <= limit <= MAX_PAGE:
            messages.append(f"Limit must be omitted or set to a value between 1 and {MAX_PAGE}.")
        if (offset or 0) < 0:
            messages.append("Offset must be greater than or equal to 0.")
        if messages:
            if self.config.problem_details:
                raise HttpError(400, "bad-request:parameter-validation-failed",
                                "Parameters supplied to the request were invalid.", extra=messages)
            raise HttpError(400, "bad-request", " ".join(messages))
        return offset or 0, 25 if limit is None else limit

    def _filters(self, res: Resource, req: Request) -> dict[str, Any]:
        known = {p.get("name") for p in res.query_params} | set(res.field_paths)
        filters: dict[str, Any] = {}
        props = res.schema.get("properties") or {}
        for name, raw in req.query.items():
            if name in ("offset", "limit", "totalCount", "minChangeVersion", "maxChangeVersion", "pageToken",
                        "pageSize", "number", "q", "fields", "version"):
                continue
            if name not in known:
                continue
            fpath = res.field_paths.get(name)
            spec: dict = {}
            if fpath:
                node: dict = props.get(fpath[0]) or {}
                spec = (node.get("properties") or {}).get(fpath[1], {}) if len(fpath) > 1 else node
            typ = spec.get("type")
            try:
                if typ == "integer":
                    value = int(raw) if len(raw) <= 40 else None
                    if value is None or not INT64[0] <= value <= INT64[1]:
                        raise ValueError(name)
                    filters[name] = value
                elif typ == "number":
                    filters[name] = float(raw)
                elif typ == "boolean":
                    filters[name] = 1 if raw.lower() == "true" else 0
                else:
                    filters[name] = raw
            except ValueError as exc:
                raise HttpError(400, "bad-request:parameter-validation-failed",
                                f"The value '{raw}' is not valid for {name}.") from exc
        return filters

    def _total_count(self, req: Request) -> bool:
        return req.query.get("totalCount", "").lower() == "true"

    # reads ---------------------------------------------------------------------------------------
    def _get_collection(self, res: Resource, req: Request, snapshot: Snapshot | None) -> Reply:
        min_cv = self._int_param(req, "minChangeVersion", INT64)
        max_cv = self._int_param(req, "maxChangeVersion", INT64)
        filters = self._filters(res, req)
        if self.config.has_partitions and ("pageToken" in req.query or "pageSize" in req.query):
            return self._cursor_page(res, req, snapshot, min_cv, max_cv, filters)
        offset, limit = self._paging(req)
        headers: dict[str, str] = {}
        auth = self._read_auth(res, req)
        if self._total_count(req):
            total = self.store.count(res.path, min_cv, max_cv, filters, snapshot, auth=auth)
            headers["Total-Count"] = str(total)
        rows = self.store.page(res.path, offset, limit, min_cv, max_cv, filters, snapshot, auth=auth) if limit else []
        if rows and self.config.has_partitions:
            headers["Next-Page-Token"] = encode_token(rows[-1][0] + 1, 2**31 - 1)
        return Reply(200, b"[" + b",".join(r[1] for r in rows) + b"]", headers)

    def _cursor_page(self, res: Resource, req: Request, snapshot: Snapshot | None, min_cv: int | None,
                     max_cv: int | None, filters: dict[str, Any]) -> Reply:
        q = req.query
        bad = "bad-request:parameter-validation-failed"
        if "pageToken" not in q:
            raise HttpError(400, bad, "PageToken is required when pageSize is specified.")
        if "offset" in q:
            raise HttpError(400, bad, "Both offset and pageToken parameters were provided, but they are"
                                      " mutually exclusive. Use either offset or pageToken.")
        if "limit" in q:
            raise HttpError(400, bad, "Use pageSize instead of limit when using cursor paging with pageToken.")
        if self._total_count(req):
            raise HttpError(400, bad, "TotalCount is not supported when using cursor paging with pageToken.")
        size = self._int_param(req, "pageSize") or 25
        if not 1 <= size <= MAX_PAGE:
            raise HttpError(400, bad, "PageSize must be a value between 1 and 500.")
        try:
            low, high = decode_token(q["pageToken"]) if len(q["pageToken"]) <= 64 else (None, None)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            low = high = None
        if low is None or high is None or not (INT32[0] <= low <= INT32[1] and INT32[0] <= high <= INT32[1]):
            # PagingHelpers.GetAggregateIdRange: Convert.ToInt32 of both ends, else BadRequestParameterException
            raise HttpError(400, bad, "The request construction was invalid.",
                            extra=["The page token provided was invalid."])
        rows = self.store.range_page(res.path, low, high, size, min_cv, max_cv, filters, snapshot,
                                     auth=self._read_auth(res, req))
        headers = {}
        if rows:
            headers["Next-Page-Token"] = encode_token(rows[-1][0] + 1, high)
        return Reply(200, b"[" + b",".join(r[1] for r in rows) + b"]", headers)

    def _change_query(self, res: Resource, sub: str, req: Request, snapshot: Snapshot | None) -> Reply:
        v = self.config.api_version
        min_cv = self._int_param(req, "minChangeVersion", INT64)
        max_cv = self._int_param(req, "maxChangeVersion", INT64)
        if sub == "partitions":
            if not self.config.has_partitions:
                raise HttpError(404, "not-found", "The specified resource could not be found.")
            number = self._int_param(req, "number") or 10
            if not 1 <= number <= 200:
                raise HttpError(400, "bad-request:parameter-validation-failed",
                                "Number must be a value between 1 and 200.")
            ranges = self.store.partitions(res.path, number, min_cv, max_cv, self._filters(res, req), snapshot,
                                           auth=self._read_auth(res, req))
            return self._json({"pageTokens": [encode_token(lo, hi) for lo, hi in ranges]})
        if res.name == "schoolYearTypes" or (sub == "keyChanges" and not self.config.has_key_changes):
            raise HttpError(404, "not-found", "The specified resource could not be found.")
        headers: dict[str, str] = {}
        if sub == "deletes" and v < "6":
            # 5.x: no limit validation, no Total-Count, C# property names (Id, ChangeVersion)
            offset = max(self._int_param(req, "offset") or 0, 0)
            limit = self._int_param(req, "limit")
            limit = 25 if limit is None or limit < 0 else limit
            items = self.store.deletes(res.path, offset, limit, min_cv, max_cv, with_keys=False, snapshot=snapshot,
                                       auth=self._read_auth(res, req, changes=True))
            return self._json([{"Id": i["id"], "ChangeVersion": i["changeVersion"]} for i in items])
        offset, limit = self._change_paging(req)
        auth = self._read_auth(res, req, changes=True)
        if sub == "deletes":
            if self._total_count(req):
                headers["Total-Count"] = str(self.store.count_deletes(res.path, min_cv, max_cv, snapshot, auth=auth,
                                                                      exclude_live=True))
            items = self.store.deletes(res.path, offset, limit, min_cv, max_cv, snapshot=snapshot, auth=auth,
                                       exclude_live=True)
        else:
            if self._total_count(req):
                headers["Total-Count"] = str(self.store.count_key_changes(res.path, min_cv, max_cv, snapshot,
                                                                          auth=auth))
            items = self.store.key_changes(res.path, offset, limit, min_cv, max_cv, snapshot, auth=auth)
        return self._json(items if limit else [], headers=headers)

    def _get_item(self, res: Resource, item_id: str, req: Request, snapshot: Snapshot | None) -> Reply:
        blob = self.store.get(res.path, item_id, snapshot)
        if req.client_id in self.scopes:
            self._check_item(res, req, "Read", orjson.loads(blob), snapshot=snapshot)
        etag = orjson.loads(blob).get("_etag", "")
        if req.headers.get("if-none-match", "").strip('"') == etag:
            return Reply(304, headers={"ETag": f'"{etag}"'})
        return Reply(200, blob, {"ETag": f'"{etag}"'})

    # writes --------------------------------------------------------------------------------------
    def _body(self, res: Resource, req: Request, *, post: bool = False, item_id: str | None = None) -> dict:
        """The request's JSON body, validated against the resource's schema."""
        try:
            body = orjson.loads(req.body)
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, "bad-request", "The request body could not be parsed as JSON.") from exc
        if post and isinstance(body, dict) and body.get("id"):
            raise HttpError(400, "bad-request:data-validation-failed",
                            "Resource identifiers cannot be assigned by the client. The 'id' property should"
                            " not be included in the request body.")
        body = self.validators.conform(res, body)
        if item_id is not None and isinstance(body, dict) and self.config.api_version < "7":
            # 5.x/6.x PUT: the item's own key values are copied back onto what was sent ("PK properties cannot be
            # changed, therefore they can be omitted in the resource payload", EntityMapper.mustache)
            stored = orjson.loads(self.store.get(res.path, item_id))
            for name in res.identity:
                if body.get(name) is None and name in stored and not isinstance(stored[name], (dict, list)):
                    body[name] = stored[name]
        errors = self.validators.errors(res, body)
        if errors:
            raise HttpError(400, "bad-request:data-validation-failed",
                            "Data validation failed. See 'validationErrors' for details.", errors)
        return self.validators.with_defaults(res, body)

    def _post(self, res: Resource, req: Request, base: str) -> Reply:
        body = self._body(res, req, post=True)
        if req.client_id in self.scopes:  # an upsert: Update of the existing item, else Create
            existing = self.store.get_by_key(res.path, body)
            if existing is not None:
                self._check_item(res, req, "Update", existing)
                self._check_item(res, req, "Update", body, proposed=True)
            else:
                self._check_item(res, req, "Create", body, proposed=True)
        result = self.store.upsert(res.path, body)
        location = f"{self.layout.data_url(base)}{res.path}/{result.id}"
        return Reply(201 if result.created else 200, b"",
                     {"Location": location, "ETag": f'"{result.etag}"'}, content_type=None)

    def _put(self, res: Resource, item_id: str, req: Request, base: str) -> Reply:
        body = self._body(res, req, item_id=item_id)
        if req.client_id in self.scopes:
            self._check_item(res, req, "Update", orjson.loads(self.store.get(res.path, item_id)))
            self._check_item(res, req, "Update", body, proposed=True)
        result = self.store.update(res.path, item_id, body, req.headers.get("if-match"))
        location = f"{self.layout.data_url(base)}{res.path}/{result.id}"
        return Reply(204, b"", {"Location": location, "ETag": f'"{result.etag}"'}, content_type=None)
