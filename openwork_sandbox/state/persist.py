"""State that survives: where the sandbox keeps what a user would miss, and moving it there.

Inside the sandbox everything the three programs keep lives under the ``/data`` bind mount
(``.state/<name>/data`` on the host), because HOME is ``/data/home``:

- opencode: ``$XDG_DATA_HOME/opencode`` (``opencode.db`` with sessions and messages, auth, logs),
  ``$XDG_CONFIG_HOME/opencode``, ``$XDG_STATE_HOME/opencode``; XDG_* default to folders under HOME;
- openwork-server: its token store, which the image's entrypoint keeps out of the agent's reach
  (``/srv/openwork/store``, :mod:`openwork_sandbox.state.secrets`); images of older layouts kept it
  in ``$HOME/.config/openwork/tokens.json`` (it follows HOME, not XDG), from where it is moved;
- the orchestrator: ``$OPENWORK_DATA_DIR`` (``/data/openwork-orchestrator``), sidecars in ``/data/sidecars``.

``up`` passes ``HOME=/data/home`` (:func:`guest_env`) whatever the image's entrypoint does.

A sandbox created with another HOME (the old layout: ``/root``) still holds the first three there.
Before ``up`` replaces it, :func:`migrate_before_replace` copies them out (the runtime's
``copy_out``), verifies every file (size and sha256, read back from disk), moves them into
``<data>/home`` without overwriting anything newer, and says so in one line; a copy that fails raises
:class:`~openwork_sandbox.core.errors.WorkflowError` and leaves the sandbox as it was.

:func:`check_data_dir` refuses, before any boot, a data folder this user cannot write (read-only,
full, someone else's) or one too full to start in, with one line naming the folder and the fix; the entrypoint does the same
inside (exit :data:`EXIT_DATA_UNWRITABLE`), which :func:`raise_if_data_unwritable` turns into that line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from openwork_sandbox.core import console
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.core.files import write_atomic

GUEST_HOME = "/data/home"  # HOME inside the sandbox (the entrypoint's default too)
HOST_HOME = "home"  # the same folder on the host: <data dir>/home
LEGACY_HOME = "/root"  # HOME of a sandbox of the old layout
LAYOUT = 3  # part of the settings fingerprint: a sandbox of an older layout is recreated (and migrated)
# What a user would miss, relative to HOME (the README's table lists them).
KEPT = (".local/share/opencode", ".config/opencode", ".config/openwork", ".local/state/opencode")
NOT_KEPT = (".local/state/opencode/locks",)  # lock files of the stopped process: stale by definition
EXIT_DATA_UNWRITABLE = 73  # the entrypoint's exit code for a /data it cannot write (EX_CANTCREAT)
UNWRITABLE_MARK = "/data is not writable"
MIN_FREE_BYTES = 64 * 1024 * 1024  # below this `up` says the database has little room to grow
# below this a start cannot keep what it writes (opencode's database and its write-ahead log, the
# supervisor's record) and opencode dies at every start: `up` refuses to boot
MIN_START_BYTES = 4_000_000
MIGRATION_RECORD = ".migrated.json"


def guest_env() -> dict[str, str]:
    """Environment for the sandbox that puts its home under /data, whatever the image's entrypoint."""
    return {"HOME": GUEST_HOME}


# --- the data folder must be writable -------------------------------------------------------------


