"""`invoke smoke`: can a remote client connect to this OpenWork server and drive an OpenCode session?

The checks, in order (each named, timed, with one request timeout per request from
``OPENWORK_REQUEST_TIMEOUT``; bodies are checked, not just status codes):

    health          GET /health is 200 {"ok": true, "version": ...}; adaptive poll up to OPENWORK_HEALTH_TIMEOUT
    auth-required   GET /workspaces without a token, and with a wrong one, is 401 {"code": "unauthorized"}
    auth-accepted   GET /workspaces with the client token is 200 and lists the workspace; id = ws_ + sha256(path)[:12]
    host-token      GET /approvals accepts the host token and refuses the client token
    session-create  POST /w/<id>/opencode/session {"title"} returns a session with an id and that title
    session-read    GET /w/<id>/opencode/session/<sid> returns the same id and title
    messages-read   GET /w/<id>/opencode/session/<sid>/message?limit=10 returns a list
    persistence     (--persistence) a file written in /workspace by the runtime appears on the host

Afterwards the session the checks created is deleted (DELETE /w/<id>/opencode/session/<sid>), so a
long-lived server does not collect one per run; ``--keep-session`` keeps it. A failed deletion is a
note in the report (and fails the run).

A check whose prerequisite did not pass is reported as skipped with the reason. If the server stops
answering mid-run, that check fails and the rest are skipped, so the run ends within one request
timeout. Exit codes: 0 all passed, 1 a check failed (or none ran), 2 bad settings/usage,
3 nothing reachable at the URL.

Modes: the sandbox ``up`` started (default), any server (``--url`` + tokens), or ``--ephemeral``: a
fresh sandbox under a unique name that is always removed afterwards, even on failure or Ctrl+C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from . import console
from .errors import (EXIT_BAD_SETTINGS, EXIT_FAILED, EXIT_UNREACHABLE, SettingsError, UnreachableError,
                     WorkflowError)
from .openwork_api import ApiResponse, OpenWorkClient, TransportError, body_start, workspace_id
from .report import redact

CHECKS: tuple[str, ...] = ("health", "auth-required", "auth-accepted", "host-token", "session-create",
                           "session-read", "messages-read", "persistence")
PREREQUISITES: dict[str, tuple[str, ...]] = {
    "health": (),
    "auth-required": ("health",),
    "auth-accepted": ("health",),
    "host-token": ("health",),
    "session-create": ("auth-accepted",),
    "session-read": ("session-create",),
    "messages-read": ("session-create",),
    "persistence": ("health",),
}
GUEST_WORKSPACE = "/workspace"
LOG_TAIL_LINES = 40
PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"  # ERROR: not ready (JUnit <error>)


# --- results ----------------------------------------------------------------------------------

@dataclasses.dataclass
class CheckResult:
    name: str
    result: str = SKIPPED
    seconds: float = 0.0
    detail: str = ""  # what a pass found (versions, ids)
    message: str = ""  # why it failed or was skipped
    hint: str = ""  # what would fix it
    request: str | None = None  # "GET http://…/workspaces" of the request that failed
    status: int | None = None
    body: str | None = None  # start of the body of that response

    @property
    def ran(self) -> bool:
        return self.result in (PASSED, FAILED, ERROR)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "result": self.result, "seconds": round(self.seconds, 4), "detail": self.detail,
            "message": self.message, "hint": self.hint,
            "http": None if self.request is None else {"request": self.request, "status": self.status,
                                                       "body": self.body},
        }


@dataclasses.dataclass
class SmokeReport:
    url: str
    mode: str  # sandbox | url | ephemeral
    checks: list[CheckResult]
    total_seconds: float = 0.0
    name: str | None = None  # sandbox name (local modes)
    runtime: str | None = None
    server_version: str | None = None
    opencode_version: str | None = None
    workspace_id: str | None = None
    unreachable: bool = False
    log_printed: bool = False  # `up` already printed the log tail on the terminal
    log_tail: list[str] = dataclasses.field(default_factory=list)
    log_path: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. teardown problems
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # ephemeral: up, checks, teardown
    secrets: tuple[str, ...] = ()  # redacted from every output, never serialized

    @property
    def counts(self) -> dict[str, int]:
        out = {PASSED: 0, FAILED: 0, ERROR: 0, SKIPPED: 0}
        for c in self.checks:
            out[c.result] += 1
        return out

    @property
    def exit_code(self) -> int:
        counts = self.counts
        if self.unreachable:
            return EXIT_UNREACHABLE
        if counts[FAILED] or counts[ERROR] or not counts[PASSED] or self.notes:
            return EXIT_FAILED
        return 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class CheckFailed(Exception):
    """A check's verdict: the message (one line), a hint, and the response it is about."""

    def __init__(self, message: str, response: ApiResponse | None = None, hint: str = "", result: str = FAILED):
        super().__init__(message)
        self.message, self.response, self.hint, self.result = message, response, hint, result


