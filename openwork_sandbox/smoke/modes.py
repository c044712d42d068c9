"""The three ways ``invoke smoke`` runs the checks, and its exit code.

- sandbox (default): the sandbox ``up`` started, with its tokens;
- ``--url``: any server, with the tokens from the settings;
- ``--ephemeral``: a fresh sandbox under a unique name, always removed afterwards, even on failure,
  Ctrl+C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from openwork_sandbox.core import console, interrupts
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, SettingsError, UnreachableError, WorkflowError
from openwork_sandbox.runtimes.choice import RUNTIMES
from openwork_sandbox.smoke.checks import DECLARED, ERROR, GUEST_WORKSPACE, SKIPPED
from openwork_sandbox.smoke.runner import CheckResult, SmokeReport, SmokeRunner, Target
from openwork_sandbox.state.tls import ca_problems, client_verify, url_verify

LOG_TAIL_LINES = 40


def _check_usage(url: str | None, ephemeral: bool, persistence: bool, prompt: str | None = None) -> None:
    """Flags that cannot work together, or a bad --url or --prompt: one SettingsError (exit 2) naming each."""
    problems = []
    if prompt is not None and not prompt.strip():
        problems.append('--prompt "": give the text to send to the agent, e.g. --prompt "Say hello"')
    if url is not None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f'--url "{url}": expected an http(s) URL, e.g. http://127.0.0.1:8787')
        else:
            try:
                parts.port  # noqa: B018 - reading it raises ValueError for a bad port
            except ValueError:
                problems.append(f'--url "{url}": the port is not a number 1-65535')
        if ephemeral:
            problems.append("--ephemeral boots its own sandbox: drop --url (or drop --ephemeral)")
        if persistence:
            problems.append("--persistence looks on this host's workspace folder: it needs a local sandbox, drop --url")
    if problems:
        raise SettingsError(problems)


def local_target(settings, ep, mode: str) -> Target:
    """The sandbox at ``ep`` as a target: the settings' tokens, else the sandbox's own; reached where
    `up` placed it (a swarm node: ``locate.at_recorded_address``)."""
    from openwork_sandbox.sandbox.endpoint import runtime_exec
    from openwork_sandbox.sandbox.locate import at_recorded_address

    settings = at_recorded_address(settings)

    token = settings.token or ep.token
    host_token = settings.host_token or ep.host_token
    token_source = "OPENWORK_TOKEN" + (
        f" from {settings.origin('token')}" if settings.token else " from the sandbox's state"
    )
    host_source = "OPENWORK_HOST_TOKEN" + (
        f" from {settings.origin('host_token')}" if settings.host_token else " from the sandbox's state"
    )
    return Target(
        url=ep.url,
        token=token,
        host_token=host_token,
        mode=mode,
        token_source=token_source,
        host_token_source=host_source,
        expected_workspace=GUEST_WORKSPACE,
        expected_workspace_id=getattr(ep, "workspace_id", None),
        name=ep.name,
        runtime=ep.runtime,
        exec_in_runtime=lambda argv: runtime_exec(settings, argv),
        host_workspace=Path(settings.workspace_dir) if _workspace_on_host(settings, ep.runtime) else None,
        is_alive=_runtime_is_alive(settings, ep.runtime),
        secrets=tuple(settings.sandbox_env_values.values()),
        verify=client_verify(settings),
    )


def _workspace_on_host(settings, kind: str | None) -> bool:
    """The sandbox's /workspace is the settings' folder on this host (not a volume on a swarm node)."""
    if kind not in RUNTIMES:
        return True
    from openwork_sandbox.runtimes import runtime_for

    return runtime_for(kind, settings).state_on_host


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
    """The server at ``--url`` as a target, with the settings' tokens."""

    def source(field: str, env: str, flag: str) -> str:
        origin = settings.origin(field)
        return f"{env} from {origin}" if origin != "default" else f"{flag} / {env}"

    return Target(
        url=url.strip(),
        token=settings.token,
        host_token=settings.host_token,
        mode="url",
        token_source=source("token", "OPENWORK_TOKEN", "--token"),
        host_token_source=source("host_token", "OPENWORK_HOST_TOKEN", "--host-token"),
        secrets=tuple(settings.sandbox_env_values.values()),
        verify=url_verify(settings),
    )


def attach_log_tail(settings, report: SmokeReport) -> None:
    """Attach the server log's last lines (local sandboxes only); never fails the run."""
    from openwork_sandbox.sandbox.endpoint import server_log_tail

    try:
        lines, path = server_log_tail(settings, lines=LOG_TAIL_LINES)
    except WorkflowError as exc:
        report.log_tail, report.log_path = [f"(could not read the server log: {exc.message})"], None
        return
    report.log_tail, report.log_path = list(lines), str(path) if path else None


def _run_checks(
    settings, target: Target, persistence: bool, is_alive=None, keep_session: bool = False, prompt: str | None = None
) -> SmokeReport:
    runner = SmokeRunner(
        target,
        request_timeout=settings.request_timeout,
        health_timeout=settings.health_timeout,
        persistence=persistence,
        is_alive=is_alive,
        keep_session=keep_session,
        prompt=prompt,
        prompt_timeout=settings.prompt_timeout,
    )
    return runner.run()


def _finish(report: SmokeReport, junit: str | None, as_json: bool) -> int:
    from openwork_sandbox.core import report as output

    output.publish(report, junit=junit, as_json=as_json)
    return report.exit_code