def _owner(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "?"
    try:
        import pwd

        return f"{pwd.getpwuid(st.st_uid).pw_name} (uid {st.st_uid})"
    except (ImportError, KeyError):
        return f"uid {st.st_uid}"


def data_dir_problem(path: Path) -> str | None:
    """Why the sandbox could not keep anything in ``path`` (a probe write), or None when it can."""
    path = Path(path)
    if not path.is_dir():
        return f"the data folder {path} is not a folder"
    probe = path / f".openwork-write-probe.{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        fix_other = "or point OPENWORK_MICROSANDBOX_DATA_DIR at a writable folder"
        if exc.errno == errno.EROFS:
            return f"the data folder {path} is read-only: mount it read-write {fix_other}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"the data folder {path} is full: free some space there {fix_other}"
        if exc.errno in (errno.EACCES, errno.EPERM):
            ids = f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else "$(id -u):$(id -g)"
            return (
                f"the data folder {path} is not writable by you (it belongs to {_owner(path)}): "
                f"run `sudo chown -R {ids} {path}` once, {fix_other}"
            )
        return f"the data folder {path} cannot be written ({exc.strerror}): fix it {fix_other}"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def data_full_problem(path: Path) -> str | None:
    """One line naming ``path`` and the fix when it has less than :data:`MIN_START_BYTES` free, else
    None (also when its free space cannot be read)."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None
    if free >= MIN_START_BYTES:
        return None
    return (
        f"the data folder {path} is nearly full ({console.human_bytes(free)} free; a start needs "
        f"{console.human_bytes(MIN_START_BYTES)}): free some space there or point OPENWORK_MICROSANDBOX_DATA_DIR "
        "at a folder with room"
    )


def check_data_dir(settings) -> None:
    """Before a boot: one line naming the host folder and the fix when the sandbox could keep nothing
    (not writable: :func:`data_dir_problem`) or could not start (nearly full: :func:`data_full_problem`)."""
    problem = data_dir_problem(Path(settings.data_dir))
    if problem:
        raise WorkflowError(f"{problem}; the sandbox would keep nothing (sessions, issued tokens) across restarts")
    full = data_full_problem(Path(settings.data_dir))
    if full:
        raise WorkflowError(full)
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(settings.data_dir).free
        if free < MIN_FREE_BYTES:
            console.info(
                f"note: only {console.human_bytes(free)} free in {settings.data_dir}; opencode's database "
                "grows with every session"
            )


def raise_if_data_unwritable(settings, log_lines: Iterable[str]) -> None:
    """The entrypoint said /data is not writable: the same one line as :func:`check_data_dir`."""
    if any(UNWRITABLE_MARK in line for line in log_lines or ()):
        raise WorkflowError(
            f"the sandbox cannot write its data folder {settings.data_dir} (mounted at /data): it is read-only, full "
            f"or belongs to another user; make it writable for you (e.g. `sudo chown -R $(id -u):$(id -g) "
            f"{settings.data_dir}`) or point OPENWORK_MICROSANDBOX_DATA_DIR at a writable folder"
        )


# --- migration from the old layout ---------------------------------------------------------------


@dataclasses.dataclass
class Copied:
    """One file copied out of the sandbox: where it is staged and what arrived."""

    rel: str  # relative to HOME, POSIX
    size: int
    sha256: str
    mtime: float


def is_kept(rel: str) -> bool:
    """Whether the file ``rel`` (relative to HOME) is copied: not under :data:`NOT_KEPT`."""
    return not any(rel == skip or rel.startswith(skip + "/") for skip in NOT_KEPT)


def write_staged(
    stage: Path, rel: str, chunks: Iterable[bytes], mode: int, mtime: float, *, expected_size: int, source: str
) -> Copied:
    """Write one file of the copy to ``stage/rel``; a WorkflowError when fewer or more bytes arrived
    than the sandbox said it has (``expected_size``; ``source`` names where it came from)."""
    dest = stage / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with open(dest, "wb") as fh:
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(dest, (mode & 0o777) | 0o600)
    os.utime(dest, (mtime, mtime))
    if size != expected_size:
        raise WorkflowError(f"copying {source}: {rel} arrived with {size} bytes, the sandbox has {expected_size}")
    return Copied(rel, size, digest.hexdigest(), mtime)


def read_chunks(fh, size: int = 1 << 20) -> Iterator[bytes]:
    """``fh``'s bytes in chunks of at most ``size``, until its end."""
    while True:
        chunk = fh.read(size)
        if not chunk:
            return
        yield chunk


def verify(stage: Path, copied: list[Copied]) -> None:
    """Read every staged file back from disk: same size and sha256 as what arrived, or an error."""
    for item in copied:
        path = stage / item.rel
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                for chunk in read_chunks(fh):
                    digest.update(chunk)
            size = path.stat().st_size
        except OSError as exc:
            raise WorkflowError(f"verifying the copy of {item.rel}: {exc.strerror}") from None
        if size != item.size or digest.hexdigest() != item.sha256:
            raise WorkflowError(
                f"the copy of {item.rel} in {path} does not match what the sandbox sent "
                f"({size} bytes, expected {item.size}); nothing was changed"
            )


def _newest(path: Path) -> float:
    newest = 0.0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def _has_files(path: Path) -> bool:
    return path.is_dir() and any(files for _r, _d, files in os.walk(path))


def install(stage: Path, home: Path, copied: list[Copied], stamp: str) -> tuple[list[str], list[str]]:
    """Move the staged units into ``home``. A unit already there with files at least as new is kept
    (the copy is dropped); an older one is kept beside it as ``<unit>.before-migration-<stamp>``.
    Returns (moved units, kept units)."""
    moved, kept = [], []
    units = sorted({next(u for u in KEPT if c.rel == u or c.rel.startswith(u + "/")) for c in copied})
    for unit in units:
        src, dest = stage / unit, home / unit
        if _has_files(dest):
            if _newest(dest) >= max(c.mtime for c in copied if c.rel.startswith(unit + "/")):
                kept.append(unit)
                continue
            dest.rename(dest.with_name(f"{dest.name}.before-migration-{stamp}"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():  # an empty folder
            shutil.rmtree(dest)
        os.replace(src, dest)
        moved.append(unit)
    return moved, kept


def copy_home_state(
    fetch: Callable[[str, Path, str], list[Copied]], data_dir: Path, source: str, guest_home: str = LEGACY_HOME
) -> str | None:
    """Copy the kept folders out of ``guest_home`` with ``fetch(guest_home, stage, unit)``, verify,
    install into ``<data_dir>/home``; the one-line summary, or None when there was nothing to copy.
    Any failure raises WorkflowError and leaves ``<data_dir>/home`` as it was."""
    data_dir = Path(data_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stage = data_dir / f".migrating-{stamp}-{os.getpid()}"
    try:
        stage.mkdir(parents=True)
    except OSError as exc:
        raise WorkflowError(
            f"cannot stage the copy in {data_dir} ({exc.strerror}); the sandbox was not replaced"
        ) from None
    try:
        copied: list[Copied] = []
        for unit in KEPT:
            copied += fetch(guest_home, stage, unit)
        if not copied:
            return None
        verify(stage, copied)
        home = data_dir / HOST_HOME
        moved, kept = install(stage, home, copied, stamp)
        record = {
            "from": f"{source}:{guest_home}",
            "at": time.time(),
            "moved": moved,
            "kept_newer": kept,
            "files": len(copied),
            "bytes": sum(c.size for c in copied),
        }
        write_atomic(home / MIGRATION_RECORD, json.dumps(record, indent=2) + "\n", mode=0o644)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    size = console.human_bytes(sum(c.size for c in copied))
    line = f"moved the state {source} kept in {guest_home} ({len(copied)} files, {size}, sha256 verified) to {home}"
    if kept:
        line += f"; kept the newer {', '.join(kept)} already there"
    return line


def migrate_before_replace(settings, rt, spec=None) -> None:
    """Before ``up`` removes the sandbox ``rt``: copy the state it still keeps in its home into the
    data folder (see the module doc). The runtime stops the server first so its database is
    consistent (``Runtime.open_for_copy``), copies folders out (``Runtime.copy_out``), and is put
    back as it was when the copy fails (then nothing has changed)."""
    try:
        st = rt.status()
    except ImportError:  # the microsandbox SDK is not installed: it cannot hold a sandbox here
        return
    if not st.exists or rt.created_home() == GUEST_HOME:
        return  # nothing to copy, or made with this layout: its state is in the data folder already
    where = f"the {rt.kind} sandbox {settings.name}"
    restore = rt.open_for_copy(spec)
    try:
        line = copy_home_state(rt.copy_out, Path(settings.data_dir), where)
    except WorkflowError as exc:
        with contextlib.suppress(WorkflowError):
            restore()
        raise WorkflowError(
            f"{exc.message}; {settings.name} was not replaced and still holds its sessions and tokens "
            f"(free space in {settings.data_dir} or fix the error, then run `invoke up` again)",
            exit_code=exc.exit_code,
        ) from None
    except OSError as exc:
        with contextlib.suppress(WorkflowError):
            restore()
        raise WorkflowError(
            f"copying the state out of {where} failed ({exc.strerror}: {exc.filename}); it was not replaced"
        ) from None
    if line:
        console.info(f"{console.OK} {line}")


__all__ = [
    "GUEST_HOME",
    "LAYOUT",
    "KEPT",
    "Copied",
    "guest_env",
    "check_data_dir",
    "data_full_problem",
    "data_dir_problem",
    "raise_if_data_unwritable",
    "migrate_before_replace",
    "copy_home_state",
    "write_staged",
    "is_kept",
]
