"""``reset``: remove the sandbox and delete its state folder ``.state/<name>/``."""

from __future__ import annotations

import contextlib
import sys

from openwork_sandbox.config import Settings
from openwork_sandbox.core import console
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.sandbox.locate import existing_runtime
from openwork_sandbox.state.store import SandboxState, deletion_problem, safe_remove


def _confirm(question: str) -> bool:
    """Ask ``question`` on the terminal; only an answer of y/yes is a yes (no terminal: no)."""
    if not sys.stdin or not sys.stdin.isatty():
        return False
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _outside(path, parent) -> bool:
    """``path`` is not ``parent`` nor under it (links resolved)."""
    try:
        path.resolve().relative_to(parent.resolve())
        return False
    except ValueError:
        return True


def reset(settings: Settings, *, yes: bool = False, keep_data: bool = False) -> None:
    """Remove the sandbox and delete ``.state/<name>/`` (asks first unless ``yes``).

    Refuses (WorkflowError, nothing removed) a state folder that is not safely inside the state
    root (``store.deletion_problem``), and without ``yes`` when there is no terminal to ask on.
    ``keep_data`` removes only the sandbox: the state folder and its tokens stay. Workspace or data
    folders set outside the state folder are never deleted (it says so)."""
    state = SandboxState(settings)
    target = settings.sandbox_state_dir
    if not keep_data:
        problem = deletion_problem(target, settings.state_dir, settings.project_root)
        if problem and (target.exists() or target.is_symlink()):
            raise WorkflowError(f"reset refused: {problem}")
    what = f"the sandbox {settings.name}" + ("" if keep_data else f" and delete {target}")
    if not yes:
        if not (sys.stdin and sys.stdin.isatty()):
            raise WorkflowError(f"reset would remove {what}: pass --yes to confirm (there is no terminal to ask on)")
        if not _confirm(f"Remove {what}?"):
            console.info("nothing removed")
            return
    # hold the lock (when there is a folder) so a running `up` for this name is not pulled from under
    guard = state.lock(action="reset") if state.exists() else contextlib.nullcontext()
    with guard:
        rt = existing_runtime(settings, state, strict=keep_data)  # deleting it all: a broken record does not matter
        if rt is not None:
            if rt.remove():
                console.info(f"{console.OK} removed the {rt.kind} sandbox {settings.name}")
            else:
                console.info(f"{settings.name}: no {rt.kind} sandbox to remove")
        else:
            console.info(f"{settings.name}: no sandbox to remove")
        if rt is not None and not keep_data:
            said = rt.remove_state()  # a swarm sandbox's volumes on its node: before the folder that says where
            if said:
                console.info(said)
        if keep_data:
            if state.exists():
                state.save_record(fingerprint=None, job_id=None)
            console.info(f"state folders kept (--keep-data): {target}")
            return
        if safe_remove(target, settings.state_dir, settings.project_root):
            console.info(f"{console.OK} deleted {target}")
    for label, path in (("workspace", settings.workspace_dir), ("data", settings.data_dir)):
        if _outside(path, target) and path.exists():
            console.info(f"kept the {label} folder {path}: it is outside the state folder (delete it yourself)")
