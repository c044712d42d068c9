"""The old layout's state copied out of a microVM through the SDK's ``sandbox.fs``.

An older version kept sessions and tokens in the microVM's home; before such a sandbox is replaced,
``state.persist`` copies them out through the runtime (``created_home``, ``open_for_copy``,
``copy_out``). The SDK reads files only from a running microVM, one folder listing at a time.
"""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath


def home_in_config(config: dict) -> str | None:
    """The HOME in a sandbox's SDK config (its ``env``: a list of ``{key, value}``, or a mapping);
    None when it sets none."""
    env = config.get("env") or []
    pairs = (
        env.items() if isinstance(env, dict) else ((e.get("key"), e.get("value")) for e in env if isinstance(e, dict))
    )
    return next((value for key, value in pairs if key == "HOME"), None)


def entry_kind(entry) -> str:
    """``file`` / ``directory`` / ``symlink`` / ``other`` of an SDK ``FsEntry`` (its kind an enum with
    string values, or a string)."""
    return str(getattr(entry.kind, "value", entry.kind)).lower().rsplit(".", 1)[-1]


async def copy_folder(fs, src: str, unit: str, stage: Path, where: str) -> list:
    """Copy the guest folder ``src`` through the SDK's ``sandbox.fs`` into ``stage/unit``: the regular
    files ``state.persist.is_kept`` keeps, with their modes and times, each written and size-checked by
    ``persist.write_staged`` (its WorkflowError, ``where`` naming the sandbox, when a size differs).
    Returns a ``persist.Copied`` per file, [] when the guest has no such folder; the SDK's errors pass
    unchanged."""
    from openwork_sandbox.state.persist import is_kept, write_staged

    if not await fs.exists(src):
        return []
    copied, todo = [], [src]
    while todo:
        folder = todo.pop()
        for entry in await fs.list(folder):
            path = entry.path if entry.path.startswith("/") else str(PurePosixPath(folder) / entry.path)
            kind = entry_kind(entry)
            if kind == "directory":
                todo.append(path)
                continue
            rel = str(PurePosixPath(unit) / PurePosixPath(path).relative_to(src))
            if kind != "file" or not is_kept(rel):
                continue
            data = await fs.read(path)
            copied.append(
                write_staged(
                    stage,
                    rel,
                    [data],
                    entry.mode or 0o600,
                    entry.modified or time.time(),
                    expected_size=entry.size,
                    source=f"{src} from {where}",
                )
            )
    return copied
