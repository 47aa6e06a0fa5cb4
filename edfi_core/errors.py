"""Known failures as one actionable line: the root cause, what to do, and the traceback only at DEBUG.

Both plugins' command lines go through :func:`one_line_errors`: an API that cannot be reached (``Connection
refused``, ``Name or service not known``, a deadline), refused credentials, a ``base_url`` that is not the API root
(it answered 404), a resource the client may not read (403) or a setting the API cannot honour end the run with one
ERROR line and exit code 2, never a secret.
"""

from __future__ import annotations

import logging
import re
import socket
import sys
from collections.abc import Callable
from typing import Any

from edfi_core.auth import AuthError
from edfi_core.session import EdFiHTTPError

#: exit code of a run stopped by a known failure
EXIT_KNOWN_FAILURE = 2


def root_cause(exc: BaseException) -> str | None:
    """The innermost network error's own words (``Connection refused``, ``Name or service not known``)."""
    seen: set[int] = set()
    found: str | None = None
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        for candidate in (node, getattr(node, "cause", None)):
            if isinstance(candidate, OSError) and candidate.strerror:
                found = str(candidate.strerror)
        node = node.__cause__ or node.__context__
    return found


def explain(exc: BaseException) -> str:
    """One line saying what failed, why (the root cause) and what to do."""
    text = str(exc) or type(exc).__name__
    http = exc if isinstance(exc, EdFiHTTPError) else _find(exc, EdFiHTTPError)
    if isinstance(http, EdFiHTTPError) and http.status is None and not isinstance(exc, AuthError):
        cause = root_cause(http) or http.server_message or "no response"
        cause = re.sub(r"^\w+(Error|error): (\[Errno -?\d+\] )?", "", cause)
        host = re.sub(r"^(\w+://[^/]+).*$", r"\1", http.url)
        if "not known" in cause or "resolution" in cause or _find(exc, socket.gaierror) is not None:
            hint = "the host name does not resolve: check base_url"
        elif "refused" in cause.lower():
            hint = "nothing listens there: is the API running, and are base_url's host and port right?"
        elif "timed out" in cause.lower() or "deadline" in cause.lower():
            hint = "no answer in time: check the network path (proxy, firewall) or raise request_timeout"
        else:
            hint = "check base_url and the network path to it"
        where = f"{http.method} {http.url}"
        if text.startswith("stream "):
            where = f"{text.split(': ', 1)[0]}: {where}"
        what = cause if cause == "no response" else f"no response: {cause}"
        tries = f" (after {http.tries} tries)" if http.tries > 1 else ""
        return f"{where} failed: {what}{tries} (cannot reach the API at {host}: {hint})"
    if isinstance(http, EdFiHTTPError) and http.status == 403:
        return (f"{text}. The API client may not read or write this resource: ask the API's host for a claim set "
                "that includes it")
    return text


def _find(exc: BaseException, kind: type) -> BaseException | None:
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, kind):
            return node
        cause = getattr(node, "cause", None)
        if isinstance(cause, kind) and isinstance(cause, BaseException):
            return cause
        node = node.__cause__ or node.__context__
    return None


def one_line_errors(main: Callable[..., Any], logger: logging.Logger,
                    known: tuple[type[BaseException], ...]) -> Callable[..., Any]:
    """``main`` (a click command's ``main``) with the ``known`` failures logged as one ERROR line (the traceback
    at DEBUG) and exit code :data:`EXIT_KNOWN_FAILURE`."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except known as exc:
            logger.debug("the failure in full", exc_info=True)
            logger.error("%s", explain(exc))
            sys.exit(EXIT_KNOWN_FAILURE)

    return wrapped


__all__ = ["EXIT_KNOWN_FAILURE", "explain", "one_line_errors", "root_cause"]
