"""OAuth 2 client credentials, as the ODS/API's TokenController does them."""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
from dataclasses import dataclass


class OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> dict:
        out = {"error": self.error}
        if self.description:
            out["error_description"] = self.description
        return out


class TooManyTokens(Exception):
    pass


@dataclass
class Token:
    value: str
    client_id: str
    expires_at: float


class TokenRegistry:
    """Issues and checks bearer tokens; enforces the live-token limit per client."""

    def __init__(self, clients: dict[str, str], ttl: int, max_per_client: int | None) -> None:
        self.clients = dict(clients)
        self.ttl = ttl
        self.max_per_client = max_per_client
        self._tokens: dict[str, Token] = {}
        self._lock = threading.Lock()
        self.issued = 0
        #: the most live tokens each client held at once (what the limit bounds), and the token requests refused
        #: because the client held the limit
        self.peak_live: dict[str, int] = {}
        self.refused = 0

    def authenticate(self, form: dict[str, str], authorization: str | None) -> tuple[str, str]:
        """(client_id, secret) from a Basic header or the body; the ODS/API's rules."""
        body_id, body_secret = form.get("client_id"), form.get("client_secret")
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "basic":
                raise OAuthError(401, "invalid_client")
            if body_id or body_secret:
                raise OAuthError(400, "invalid_client")
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise OAuthError(401, "invalid_client") from exc
            cid, _, secret = decoded.partition(":")
        else:
            if not body_id or not body_secret:
                raise OAuthError(401, "invalid_request")
            cid, secret = body_id, body_secret
        grant = form.get("grant_type")
        if grant != "client_credentials":
            raise OAuthError(400, "unsupported_grant_type")
        expected = self.clients.get(cid)
        if expected is None or not secrets.compare_digest(expected, secret):
            raise OAuthError(401, "invalid_client")
        return cid, secret

    def issue(self, client_id: str) -> Token:
        now = time.monotonic()
        with self._lock:
            self._purge(now)
            if self.max_per_client is not None:
                live = sum(1 for t in self._tokens.values() if t.client_id == client_id)
                if live >= self.max_per_client:
                    self.refused += 1
                    raise TooManyTokens(client_id)
            token = Token(secrets.token_hex(16), client_id, now + self.ttl)
            self._tokens[token.value] = token
            self.issued += 1
            live = sum(1 for t in self._tokens.values() if t.client_id == client_id)
            self.peak_live[client_id] = max(self.peak_live.get(client_id, 0), live)
        return token

    def check(self, authorization: str | None) -> Token | None:
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = self._tokens.get(value.strip())
        if token is None or token.expires_at <= time.monotonic():
            return None
        return token

    def revoke_all(self) -> None:
        with self._lock:
            self._tokens.clear()

    def _purge(self, now: float) -> None:
        for value in [v for v, t in self._tokens.items() if t.expires_at <= now]:
            del self._tokens[value]
