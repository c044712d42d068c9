"""Readiness of an OpenWork server over HTTP: wait for ``GET /health``, check ``/workspaces`` auth.

The wait polls with a capped exponential backoff (50 ms, doubling, at most 0.1 s between tries),
ends at once when the sandbox has died, and on timeout names the endpoint, the deadline, the
sandbox's state, its last log line, and a hint. Over https each request verifies the certificate
against ``verify`` (:mod:`openwork_sandbox.net.http`); one that does not verify ends a wait at once
(:class:`~openwork_sandbox.net.http.CertificateRejected`, one line).
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from openwork_sandbox.config import is_loopback
from openwork_sandbox.core.errors import UnreachableError, WorkflowError
from openwork_sandbox.net.http import SANDBOX_GET_ERRORS, CertificateRejected, NoAnswer, sandbox_get

FIRST_DELAY = 0.02
MAX_DELAY = 0.1  # between polls of another host: a late answer costs up to this much start time
# ...and of this host: a refused poll on loopback costs a fraction of a millisecond, and until the
# server's port opens (the orchestrator opens it after opencode answers) every start waits in refused
# polls, so `up` notices an answer within about this much of the time a bare `docker run` would
LOOPBACK_DELAY = 0.02
# The first polls give up on a connection that is not answered this soon (doubling from there): the
# orchestrator checks that its port is free by listening on it for a moment, and a poll that connects
# then is accepted and never answered, while the orchestrator waits for that connection to end before
# it starts anything: each such poll stalls the start by its timeout (1 s in about one start in four
# when this was 1 s; docs/design-notes/cost.md)
FIRST_POLL_TIMEOUT = 0.1
ALIVE_CHECK_EVERY = 0.5  # seconds between is_alive() calls (each a question to the runtime)
# a server we did not start (--url) that answers as no OpenWork server does for this long is not one (a
# proxy in front of one may answer 404 for a moment while its backend registers)
NOT_OPENWORK_AFTER = 3.0


class HealthTimeout(WorkflowError):
    """Something answered, but not healthily, before the deadline (exit 1).

    ``log_lines`` holds the sandbox's last log lines, ``log_hint`` where the full log is.
    """

    def __init__(self, message: str, *, log_lines: list[str] | None = None, log_hint: str = ""):
        super().__init__(message)
        self.log_lines = list(log_lines or [])
        self.log_hint = log_hint


class NothingListening(UnreachableError, HealthTimeout):
    """Nothing ever answered HTTP at the URL before the deadline (an UnreachableError: exit 3)."""


class NotOpenWork(HealthTimeout):
    """What answers at the URL is not an OpenWork server, or not over that scheme; the wait ended
    before the deadline because the answer will not change (exit 1)."""


class SandboxDied(WorkflowError):
    """The sandbox or its server process stopped while we waited."""

    def __init__(self, message: str, *, log_lines: list[str] | None = None, log_hint: str = ""):
        super().__init__(message)
        self.log_lines = list(log_lines or [])
        self.log_hint = log_hint


def _describe(describe: Callable[[], tuple[str, list[str], str]] | None) -> tuple[str, list[str], str]:
    if describe is None:
        return "unknown", [], ""
    try:
        return describe()
    except WorkflowError as exc:
        return f"unknown ({exc.message})", [], ""


def _json_object(raw) -> dict | None:
    """A health body: the JSON object in ``raw``, or None (not JSON, or not an object)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _not_openwork(status: int, raw: bytes) -> str | None:
    """What a ``/health`` answer shows when no OpenWork server would give it (a 4xx but 408 and
    429, a 2xx that is not a JSON object), else None (healthy, or a 5xx/408/429: may still change)."""
    if 200 <= status < 300:
        return None if _json_object(raw) is not None else f"{status} with a body that is not a JSON object"
    if 400 <= status < 500 and status not in (408, 429):
        return str(status)
    return None


def _plain_http_instead(url: str, timeout_s: float) -> NotOpenWork | None:
    """For an https URL whose TLS handshake failed before any certificate: the error to end with
    when the port answers plain HTTP (asked once over http://), else None (keep waiting)."""
    parts = urlsplit(url)
    plain = urlunsplit(("http", parts.netloc, parts.path, parts.query, "")).rstrip("/")
    try:
        sandbox_get(plain + "/health", timeout_s=min(timeout_s, 5.0))
    except SANDBOX_GET_ERRORS:
        return None
    return NotOpenWork(f"{parts.netloc} speaks plain HTTP, not TLS (the https handshake failed): use {plain}")