class _Skip(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass
class Target:
    """What to smoke: the URL, the tokens, and where they came from (for hints)."""

    url: str
    token: str | None
    host_token: str | None
    mode: str
    token_source: str = "OPENWORK_TOKEN"
    host_token_source: str = "OPENWORK_HOST_TOKEN"
    expected_workspace: str | None = None  # "/workspace" when we know the server runs our image
    expected_workspace_id: str | None = None
    name: str | None = None
    runtime: str | None = None
    exec_in_runtime: Callable[[list[str]], tuple[int, str]] | None = None  # for persistence
    host_workspace: Path | None = None
    is_alive: Callable[[], bool] | None = None  # the runtime says the sandbox runs (ends the health wait early)


# --- the checks ---------------------------------------------------------------------------------

class SmokeRunner:
    """Runs the checks against one :class:`Target`; knows nothing about output."""

    def __init__(self, target: Target, *, request_timeout: float, health_timeout: float, persistence: bool = False,
                 is_alive: Callable[[], bool] | None = None, on_check: Callable[[str], None] | None = None,
                 keep_session: bool = False):
        self.target = target
        self.keep_session = keep_session
        self.request_timeout = request_timeout
        self.health_timeout = health_timeout
        self.persistence = persistence
        self.is_alive = is_alive or target.is_alive
        self.on_check = on_check  # called with a check's name just before it runs (progress, fault tests)
        self.client = OpenWorkClient(target.url, token=target.token, host_token=target.host_token,
                                     timeout=request_timeout)
        self.report = SmokeReport(url=target.url, mode=target.mode, checks=[], name=target.name,
                                  runtime=target.runtime,
                                  secrets=tuple(s for s in (target.token, target.host_token) if s))
        self.ws_id: str | None = None
        self.session_id: str | None = None
        self.title = f"openwork-sandbox smoke {uuid.uuid4().hex[:8]}"
        self.gone: str | None = None  # the check during which the server stopped answering

    def run(self) -> SmokeReport:
        start = time.perf_counter()
        results: dict[str, CheckResult] = {}
        try:
            for name in CHECKS:
                result = self._run_one(name, results)
                results[name] = result
                self.report.checks.append(result)
            self._delete_session()
        finally:
            self.client.close()
            self.report.total_seconds = time.perf_counter() - start
        return self.report

    def _delete_session(self) -> None:
        """Delete the session the checks created, unless asked to keep it; a failure becomes a note."""
        if self.keep_session or not (self.ws_id and self.session_id) or self.gone:
            return
        try:
            resp = self.client.delete_session(self.ws_id, self.session_id)
        except TransportError as exc:
            problem = exc.detail
        else:
            if 200 <= resp.status < 300:
                return
            problem = f"answered {resp.status}: {redact(resp.body_start, self.report.secrets)}"
        self.report.notes.append(f"could not delete the smoke session {self.session_id} (DELETE "
                                 f"/w/{self.ws_id}/opencode/session/{self.session_id} {problem}); delete it in "
                                 "OpenCode, or pass --keep-session to keep smoke sessions on purpose")

    def _run_one(self, name: str, done: dict[str, CheckResult]) -> CheckResult:
        result = CheckResult(name)
        if self.gone:
            result.message = f"the server stopped answering during {self.gone}"
            return result
        for pre in PREREQUISITES[name]:
            if done[pre].result != PASSED:
                result.message = f"needs {pre}, which {'was skipped' if done[pre].result == SKIPPED else 'did not pass'}"
                return result
        method: Callable[[], str] = getattr(self, "check_" + name.replace("-", "_"))
        if self.on_check is not None:
            self.on_check(name)
        start = time.perf_counter()
        try:
            result.detail = method() or ""
            result.result = PASSED
        except _Skip as skip:
            result.result, result.message = SKIPPED, skip.reason
        except CheckFailed as exc:
            result.result, result.message, result.hint = exc.result, exc.message, exc.hint
            if exc.response is not None:
                # redact the whole body before cutting it, so no secret survives half-cut
                result.request, result.status = exc.response.request, exc.response.status
                result.body = body_start(redact(exc.response.text, self.report.secrets))
        except WorkflowError as exc:  # e.g. the runtime refused an exec (persistence)
            result.result, result.message = (ERROR if name == "health" else FAILED), exc.message
        except TransportError as exc:
            result.result = ERROR if name == "health" else FAILED
            result.message = f"{exc.detail}: the server stopped answering" if name != "health" else exc.detail
            result.request = f"{exc.method} {exc.url}"
            if name != "health":
                self.gone = name
        result.seconds = time.perf_counter() - start
        return result

    # health ---------------------------------------------------------------------------------
    def check_health(self) -> str:
        """Wait for GET /health (health.wait_for_health: capped exponential backoff from 50 ms) up to
        OPENWORK_HEALTH_TIMEOUT, then check the body: ``ok`` is true and ``version`` is a string."""
        from .health import HealthTimeout, NothingListening, wait_for_health

        url = self.client.url("/health")
        try:
            body = wait_for_health(self.target.url, self.health_timeout, is_alive=self.is_alive,
                                   timeout_s=self.request_timeout, session=self.client.session)
        except NothingListening:
            self.report.unreachable = True
            raise CheckFailed(f"nothing listening at {url} within {self.health_timeout:g}s",
                              hint=self._unreachable_hint(), result=ERROR) from None
        except HealthTimeout as exc:  # something answered, never healthy
            raise CheckFailed(exc.message, self._last_health(), result=ERROR,
                              hint="the server answers but is not ready: see its log") from None
        except WorkflowError as exc:  # the sandbox is not running, or died while we waited
            if not _listening(self.target.url, min(self.request_timeout, 2.0)):
                self.report.unreachable = True
            raise CheckFailed(exc.message, result=ERROR,
                              hint="start it with `invoke up`; `invoke logs` shows the server log") from None
        return self._health_body(ApiResponse("GET", url, 200, json.dumps(body), 0.0), body)

    def _last_health(self) -> ApiResponse | None:
        """One more GET /health after a failed wait, so the report shows what the server answers."""
        try:
            return self.client.health()
        except TransportError:
            return None

    def _unreachable_hint(self) -> str:
        if self.target.mode == "url":
            return "check --url (scheme, host, port, path) and that the server is running"
        return "is the sandbox up? `invoke status`; start it with `invoke up`"

    def _health_body(self, resp: ApiResponse, body: dict) -> str:
        if body.get("ok") is not True:
            raise CheckFailed(f'GET /health is 200 but "ok" is {body.get("ok")!r}, expected true', resp, result=ERROR)
        version = body.get("version")
        if not isinstance(version, str) or not version:
            raise CheckFailed('GET /health has no "version" string', resp, result=ERROR)
        self.report.server_version = version
        detail = f"server {version}"
        opencode = body.get("opencodeVersion")
        if isinstance(opencode, str) and opencode:
            self.report.opencode_version = opencode
            detail += f", opencode {opencode}"
        return detail

    # auth -----------------------------------------------------------------------------------
    def check_auth_required(self) -> str:
        anonymous = self.client.workspaces(None)
        if anonymous.status != 401:
            raise CheckFailed(f"GET /workspaces without a token answered {anonymous.status}, expected 401",
                              anonymous, hint="the server lets anonymous clients in: it must run with a client token")
        _unauthorized_body(anonymous, "without a token")
        wrong = self.client.workspaces("openwork-smoke-wrong-" + secrets.token_hex(8))
        if wrong.status != 401:
            raise CheckFailed(f"GET /workspaces with a wrong token answered {wrong.status}, expected 401", wrong,
                              hint="the server accepts any bearer token")
        _unauthorized_body(wrong, "with a wrong token")
        return "401 without a token and with a wrong one"

    def check_auth_accepted(self) -> str:
        if not self.target.token:
            raise _Skip(f"no client token ({self.target.token_source})")
        resp = self.client.workspaces(self.target.token)
        if resp.status == 401:
            raise CheckFailed(f"401 with the configured client token ({self.target.token_source})", resp,
                              hint=f"check {self.target.token_source}: it must be the token the server was started "
                                   "with (`invoke up --show-tokens` prints the sandbox's)")
        if resp.status != 200:
            raise CheckFailed(f"GET /workspaces with the client token answered {resp.status}, expected 200", resp)
        body = _json_object(resp, "GET /workspaces")
        items = body.get("items", body.get("workspaces"))
        if not isinstance(items, list) or not items:
            raise CheckFailed('GET /workspaces lists no workspace (expected a non-empty "items" list)', resp)
        workspaces = [w for w in items if isinstance(w, dict)]
        if len(workspaces) != len(items) or any(not isinstance(w.get("id"), str) or not isinstance(w.get("path"), str)
                                                for w in workspaces):
            raise CheckFailed('GET /workspaces: every workspace needs an "id" and a "path" string', resp)
        if self.target.expected_workspace:
            chosen = next((w for w in workspaces if w["path"] == self.target.expected_workspace), None)
            if chosen is None:
                paths = ", ".join(w["path"] for w in workspaces)
                raise CheckFailed(f"no workspace for {self.target.expected_workspace} (listed: {paths})", resp)
        else:
            active = body.get("activeId")
            chosen = next((w for w in workspaces if w["id"] == active), workspaces[0])
        expected = workspace_id(chosen["path"])
        if chosen["id"] != expected:
            raise CheckFailed(f"workspace {chosen['path']} has id {chosen['id']}, expected {expected} "
                              "(ws_ + sha256(path)[:12])", resp)
        if self.target.expected_workspace_id and chosen["id"] != self.target.expected_workspace_id:
            raise CheckFailed(f"workspace id {chosen['id']} differs from the sandbox's {self.target.expected_workspace_id}",
                              resp)
        self.ws_id = self.report.workspace_id = chosen["id"]
        return f"{chosen['id']} ({chosen['path']}), {len(workspaces)} workspace{'s' if len(workspaces) != 1 else ''}"

    def check_host_token(self) -> str:
        if not self.target.host_token:
            raise _Skip(f"no host token ({self.target.host_token_source})")
        resp = self.client.approvals(host_token=self.target.host_token)
        if resp.status in (401, 403):
            raise CheckFailed(f"{resp.status} with the configured host token ({self.target.host_token_source})", resp,
                              hint=f"check {self.target.host_token_source}: it must be the server's host token")
        if resp.status != 200:
            raise CheckFailed(f"GET /approvals with the host token answered {resp.status}, expected 200", resp)
        body = _json(resp, "GET /approvals")
        # Upstream's exact shape is not pinned in the contract: a list, or an object holding one.
        if not (isinstance(body, list) or (isinstance(body, dict) and any(isinstance(v, list) for v in body.values()))):
            raise CheckFailed("GET /approvals: expected a list of approval requests (or an object with one)", resp)
        if self.target.token:
            client = self.client.approvals(bearer=self.target.token)
            if client.status == 200:
                raise CheckFailed("GET /approvals accepted the client token: a host-only route must refuse it", client,
                                  hint="OPENWORK_TOKEN and OPENWORK_HOST_TOKEN must differ, and the client token "
                                       "must not have owner scope")
            if client.status not in (401, 403):
                raise CheckFailed(f"GET /approvals with the client token answered {client.status}, expected 401 or 403",
                                  client)
            return f"host token accepted, client token refused ({client.status})"
        return "host token accepted"

    # sessions -------------------------------------------------------------------------------
    def check_session_create(self) -> str:
        assert self.ws_id
        resp = self.client.create_session(self.ws_id, self.title)
        if not 200 <= resp.status < 300:
            raise CheckFailed(f"POST /w/{self.ws_id}/opencode/session answered {resp.status}, expected 200", resp)
        body = _json_object(resp, "POST session")
        sid = body.get("id")
        if not isinstance(sid, str) or not sid:
            raise CheckFailed('the created session has no "id"', resp)
        if body.get("title") != self.title:
            raise CheckFailed(f"the created session's title is {body.get('title')!r}, expected {self.title!r}", resp)
        self.session_id = sid
        return sid

    def check_session_read(self) -> str:
        assert self.ws_id and self.session_id
        resp = self.client.get_session(self.ws_id, self.session_id)
        if resp.status != 200:
            raise CheckFailed(f"GET session {self.session_id} answered {resp.status}, expected 200", resp)
        body = _json_object(resp, "GET session")
        if body.get("id") != self.session_id:
            raise CheckFailed(f"GET session returned id {body.get('id')!r}, expected {self.session_id!r}", resp)
        if body.get("title") != self.title:
            raise CheckFailed(f"GET session returned title {body.get('title')!r}, expected {self.title!r}", resp)
        return "same id and title"

    def check_messages_read(self) -> str:
        assert self.ws_id and self.session_id
        resp = self.client.session_messages(self.ws_id, self.session_id, limit=10)
        if resp.status != 200:
            raise CheckFailed(f"GET session messages answered {resp.status}, expected 200", resp)
        body = _json(resp, "GET messages")
        if not isinstance(body, list):
            raise CheckFailed(f"GET session messages returned a {type(body).__name__}, expected a list", resp)
        if any(not isinstance(m, dict) or "info" not in m or not isinstance(m.get("parts"), list) for m in body):
            raise CheckFailed('every message needs "info" and a "parts" list', resp)
        return f"{len(body)} message{'s' if len(body) != 1 else ''}"

    # persistence ----------------------------------------------------------------------------
    def check_persistence(self) -> str:
        if not self.persistence:
            raise _Skip("not requested (--persistence)")
        if self.target.exec_in_runtime is None or self.target.host_workspace is None:
            raise _Skip("needs a local sandbox (not --url)")
        name = f".openwork-smoke-{secrets.token_hex(6)}"
        value = secrets.token_hex(8)
        code, output = self.target.exec_in_runtime(["sh", "-c", f"printf %s {value} > {GUEST_WORKSPACE}/{name}"])
        if code != 0:
            raise CheckFailed(f"writing {GUEST_WORKSPACE}/{name} in the sandbox failed (exit {code}): "
                              f"{console_line(output)}")
        host_file = self.target.host_workspace / name
        try:
            found = host_file.read_text() if host_file.exists() else None
            if found != value:
                seen = "is missing" if found is None else f"holds {found[:40]!r}"
                raise CheckFailed(f"{GUEST_WORKSPACE}/{name} was written in the sandbox but {host_file} {seen}",
                                  hint="/workspace must be bind-mounted from OPENWORK_MICROSANDBOX_WORKSPACE_DIR")
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


# --- modes ---------------------------------------------------------------------------------------

def _check_usage(url: str | None, ephemeral: bool, persistence: bool) -> None:
    problems = []
    if url is not None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f'--url "{url}": expected an http(s) URL, e.g. http://127.0.0.1:8787')
        else:
            try:
                parts.port
            except ValueError:
                problems.append(f'--url "{url}": the port is not a number 1-65535')
        if ephemeral:
            problems.append("--ephemeral boots its own sandbox: drop --url (or drop --ephemeral)")
        if persistence:
            problems.append("--persistence looks on this host's workspace folder: it needs a local sandbox, "
                            "drop --url")
    if problems:
        raise SettingsError(problems)


