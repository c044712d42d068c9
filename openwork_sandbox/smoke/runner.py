# One module for now (over 400 lines): the smoke runner, its report and its three modes (sandbox, --url,
# --ephemeral) share one report type and one run. The split it would take: the ephemeral mode (its
# settings, signal handling, teardown) into smoke_ephemeral.py; not now, while other branches change smoke.
"""`invoke smoke`: can a remote client connect to this OpenWork server and drive an OpenCode session?

The checks, in order (each named, timed, with one request timeout per request from
``OPENWORK_REQUEST_TIMEOUT``; bodies are checked, not just status codes; each is declared once in
:mod:`openwork_sandbox.smoke.checks`, which this list comes from):

{checks}

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
import secrets
import time
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from openwork_sandbox.core import console, interrupts
from openwork_sandbox.core.errors import (
    EXIT_BAD_SETTINGS,
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    SettingsError,
    UnreachableError,
    WorkflowError,
)
from openwork_sandbox.net.openwork_api import OpenWorkClient, TransportError, body_start
from openwork_sandbox.core.report import redact
from openwork_sandbox.runtimes.choice import RUNTIMES
from openwork_sandbox.smoke.checks import (
    DECLARED,
    ERROR,
    FAILED,
    GUEST_WORKSPACE,
    PASSED,
    SKIPPED,
    Check,
    CheckFailed,
    Skip,
    describe,
)

CHECKS: tuple[str, ...] = tuple(c.name for c in DECLARED)
PREREQUISITES: dict[str, tuple[str, ...]] = {c.name: c.needs for c in DECLARED}
LOG_TAIL_LINES = 40


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
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)  # figures a check measured (prompt-answered)

    @property
    def ran(self) -> bool:
        return self.result in (PASSED, FAILED, ERROR)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "result": self.result, "seconds": round(self.seconds, 4), "detail": self.detail,
            "message": self.message, "hint": self.hint,
            "http": None if self.request is None else {"request": self.request, "status": self.status,
                                                       "body": self.body},
            **({"metrics": self.metrics} if self.metrics else {}),
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
    secrets: tuple[str, ...] = ()  # more values to redact from every output (OPENWORK_SANDBOX_ENV's)


# --- the checks ---------------------------------------------------------------------------------

class SmokeRunner:
    """Runs the checks against one :class:`Target`; knows nothing about output."""

    def __init__(self, target: Target, *, request_timeout: float, health_timeout: float, persistence: bool = False,
                 is_alive: Callable[[], bool] | None = None, on_check: Callable[[str], None] | None = None,
                 keep_session: bool = False, prompt: str | None = None, prompt_timeout: float = 120.0):
        self.target = target
        self.prompt, self.prompt_timeout = prompt, prompt_timeout
        self.metrics: dict[str, dict] = {}  # check name -> figures it measured (copied into its result)
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
                                  secrets=tuple(s for s in (target.token, target.host_token, *target.secrets) if s))
        self.ws_id: str | None = None
        self.session_id: str | None = None
        self.title = f"openwork-sandbox smoke {uuid.uuid4().hex[:8]}"
        self.gone: str | None = None  # the check during which the server stopped answering

    def run(self) -> SmokeReport:
        start = time.perf_counter()
        results: dict[str, CheckResult] = {}
        try:
            for check in DECLARED:
                result = self._run_one(check, results)
                results[check.name] = result
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
            # redact the whole body before cutting it, as for a failed check: no secret survives half-cut
            problem = f"answered {resp.status}: {body_start(redact(resp.text, self.report.secrets))}"
        self.report.notes.append(f"could not delete the smoke session {self.session_id} (DELETE "
                                 f"/w/{self.ws_id}/opencode/session/{self.session_id} {problem}); delete it in "
                                 "OpenCode, or pass --keep-session to keep smoke sessions on purpose")

    def _run_one(self, check: Check, done: dict[str, CheckResult]) -> CheckResult:
        result = CheckResult(check.name)
        if self.gone:
            result.message = f"the server stopped answering during {self.gone}"
            return result
        for pre in check.needs:
            if done[pre].result != PASSED:
                result.message = f"needs {pre}, which {'was skipped' if done[pre].result == SKIPPED else 'did not pass'}"
                return result
        if self.on_check is not None:
            self.on_check(check.name)
        broken = ERROR if check.readiness else FAILED  # the readiness gate not passing: not ready
        start = time.perf_counter()
        try:
            result.detail = check.run(self) or ""
            result.result = PASSED
        except Skip as skip:
            result.result, result.message = SKIPPED, skip.reason
        except CheckFailed as exc:
            result.result, result.message, result.hint = exc.result, exc.message, exc.hint
            if exc.response is not None:
                # redact the whole body before cutting it, so no secret survives half-cut
                result.request, result.status = exc.response.request, exc.response.status
                result.body = body_start(redact(exc.response.text, self.report.secrets))
        except WorkflowError as exc:  # e.g. the runtime refused an exec (persistence)
            result.result, result.message = broken, exc.message
        except TransportError as exc:
            result.result, result.message = broken, exc.detail
            result.request = f"{exc.method} {exc.url}"
            if not check.readiness:  # after the gate, a lost connection ends the run
                result.message += ": the server stopped answering"
                self.gone = check.name
        result.seconds = time.perf_counter() - start
        result.metrics = self.metrics.pop(check.name, {})
        return result

# --- modes ---------------------------------------------------------------------------------------

def _check_usage(url: str | None, ephemeral: bool, persistence: bool, prompt: str | None = None) -> None:
    problems = []
    if prompt is not None and not prompt.strip():
        problems.append('--prompt "": give the text to send to the agent, e.g. --prompt "Say hello"')
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
    from openwork_sandbox.sandbox.endpoint import runtime_exec

    token = settings.token or ep.token
    host_token = settings.host_token or ep.host_token
    token_source = "OPENWORK_TOKEN" + (f" from {settings.origin('token')}" if settings.token else " from the sandbox's state")
    host_source = "OPENWORK_HOST_TOKEN" + (
        f" from {settings.origin('host_token')}" if settings.host_token else " from the sandbox's state")
    return Target(
        url=ep.url, token=token, host_token=host_token, mode=mode, token_source=token_source,
        host_token_source=host_source, expected_workspace=GUEST_WORKSPACE,
        expected_workspace_id=getattr(ep, "workspace_id", None), name=ep.name, runtime=ep.runtime,
        exec_in_runtime=lambda argv: runtime_exec(settings, argv), host_workspace=Path(settings.workspace_dir),
        is_alive=_runtime_is_alive(settings, ep.runtime), secrets=tuple(settings.sandbox_env_values.values()),
    )


def _runtime_is_alive(settings, kind: str | None) -> Callable[[], bool] | None:
    """The runtime's own "is it running" probe for the sandbox, when we know the runtime."""
    if kind not in RUNTIMES:
        return None
    from openwork_sandbox.runtimes import runtime_for

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
                  host_token_source=source("host_token", "OPENWORK_HOST_TOKEN", "--host-token"),
                  secrets=tuple(settings.sandbox_env_values.values()))


