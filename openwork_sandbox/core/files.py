"""The one atomic file writer: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


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