def wait_for_health(
    url: str,
    deadline_s: float,
    *,
    is_alive: Callable[[], bool] | None = None,
    timeout_s: float = 2.0,
    describe: Callable[[], tuple[str, list[str], str]] | None = None,
    verify: bool | str = True,
    foreign: bool = False,
) -> dict:
    """Poll ``GET <url>/health`` until it answers 2xx with a JSON body; return that body.

    ``is_alive()`` (optional) is asked about twice a second; False ends the wait at once with
    :class:`SandboxDied`. ``describe()`` (optional) returns ``(state, last log lines, log hint)``
    for the error messages. At the deadline: :class:`NothingListening` (an UnreachableError) when
    nothing ever answered HTTP, else :class:`HealthTimeout` (a WorkflowError).

    ``foreign``: a server this tool did not start (``smoke --url``), so an answer that will not
    change ends the wait before the deadline with :class:`NotOpenWork`: answers no OpenWork server
    gives (a 404, a page that is not JSON) for :data:`NOT_OPENWORK_AFTER` seconds; a connection
    accepted and not answered within ``timeout_s``; an https URL on a port that does not speak TLS.
    """
    endpoint = url.rstrip("/") + "/health"
    start = time.monotonic()
    deadline = start + deadline_s
    delay = FIRST_DELAY
    max_delay = LOOPBACK_DELAY if is_loopback(urlsplit(url).hostname or "") else MAX_DELAY
    last_problem = "no answer yet"
    # A just-started server may read a request and never answer it (and the orchestrator's port check
    # holds it): the first polls give up after FIRST_POLL_TIMEOUT and try again, each timeout doubling
    # it, up to timeout_s (a foreign one has not just started: timeout_s from the first poll).
    poll_timeout = timeout_s if foreign else min(FIRST_POLL_TIMEOUT, timeout_s)
    answered = False
    strange_since: float | None = None  # foreign: when answers no OpenWork server gives began
    next_alive_check = start + ALIVE_CHECK_EVERY
    from openwork_sandbox.core.console import heartbeat  # off a TTY: what we wait for, and why not yet

    beat = heartbeat(
        lambda: f"waiting for {endpoint} to answer healthy ({last_problem}; deadline {deadline_s:g}s)"
    ).start()
    try:
        while True:
            try:
                status, raw = sandbox_get(
                    endpoint, timeout_s=min(poll_timeout, max(0.05, deadline - time.monotonic())), verify=verify
                )
                answered = True
                if 200 <= status < 300:
                    body = _json_object(raw)
                    if body is not None:
                        return body
                    last_problem = f"HTTP {status} with a body that is not a JSON object"
                else:
                    last_problem = f"HTTP {status}"
                strange = _not_openwork(status, raw) if foreign else None
                if not strange:
                    strange_since = None
                elif strange_since is None:
                    strange_since = time.monotonic()
                if strange_since is not None and time.monotonic() - strange_since >= NOT_OPENWORK_AFTER:
                    raise NotOpenWork(
                        f"GET {endpoint} answered {strange} for {NOT_OPENWORK_AFTER:g}s: not an OpenWork server "
                        '(its /health answers 200 {"ok": true, ...}); check --url (host, port, path)'
                    )
            except ConnectionRefusedError:
                last_problem = "connection refused"
            except TimeoutError as exc:
                if foreign and isinstance(exc, NoAnswer) and poll_timeout >= timeout_s:
                    raise NotOpenWork(
                        f"GET {endpoint}: {exc} (not an OpenWork server, or a stuck one); check --url, "
                        "or raise OPENWORK_REQUEST_TIMEOUT if it is only slow"
                    ) from None
                last_problem = f"no answer within {poll_timeout:g}s"
                poll_timeout = min(poll_timeout * 2, timeout_s)  # a slow server gets the whole timeout soon
            except ssl.SSLError as exc:
                mismatch = _plain_http_instead(url, timeout_s) if foreign else None
                if mismatch is not None:
                    raise mismatch from None
                last_problem = f"TLS: {exc.reason or exc.__class__.__name__}"
            except SANDBOX_GET_ERRORS as exc:
                last_problem = exc.__class__.__name__
            now = time.monotonic()
            if is_alive is not None and now >= next_alive_check:
                next_alive_check = now + ALIVE_CHECK_EVERY
                if not is_alive():
                    state, lines, hint = _describe(describe)
                    raise SandboxDied(
                        f"the server stopped before {endpoint} answered (state: {state}); "
                        f"{('last log line: ' + lines[-1].strip()) if lines else 'no log output'}"
                        f"{('; full log: ' + hint) if hint else ''}",
                        log_lines=lines,
                        log_hint=hint,
                    )
            if now >= deadline:
                state, lines, hint = _describe(describe)
                raise (HealthTimeout if answered else NothingListening)(
                    f"GET {endpoint} not healthy within {deadline_s:g}s ({last_problem}; sandbox state: {state}); "
                    f"{('last log line: ' + lines[-1].strip() + '; ') if lines else ''}"
                    f"hint: {hint or 'check the server log'}; raise OPENWORK_HEALTH_TIMEOUT if it is only slow",
                    log_lines=lines,
                    log_hint=hint,
                )
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, max_delay)
    finally:
        beat.stop()