def attach_log_tail(settings, report: SmokeReport) -> None:
    """Attach the server log's last lines (local sandboxes only); never fails the run."""
    from openwork_sandbox.sandbox.endpoint import server_log_tail

    try:
        lines, path = server_log_tail(settings, lines=LOG_TAIL_LINES)
    except WorkflowError as exc:
        report.log_tail, report.log_path = [f"(could not read the server log: {exc.message})"], None
        return
    report.log_tail, report.log_path = list(lines), str(path) if path else None


def _run_checks(settings, target: Target, persistence: bool, is_alive=None, keep_session: bool = False,
                prompt: str | None = None) -> SmokeReport:
    runner = SmokeRunner(target, request_timeout=settings.request_timeout, health_timeout=settings.health_timeout,
                         persistence=persistence, is_alive=is_alive, keep_session=keep_session, prompt=prompt,
                         prompt_timeout=settings.prompt_timeout)
    return runner.run()


def _finish(report: SmokeReport, junit: str | None, as_json: bool) -> int:
    from openwork_sandbox.core import report as output

    output.publish(report, junit=junit, as_json=as_json)
    return report.exit_code


def run_smoke(settings, *, url: str | None = None, ephemeral: bool = False, persistence: bool = False,
              junit: str | None = None, as_json: bool = False, keep_session: bool = False,
              prompt: str | None = None, boot: Callable[..., Any] | None = None) -> int:
    """Run the checks in one of the three modes, print/write the report, return the exit code.

    ``boot`` is the ``up`` flow (``sandbox.up.up``), which ``--ephemeral`` needs to boot its sandbox;
    the caller passes it, so smoke never imports ``up``. Without it ``--ephemeral`` raises TypeError."""
    _check_usage(url, ephemeral, persistence, prompt)
    if junit:
        _check_junit_path(junit)
    if ephemeral:
        if boot is None:
            raise TypeError("run_smoke(ephemeral=True) needs boot: the up flow (openwork_sandbox.sandbox.up.up)")
        return _run_ephemeral(settings, boot, persistence=persistence, junit=junit, as_json=as_json, prompt=prompt)
    if url is not None:
        report = _run_checks(settings, _url_target(settings, url), persistence=False, keep_session=keep_session,
                             prompt=prompt)
        return _finish(report, junit, as_json)
    from openwork_sandbox.sandbox.endpoint import endpoint

    ep = endpoint(settings)
    report = _run_checks(settings, local_target(settings, ep, "sandbox"), persistence, keep_session=keep_session,
                         prompt=prompt)
    if not report.ok:
        attach_log_tail(settings, report)
    return _finish(report, junit, as_json)