def local_target(settings, ep, mode: str) -> Target:
    from . import lifecycle

    token = settings.token or ep.token
    host_token = settings.host_token or ep.host_token
    token_source = "OPENWORK_TOKEN" + (f" from {settings.origin('token')}" if settings.token else " from the sandbox's state")
    host_source = "OPENWORK_HOST_TOKEN" + (
        f" from {settings.origin('host_token')}" if settings.host_token else " from the sandbox's state")
    return Target(
        url=ep.url, token=token, host_token=host_token, mode=mode, token_source=token_source,
        host_token_source=host_source, expected_workspace=GUEST_WORKSPACE,
        expected_workspace_id=getattr(ep, "workspace_id", None), name=ep.name, runtime=ep.runtime,
        exec_in_runtime=lambda argv: lifecycle.runtime_exec(settings, argv), host_workspace=Path(settings.workspace_dir),
        is_alive=_runtime_is_alive(settings, ep.runtime),
    )


def _runtime_is_alive(settings, kind: str | None) -> Callable[[], bool] | None:
    """The runtime's own "is it running" probe for the sandbox, when we know the runtime."""
    if kind not in ("docker", "microsandbox"):
        return None
    from .runtimes import runtime_for

    runtime = runtime_for(kind, settings)

    def alive() -> bool:
        try:
            return runtime.is_alive()
        except WorkflowError:
            return True  # cannot tell: keep waiting for the deadline

    return alive


