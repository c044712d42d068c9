"""Finding the runtime that holds a sandbox, for every flow but ``up`` (which chooses one); and
which other sandbox of this tool runs on a port.

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
from openwork_sandbox.state.store import SandboxState, read_record


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


def at_recorded_address(settings: Settings) -> Settings:
    """``settings`` with the connect host the sandbox was placed at (``placed_at`` in its record: a swarm
    node's address) when OPENWORK_CONNECT_HOST is not set, so every task reaches it where `up` put it;
    unchanged otherwise (a record that cannot be read is no record)."""
    import dataclasses

    if settings.origin("connect_host") != "default":
        return settings
    placed_at = read_record(settings.sandbox_state_dir, strict=False).get("placed_at")
    return dataclasses.replace(settings, connect_host=placed_at) if placed_at else settings


def require_host_state(settings: Settings, task: str) -> None:
    """WorkflowError (one line) when the sandbox's folders are not on this host (a swarm node's
    volumes): ``task`` (backup, restore) works on this host's folders; the runtime says where and how."""
    rt = existing_runtime(settings, SandboxState(settings), strict=False)
    elsewhere = rt.state_elsewhere() if rt is not None else None
    if elsewhere:
        raise WorkflowError(f"`invoke {task}` works on the sandbox's folders on this host, but {elsewhere}")


def sandbox_status(settings: Settings) -> tuple[Runtime | None, RuntimeStatus]:
    """The runtime that holds the sandbox (None when none does) and its status, for backup and restore."""
    rt = existing_runtime(settings, SandboxState(settings))
    return rt, (rt.status() if rt is not None else RuntimeStatus(ABSENT))


def sandbox_on_port(settings: Settings, port: int) -> str | None:
    """``the sandbox NAME (runtime, state in FOLDER)``: a running sandbox of this tool, other than
    this one (``settings``' state folder), whose record says it was started on ``port`` (each runtime that answers is
    asked for the sandboxes it runs, with the state folder they carry); None when there is none, or
    its folder cannot be read (another user's). Only asked when the port is found taken."""
    from pathlib import Path

    from openwork_sandbox.runtimes.probe import docker_support
    from openwork_sandbox.state.ownership import STATE_DIR

    listed = []
    if docker_support(timeout=5)[0]:
        from openwork_sandbox.runtimes.listing import docker_managed

        listed += [("docker", *item) for item in docker_managed()]
    try:
        from openwork_sandbox.runtimes.listing import microsandbox_managed

        listed += [("microsandbox", *item) for item in microsandbox_managed()]
    except Exception:  # no SDK, or msb does not answer: Docker's list is what there is
        pass
    for kind, name, marks, running in listed:
        folder = Path(marks.get(STATE_DIR) or settings.state_dir / name)
        if not running or folder.resolve() == settings.sandbox_state_dir.resolve():
            continue
        if read_record(folder, strict=False).get("port") == port:  # one that cannot be read is {}
            return f"the sandbox {name} ({kind}, state in {folder})"
    return None


def port_taker(settings: Settings, port: int) -> str:
    """What holds ``port``, for a one-line error: another sandbox of this tool by its name
    (:func:`sandbox_on_port`), else the program (``net.ports.port_holder``)."""
    from openwork_sandbox.net.ports import port_holder

    return sandbox_on_port(settings, port) or port_holder(port)
