"""The smoke checks, each declared once: name, prerequisites, what it proves, the function.

``@check(name, needs=(...), proves="...")`` registers a function in :data:`DECLARED`, in order.
Everything else comes from that list: the runner's order and skip-with-reason logic
(:class:`openwork_sandbox.smoke.runner.SmokeRunner`), the names in the table, ``--json`` and JUnit,
and the list in the runner's module doc and ``invoke --help smoke``. The one ``readiness`` check (health) is the
gate: when it does not pass it is an error (JUnit ``<error>``), not a failure.

Adding a check is one decorated function here. A check gets the runner (``r``: ``r.client``,
``r.target``, ``r.report``, the timeouts) and returns what it found, or raises :class:`CheckFailed`
(or :class:`Skip`). Kept free of heavy imports: ``invoke --list`` reads the declarations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from openwork_sandbox.core.errors import WorkflowError

if TYPE_CHECKING:
    from openwork_sandbox.net.openwork_api import ApiResponse

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"  # ERROR: not ready (JUnit <error>)
GUEST_WORKSPACE = "/workspace"


@dataclasses.dataclass(frozen=True)
class Check:
    """One declared check."""

    name: str
    needs: tuple[str, ...]  # checks that must pass first, else this one is skipped with the reason
    proves: str  # one line: what a pass means
    run: Callable[[Any], str]  # takes the runner, returns what it found
    readiness: bool = False  # the gate: not passing is an error (not ready), not a failure


DECLARED: list[Check] = []


def check(name: str, *, proves: str, needs: tuple[str, ...] = (), readiness: bool = False):
    """Declare the decorated function as the check ``name`` (run in declaration order)."""

    def register(fn: Callable[[Any], str]) -> Callable[[Any], str]:
        unknown = [n for n in needs if n not in {c.name for c in DECLARED}]
        if unknown or any(c.name == name for c in DECLARED):
            raise ValueError(f"check {name}: unknown or later prerequisites {unknown}, or a duplicate name")
        DECLARED.append(Check(name, tuple(needs), proves, fn, readiness))
        return fn

    return register


def describe(indent: str = "    ") -> str:
    """One line per check, ``name  what it proves``, for the module doc and ``--help``."""
    width = max(len(c.name) for c in DECLARED) + 2
    return "\n".join(f"{indent}{c.name.ljust(width)}{c.proves}" for c in DECLARED)


class CheckFailed(Exception):
    """A check's verdict: the message (one line), a hint, and the response it is about."""

    def __init__(self, message: str, response=None, hint: str = "", result: str = FAILED):
        super().__init__(message)
        self.message, self.response, self.hint, self.result = message, response, hint, result