def _url_target(settings, url: str) -> Target:
    def source(field: str, env: str, flag: str) -> str:
        origin = settings.origin(field)
        return f"{env} from {origin}" if origin != "default" else f"{flag} / {env}"

    return Target(url=url.strip(), token=settings.token, host_token=settings.host_token, mode="url",
                  token_source=source("token", "OPENWORK_TOKEN", "--token"),
                  host_token_source=source("host_token", "OPENWORK_HOST_TOKEN", "--host-token"))


def attach_log_tail(settings, report: SmokeReport) -> None:
    """Attach the server log's last lines (local sandboxes only); never fails the run."""
    from . import lifecycle

    try:
        lines, path = lifecycle.server_log_tail(settings, lines=LOG_TAIL_LINES)
    except WorkflowError as exc:
        report.log_tail, report.log_path = [f"(could not read the server log: {exc.message})"], None
        return
    report.log_tail, report.log_path = list(lines), str(path) if path else None


def _run_checks(settings, target: Target, persistence: bool, is_alive=None, keep_session: bool = False) -> SmokeReport:
    runner = SmokeRunner(target, request_timeout=settings.request_timeout, health_timeout=settings.health_timeout,
                         persistence=persistence, is_alive=is_alive, keep_session=keep_session)
    return runner.run()


