"""``logs``: print or follow the server's log (or the VM/engine log) of the sandbox."""

from __future__ import annotations

from openwork_sandbox.config import Settings, parse_duration
from openwork_sandbox.core import console
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, WorkflowError
from openwork_sandbox.runtimes.base import RUNNING, Runtime, RuntimeStatus
from openwork_sandbox.sandbox.locate import existing_runtime
from openwork_sandbox.state.store import SandboxState


def parse_since(text: str | None) -> float | None:
    """``--since``: a duration (settings.parse_duration: 30, 30s, 5m, 2h, 1d) -> seconds; None when not
    given; else WorkflowError, exit 2."""
    if text is None or str(text).strip() == "":
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise WorkflowError(f"--since {text!r}: {exc}", exit_code=EXIT_BAD_SETTINGS) from None


def parse_tail(tail) -> int | None:
    """``--tail``: a whole number of lines, or None when not given; else WorkflowError, exit 2."""
    if tail is None or str(tail).strip() == "":
        return None
    try:
        value = int(str(tail).strip())
    except ValueError:
        value = -1
    if value < 0:
        raise WorkflowError(f"--tail {tail!r}: expected a whole number of lines, e.g. 100", exit_code=EXIT_BAD_SETTINGS)
    return value


def logs(settings: Settings, *, follow: bool = False, tail=None, since=None, system: bool = False) -> None:
    """Print the server's log on stdout (or the VM/engine log with ``system``); Ctrl+C ends ``follow``
    cleanly, a closed pipe (``| head``) quietly. WorkflowError when there is no sandbox of that name,
    and (exit 1) when ``follow`` ends because the sandbox stopped or was removed (:func:`_follow_ended`)."""
    tail_n, since_s = parse_tail(tail), parse_since(since)
    state = SandboxState(settings)
    rt = existing_runtime(settings, state)
    if rt is None:
        raise WorkflowError(f"no sandbox named {settings.name}: run `invoke up` first")
    before = rt.status() if follow else None
    try:
        for line in rt.stream_logs(follow=follow, tail=tail_n, since_s=since_s, system=system):
            print(line, flush=True)
    except KeyboardInterrupt:
        console.info("stopped following the log; the sandbox keeps running")
        return
    except BrokenPipeError:  # `invoke logs | head`
        return
    except WorkflowError:
        if not follow:
            raise
        _follow_ended(settings, rt, before)  # a reader that failed because the sandbox went away says so
        raise
    if follow:
        _follow_ended(settings, rt, before)
        raise WorkflowError(f"the log of {settings.name} ended while it runs: `invoke logs --follow` follows it again")


def _follow_ended(settings: Settings, rt: Runtime, before: RuntimeStatus | None) -> None:
    """``logs --follow`` ran out of lines: a follow ends only when the sandbox (or its server) stopped,
    so say which (``before``: its status when the follow began, to tell an engine's restart), as one
    WorkflowError (exit 1) with the way back. Returns when it runs as before."""
    st = rt.status()
    name = settings.name
    if not st.exists:
        raise WorkflowError(f"{name} was removed while its log was followed: `invoke up` creates it again")
    restarts = st.engine_restarts or 0
    if before is not None and restarts > (before.engine_restarts or 0):
        raise WorkflowError(
            f"{name} stopped and its engine started it again (restart {restarts}) while its log was followed: "
            "`invoke logs --follow` follows it again, `invoke status` shows why"
        )
    why = f" ({st.detail})" if st.detail else ""
    if st.state != RUNNING:
        raise WorkflowError(
            f"{name} stopped{why} while its log was followed: `invoke up` starts it again "
            "(`invoke logs --system` shows why it stopped)"
        )
    if st.server_running is False:
        raise WorkflowError(
            f"the server in {name} stopped{why} while its log was followed: `invoke up` starts it again"
        )