class Skip(Exception):
    """The check does not apply to this run; ``reason`` says why (shown as skipped)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# health ---------------------------------------------------------------------------------
@check(
    "health",
    needs=(),
    readiness=True,
    proves='GET /health is 200 {"ok": true, "version": ...}; adaptive poll up to OPENWORK_HEALTH_TIMEOUT',
)
def health(r) -> str:
    """Wait for GET /health (:func:`openwork_sandbox.net.health.wait_for_health`) up to
    OPENWORK_HEALTH_TIMEOUT, then check the body: ``ok`` is true and ``version`` is a string."""
    from openwork_sandbox.net.health import HealthTimeout, NothingListening, NotOpenWork, wait_for_health
    from openwork_sandbox.net.http import CertificateRejected
    from openwork_sandbox.net.openwork_api import ApiResponse

    url = r.client.url("/health")
    try:
        body = wait_for_health(
            r.target.url,
            r.health_timeout,
            is_alive=r.is_alive,
            timeout_s=r.request_timeout,
            verify=r.target.verify,
            foreign=r.target.mode == "url",  # a server we did not start: a wrong answer ends the wait
        )
    except CertificateRejected as exc:  # the server answers, as someone this client cannot trust
        raise CheckFailed(exc.message, result=ERROR) from None
    except NotOpenWork as exc:  # --url names something else: it will not become healthy
        raise CheckFailed(exc.message, result=ERROR) from None
    except NothingListening:
        r.report.unreachable = True
        raise CheckFailed(
            f"nothing listening at {url} within {r.health_timeout:g}s", hint=_unreachable_hint(r), result=ERROR
        ) from None
    except HealthTimeout as exc:  # something answered, never healthy
        raise CheckFailed(
            exc.message, _last_health(r), result=ERROR, hint="the server answers but is not ready: see its log"
        ) from None
    except WorkflowError as exc:  # the sandbox is not running, or died while we waited
        if not _listening(r.target.url, min(r.request_timeout, 2.0)):
            r.report.unreachable = True
        raise CheckFailed(
            exc.message, result=ERROR, hint="start it with `invoke up`; `invoke logs` shows the server log"
        ) from None
    return _health_body(r, ApiResponse("GET", url, 200, json.dumps(body), 0.0), body)


def _last_health(r) -> ApiResponse | None:
    """One more GET /health after a failed wait, so the report shows what the server answers."""
    from openwork_sandbox.net.openwork_api import TransportError

    try:
        return r.client.health()
    except TransportError:
        return None


def _unreachable_hint(r) -> str:
    if r.target.mode == "url":
        return "check --url (scheme, host, port, path) and that the server is running"
    return "is the sandbox up? `invoke status`; start it with `invoke up`"


def _health_body(r, resp: ApiResponse, body: dict) -> str:
    if body.get("ok") is not True:
        raise CheckFailed(f'GET /health is 200 but "ok" is {body.get("ok")!r}, expected true', resp, result=ERROR)
    version = body.get("version")
    if not isinstance(version, str) or not version:
        raise CheckFailed('GET /health has no "version" string', resp, result=ERROR)
    r.report.server_version = version
    detail = f"server {version}"
    opencode = body.get("opencodeVersion")
    if isinstance(opencode, str) and opencode:
        r.report.opencode_version = opencode
        detail += f", opencode {opencode}"
    return detail


# auth -----------------------------------------------------------------------------------
@check(
    "auth-required",
    needs=("health",),
    proves='GET /workspaces without a token, and with a wrong one, is 401 {"code": "unauthorized"}',
)
def auth_required(r) -> str:
    anonymous = r.client.workspaces(None)
    if anonymous.status != 401:
        raise CheckFailed(
            f"GET /workspaces without a token answered {anonymous.status}, expected 401",
            anonymous,
            hint="the server lets anonymous clients in: it must run with a client token",
        )
    _unauthorized_body(anonymous, "without a token")
    wrong = r.client.workspaces("openwork-smoke-wrong-" + secrets.token_hex(8))
    if wrong.status != 401:
        raise CheckFailed(
            f"GET /workspaces with a wrong token answered {wrong.status}, expected 401",
            wrong,
            hint="the server accepts any bearer token",
        )
    _unauthorized_body(wrong, "with a wrong token")
    return "401 without a token and with a wrong one"


@check(
    "auth-accepted",
    needs=("health",),
    proves="GET /workspaces with the client token is 200 and lists the workspace; id = ws_ + sha256(path)[:12]",
)
def auth_accepted(r) -> str:
    if not r.target.token:
        raise Skip(f"no client token ({r.target.token_source})")
    resp = r.client.workspaces(r.target.token)
    if resp.status == 401:
        raise CheckFailed(
            f"401 with the configured client token ({r.target.token_source})",
            resp,
            hint=f"check {r.target.token_source}: it must be the token the server was started "
            "with (`invoke up --show-tokens` prints the sandbox's)",
        )
    if resp.status != 200:
        raise CheckFailed(f"GET /workspaces with the client token answered {resp.status}, expected 200", resp)
    body = _json_object(resp, "GET /workspaces")
    items = body.get("items", body.get("workspaces"))
    if not isinstance(items, list) or not items:
        raise CheckFailed('GET /workspaces lists no workspace (expected a non-empty "items" list)', resp)
    workspaces = [w for w in items if isinstance(w, dict)]
    if len(workspaces) != len(items) or any(
        not isinstance(w.get("id"), str) or not isinstance(w.get("path"), str) for w in workspaces
    ):
        raise CheckFailed('GET /workspaces: every workspace needs an "id" and a "path" string', resp)
    if r.target.expected_workspace:
        from openwork_sandbox.net.openwork_api import workspace_at

        chosen = workspace_at(workspaces, r.target.expected_workspace)
        if chosen is None:
            paths = ", ".join(w["path"] for w in workspaces)
            raise CheckFailed(f"no workspace for {r.target.expected_workspace} (listed: {paths})", resp)
    else:
        active = body.get("activeId")
        chosen = next((w for w in workspaces if w["id"] == active), workspaces[0])
    from openwork_sandbox.net.openwork_api import workspace_id

    expected = workspace_id(chosen["path"])
    if chosen["id"] != expected:
        raise CheckFailed(
            f"workspace {chosen['path']} has id {chosen['id']}, expected {expected} (ws_ + sha256(path)[:12])", resp
        )
    if r.target.expected_workspace_id and chosen["id"] != r.target.expected_workspace_id:
        raise CheckFailed(
            f"workspace id {chosen['id']} differs from the sandbox's {r.target.expected_workspace_id}", resp
        )
    r.ws_id = r.report.workspace_id = chosen["id"]
    return f"{chosen['id']} ({chosen['path']}), {len(workspaces)} workspace{'s' if len(workspaces) != 1 else ''}"


@check("host-token", needs=("health",), proves="GET /approvals accepts the host token and refuses the client token")
def host_token(r) -> str:
    if not r.target.host_token:
        raise Skip(f"no host token ({r.target.host_token_source})")
    resp = r.client.approvals(host_token=r.target.host_token)
    if resp.status in (401, 403):
        raise CheckFailed(
            f"{resp.status} with the configured host token ({r.target.host_token_source})",
            resp,
            hint=f"check {r.target.host_token_source}: it must be the server's host token",
        )
    if resp.status != 200:
        raise CheckFailed(f"GET /approvals with the host token answered {resp.status}, expected 200", resp)
    body = _json(resp, "GET /approvals")
    # Upstream's exact shape is not pinned in the contract: a list, or an object holding one.
    if not (isinstance(body, list) or (isinstance(body, dict) and any(isinstance(v, list) for v in body.values()))):
        raise CheckFailed("GET /approvals: expected a list of approval requests (or an object with one)", resp)
    if r.target.token:
        client = r.client.approvals(bearer=r.target.token)
        if client.status == 200:
            raise CheckFailed(
                "GET /approvals accepted the client token: a host-only route must refuse it",
                client,
                hint="OPENWORK_TOKEN and OPENWORK_HOST_TOKEN must differ, and the client token "
                "must not have owner scope",
            )
        if client.status not in (401, 403):
            raise CheckFailed(
                f"GET /approvals with the client token answered {client.status}, expected 401 or 403", client
            )
        return f"host token accepted, client token refused ({client.status})"
    return "host token accepted"


# sessions -------------------------------------------------------------------------------
@check(
    "session-create",
    needs=("auth-accepted",),
    proves='POST /w/<id>/opencode/session {"title"} returns a session with an id and that title',
)
def session_create(r) -> str:
    assert r.ws_id
    resp = r.client.create_session(r.ws_id, r.title)
    if not 200 <= resp.status < 300:
        raise CheckFailed(f"POST /w/{r.ws_id}/opencode/session answered {resp.status}, expected 200", resp)
    body = _json_object(resp, "POST session")
    sid = body.get("id")
    if not isinstance(sid, str) or not sid:
        raise CheckFailed('the created session has no "id"', resp)
    if body.get("title") != r.title:
        raise CheckFailed(f"the created session's title is {body.get('title')!r}, expected {r.title!r}", resp)
    r.session_id = sid
    return sid


@check(
    "session-read", needs=("session-create",), proves="GET /w/<id>/opencode/session/<sid> returns the same id and title"
)
def session_read(r) -> str:
    assert r.ws_id and r.session_id
    resp = r.client.get_session(r.ws_id, r.session_id)
    if resp.status != 200:
        raise CheckFailed(f"GET session {r.session_id} answered {resp.status}, expected 200", resp)
    body = _json_object(resp, "GET session")
    if body.get("id") != r.session_id:
        raise CheckFailed(f"GET session returned id {body.get('id')!r}, expected {r.session_id!r}", resp)
    if body.get("title") != r.title:
        raise CheckFailed(f"GET session returned title {body.get('title')!r}, expected {r.title!r}", resp)
    return "same id and title"


@check(
    "messages-read",
    needs=("session-create",),
    proves="GET /w/<id>/opencode/session/<sid>/message?limit=10 returns a list",
)
def messages_read(r) -> str:
    assert r.ws_id and r.session_id
    resp = r.client.session_messages(r.ws_id, r.session_id, limit=10)
    if resp.status != 200:
        raise CheckFailed(f"GET session messages answered {resp.status}, expected 200", resp)
    body = _json(resp, "GET messages")
    if not isinstance(body, list):
        raise CheckFailed(f"GET session messages returned a {type(body).__name__}, expected a list", resp)
    if any(not isinstance(m, dict) or "info" not in m or not isinstance(m.get("parts"), list) for m in body):
        raise CheckFailed('every message needs "info" and a "parts" list', resp)
    return f"{len(body)} message{'s' if len(body) != 1 else ''}"


# the agent ------------------------------------------------------------------------------
@check(
    "prompt-answered",
    needs=("session-create",),
    proves="(--prompt TEXT) TEXT sent to that session gets an assistant reply with text within "
    "OPENWORK_PROMPT_TIMEOUT; first words, time to first token, total time",
)
def prompt_answered(r) -> str:
    """``prompt_async`` through the proxy, then poll the session's messages (backoff from 50 ms) and
    opencode's session status until the reply is complete, refused, retried or late
    (:mod:`openwork_sandbox.smoke.agent_reply` reads them)."""
    import time

    from openwork_sandbox.net.openwork_api import TransportError
    from openwork_sandbox.smoke.agent_reply import first_words, metrics, read_reply, scrub

    if not r.prompt:
        raise Skip("not requested (--prompt TEXT)")
    assert r.ws_id and r.session_id
    started = time.perf_counter()
    sent = r.client.prompt_async(r.ws_id, r.session_id, r.prompt)
    if not 200 <= sent.status < 300:
        raise CheckFailed(
            f"POST /w/{r.ws_id}/opencode/session/{r.session_id}/prompt_async answered {sent.status}, expected 204", sent
        )
    deadline, delay = started + r.prompt_timeout, 0.05
    seen_at = None  # when this client first saw reply text
    reply = None
    while True:
        try:
            messages = r.client.session_messages(r.ws_id, r.session_id, limit=10)
            status = r.client.session_status(r.ws_id)
        except TransportError as exc:  # opencode busy with the reply may answer a poll late: ask again
            if exc.kind != "timeout" or time.perf_counter() >= deadline:
                raise
            continue
        reply = read_reply(
            _json(messages, "GET messages") if messages.status == 200 else None,
            _json(status, "GET session status") if status.status == 200 else None,
            r.session_id,
        )
        now = time.perf_counter()
        if reply.text and seen_at is None:
            seen_at = now - started
        r.metrics["prompt-answered"] = metrics(reply, seen_at, now - started)
        if reply.done or reply.retrying or now >= deadline:
            break
        time.sleep(min(delay, max(0.0, deadline - now)))
        delay = min(delay * 2, 0.5)
    hint = (
        "check the provider's key (OPENWORK_SANDBOX_ENV), its address from inside the sandbox and "
        "OPENWORK_OPENCODE_CONFIG; `invoke doctor` lists them"
    )
    if reply.error:
        raise CheckFailed(f"the provider refused: {scrub(reply.error)}", hint=hint)
    if reply.retrying:
        _abort(r)
        raise CheckFailed(f"the provider failed and opencode is retrying: {scrub(reply.retrying)}", hint=hint)
    if not reply.done:
        _abort(r)
        raise CheckFailed(
            f"no complete reply within {r.prompt_timeout:g}s (OPENWORK_PROMPT_TIMEOUT)"
            + (f'; it had begun: "{first_words(reply.text)}"' if reply.text else ""),
            hint=hint,
        )
    if not reply.text:
        raise CheckFailed("the reply is complete but has no text", messages)
    m = r.metrics["prompt-answered"]
    first = f"{m['first_token_seconds']:.2f}s" if m["first_token_seconds"] is not None else "?"
    return (
        f'"{m["first_words"]}" ({reply.model or "default model"}; first token {first}, total {m["total_seconds"]:.2f}s)'
    )


def _abort(r) -> None:
    """Stop opencode's retries for the smoke session (best effort)."""
    from openwork_sandbox.net.openwork_api import TransportError

    with contextlib.suppress(TransportError):
        r.client.abort_session(r.ws_id, r.session_id)