def _finish(report: SmokeReport, junit: str | None, as_json: bool) -> int:
    from . import report as output

    output.publish(report, junit=junit, as_json=as_json)
    return report.exit_code


def run_smoke(settings, *, url: str | None = None, ephemeral: bool = False, persistence: bool = False,
              junit: str | None = None, as_json: bool = False, keep_session: bool = False) -> int:
    """Run the checks in one of the three modes, print/write the report, return the exit code."""
    _check_usage(url, ephemeral, persistence)
    if junit:
        _check_junit_path(junit)
    if ephemeral:
        return _run_ephemeral(settings, persistence=persistence, junit=junit, as_json=as_json)
    if url is not None:
        report = _run_checks(settings, _url_target(settings, url), persistence=False, keep_session=keep_session)
        return _finish(report, junit, as_json)
    from . import lifecycle

    ep = lifecycle.endpoint(settings)
    report = _run_checks(settings, local_target(settings, ep, "sandbox"), persistence, keep_session=keep_session)
    if not report.ok:
        attach_log_tail(settings, report)
    return _finish(report, junit, as_json)


def _check_junit_path(junit: str) -> None:
    parent = Path(junit).expanduser().resolve().parent
    if not parent.is_dir():
        raise SettingsError([f"--junit {junit}: the folder {parent} does not exist; create it or pick another path"])


