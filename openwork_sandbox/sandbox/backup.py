"""`backup` and `restore`: one archive of what a sandbox keeps, taken while it runs, put back whole.

**The archive** is a gzip-compressed tar (``<name>-<UTC time>.tar.gz`` under ``.state/backups/``
by default, or ``--output PATH``), mode 0600, written through a temporary file and renamed
(:func:`files.atomic_writer`), so a half-written archive never carries the final name. It holds:

- ``manifest.json`` (the first member): the format, the sandbox it came from, and every entry
  with its type, mode, size and sha256;
- ``data/``: the data folder (``/data`` in the sandbox: opencode's database, config and state,
  the orchestrator's state, sidecars), without what is rebuilt or stale:
  opencode's download cache (``home/.cache``), its lock files, and the ``-wal``/``-shm``/``-journal``
  companions of a database. Each SQLite database (found by its header) is copied with SQLite's
  online backup API (:meth:`sqlite3.Connection.backup`) through a read-only connection: one
  consistent snapshot that holds every committed transaction, the ones still in the WAL too,
  while the server goes on writing; the copy is checked (``PRAGMA quick_check``). Every file of the
  data folder is owner-only (0600, 0700 for executables and folders) in the archive;
- ``server/``: the server's private store (``.state/<name>/server-store/``: the tokens issued with
  ``POST /tokens``), owner-only like ``data/``; archives of older versions have none (their
  issued tokens are in ``data/home/.config/openwork/``, from where the sandbox moves them);
- ``state/tokens.json``: the client and host tokens kept in ``.state/<name>/`` (0600);
- ``workspace/`` only with ``--workspace``: the workspace is the user's project, often a git
  checkout that lives elsewhere too, and can be large; its files keep their modes.

The layout and the rules ``restore`` holds every archive to are :mod:`openwork_sandbox.sandbox.archive`'s;
a symlink that leads outside its folder (absolute, or up past it) is left out, with a note, since
``restore`` refuses it.

A running microsandbox microVM writes its database through the VM's file sharing, where the host's
SQLite cannot share its locks: ``backup`` then asks for ``invoke down`` first (a stopped sandbox's
files are consistent). The Docker runtime's container shares the host's kernel: backed up live.

Putting an archive back is :mod:`openwork_sandbox.sandbox.restore`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import posixpath
import shutil
import sqlite3
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openwork_sandbox import __version__
from openwork_sandbox.config import Settings
from openwork_sandbox.core import console
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, WorkflowError
from openwork_sandbox.core.files import atomic_writer, private_dir
from openwork_sandbox.sandbox.archive import FORMAT, FORMAT_VERSION, MANIFEST, TOPS, leaving_links, shown
from openwork_sandbox.state.persist import read_chunks
from openwork_sandbox.state.secrets import store_dir
from openwork_sandbox.state.store import TOKENS_FILE, SandboxState

BACKUPS_DIR = "backups"  # under the state folder (a reserved name there)
SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
# relative to the data folder: rebuilt by opencode (downloaded tools and plugins), or stale by definition
NOT_BACKED_UP = ("home/.cache", "home/.local/state/opencode/locks")
TRANSIENT_PREFIXES = (".openwork-write-probe.", ".migrating-")  # the tool's own short-lived files


# --- what goes in ----------------------------------------------------------------------------------


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _skipped(rel: str) -> bool:
    name = posixpath.basename(rel)
    return any(rel == s or rel.startswith(s + "/") for s in NOT_BACKED_UP) or any(
        name.startswith(p) for p in TRANSIENT_PREFIXES
    )


def _walk(root: Path, skip) -> Iterator[tuple[str, os.stat_result]]:
    """``(relative POSIX path, lstat)`` of everything under ``root`` that ``skip`` keeps, parents
    first, links not followed, skipped folders not entered."""

    def unreadable(exc: OSError) -> None:  # os.walk would skip the folder without a word
        raise WorkflowError(
            f"cannot read {exc.filename} ({exc.strerror}); files made inside the sandbox may belong "
            "to another user: back up as that user or with sudo; no archive was written"
        )

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=unreadable):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel = (lambda name: name) if rel_dir == "." else (lambda name, parent=rel_dir: f"{parent}/{name}")
        dirnames[:] = sorted(d for d in dirnames if not skip(rel(d)))
        for name in dirnames + sorted(f for f in filenames if not skip(rel(f))):
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:  # gone meanwhile (a log rotated, a temp file)
                continue
            yield rel(name), st


def hash_file(path: Path) -> tuple[int, str]:
    """``(size, sha256 hex)`` of the file at ``path``, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for chunk in read_chunks(fh):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _sqlite_copy(src: Path, dest: Path) -> None:
    """One consistent snapshot of the database ``src`` (in use or not) into ``dest``, by SQLite's
    online backup through a read-only connection (the source's files are never changed)."""
    try:
        source = sqlite3.connect(f"{src.as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            target = sqlite3.connect(dest)
            try:
                source.backup(target)  # all pages in one step: one read transaction, one snapshot
                target.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                ok = target.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                target.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise WorkflowError(f"backing up the database {src} failed ({exc}); no archive was written") from None
    for suffix in SQLITE_COMPANIONS:  # the last connection is closed: nothing may be left beside the copy
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{dest}{suffix}")
    if ok != "ok":
        raise WorkflowError(f"the backup copy of {src} fails SQLite's check ({ok}); no archive was written")


def _stage_tree(
    root: Path, top: str, stage: Path, entries: list[dict], *, private: bool, skip=_skipped, status=None
) -> list[str]:
    """Copy ``root`` into ``stage/top`` and add its entries to ``entries``; the databases copied."""
    databases: list[str] = []
    items = list(_walk(root, skip))
    sqlite_files = {rel for rel, st in items if stat.S_ISREG(st.st_mode) and _is_sqlite(root / rel)}
    companions = {db + suffix for db in sqlite_files for suffix in SQLITE_COMPANIONS}
    (stage / top).mkdir(mode=0o700)
    for rel, st in items:
        if rel in companions:
            continue
        src, dest, name = root / rel, stage / top / rel, f"{top}/{rel}"
        mode = stat.S_IMODE(st.st_mode)
        if private:
            mode = 0o700 if (stat.S_ISDIR(st.st_mode) or mode & 0o100) else 0o600
        if stat.S_ISDIR(st.st_mode):
            dest.mkdir(mode=0o700)
            entries.append({"path": name, "type": "dir", "mode": mode})
            continue
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(src)
            os.symlink(target, dest)
            entries.append({"path": name, "type": "symlink", "target": target})
            continue
        if not stat.S_ISREG(st.st_mode):
            continue  # sockets and pipes hold nothing to keep
        if status is not None:
            status[0] = rel
        try:
            if rel in sqlite_files:
                console.info(f"  {rel}: SQLite online backup ({console.human_bytes(st.st_size)})")
                _sqlite_copy(src, dest)
                databases.append(name)
            else:
                shutil.copyfile(src, dest, follow_symlinks=False)
        except FileNotFoundError:
            continue  # gone meanwhile
        except PermissionError as exc:
            raise WorkflowError(
                f"cannot read {src} ({exc.strerror}); files made inside the sandbox may belong to "
                "another user: back up as that user or with sudo; no archive was written"
            ) from None
        os.chmod(dest, 0o600)
        size, sha = hash_file(dest)
        entries.append(
            {
                "path": name,
                "type": "file",
                "mode": mode,
                "size": size,
                "sha256": sha,
                **({"sqlite": True} if rel in sqlite_files else {}),
            }
        )
    _leave_out_leaving_links(top, stage, entries)
    for entry in entries:  # the modes the archive keeps, once the copies are done
        if entry["type"] != "symlink" and entry["path"].startswith(top + "/"):
            os.chmod(stage / entry["path"], entry["mode"] | (0o700 if entry["type"] == "dir" else 0))
    return databases


def _leave_out_leaving_links(top: str, stage: Path, entries: list[dict]) -> None:
    """Drop from ``entries`` (and ``stage``) the links under ``top`` that lead out of it, which
    ``restore`` refuses (:func:`archive.leaving_links`; once one is dropped the others are judged
    again without it), and say so in one line."""
    dropped: list[dict] = []
    while True:
        leaving = set(leaving_links(e for e in entries if e["path"].startswith(top + "/")))
        if not leaving:
            break
        dropped += [e for e in entries if e["path"] in leaving]
        entries[:] = [e for e in entries if e["path"] not in leaving]
    for entry in dropped:
        os.unlink(stage / entry["path"])
    if dropped:
        first = dropped[0]
        console.info(
            f"note: left out {len(dropped)} symlink{'s' if len(dropped) != 1 else ''} that lead{'s' if len(dropped) == 1 else ''} "
            f"outside {top}/ (restore refuses them), first {shown(first['path'])} -> {shown(first['target'])}"
        )


def default_output(settings: Settings) -> Path:
    """``.state/backups/<name>-<UTC time>.tar.gz``: where an archive goes without ``--output``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return settings.state_dir / BACKUPS_DIR / f"{settings.name}-{stamp}.tar.gz"


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""  # who made it is nobody's business in a copy that travels
    return info


def _write_failed(exc: OSError, target: Path) -> WorkflowError:
    """The one line for an OSError while staging or writing the archive (whose temporary files are
    gone by then): a failing write where the archive goes names it and the fix; another, the file."""
    where = Path(exc.filename) if exc.filename else target.parent
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)  # copyfile names the source
    if full or where == target.parent or target.parent in where.parents:
        return WorkflowError(
            f"cannot write the archive {target} ({exc.strerror or exc}): free space on that disk or pick "
            "another --output; no archive was written"
        )
    return WorkflowError(f"backing up {where} failed ({exc.strerror or exc}); no archive was written")


def backup(settings: Settings, *, output: str | os.PathLike | None = None, workspace: bool = False) -> dict[str, Any]:
    """Write the archive (see the module doc); returns what went in (path, files, bytes, databases)."""
    from openwork_sandbox.sandbox.locate import require_host_state, sandbox_status

    require_host_state(settings, "backup")
    state = SandboxState(settings)
    data_dir = Path(settings.data_dir)
    if not data_dir.is_dir() or not any(data_dir.iterdir()):
        raise WorkflowError(
            f"sandbox {settings.name} has nothing to back up: its data folder {data_dir} is "
            f"{'empty' if data_dir.is_dir() else 'missing'} (run `invoke up` first, or set "
            "OPENWORK_MICROSANDBOX_NAME to the sandbox you mean)"
        )
    stored = state.stored_tokens(strict=True)  # a broken tokens.json is named, not backed up silently
    rt, st = sandbox_status(settings)
    running = st.state == "running"
    if running and rt is not None and not rt.live_files_on_host:
        raise WorkflowError(
            f"the {rt.kind} sandbox {settings.name} is running: the host cannot take a consistent "
            "copy of a database a microVM is writing; run `invoke down`, then `invoke backup` (and "
            "`invoke up` again)"
        )
    target = Path(output).expanduser().resolve() if output else default_output(settings)
    if target.exists():
        raise WorkflowError(
            f"{target} exists: nothing is overwritten; pick another --output or move it away",
            exit_code=EXIT_BAD_SETTINGS,
        )
    if output and not target.parent.is_dir():
        raise WorkflowError(
            f"--output {output}: the folder {target.parent} does not exist; create it or pick another path",
            exit_code=EXIT_BAD_SETTINGS,
        )
    if not output:
        try:
            private_dir(target.parent, own=True, git_ignored=True)  # .state/backups/: the tool's own, 0700
        except OSError as exc:
            raise _write_failed(exc, target) from None

    started = time.monotonic()
    console.info(f"backing up {settings.name} ({'running' if running else 'not running'}) to {target}")
    now = [str(data_dir)]
    try:
        with (
            console.heartbeat(lambda: f"backing up {now[0]}"),
            tempfile.TemporaryDirectory(dir=target.parent, prefix=".backup-") as tmp,
        ):
            stage = Path(tmp)
            entries: list[dict] = []
            databases = _stage_tree(data_dir, "data", stage, entries, private=True, status=now)
            store = store_dir(settings)
            if store.is_dir():
                databases += _stage_tree(store, "server", stage, entries, private=True, status=now)
            else:
                (stage / "server").mkdir(mode=0o700)
            (stage / "state").mkdir(mode=0o700)
            if stored and state.tokens_path.is_file():
                shutil.copyfile(state.tokens_path, stage / "state" / TOKENS_FILE)
                os.chmod(stage / "state" / TOKENS_FILE, 0o600)
                size, sha = hash_file(stage / "state" / TOKENS_FILE)
                entries.append(
                    {"path": f"state/{TOKENS_FILE}", "type": "file", "mode": 0o600, "size": size, "sha256": sha}
                )
            if workspace:
                ws = Path(settings.workspace_dir)
                if ws.is_dir():
                    console.info(f"  the workspace {ws}")
                    _stage_tree(ws, "workspace", stage, entries, private=False, skip=lambda rel: False, status=now)
            from_settings = [
                env
                for env, value in (("OPENWORK_TOKEN", settings.token), ("OPENWORK_HOST_TOKEN", settings.host_token))
                if value
            ]
            manifest = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "tool_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "sandbox": {
                    "name": settings.name,
                    "runtime": rt.kind if rt else None,
                    "state": st.state,
                    "image": st.image,
                },
                "workspace": workspace,
                "databases": databases,
                "not_backed_up": list(NOT_BACKED_UP),
                "tokens_from_settings": from_settings,
                "entries": entries,
            }
            (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            os.chmod(stage / MANIFEST, 0o600)
            now[0] = f"writing {target.name}"
            with (
                atomic_writer(target, mode=0o600, replace=False) as fh,
                tarfile.open(fileobj=fh, mode="w:gz", compresslevel=6) as tar,
            ):
                tar.add(stage / MANIFEST, arcname=MANIFEST, filter=_tar_filter)
                for top in TOPS:
                    if top == "workspace" and not workspace:
                        continue
                    tar.add(stage / top, arcname=top, recursive=False, filter=_tar_filter)
                for entry in entries:
                    tar.add(stage / entry["path"], arcname=entry["path"], recursive=False, filter=_tar_filter)
    except OSError as exc:  # a read-only or full disk where the archive goes, or a source gone bad
        raise _write_failed(exc, target) from None
    files = [e for e in entries if e["type"] == "file"]
    total = sum(e["size"] for e in files)
    result = {
        "path": str(target),
        "files": len(files),
        "bytes": total,
        "archive_bytes": target.stat().st_size,
        "databases": databases,
        "workspace": workspace,
        "seconds": round(time.monotonic() - started, 3),
    }
    console.info(
        f"{console.OK} backed up {settings.name}: {len(files)} files ({console.human_bytes(total)}, "
        f"{len(databases)} database{'s' if len(databases) != 1 else ''} by SQLite's online backup) in "
        f"{result['seconds']:.1f}s to {target} ({console.human_bytes(result['archive_bytes'])}, mode 0600)"
    )
    if from_settings:
        console.info(
            f"note: {' and '.join(from_settings)} come from your settings, not from the backup: set "
            f"{'them' if len(from_settings) > 1 else 'it'} again where you restore"
        )
    return result
