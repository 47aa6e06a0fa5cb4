"""Bearer tokens shared by processes: a locked file by default, a PostgreSQL table for many hosts.

An ODS/API 7.x client may hold a limited number of live tokens (``BearerTokenPerClientLimit``, 15 by default) and a
token lives 30 minutes by default, so a tap and a target that run every few minutes, or a few parallel jobs, use up
the limit when each run takes its own token. With a cache, every run of the same client against the same token
endpoint takes the cached token while it is valid, and only the first run after its renewal time fetches a new one
(under the cache's lock, so parallel runs wait for that one fetch instead of fetching their own).

Entries are keyed by the OAuth URL, the client id and the scope, through an HMAC with the client secret as its key:
a process that does not know the secret cannot find (or use) the entry, and a rotated secret starts a new entry.
The token itself is stored as the server issued it: the cache file is created with mode 0600 in a 0700 directory,
and neither the token nor the secret is ever logged.

``token_cache`` setting: a file path (default ``$XDG_CACHE_HOME/edfi-singer/oauth-tokens.json``, that is
``~/.cache/...``; the environment variable ``EDFI_SINGER_TOKEN_CACHE`` changes the default), a
``postgresql://`` URL (table ``edfi_singer_oauth_tokens``), or ``off``. A cache that cannot be read or locked is
ignored with a warning: the run then fetches its own token, as without a cache. A ``postgresql://`` URL without
the psycopg driver installed is an error at start (it would never work, and parallel jobs would then exceed the
API's live-token limit).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ENV_VAR = "EDFI_SINGER_TOKEN_CACHE"
OFF = frozenset({"off", "none", "false", "no", "0", "disabled"})
TABLE = "edfi_singer_oauth_tokens"
#: how long a process waits for another one that holds the cache's lock (it may be fetching a token)
LOCK_TIMEOUT = 120.0


def cache_key(token_url: str, client_id: str, client_secret: str, scope: str | None) -> str:
    """The entry of one client at one token endpoint (and scope); only who knows the secret can compute it."""
    message = f"{token_url.rstrip('/')}\n{client_id}\n{scope or ''}".encode()
    return hmac.new(client_secret.encode(), message, hashlib.sha256).hexdigest()


@dataclass
class CachedToken:
    """A token and its times (seconds since the epoch: comparable across processes)."""

    token: str
    expires_at: float
    renew_at: float
    #: when the tokens this cache has fetched for the client expire (the live ones, including this one)
    issued: list[float] = field(default_factory=list)

    def fresh(self, now: float) -> bool:
        """Valid and not yet due for renewal."""
        return now < self.renew_at

    def valid(self, now: float, slack: float = 5.0) -> bool:
        """Still accepted by the server (with a few seconds to spare)."""
        return now < self.expires_at - slack

    def live_expiries(self, now: float) -> list[float]:
        return sorted(t for t in self.issued if t > now)

    @classmethod
    def from_json(cls, value: Any) -> CachedToken | None:
        if not isinstance(value, dict):
            return None
        try:
            issued = [float(t) for t in value.get("issued") or []]
            return cls(str(value["token"]), float(value["expires_at"]), float(value["renew_at"]), issued)
        except (KeyError, TypeError, ValueError):
            return None


class TokenCache:
    """Where tokens are shared. ``locked(key)`` serializes fetches of one key across processes."""

    description = "token cache"

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:  # pragma: no cover - interface
        yield

    def load(self, key: str) -> CachedToken | None:  # pragma: no cover - interface
        return None

    def store(self, key: str, entry: CachedToken) -> None:  # pragma: no cover - interface
        pass

    def forget(self, key: str, token: str) -> None:
        """Drop the entry if it still holds ``token`` (the API rejected it); the caller holds the lock."""
        entry = self.load(key)
        if entry is not None and entry.token == token:
            entry.token, entry.renew_at, entry.expires_at = "", 0.0, 0.0
            self.store(key, entry)


def default_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edfi-singer" / "oauth-tokens.json"


class FileTokenCache(TokenCache):
    """A JSON file (mode 0600, replaced atomically) locked with ``flock`` on a ``.lock`` file beside it."""

    def __init__(self, path: str | os.PathLike[str], lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.path = Path(path).expanduser()
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout = lock_timeout
        self.description = f"token cache {self.path}"
        self._warned: set[str] = set()

    def _warn_once(self, what: str, message: str, *args: Any) -> None:
        if what not in self._warned:
            self._warned.add(what)
            logger.warning(message, *args)

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        import fcntl

        fd = None
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        self._warn_once("lock", "%s: another process has held its lock for over %.0fs; going on "
                                        "without it", self.description, self.lock_timeout)
                        break
                    time.sleep(0.05)
        except OSError as exc:
            self._warn_once("lock", "%s cannot be locked (%s); going on without it", self.description,
                            exc.strerror or type(exc).__name__)
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # releases the lock

    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._warn_once("read", "%s cannot be read (%s); ignoring it", self.description,
                            exc.strerror or type(exc).__name__)
            return {}
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
                raise ValueError("not a token cache")
        except (ValueError, UnicodeDecodeError):
            # never show the content: it may hold tokens
            self._warn_once("corrupt", "%s is corrupt (%d bytes that are not a token cache); ignoring it, it is "
                            "rewritten with the next token", self.description, len(raw))
            return {}
        return data["entries"]

    def load(self, key: str) -> CachedToken | None:
        return CachedToken.from_json(self._read().get(key))

    def store(self, key: str, entry: CachedToken) -> None:
        now = time.time()
        entries = {k: v for k, v in self._read().items()
                   if k != key and (CachedToken.from_json(v) or CachedToken("", 0, 0)).expires_at > now}
        entries[key] = asdict(entry)
        body = json.dumps({"version": 1, "entries": entries}, indent=1).encode()
        tmp = None
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "wb") as fh:  # mkstemp creates it 0600
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            tmp = None
        except OSError as exc:
            self._warn_once("write", "%s cannot be written (%s); the token is not shared with other runs",
                            self.description, exc.strerror or type(exc).__name__)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


class PostgresTokenCache(TokenCache):
    """A table ``edfi_singer_oauth_tokens`` (in the first schema of the connection's ``search_path``), locked
    with a PostgreSQL advisory lock per key. One connection per use: tokens are fetched rarely."""

    def __init__(self, url: str, lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.url = url
        self.lock_timeout = lock_timeout
        self.description = f"token cache PostgreSQL {url.split('@')[-1].split('?')[0]}"
        self._conn: Any = None
        self._created = False
        self._warned = False

    def _warn(self, what: str, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            # the driver's message, not the URL (it may carry a password)
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            logger.warning("%s: cannot %s (%s); going on without it", self.description, what, detail)

    @staticmethod
    def _lock_id(key: str) -> int:
        return int.from_bytes(bytes.fromhex(key[:16]), "big", signed=True)

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        conn = None
        try:
            import psycopg

            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            conn.execute(f"SET lock_timeout = '{int(self.lock_timeout * 1000)}ms'")
            if not self._created:
                conn.execute("SELECT pg_advisory_lock(%s)", (self._lock_id("0" * 16),))
                try:
                    conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (cache_key TEXT PRIMARY KEY, "
                                 "entry TEXT NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now())")
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (self._lock_id("0" * 16),))
                self._created = True
            conn.execute("SELECT pg_advisory_lock(%s)", (self._lock_id(key),))
            self._conn = conn
        except Exception as exc:  # no driver, server down, lock timeout: the run goes on without a cache
            self._warn("connect or lock", exc)
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            conn = None
        try:
            yield
        finally:
            self._conn = None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()  # ends the session: releases the advisory lock

    def load(self, key: str) -> CachedToken | None:
        if self._conn is None:
            return None
        try:
            row = self._conn.execute(f"SELECT entry FROM {TABLE} WHERE cache_key = %s", (key,)).fetchone()
        except Exception as exc:
            self._warn("read", exc)
            return None
        if row is None:
            return None
        try:
            entry = CachedToken.from_json(json.loads(row[0]))
        except ValueError:
            entry = None
        if entry is None:
            logger.warning("%s: the entry of this client is corrupt; ignoring it", self.description)
        return entry

    def store(self, key: str, entry: CachedToken) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(
                f"INSERT INTO {TABLE} (cache_key, entry) VALUES (%s, %s) ON CONFLICT (cache_key) "
                "DO UPDATE SET entry = EXCLUDED.entry, updated_at = now()", (key, json.dumps(asdict(entry))))
        except Exception as exc:
            self._warn("write", exc)


def open_token_cache(setting: str | None) -> TokenCache | None:
    """The cache a ``token_cache`` setting names (None: the default file; ``off``: no cache)."""
    value = (setting or "").strip() or os.environ.get(ENV_VAR, "").strip()
    if value.lower() in OFF:
        return None
    if value.startswith(("postgresql://", "postgres://")):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None:  # not a passing fault: never "going on without it"
            raise ValueError("token_cache setting: a postgresql:// URL needs the psycopg driver, which is not "
                             "installed: install the plugin with its postgres extra (pip install "
                             "'edfi-singer[postgres]'; in meltano.yml: pip_url: -e .[postgres]), or set token_cache "
                             "to a file path")
        return PostgresTokenCache(value)
    return FileTokenCache(value or default_path())


__all__ = ["CachedToken", "FileTokenCache", "PostgresTokenCache", "TokenCache", "cache_key", "open_token_cache"]
