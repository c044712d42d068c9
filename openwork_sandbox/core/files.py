"""The one atomic file writer (readers see the old file or the new one, never half of one), and
the one rule for the folders a sandbox keeps: only their owner may enter them."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from openwork_sandbox.core import console

_WARNED: set[str] = set()  # the folders already warned about in this process (one task run)


def write_atomic(path: Path, data: str | bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    The temporary file is made with ``O_EXCL`` (never follows a planted symlink) and mode 0600, so
    a private file is never readable by others, not even for a moment; ``mode`` is applied once
    the data is written (0o644 for files that hold nothing secret)."""
    with atomic_writer(Path(path), mode=mode) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int = 0o600, replace: bool = True) -> Iterator[BinaryIO]:
    """The same rule for data written bit by bit (an archive): a binary file object on the temporary
    file; on a clean exit it is flushed to disk, given ``mode`` and moved to ``path`` (with
    ``replace=False`` an existing ``path`` is never overwritten: FileExistsError); on an error the
    temporary file is deleted and ``path`` is untouched."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails when path exists: never overwrites
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


GITIGNORE = ".gitignore"


def private_dir(path: Path, *, own: bool = False, git_ignored: bool = False) -> Path:
    """Make ``path`` a folder only its owner can enter, wherever it is; returns ``path``.

    Each folder missing on the way (``path`` and its parents) is created mode 0700, whatever the
    umask. An existing ``path`` that its group or others can enter is left as it is (it may be the
    user's own folder, set in the settings) and named once per process in a one-line warning
    with the ``chmod 700`` that closes it; with ``own`` (the tool's own folders: ``.state/<name>/``,
    the secrets folder) it is set to 0700 instead, or warned about when that fails (a read-only
    folder, someone else's). With ``git_ignored`` (a state folder: it holds tokens, and may be in a
    checkout) the first folder it makes gets a ``.gitignore`` of ``*``, so git ignores it from inside
    wherever it is. Raises OSError as ``os.mkdir`` does (a file in the way: FileExistsError; a full
    or read-only disk; the folders it made are removed again)."""
    path = Path(path)
    missing = []
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            break
        missing.append(candidate)
    made: list[Path] = []
    try:
        for folder in reversed(missing):
            try:
                os.mkdir(folder, 0o700)
            except FileExistsError:  # made meanwhile (another task), or a file: judged below like any other
                if not folder.is_dir():
                    raise
                continue
            made.append(folder)
            os.chmod(folder, 0o700)  # the umask may have taken the owner's bits too
            if git_ignored and len(made) == 1:
                write_atomic(folder / GITIGNORE, "*\n", mode=0o644)
    except OSError:  # a full disk takes a folder but not its .gitignore: nothing half-made is left
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                (folder / GITIGNORE).unlink(missing_ok=True)
                folder.rmdir()
        raise
    if path in made:
        return path
    mode = os.stat(path).st_mode & 0o7777
    if own and mode != 0o700:
        try:
            os.chmod(path, 0o700)
            return path
        except OSError:  # read-only, or someone else's: warned about as any other (what it holds is judged elsewhere)
            pass
    if mode & 0o077 and str(path) not in _WARNED:
        _WARNED.add(str(path))
        console.info(
            f"! {path} is open to other local users (mode {mode:04o}): `chmod 700 {path}` keeps them out of "
            "what the sandbox keeps there"
        )
    return path