# --- ephemeral -------------------------------------------------------------------------------------

def ephemeral_settings(settings):
    """The settings of a throwaway sandbox: a unique name, its own state folders, replace, a free port.

    The workspace and data folders are always fresh ones under ``.state/<unique name>/``, even when
    OPENWORK_MICROSANDBOX_WORKSPACE_DIR / _DATA_DIR are set: a throwaway run must not touch the
    user's folders, and ``reset`` then removes everything it made. The port is a free one unless
    ``--port`` / OPENWORK_MICROSANDBOX_PORT was given, so a running sandbox does not collide."""
    base = settings.name[:100]
    name = f"{base}-smoke-{secrets.token_hex(3)}"
    state = Path(settings.state_dir) / name
    changes: dict[str, Any] = dict(name=name, replace=True, workspace_dir=state / "workspace", data_dir=state / "data")
    if settings.origin("port") == "default":
        from .ports import free_port

        changes["port"] = free_port("0.0.0.0")  # free on every address, so on the bind address too
    return settings.with_overrides(**changes)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """CI cancels with SIGTERM: treat it like Ctrl+C so the teardown runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _no_interrupts():
    """Let a teardown finish: SIGINT/SIGTERM are held off while it runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _teardown(eph) -> str | None:
    from . import lifecycle

    with _no_interrupts():
        try:
            lifecycle.reset(eph, yes=True)
        except WorkflowError as exc:
            return (f"could not remove the ephemeral sandbox {eph.name}: {exc.message}; "
                    f"run `invoke reset --name {eph.name} --yes`")
    return None