def _check_junit_path(junit: str) -> None:
    """Make the report's folder (as pytest's --junitxml does) before anything runs; one line if it cannot be."""
    parent = Path(junit).expanduser().resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError([f"--junit {junit}: cannot create the folder {parent} ({exc.strerror}); "
                             "pick a writable path"]) from None


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
    changes: dict[str, Any] = dict(name=name, replace=True, workspace_dir=state / "workspace", data_dir=state / "data",
                                   ephemeral=True)  # marked: `reset --stale` removes it if this job dies
    if settings.origin("port") == "default":
        from openwork_sandbox.net.ports import free_port

        changes["port"] = free_port("0.0.0.0")  # free on every address, so on the bind address too
    return settings.with_overrides(**changes)


def _teardown(eph) -> str | None:
    from openwork_sandbox.sandbox.reset import reset

    with interrupts.no_interrupts():
        try:
            reset(eph, yes=True)
        except WorkflowError as exc:
            return (f"could not remove the ephemeral sandbox {eph.name}: {exc.message}; "
                    f"run `invoke reset --name {eph.name} --yes`")
    return None


def _run_ephemeral(settings, boot: Callable[..., Any], *, persistence: bool, junit: str | None, as_json: bool,
                   prompt: str | None = None) -> int:
    eph = ephemeral_settings(settings)
    console.info(f"smoke --ephemeral: booting {eph.name} (removed afterwards)")
    report: SmokeReport | None = None
    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        with interrupts.sigterm_as_interrupt():
            try:
                ep = boot(eph, follow=False, show_tokens=False, as_json=False)
            except WorkflowError as exc:
                if isinstance(exc, SettingsError) or exc.exit_code == EXIT_BAD_SETTINGS:
                    raise  # bad settings are a usage error (exit 2), not a failed check
                timings["up"] = time.perf_counter() - start
                report = _up_failed_report(eph, exc)
            else:
                timings["up"] = time.perf_counter() - start
                report = _run_checks(eph, local_target(eph, ep, "ephemeral"), persistence, prompt=prompt)
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
    gate = next(c for c in DECLARED if c.readiness)
    checks = [CheckResult(gate.name, ERROR, message=f"the sandbox did not come up: {exc.message}",
                          hint="the server log's last lines are printed above; `invoke doctor` checks this machine")]
    checks += [CheckResult(c.name, SKIPPED, message=f"needs {gate.name}, which did not pass")
               for c in DECLARED if c is not gate]
    tokens = [eph.token, eph.host_token, *eph.sandbox_env_values.values()]
    with contextlib.suppress(Exception):  # the generated tokens, only to mask them in the log tail
        from openwork_sandbox.sandbox.endpoint import endpoint

        ep = endpoint(eph)
        tokens += [ep.token, ep.host_token]
    report = SmokeReport(url=eph.url, mode="ephemeral", checks=checks, name=eph.name,
                         secrets=tuple(t for t in tokens if t))
    report.unreachable = isinstance(exc, UnreachableError)
    report.log_printed = True  # up printed the log tail when its health wait failed
    return report


__doc__ = __doc__.replace("{checks}", describe())

__all__ = ["run_smoke", "SmokeRunner", "SmokeReport", "CheckResult", "Target", "CHECKS", "PREREQUISITES",
           "CheckFailed", "ephemeral_settings", "local_target", "attach_log_tail", "EXIT_BAD_SETTINGS"]
