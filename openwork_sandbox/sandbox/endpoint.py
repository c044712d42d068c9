"""Reaching a sandbox that runs, without booting it: its URL and tokens, its log, a command inside.

Used by ``up`` (what it returns) and ``smoke``.
"""

from __future__ import annotations

import dataclasses

from openwork_sandbox.config import Settings
from openwork_sandbox.core import console
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes import RUNNING
from openwork_sandbox.sandbox.locate import existing_runtime
from openwork_sandbox.state.store import SandboxState


@dataclasses.dataclass
class Endpoint:
    """Where the sandbox's server answers and how to authenticate (tokens in clear: never print)."""

    url: str
    token: str
    host_token: str
    runtime: str
    name: str
    workspace_id: str | None

    def __repr__(self) -> str:
        return (
            f"Endpoint(url={self.url!r}, token={console.mask(self.token)!r}, "
            f"host_token={console.mask(self.host_token)!r}, runtime={self.runtime!r}, name={self.name!r}, "
            f"workspace_id={self.workspace_id!r})"
        )


def endpoint(settings: Settings) -> Endpoint:
    """URL and tokens of the sandbox from the settings and ``.state/<name>/``, without booting or
    asking the runtime; WorkflowError naming the missing setting when there are no tokens."""
    state = SandboxState(settings)
    token, host_token = state.tokens(create=False)
    if not token or not host_token:
        missing = " and ".join(n for n, v in (("OPENWORK_TOKEN", token), ("OPENWORK_HOST_TOKEN", host_token)) if not v)
        raise WorkflowError(
            f"no tokens for sandbox {settings.name} (nothing in {state.tokens_path}): run `invoke up` "
            f"first, or set {missing}"
        )
    record = state.record()
    return Endpoint(
        settings.url,
        token,
        host_token,
        record.get("runtime") or settings.runtime,
        settings.name,
        record.get("workspace_id"),
    )


def server_log_tail(settings: Settings, lines: int = 40) -> tuple[list[str], str]:
    """The server's last ``lines`` log lines and where the full log is (path or command); never raises
    for a missing sandbox or an unreadable log: ``([], why)``."""
    state = SandboxState(settings)
    rt = existing_runtime(settings, state)
    if rt is None:
        return [], f"no sandbox named {settings.name}"
    try:
        return rt.log_tail(lines), rt.log_hint()
    except WorkflowError as exc:
        return [], exc.message


def runtime_exec(settings: Settings, argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` inside the running sandbox; ``(exit code, output)``. WorkflowError when it does not run."""
    state = SandboxState(settings)
    rt = existing_runtime(settings, state)
    if rt is None or rt.status().state != RUNNING:
        raise WorkflowError(f"sandbox {settings.name} is not running: run `invoke up` first")
    return rt.exec(list(argv))