def check_workspaces(
    url: str, token: str, *, timeout_s: float = 15.0, path: str = "/workspace", verify: bool | str = True
) -> str | None:
    """``GET /workspaces`` must be 401 without a token and 200 with the client token.

    Returns the id of the workspace at ``path`` (the one ``smoke`` checks; None when it is not
    listed). Raises WorkflowError naming what answered instead.
    """
    endpoint = url.rstrip("/") + "/workspaces"
    try:
        anon, _ = sandbox_get(endpoint, timeout_s=timeout_s, verify=verify)
        if anon != 401:
            raise WorkflowError(
                f"GET {endpoint} without a token answered {anon}, expected 401: the server does not "
                f"enforce its client token"
            )
        authed, raw = sandbox_get(
            endpoint, headers={"Authorization": f"Bearer {token}"}, timeout_s=timeout_s, verify=verify
        )
    except SANDBOX_GET_ERRORS as exc:
        raise UnreachableError(f"GET {endpoint} failed ({exc.__class__.__name__}); is the server still up?") from None
    if authed != 200:
        raise WorkflowError(
            f"GET {endpoint} with the client token answered {authed}, expected 200: the server was "
            f"started with another token (run `invoke up --replace`)"
        )
    try:
        body = json.loads(raw)
    except ValueError:
        raise WorkflowError(f"GET {endpoint} answered 200 with a body that is not JSON") from None
    from openwork_sandbox.net.openwork_api import workspace_at

    items = (body.get("items") or body.get("workspaces") or []) if isinstance(body, dict) else []
    chosen = workspace_at(items, path)
    return chosen.get("id") if chosen else None


def health_once(url: str, *, timeout_s: float = 1.0, verify: bool | str = True) -> dict | None:
    """One quick ``GET /health``: the JSON body when healthy, else None (for status and reuse; a
    certificate that does not verify is not healthy either)."""
    try:
        status, raw = sandbox_get(url.rstrip("/") + "/health", timeout_s=timeout_s, verify=verify)
    except (*SANDBOX_GET_ERRORS, CertificateRejected):
        return None
    return _json_object(raw) if 200 <= status < 300 else None


def accepts_token(url: str, token: str, *, timeout_s: float = 2.0, verify: bool | str = True) -> bool | None:
    """Whether the server at ``url`` is the one started with ``token``: ``GET /workspaces`` with it
    answers 200 (True) or 401/403 (False: another server holds the port); None for any other
    answer or none (cannot tell)."""
    try:
        code, _ = sandbox_get(
            url.rstrip("/") + "/workspaces",
            headers={"Authorization": f"Bearer {token}"},
            timeout_s=timeout_s,
            verify=verify,
        )
    except (*SANDBOX_GET_ERRORS, CertificateRejected):
        return None
    return True if code == 200 else False if code in (401, 403) else None
