"""Host-wide start slots: at most N sandboxes boot at once on one host, whoever starts them.

A start is CPU-bound for a few seconds (opencode loads, the orchestrator checks its programs), and
starts that share the cores all take as long as the last. ``up`` holds a slot while it boots; when
all N are taken it waits (saying so) until one is free. The health deadline (OPENWORK_HEALTH_TIMEOUT)
counts from the moment the start has its slot: waiting is bounded by the starts ahead, each of
which has its own deadline.

A slot is an exclusive ``flock`` on ``<tmp>/openwork-sandbox-start-slots/slot-<i>.lock``, shared by
every checkout and every user on the host (the folder is world-writable and sticky, like /tmp);
the kernel releases it when ``up`` ends in any way, so a killed ``up`` never keeps one. The slot
file names the sandbox that holds it, for the waiting message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from openwork_sandbox.core import console

SLOT_DIR = Path(tempfile.gettempdir()) / "openwork-sandbox-start-slots"
POLL_SECONDS = 0.25


def default_slots() -> int:
    """One start per CPU core of the host."""
    return max(1, os.cpu_count() or 1)


def _open_slot(path: Path) -> tuple[int, bool]:
    """(fd, writable) for a slot file; another user's file opens read-only, which flock allows."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY), False
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)  # other users' `up`s write their name into it too
    return fd, True


def _holders(folder: Path, slots: int) -> list[str]:
    """What the slot files name: the sandboxes holding (or last holding) a slot, for the waiting line."""
    names = []
    for i in range(slots):
        with contextlib.suppress(OSError):
            text = (folder / f"slot-{i}.lock").read_text().strip()
            if text:
                names.append(text)
    return names


def _try_take(folder: Path, slots: int, name: str) -> int | None:
    """The fd of a free slot, now held for ``name``, or None when all ``slots`` are taken."""
    for i in range(slots):
        fd, writable = _open_slot(folder / f"slot-{i}.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                continue
            raise
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{name} (pid {os.getpid()})\n".encode(), 0)
        return fd
    return None


@contextlib.contextmanager
def start_slot(slots: int, name: str, *, folder: Path | None = None) -> Iterator[float]:
    """Hold one of ``slots`` host-wide start slots for the body (0: no limit); yields the seconds it
    waited for one. Says so in one line when it has to wait, and prints a line every few seconds off
    a terminal while it waits."""
    if slots <= 0:
        yield 0.0
        return
    folder = folder or SLOT_DIR
    if not folder.is_dir():
        with contextlib.suppress(FileExistsError):
            folder.mkdir(parents=True)
            with contextlib.suppress(OSError):
                folder.chmod(0o1777)  # every user of the host shares the slots
    began = time.monotonic()
    fd = _try_take(folder, slots, name)
    if fd is None:
        busy = ", ".join(_holders(folder, slots)) or "other sandboxes"
        console.info(
            f"waiting for a start slot: {slots} start(s) already run on this host ({busy}); "
            f"OPENWORK_START_SLOTS={slots} (0: no limit)"
        )
        with console.heartbeat(lambda: f"waiting for a start slot ({', '.join(_holders(folder, slots)) or 'busy'})"):
            while fd is None:
                time.sleep(POLL_SECONDS)
                fd = _try_take(folder, slots, name)
        console.info(f"got a start slot after {time.monotonic() - began:.1f}s")
    try:
        yield time.monotonic() - began
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the file releases the flock
