"""``logs``: print or follow the server's log (or the VM/engine log) of the sandbox."""

from __future__ import annotations

from openwork_sandbox.config import Settings, parse_duration
from openwork_sandbox.core import console
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, WorkflowError
from openwork_sandbox.sandbox.follow import follow_log
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
    """Print the server's log on stdout (or the VM/engine log with ``system``); a closed pipe
    (``| head``) ends it quietly; ``follow``: :func:`follow_log`. WorkflowError when there is no sandbox
    of that name."""
    tail_n, since_s = parse_tail(tail), parse_since(since)
    state = SandboxState(settings)
    rt = existing_runtime(settings, state)
    if rt is None:
        raise WorkflowError(f"no sandbox named {settings.name}: run `invoke up` first")
    if follow:
        follow_log(settings, rt, tail=tail_n, since_s=since_s, system=system)
        return
    try:
        for line in rt.stream_logs(follow=False, tail=tail_n, since_s=since_s, system=system):
            print(line, flush=True)
    except KeyboardInterrupt:
        console.info("stopped following the log; the sandbox keeps running")
    except BrokenPipeError:  # `invoke logs | head`
        return