# persistence ----------------------------------------------------------------------------
@check(
    "persistence",
    needs=("health",),
    proves="(--persistence) a file written in /workspace by the runtime appears on the host",
)
def persistence(r) -> str:
    if not r.persistence:
        raise Skip("not requested (--persistence)")
    if r.target.exec_in_runtime is None or r.target.host_workspace is None:
        raise Skip("needs a sandbox whose workspace is a folder on this host (not --url, not a swarm node's volume)")
    name = f".openwork-smoke-{secrets.token_hex(6)}"
    value = secrets.token_hex(8)
    code, output = r.target.exec_in_runtime(["sh", "-c", f"printf %s {value} > {GUEST_WORKSPACE}/{name}"])
    if code != 0:
        raise CheckFailed(
            f"writing {GUEST_WORKSPACE}/{name} in the sandbox failed (exit {code}): {console_line(output)}"
        )
    host_file = r.target.host_workspace / name
    try:
        found = host_file.read_text() if host_file.exists() else None
        if found != value:
            seen = "is missing" if found is None else f"holds {found[:40]!r}"
            raise CheckFailed(
                f"{GUEST_WORKSPACE}/{name} was written in the sandbox but {host_file} {seen}",
                hint="/workspace must be bind-mounted from OPENWORK_MICROSANDBOX_WORKSPACE_DIR",
            )
    finally:
        with contextlib.suppress(OSError):
            host_file.unlink()
    return f"{GUEST_WORKSPACE}/{name} -> {host_file}"


def _listening(url: str, timeout: float) -> bool:
    """Does anything accept a TCP connection at the URL's host and port?"""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def console_line(text: str) -> str:
    """The last non-empty line of a command's output, cut to 200 characters."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "(no output)"


def _json(resp: ApiResponse, what: str) -> Any:
    try:
        return resp.json()
    except ValueError as exc:
        raise CheckFailed(f"{what}: {exc}", resp) from None


def _json_object(resp: ApiResponse, what: str) -> dict:
    body = _json(resp, what)
    if not isinstance(body, dict):
        raise CheckFailed(f"{what}: expected a JSON object, got a {type(body).__name__}", resp)
    return body


def _unauthorized_body(resp: ApiResponse, how: str) -> None:
    body = _json(resp, f"the 401 {how}")
    if not isinstance(body, dict) or body.get("code") != "unauthorized":
        raise CheckFailed(f'the 401 {how} should be {{"code": "unauthorized", ...}}', resp)