def _run_ephemeral(settings, *, persistence: bool, junit: str | None, as_json: bool) -> int:
    from . import lifecycle

    eph = ephemeral_settings(settings)
    console.info(f"smoke --ephemeral: booting {eph.name} (removed afterwards)")
    report: SmokeReport | None = None
    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        with _sigterm_as_interrupt():
            try:
                ep = lifecycle.up(eph, follow=False, show_tokens=False, as_json=False)
            except WorkflowError as exc:
                if isinstance(exc, SettingsError) or exc.exit_code == EXIT_BAD_SETTINGS:
                    raise  # bad settings are a usage error (exit 2), not a failed check
                timings["up"] = time.perf_counter() - start
                report = _up_failed_report(eph, exc)
            else:
                timings["up"] = time.perf_counter() - start
                report = _run_checks(eph, local_target(eph, ep, "ephemeral"), persistence)
                timings["checks"] = report.total_seconds
            if not report.ok:
                attach_log_tail(eph, report)
    finally:
        teardown_start = time.perf_counter()
        problem = _teardown(eph)
        timings["teardown"] = time.perf_counter() - teardown_start
        if problem:
            if report is not None:
                report.notes.append(problem)
            else:
                console.info(problem)
    timings["total"] = time.perf_counter() - start
    report.timings = timings
    return _finish(report, junit, as_json)


def _up_failed_report(eph, exc: WorkflowError) -> SmokeReport:
    """`up` failed: that is the health (readiness) check failing; the rest are skipped."""
    checks = [CheckResult("health", ERROR, message=f"the sandbox did not come up: {exc.message}",
                          hint="the server log's last lines are printed above; `invoke doctor` checks this machine")]
    checks += [CheckResult(n, SKIPPED, message="needs health, which did not pass") for n in CHECKS[1:]]
    tokens = [eph.token, eph.host_token]
    with contextlib.suppress(Exception):  # the generated tokens, only to mask them in the log tail
        from . import lifecycle

        ep = lifecycle.endpoint(eph)
        tokens += [ep.token, ep.host_token]
    report = SmokeReport(url=eph.url, mode="ephemeral", checks=checks, name=eph.name,
                         secrets=tuple(t for t in tokens if t))
    report.unreachable = isinstance(exc, UnreachableError)
    report.log_printed = True  # up printed the log tail when its health wait failed
    return report


__all__ = ["run_smoke", "SmokeRunner", "SmokeReport", "CheckResult", "Target", "CHECKS", "PREREQUISITES",
           "ephemeral_settings", "local_target", "attach_log_tail", "EXIT_BAD_SETTINGS"]