def run_smoke(
    settings,
    *,
    url: str | None = None,
    ephemeral: bool = False,
    persistence: bool = False,
    junit: str | None = None,
    as_json: bool = False,
    keep_session: bool = False,
    prompt: str | None = None,
    boot: Callable[..., Any] | None = None,
) -> int:
    """Run the checks in one of the three modes, print/write the report, return the exit code.

    ``boot`` is the ``up`` flow (``sandbox.up.up``), which ``--ephemeral`` needs to boot its sandbox;
    the caller passes it, so smoke never imports ``up``. Without it ``--ephemeral`` raises TypeError."""
    _check_usage(url, ephemeral, persistence, prompt)
    if ca_problems(settings):
        raise SettingsError(ca_problems(settings))
    if junit:
        _check_junit_path(junit)
    if ephemeral:
        if boot is None:
            raise TypeError("run_smoke(ephemeral=True) needs boot: the up flow (openwork_sandbox.sandbox.up.up)")
        return _run_ephemeral(settings, boot, persistence=persistence, junit=junit, as_json=as_json, prompt=prompt)
    if url is not None:
        report = _run_checks(
            settings, _url_target(settings, url), persistence=False, keep_session=keep_session, prompt=prompt
        )
        return _finish(report, junit, as_json)
    from openwork_sandbox.sandbox.endpoint import endpoint

    ep = endpoint(settings)
    verify = client_verify(settings)
    if settings.tls_on and isinstance(verify, str) and not Path(verify).is_file():
        raise WorkflowError(
            f"OPENWORK_TLS is on for {settings.name} but no certificate was made for it ({verify} is missing): "
            "run `invoke up` first"
        )
    report = _run_checks(
        settings, local_target(settings, ep, "sandbox"), persistence, keep_session=keep_session, prompt=prompt
    )
    if not report.ok:
        attach_log_tail(settings, report)
    return _finish(report, junit, as_json)


def _check_junit_path(junit: str) -> None:
    """Before any check runs, the report's path must be one the report can be written to: its folder is
    made (as pytest's --junitxml does) and must be writable, and the path must not be a folder nor a
    file that cannot be written. One SettingsError (exit 2) naming --junit otherwise; nothing is written."""
    import os

    target = Path(junit).expanduser()
    parent = target.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(
            [f"--junit {junit}: cannot create the folder {parent} ({exc.strerror}); pick a writable path"]
        ) from None
    if target.is_dir():
        problem = "it is a folder; name a file in it, e.g. " + str(Path(junit) / "smoke.xml")
    elif target.exists() and not os.access(target, os.W_OK):
        problem = "the file cannot be written (no write permission or a read-only filesystem); pick a writable path"
    elif not target.exists() and not os.access(parent, os.W_OK | os.X_OK):
        problem = f"cannot write in {parent} (no write permission or a read-only filesystem); pick a writable path"
    else:
        return
    raise SettingsError([f"--junit {junit}: {problem}"])


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
    changes: dict[str, Any] = dict(
        name=name, replace=True, workspace_dir=state / "workspace", data_dir=state / "data", ephemeral=True
    )  # marked: `reset --stale` removes it if this job dies
    if settings.origin("port") == "default":
        from openwork_sandbox.net.ports import free_port

        changes["port"] = free_port("0.0.0.0")  # free on every address, so on the bind address too
    return settings.with_overrides(**changes)


def _teardown(eph) -> str | None:
    """Remove the ephemeral sandbox and its state, signals held off; the problem as a note, or None."""
    from openwork_sandbox.sandbox.reset import reset

    with interrupts.no_interrupts():
        try:
            reset(eph, yes=True)
        except WorkflowError as exc:
            return (
                f"could not remove the ephemeral sandbox {eph.name}: {exc.message}; "
                f"run `invoke reset --name {eph.name} --yes`"
            )
    return None


def _run_ephemeral(
    settings,
    boot: Callable[..., Any],
    *,
    persistence: bool,
    junit: str | None,
    as_json: bool,
    prompt: str | None = None,
) -> int:
    """Boot a throwaway sandbox, run the checks, always remove it (Ctrl+C and SIGTERM too); the exit code."""
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
    checks = [
        CheckResult(
            gate.name,
            ERROR,
            message=f"the sandbox did not come up: {exc.message}",
            hint="the server log's last lines are printed above; `invoke doctor` checks this machine",
        )
    ]
    checks += [
        CheckResult(c.name, SKIPPED, message=f"needs {gate.name}, which did not pass")
        for c in DECLARED
        if c is not gate
    ]
    tokens = [eph.token, eph.host_token, *eph.sandbox_env_values.values()]
    with contextlib.suppress(Exception):  # the generated tokens, only to mask them in the log tail
        from openwork_sandbox.sandbox.endpoint import endpoint

        ep = endpoint(eph)
        tokens += [ep.token, ep.host_token]
    report = SmokeReport(
        url=eph.url, mode="ephemeral", checks=checks, name=eph.name, secrets=tuple(t for t in tokens if t)
    )
    report.unreachable = isinstance(exc, UnreachableError)
    report.log_printed = True  # up printed the log tail when its health wait failed
    return report


__all__ = ["attach_log_tail", "ephemeral_settings", "local_target", "run_smoke"]
