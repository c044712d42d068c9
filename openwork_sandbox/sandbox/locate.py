"""Finding the runtime that holds a sandbox, for every flow but ``up`` (which chooses one).

The runtime recorded in ``.state/<name>/sandbox.json`` wins, then an explicit
OPENWORK_MICROSANDBOX_RUNTIME, then whichever runtime has a sandbox of that name. Runtimes are
built through ``openwork_sandbox.runtimes.runtime_for``, looked up at call time.
"""

from __future__ import annotations

from openwork_sandbox import runtimes
from openwork_sandbox.config import Settings
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes import ABSENT, Runtime, RuntimeStatus
from openwork_sandbox.runtimes.choice import RUNTIMES
from openwork_sandbox.state.store import SandboxState


def existing_runtime(settings: Settings, state: SandboxState, *, strict: bool = True) -> Runtime | None:
    """The runtime that holds this sandbox (see the module doc), or None when no runtime has one by
    that name (only asked when nothing is recorded or set). A record that does not parse raises
    StateFileError, unless not ``strict`` (reset: one of the ways out)."""
    recorded = state.record(strict=strict).get("runtime")
    if recorded in RUNTIMES:
        return runtimes.runtime_for(recorded, settings)
    if settings.runtime in RUNTIMES:
        return runtimes.runtime_for(settings.runtime, settings)
    # nothing recorded: look for a sandbox of this name in whichever runtime answers
    from openwork_sandbox.runtimes.probe import docker_support

    candidates = []
    if docker_support(timeout=5)[0]:
        candidates.append("docker")
    candidates.append("microsandbox")
    for kind in candidates:
        try:
            rt = runtimes.runtime_for(kind, settings)
            if rt.status().state != ABSENT:
                return rt
        except (WorkflowError, ImportError):
            continue
    return None


def sandbox_status(settings: Settings) -> tuple[Runtime | None, RuntimeStatus]:
    """The runtime that holds the sandbox (None when none does) and its status, for backup and restore."""
    rt = existing_runtime(settings, SandboxState(settings))
    return rt, (rt.status() if rt is not None else RuntimeStatus(ABSENT))
