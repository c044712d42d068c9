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
3 nothing reachable at the URL. The three modes that run it are in :mod:`openwork_sandbox.smoke.modes`.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openwork_sandbox.core.errors import EXIT_FAILED, EXIT_UNREACHABLE, WorkflowError
from openwork_sandbox.core.report import redact
from openwork_sandbox.net.openwork_api import OpenWorkClient, TransportError, body_start
from openwork_sandbox.smoke.checks import (
    DECLARED,
    ERROR,
    FAILED,
    PASSED,
    SKIPPED,
    Check,
    CheckFailed,
    Skip,
    describe,
)

CHECKS: tuple[str, ...] = tuple(c.name for c in DECLARED)
PREREQUISITES: dict[str, tuple[str, ...]] = {c.name: c.needs for c in DECLARED}


# --- results ----------------------------------------------------------------------------------


@dataclasses.dataclass
class CheckResult:
    """One check's outcome: passed, failed, error (not ready) or skipped, with what the report shows."""

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
            "name": self.name,
            "result": self.result,
            "seconds": round(self.seconds, 4),
            "detail": self.detail,
            "message": self.message,
            "hint": self.hint,
            "http": None
            if self.request is None
            else {"request": self.request, "status": self.status, "body": self.body},
            **({"metrics": self.metrics} if self.metrics else {}),
        }


@dataclasses.dataclass
class SmokeReport:
    """One run: every check's result, what the server said of itself, and the run's exit code."""

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
    verify: bool | str = True  # over https: the CA bundle the certificate is checked with (True: the system CAs)


# --- the checks ---------------------------------------------------------------------------------


class SmokeRunner:
    """Runs the checks against one :class:`Target`; knows nothing about output."""

    def __init__(
        self,
        target: Target,
        *,
        request_timeout: float,
        health_timeout: float,
        persistence: bool = False,
        is_alive: Callable[[], bool] | None = None,
        on_check: Callable[[str], None] | None = None,
        keep_session: bool = False,
        prompt: str | None = None,
        prompt_timeout: float = 120.0,
    ):
        self.target = target
        self.prompt, self.prompt_timeout = prompt, prompt_timeout
        self.metrics: dict[str, dict] = {}  # check name -> figures it measured (copied into its result)
        self.keep_session = keep_session
        self.request_timeout = request_timeout
        self.health_timeout = health_timeout
        self.persistence = persistence
        self.is_alive = is_alive or target.is_alive
        self.on_check = on_check  # called with a check's name just before it runs (progress, fault tests)
        self.client = OpenWorkClient(
            target.url, token=target.token, host_token=target.host_token, timeout=request_timeout, verify=target.verify
        )
        self.report = SmokeReport(
            url=target.url,
            mode=target.mode,
            checks=[],
            name=target.name,
            runtime=target.runtime,
            secrets=tuple(s for s in (target.token, target.host_token, *target.secrets) if s),
        )
        self.ws_id: str | None = None
        self.session_id: str | None = None
        self.title = f"openwork-sandbox smoke {uuid.uuid4().hex[:8]}"
        self.gone: str | None = None  # the check during which the server stopped answering

    def run(self) -> SmokeReport:
        """Run every declared check in order, then delete the session they made; the report."""
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
        self.report.notes.append(
            f"could not delete the smoke session {self.session_id} (DELETE "
            f"/w/{self.ws_id}/opencode/session/{self.session_id} {problem}); delete it in "
            "OpenCode, or pass --keep-session to keep smoke sessions on purpose"
        )

    def _run_one(self, check: Check, done: dict[str, CheckResult]) -> CheckResult:
        """One check: skipped when a prerequisite did not pass or the server has gone, else run and timed."""
        result = CheckResult(check.name)
        if self.gone:
            result.message = f"the server stopped answering during {self.gone}"
            return result
        for pre in check.needs:
            if done[pre].result != PASSED:
                result.message = (
                    f"needs {pre}, which {'was skipped' if done[pre].result == SKIPPED else 'did not pass'}"
                )
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


__doc__ = __doc__.replace("{checks}", describe())

__all__ = ["CHECKS", "PREREQUISITES", "CheckFailed", "CheckResult", "SmokeReport", "SmokeRunner", "Target"]
