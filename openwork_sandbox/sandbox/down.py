"""``down``: stop the sandbox and keep everything; nothing to do when it is not running."""

from __future__ import annotations

from openwork_sandbox.config import Settings
from openwork_sandbox.core import console
from openwork_sandbox.sandbox.locate import existing_runtime
from openwork_sandbox.state.store import SandboxState


def down(settings: Settings) -> None:
    """Stop the sandbox under its lock and keep its state; says so in one line either way, and
    nothing to do (no error) when it is not running or does not exist."""
    state = SandboxState(settings)
    rt = existing_runtime(settings, state)
    if rt is None:
        console.info(f"{settings.name}: no sandbox of that name; nothing to stop")
        return
    with state.lock(action="down"):
        if rt.stop():
            console.info(
                f"{console.OK} stopped {settings.name} ({rt.kind}); state kept in {settings.sandbox_state_dir}"
            )
        else:
            console.info(f"{settings.name} ({rt.kind}) is not running; nothing to stop")
