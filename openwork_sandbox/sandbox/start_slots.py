"""Host-wide start slots (at most N sandboxes boot at once on one host, whoever starts them) and
port claims (one `up` at a time boots a sandbox on a given port).

A start is CPU-bound for a few seconds (opencode loads, the orchestrator checks its programs), and
starts that share the cores all take as long as the last. ``up`` holds a slot while it boots; when
all N are taken it waits (saying so) until one is free. The health deadline (OPENWORK_HEALTH_TIMEOUT)
counts from the moment the start has its slot: waiting is bounded by the starts ahead, each of
which has its own deadline.

A slot is an exclusive ``flock`` on ``<tmp>/openwork-sandbox-start-slots/slot-<i>.lock``, shared by
every checkout and every user on the host (the folder is world-writable and sticky, like /tmp);
the kernel releases it when ``up`` ends in any way, so a killed ``up`` never keeps one. The slot
file names the sandbox that holds it, for the waiting message.

A port claim is the same kind of lock on ``port-<P>.lock`` in that folder, taken without waiting:
two `up`s of different names on one port would both see it free, both boot, and the orchestrator
would move the loser's server elsewhere. The claim is held until ``up`` ends; a sandbox that then
runs holds the port itself (``up`` checks the port after its claim).
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
from openwork_sandbox.core.errors import WorkflowError

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


def _shared(folder: Path) -> Path:
    """``folder``, made world-writable and sticky (like /tmp) when it is new: every user shares it."""
    if not folder.is_dir():
        with contextlib.suppress(FileExistsError):
            folder.mkdir(parents=True)
            with contextlib.suppress(OSError):
                folder.chmod(0o1777)
    return folder


@contextlib.contextmanager
def start_slot(slots: int, name: str, *, folder: Path | None = None) -> Iterator[float]:
    """Hold one of ``slots`` host-wide start slots for the body (0: no limit); yields the seconds it
    waited for one. Says so in one line when it has to wait, and prints a line every few seconds off
    a terminal while it waits."""
    if slots <= 0:
        yield 0.0
        return
    folder = _shared(folder or SLOT_DIR)
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


def _holder(path: Path) -> str:
    """What a claim file names: ``<sandbox> (pid N)``, or "" when it cannot be read."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def port_claim(port: int, name: str, *, wait: float = 5.0, folder: Path | None = None) -> Iterator[None]:
    """Hold the host-wide claim on ``port`` for ``name``'s `up` during the body.

    Another sandbox's `up` holding it: a WorkflowError at once, naming that sandbox (that sandbox
    will hold the port when it runs). A second `up` of ``name`` itself waits up to ``wait``
    seconds, as for the sandbox's own lock, then fails naming the `up` that holds it."""
    path = _shared(folder or SLOT_DIR) / f"port-{port}.lock"
    fd, writable = _open_slot(path)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        holder = _holder(path)
        same = holder.rsplit(" (pid ", 1)[0] == name
        if (same or not holder) and time.monotonic() < deadline:  # no name: being released or written now
            time.sleep(POLL_SECONDS)
            continue
        os.close(fd)
        if same:
            raise WorkflowError(
                f"sandbox {name} is busy: another `invoke up` ({holder.rsplit(' (', 1)[-1].rstrip(')')}) holds "
                f"port {port} while it starts it; wait for it to finish and run `invoke up` again"
            )
        raise WorkflowError(
            f"port {port} is taken by the sandbox {holder or '(name unknown)'}, whose `invoke up` is starting it "
            "now: choose another port with --port / OPENWORK_MICROSANDBOX_PORT"
        )
    if writable:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{name} (pid {os.getpid()})\n".encode(), 0)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)
