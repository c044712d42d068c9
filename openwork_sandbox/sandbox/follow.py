"""Following a sandbox's log to its end (``logs --follow``, ``up --follow``): the one rule for how a
follow ends. Ctrl+C and a closed pipe end it quietly; otherwise the log ends only when the sandbox
went away, and the follow says how (stopped, removed, restarted by its engine) in one line, exit 1.
"""

from __future__ import annotations

import sys

from openwork_sandbox.config import Settings
from openwork_sandbox.core import console
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes.base import RUNNING, Runtime, RuntimeStatus


def follow_log(
    settings: Settings, rt: Runtime, *, tail: int | None, since_s: float | None = None, system: bool = False, out=None
) -> None:
    """Follow the log (``logs --follow``, ``up --follow``) on ``out`` (stdout when None), line by
    line. Ctrl+C ends it cleanly (the sandbox keeps running), a closed pipe quietly: it returns.
    Otherwise a follow ends only when the sandbox went away, so it ends with one WorkflowError (exit
    1) that says how (stopped, removed, restarted by its engine: :func:`_follow_ended`) and the way
    back; never silently."""
    out = out or sys.stdout
    before = rt.status()
    try:
        for line in rt.stream_logs(follow=True, tail=tail, since_s=since_s, system=system):
            print(line, file=out, flush=True)
    except KeyboardInterrupt:
        console.info("stopped following the log; the sandbox keeps running")
        return
    except BrokenPipeError:  # `invoke logs --follow | head`
        return
    except WorkflowError:
        _follow_ended(settings, rt, before)  # a reader that failed because the sandbox went away says so
        raise
    _follow_ended(settings, rt, before)
    raise WorkflowError(f"the log of {settings.name} ended while it runs: `invoke logs --follow` follows it again")


def _follow_ended(settings: Settings, rt: Runtime, before: RuntimeStatus | None) -> None:
    """A follow ran out of lines: it ends only when the sandbox (or its server) stopped,
    so say which (``before``: its status when the follow began, to tell an engine's restart), as one
    WorkflowError (exit 1) with the way back. Returns when it runs as before."""
    st = rt.status()
    name = settings.name
    if not st.exists or st.detail.startswith("removing"):  # the log can end before Docker has removed it
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
