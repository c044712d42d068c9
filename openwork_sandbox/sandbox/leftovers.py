"""Sandboxes left behind: what ``doctor`` lists and ``reset --stale`` removes.

Each runtime lists the sandboxes this tool made with their marks (``runtimes.listing``);
:func:`state.ownership.judge` says which are stale (an ephemeral one whose ``smoke --ephemeral`` job is
gone, or whose time ran out) and which are orphans (no ``.state/<name>/`` folder owns them).
``reset --stale`` removes the stale ones and their state folders, as the smoke run's own teardown
would have; it never touches a sandbox whose job still runs, a non-ephemeral one (``doctor`` lists
an orphan and how to remove it), nor one of another state folder (another checkout on a shared engine).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from openwork_sandbox.config import Settings
from openwork_sandbox.core import console
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.state.ownership import STATE_DIR, judge


@dataclasses.dataclass(frozen=True)
class Leftover:
    """A sandbox of any runtime that is stale (``stale``: why) or that no state folder owns."""

    runtime: str
    name: str
    state_dir: Path
    running: bool
    ephemeral: bool
    stale: str | None
    orphan: bool

    def describe(self) -> str:
        """One line: runtime, kind, name, running or not, and why it is listed."""
        why = self.stale or ("no state folder owns it" if self.orphan else "")
        kind = "ephemeral " if self.ephemeral else ""
        return f"{self.runtime} {kind}sandbox {self.name} ({'running' if self.running else 'stopped'}): {why}"


def _listed(settings: Settings) -> list[tuple[str, str, dict, bool]]:
    """``(runtime, name, marks, running)`` from every runtime that answers here."""
    from openwork_sandbox.runtimes.probe import docker_support, swarm_support

    found = []
    if docker_support(timeout=5)[0]:
        from openwork_sandbox.runtimes.listing import docker_managed, swarm_managed

        found += [("docker", *item) for item in docker_managed()]
        if swarm_support()[0]:  # the engine is a swarm manager: its services too
            found += [("swarm", *item) for item in swarm_managed()]
    try:
        from openwork_sandbox.runtimes.listing import microsandbox_managed

        found += [("microsandbox", *item) for item in microsandbox_managed()]
    except Exception:
        pass
    return found


def find(settings: Settings, now: float | None = None) -> list[Leftover]:
    """The stale and the orphaned sandboxes of every runtime that answers (the rest are owned and
    fine); ``now`` is the time expiries are judged at."""
    now = time.time() if now is None else now
    out = []
    for runtime, name, marks, running in _listed(settings):
        folder = Path(marks.get(STATE_DIR) or settings.state_dir / name)
        verdict = judge(marks, folder_exists=folder.is_dir(), now=now)
        if verdict.stale or verdict.orphan:
            out.append(
                Leftover(runtime, name, folder, running, marks.get("ephemeral") == "1", verdict.stale, verdict.orphan)
            )
    return out


def remove_stale(settings: Settings) -> int:
    """``reset --stale``: remove every stale sandbox of this project's state folder (OPENWORK_STATE_DIR)
    with its ``.state/<name>/`` (through ``reset``), as the smoke run's own teardown would have;
    returns how many. Stale sandboxes of other state folders (another checkout on a shared engine)
    are named, not touched. One WorkflowError naming every sandbox that could not be removed."""
    from openwork_sandbox.sandbox.reset import reset

    here = settings.state_dir.resolve()
    stale = [left for left in find(settings) if left.stale]
    mine = [left for left in stale if left.state_dir.parent.resolve() == here]
    for left in stale:
        if left not in mine:
            console.info(
                f"not touched: the {left.describe()}; it belongs to {left.state_dir.parent} "
                f"(run `invoke reset --stale` with OPENWORK_STATE_DIR={left.state_dir.parent})"
            )
    if not mine:
        console.info(f"no stale sandboxes of {settings.state_dir}: nothing to remove")
        return 0
    problems = []
    for left in mine:
        console.info(f"removing the {left.describe()}")
        target = settings.with_overrides(
            name=left.name,
            runtime=left.runtime,
            workspace_dir=left.state_dir / "workspace",
            data_dir=left.state_dir / "data",
        )
        try:
            reset(target, yes=True)
        except WorkflowError as exc:
            problems.append(f"{left.name}: {exc.message}")
    if problems:
        raise WorkflowError("could not remove " + "; ".join(problems))
    console.info(f"{console.OK} removed {len(mine)} stale sandbox{'es' if len(mine) != 1 else ''}")
    return len(mine)
