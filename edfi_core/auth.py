"""OAuth 2 client credentials for Ed-Fi ODS/APIs: one bearer token shared by every thread.

The ODS/API limits live tokens per client (15 on 7.x) and a token lives 30 minutes by default, so a
client must reuse one token, renew it shortly before ``expires_in`` runs out, and after a 401
renew it once, however many threads saw that 401 (:meth:`TokenManager.invalidate`).

Credentials go in an ``Authorization: Basic`` header; a server that rejects that (400/401) is
asked again with the credentials in the form body, and that choice is remembered. Neither the
secret nor a token is ever logged or put in an exception message.
"""

from __future__ import annotations

import base64
import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from edfi_core.token_cache import CachedToken, TokenCache, cache_key
from edfi_core.transport import HttpLayer, Reply, TransportError

logger = logging.getLogger(__name__)

#: Statuses of the token endpoint worth retrying (7.x answers 429 when a client has too many tokens).
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Failures without a (complete) response worth retrying: refused, reset, timed out, dropped mid-body.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (TransportError,)


class AuthError(RuntimeError):
    """The token endpoint refused the credentials or could not be reached."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class TooManyTokensError(AuthError):
    """7.x: the client holds as many live tokens as the API allows (``BearerTokenPerClientLimit``)."""


def _too_many_tokens(resp: Reply) -> bool:
    """The ODS/API's TooManyTokensException (429, ``urn:ed-fi:api:security:authentication:too-many-tokens``)."""
    if resp.status_code != 429:
        return False
    text = (resp.text or "").lower()
    return any(s in text for s in ("too-many-tokens", "too many access tokens", "too many tokens",
                                   "too many active tokens"))


def _when(epoch: float, now: float) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
    return f"{stamp} (in {max(0, round(epoch - now))}s)"


def _oauth_error(resp: Reply) -> str:
    try:
        body = resp.json()
    except ValueError:
        return (resp.text or "").strip()[:200]
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("error", "error_description", "detail", "message") if body.get(k)]
        if isinstance(body.get("errors"), list):  # problem details: the specifics (7.x too-many-tokens)
            parts += [str(e) for e in body["errors"][:3]]
        if parts:
            return ": ".join(parts)
    return str(body)[:200]


