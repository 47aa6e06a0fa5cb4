"""Run a sandbox: in this process on a background thread (tests), or in the foreground (CLI)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import requests
import uvicorn

from edfi_core.openapi import ApiModel
from edfi_sandbox.app import SandboxApp
from edfi_sandbox.config import SandboxConfig
from edfi_sandbox.faults import Churn, FaultConfig, FaultInjector
from edfi_sandbox.guard import GuardedProtocol
from edfi_sandbox.store import Store

logger = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def build_model(specs: Iterable[str | Path] | None = None) -> ApiModel:
    """The built-in DS 5 subset, or the resources of the given OpenAPI documents."""
    specs = list(specs or [])
    if specs:
        return ApiModel.from_files(specs)
    from edfi_sandbox.builtin_model import builtin_documents

    return ApiModel.from_documents(builtin_documents())


class _Server(uvicorn.Server):
    """uvicorn's server, telling when it listens (uvicorn logs it at INFO only, without the sandbox's URLs)."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.on_listening is not None:
            self.on_listening()


class Sandbox:
    """A running sandbox API. Use as a context manager, or ``start()`` / ``stop()``.

    >>> with Sandbox(api_version="7.3", seed=50) as sb:
    ...     requests.get(sb.base_url).json()["version"]
    '7.3'
    """

    def __init__(
        self,
        api_version: str = "7.3",
        *,
        seed: int | None = None,
        seed_value: int = 0,
        host: str = "127.0.0.1",
        port: int | None = None,
        db: str | None = None,
        specs: Iterable[str | Path] | None = None,
        model: ApiModel | None = None,
        faults: FaultConfig | None = None,
        log_level: str = "warning",
        **config: Any,
    ) -> None:
        self.config = SandboxConfig(api_version=api_version, **config)
        specs = list(specs or [])
        self.model = model or build_model(specs)
        self.store = Store(self.model, db)
        self.faults = FaultInjector(faults)
        self.app = SandboxApp(self.store, self.config, self.faults)
        self.host = host
        self.port = port or free_port(host)
        self.log_level = log_level
        self.seed_counts: dict[str, int] = {}
        if seed:
            from edfi_sandbox.seed import seed_district
            from edfi_sandbox.seed_generic import seed_model

            started = time.perf_counter()
            with self.store.bulk_mode():
                if specs or model is not None:  # a real model: every resource it has (docs/seeding.md)
                    self.seed_counts = seed_model(self.store, self.model, seed, seed_value)
                else:  # the built-in model: the hand-made district
                    self.seed_counts = seed_district(self.store, seed, seed_value)
            logger.info("seeded %s students in %.1fs", seed, time.perf_counter() - started)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._churn: Churn | None = None

    # -- URLs and credentials ----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_root(self) -> str:
        """The URL of the root payload (7.x tenant/context included)."""
        return self.base_url + self.app.layout.root

    @property
    def data_url(self) -> str:
        return self.app.layout.data_url(self.base_url)

    @property
    def oauth_url(self) -> str:
        return self.app.layout.oauth_url(self.base_url)

    @property
    def client_id(self) -> str:
        return self.config.client_id

    @property
    def client_secret(self) -> str:
        return self.config.client_secret

    @property
    def admin_token(self) -> str:
        """The token the ``/_sandbox/*`` admin endpoints require (header ``X-Sandbox-Admin-Token``)."""
        return self.app.admin_token

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"X-Sandbox-Admin-Token": self.app.admin_token}

    def admin(self, method: str, what: str, **kwargs: Any) -> requests.Response:
        """A request to an admin endpoint (``admin("POST", "snapshots")``), with the admin token."""
        headers = {**self.admin_headers, **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.base_url}/_sandbox/{what}", headers=headers,
                                timeout=kwargs.pop("timeout", 30), **kwargs)

    # -- lifecycle -----------------------------------------------------------------------------
    def _uvicorn_config(self) -> uvicorn.Config:
        c = self.config
        return uvicorn.Config(
            self.app, host=self.host, port=self.port, log_level=self.log_level, access_log=False,
            lifespan="on", timeout_keep_alive=30, backlog=512,
            # request headers within header_timeout and max_header_bytes (bodies: SandboxApp)
            http=GuardedProtocol.configured(c.header_timeout, c.max_header_bytes),
        )

    def start(self) -> Sandbox:
        self._server = uvicorn.Server(self._uvicorn_config())
        self._thread = threading.Thread(target=self._run, name=f"sandbox-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"sandbox did not start on {self.base_url}")
            time.sleep(0.02)
        return self

    def _run(self) -> None:
        assert self._server is not None
        asyncio.run(self._server.serve())

    def serve_forever(self, sock: socket.socket | None = None,
                      on_listening: Callable[[], None] | None = None) -> None:
        """Serve in the foreground until interrupted (the CLI): on ``sock`` when given (bound; uvicorn listens
        on it), calling ``on_listening`` once the server accepts connections."""
        self._server = _Server(self._uvicorn_config(), on_listening)
        try:
            self._server.run(sockets=[sock] if sock is not None else None)
        finally:
            self.close()

    def stop(self) -> None:
        self.stop_churn()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._server = None
        self._thread = None
        self.close()

    def close(self) -> None:
        self.stop_churn()
        self.store.close()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test helpers ----------------------------------------------------------------------------
    def set_faults(self, **values: Any) -> None:
        self.faults.configure(values)

    def clear_faults(self) -> None:
        self.faults.configure({k: 0 for k in ("latency_ms", "jitter_ms", "rate_429", "rate_500",
                                               "rate_502", "rate_503", "rate_drop", "commit_delay_ms")})

    def take_snapshot(self) -> str:
        return self.store.take_snapshot().identifier

    def start_churn(self, rate: float, resources: list[str] | None = None, delete_fraction: float = 0.2,
                    seed: int | None = None) -> Churn:
        self.stop_churn()
        self._churn = Churn(self.store, rate, resources, delete_fraction, seed)
        self._churn.start()
        return self._churn

    def stop_churn(self) -> None:
        if self._churn is not None:
            self._churn.stop()
            self._churn = None

    def client_secret_of(self, client_id: str) -> str:
        """The secret of a client given with ``clients=`` (or the default client's)."""
        for spec in self.config.clients:
            if spec.client_id == client_id:
                return spec.secret
        if client_id == self.client_id:
            return self.client_secret
        return self.config.extra_clients[client_id]

    def token(self, client_id: str | None = None) -> str:
        """A bearer token of the default client, or of ``client_id``."""
        cid = client_id or self.client_id
        resp = requests.post(self.oauth_url, data={"grant_type": "client_credentials"},
                             auth=(cid, self.client_secret_of(cid)), timeout=10)
        resp.raise_for_status()
        return resp.json()["access_token"]