class TokenManager:
    """Thread-safe client-credentials token: fetched once, shared, renewed before it expires.

    ``token()`` returns a valid token, fetching one if there is none or it is about to expire.
    ``invalidate(token)`` forgets ``token`` if it is still the current one: after a 401, every
    thread calls it with the token it used, and only the first call causes a new fetch.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        http: HttpLayer | None = None,
        scope: str | None = None,
        timeout: float | tuple[float, float] = (10.0, 60.0),
        max_tries: int = 5,
        margin: float = 60.0,
        on_refresh: Callable[[], None] | None = None,
        cache: TokenCache | None = None,
    ) -> None:
        if not client_id or not client_secret:
            raise AuthError("client_id and client_secret are required", url=token_url)
        self.token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self.http = http if http is not None else HttpLayer()  # the client's one HTTP layer
        self.timeout = timeout
        self.max_tries = max(1, max_tries)
        self.margin = margin
        self.on_refresh = on_refresh
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0  # monotonic time after which the token is renewed
        self._use_basic = True
        self.fetches = 0
        #: shared with other processes (``edfi_core.token_cache``); None: this process only
        self.cache = cache
        self._cache_key = cache_key(token_url, client_id, client_secret, scope) if cache is not None else ""
        self._expires_at = 0.0  # wall-clock times of the current token (what the cache stores)
        self._renew_wall = 0.0
        self.reused = 0  # tokens taken from the cache instead of fetched

    def __repr__(self) -> str:  # never show the secret or the token
        return f"TokenManager({self.token_url!r}, client_id={self._client_id!r})"

    # -- public API -----------------------------------------------------------------------------
    def token(self) -> str:
        """A valid bearer token (fetched on first use and shortly before it expires)."""
        token = self._token
        if token is not None and time.monotonic() < self._renew_at:
            return token
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                if self.cache is None:
                    self._renew_here()
                else:
                    self._token = None
                    self._from_cache()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str | None) -> None:
        """Forget ``token`` if it is the current one (the server answered 401 to it)."""
        with self._lock:
            if token is not None and token == self._token:
                logger.info("bearer token rejected by the API; a new one will be requested")
                self._token = None
                self._renew_at = 0.0
                if self.cache is not None:
                    with self.cache.locked(self._cache_key):
                        self.cache.forget(self._cache_key, token)

    def _renew_here(self) -> None:
        """Without a cache: fetch; on "too many tokens" keep the current token while the server accepts it."""
        previous = None
        if self._token is not None:
            previous = CachedToken(self._token, self._expires_at, self._renew_wall, [self._expires_at])
        self._token = None
        try:
            self._fetch_or_explain(previous)
        except TooManyTokensError:
            now = time.time()
            if previous is None or not previous.valid(now):
                raise
            self._adopt(previous, previous.expires_at - 5.0)
            logger.warning("the API has no token left for this client (too many active tokens): the current one "
                           "is used until it expires at %s", _when(previous.expires_at, now))

    # -- the shared cache ---------------------------------------------------------------------
    def _adopt(self, entry: CachedToken, renew_at: float) -> None:
        now = time.time()
        self._token = entry.token
        self._expires_at = entry.expires_at
        self._renew_wall = renew_at
        self._renew_at = time.monotonic() + max(0.0, renew_at - now)
        self.reused += 1

    def _from_cache(self) -> None:
        """The cached token while it is fresh; else fetch one (holding the cache's lock) and share it."""
        assert self.cache is not None
        key = self._cache_key
        with self.cache.locked(key):
            entry = self.cache.load(key)
            now = time.time()
            if entry is not None and entry.token and entry.fresh(now):
                self._adopt(entry, entry.renew_at)
                logger.info("bearer token from the %s (valid %.0fs more)", self.cache.description,
                            entry.expires_at - now)
                return
            try:
                self._fetch_or_explain(entry)
            except TooManyTokensError:
                now = time.time()
                if entry is not None and entry.token and entry.valid(now):
                    # due for renewal but still accepted: use it until it expires
                    self._adopt(entry, entry.expires_at - 5.0)
                    logger.warning("the API has no token left for this client (too many active tokens): the "
                                   "cached one is used until it expires at %s", _when(entry.expires_at, now))
                    return
                raise
            now = time.time()
            issued = [*(entry.live_expiries(now) if entry is not None else []), self._expires_at]
            self.cache.store(key, CachedToken(str(self._token), self._expires_at, self._renew_wall, issued))

    def _fetch_or_explain(self, entry: CachedToken | None) -> None:
        """Fetch; on "too many tokens" say when a token frees up."""
        try:
            self._fetch()
        except TooManyTokensError as exc:
            now = time.time()
            live = entry.live_expiries(now) if entry is not None else []
            if live:
                where = f"through the {self.cache.description}" if self.cache is not None else "by this run"
                when = (f"{len(live)} of the live tokens were fetched {where}; the first of them expires at "
                        f"{_when(live[0], now)}")
            else:
                when = ("no live token of this client is known here: the oldest frees up when it expires, at most "
                        "its lifetime (expires_in, 30 minutes by default) after it was issued")
            advice = ("other runs of this client take tokens without sharing them: give them the same token_cache"
                      if self.cache is not None else
                      "every run takes its own token: set token_cache (a file, the default, or a postgresql:// URL) "
                      "so that runs share one")
            raise TooManyTokensError(f"{exc} The API allows only a few live tokens per client (15 by default on "
                                     f"ODS/API 7.3) and this client has them all; {when}. Then run again; "
                                     f"{advice}.", url=exc.url, status=exc.status) from None

    def auth_header(self) -> tuple[str, dict[str, str]]:
        token = self.token()
        return token, {"Authorization": f"Bearer {token}"}

    # -- fetching -----------------------------------------------------------------------------
    def _request(self, basic: bool) -> Reply:
        form: dict[str, Any] = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
        if basic:
            pair = f"{self._client_id}:{self._client_secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            form["client_id"] = self._client_id
            form["client_secret"] = self._client_secret
        # one try through the HTTP layer (proxies, CA bundle, deadline); _fetch retries
        return self.http.send("POST", self.token_url, body=urllib.parse.urlencode(form).encode(), headers=headers)

    def _fetch(self) -> None:
        """Get a new token (the caller holds the lock)."""
        delay = 0.5
        last_error = ""
        for attempt in range(1, self.max_tries + 1):
            try:
                resp = self._request(self._use_basic)
                if resp.status_code in (400, 401) and self._use_basic:
                    # some servers only take credentials in the body
                    body_resp = self._request(False)
                    if body_resp.ok:
                        logger.info("token endpoint accepts credentials in the body only; using that")
                        self._use_basic = False
                        resp = body_resp
            except TRANSIENT_ERRORS as exc:
                last_error = getattr(exc, "reason", "") or f"{type(exc).__name__}"
                if not getattr(exc, "retriable", True):  # an untrusted certificate: trying again cannot help
                    raise AuthError(f"token request to {self.token_url} failed: {last_error}",
                                    url=self.token_url) from exc
                status = None
            else:
                status = resp.status_code
                if resp.ok:
                    self._accept(resp)
                    return
                last_error = f"HTTP {status}: {_oauth_error(resp)}"
                if _too_many_tokens(resp):  # retrying only takes more of the client's tokens' time
                    raise TooManyTokensError(f"token request to {self.token_url} failed: {last_error}.",
                                             url=self.token_url, status=status)
                if status not in TRANSIENT_STATUSES:
                    hint = " (check client_id and client_secret)" if status in (400, 401) else ""
                    raise AuthError(f"token request to {self.token_url} failed: {last_error}{hint}",
                                    url=self.token_url, status=status)
                retry_after = resp.headers.get("Retry-After")
                if retry_after and retry_after.strip().isdigit():
                    delay = max(delay, float(retry_after))
            if attempt < self.max_tries:
                wait = delay / 2 + random.uniform(0, delay / 2)
                logger.warning("token request to %s failed (%s); retrying in %.1fs", self.token_url,
                               last_error, wait)
                time.sleep(wait)
                delay = min(delay * 2, 30.0)
        raise AuthError(f"token request to {self.token_url} failed after {self.max_tries} tries: {last_error}",
                        url=self.token_url)

    def _accept(self, resp: Reply) -> None:
        try:
            body = resp.json()
            token = body["access_token"]
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError(f"token response from {self.token_url} has no access_token",
                            url=self.token_url, status=resp.status_code) from exc
        try:
            expires_in = float(body.get("expires_in") or 1800)
        except (TypeError, ValueError):
            expires_in = 1800.0
        # renew a little before the server's deadline: a minute, or a fifth of short lifetimes
        margin = min(self.margin, expires_in / 5)
        self._token = str(token)
        self._renew_at = time.monotonic() + max(0.0, expires_in - margin)
        self._expires_at = time.time() + expires_in
        self._renew_wall = time.time() + max(0.0, expires_in - margin)
        self.fetches += 1
        logger.debug("new bearer token, valid %ss (renewed after %.0fs)", expires_in, expires_in - margin)
        if self.on_refresh is not None:
            self.on_refresh()
