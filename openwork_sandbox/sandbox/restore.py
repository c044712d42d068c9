"""`restore`: an archive of `backup` (:mod:`openwork_sandbox.sandbox.backup`, which describes its layout) put back whole.

**Restore** puts an archive back into the configured sandbox name (which may differ from the one it
came from). It refuses while that sandbox runs (``invoke down`` first), and refuses a data folder
that is not empty (or a ``tokens.json``, or a non-empty workspace when the archive holds one)
unless ``--force``, which keeps what was there as ``<folder>.before-restore-<time>`` (nothing is
deleted). It reads the whole archive into a staging folder beside the target first, checking the
manifest and every member against :mod:`openwork_sandbox.sandbox.archive`'s rules (the layout,
type, size, sha256; nothing outside ``data/``, ``server/``, ``state/tokens.json``, ``workspace/``; no link that
leads out of its folder, no member through a link, no hard link or device) and tarfile's data
filter, and the gzip stream to its end (its CRC and length); reads the staged files back from disk
against the manifest, gives them the manifest's modes without setuid, setgid, sticky or group/other
write, and only then moves them into place. A corrupt, truncated or crafted archive is refused in
one line and nothing is changed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from openwork_sandbox.config import Settings
from openwork_sandbox.core import console
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, WorkflowError
from openwork_sandbox.core.files import private_dir
from openwork_sandbox.sandbox.archive import (
    MANIFEST,
    BadArchive,
    check_manifest,
    check_member,
    restored_mode,
    shown,
)
from openwork_sandbox.sandbox.backup import hash_file
from openwork_sandbox.state.persist import read_chunks
from openwork_sandbox.state.secrets import store_dir
from openwork_sandbox.state.store import TOKENS_FILE, SandboxState

MAX_MANIFEST = 64 << 20


@contextlib.contextmanager
def _reading_archive() -> Iterator[None]:
    """Truncation and corruption, wherever the reading meets them (a member's header or its data,
    the gzip trailer), become :class:`BadArchive`."""
    try:
        yield
    except EOFError:
        raise BadArchive("it is truncated (the compressed data ends early)") from None
    except gzip.BadGzipFile as exc:
        raise BadArchive(f"it is corrupt ({exc})") from None
    except (tarfile.TarError, zlib.error) as exc:
        reason = str(exc) or exc.__class__.__name__
        if "unexpected end" in reason or "truncated" in reason:
            raise BadArchive("it is truncated (the archive ends early)") from None
        raise BadArchive(f"it is corrupt ({reason})") from None


def _open_members(path: Path) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Every member of the archive in order, then the gzip stream read to its end (its CRC and
    length checked); read the members' data inside :func:`_reading_archive` too."""
    with _reading_archive(), open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
        with tarfile.open(fileobj=gz, mode="r|") as tar:
            for member in tar:
                yield tar, member
        while gz.read(1 << 20):  # past the tar's end: the gzip trailer must be there and match
            pass


def _read_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo) -> dict:
    if member.name != MANIFEST or not member.isreg() or member.size > MAX_MANIFEST:
        raise BadArchive(f"it does not start with a {MANIFEST} (not a backup made by `invoke backup`)")
    fh = tar.extractfile(member)
    try:
        manifest = json.loads(fh.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested a million deep
        raise BadArchive(f"its {MANIFEST} does not parse") from None
    return check_manifest(manifest)


def read_manifest(path: Path) -> dict:
    """The manifest alone (the first member), without reading the rest."""
    for tar, member in _open_members(path):
        return _read_manifest(tar, member)
    raise BadArchive("it is empty")


def _data_filter(member: tarfile.TarInfo, stage: Path) -> None:
    """tarfile's data filter (PEP 706) on ``member``, as a second opinion after
    :func:`archive.check_member`: it resolves the member and its link against what is on disk in
    ``stage``. Our own rules come first because the filter alone is not enough here: it strips a
    leading ``/`` instead of refusing it, follows links already extracted instead of refusing any
    member under one, and judges a link against the whole stage, not the one top folder that is
    moved on its own. Pythons without it (before 3.10.12 / 3.11.4) rely on our rules alone."""
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:
        return
    try:
        data_filter(member, str(stage))
    except tarfile.FilterError as exc:
        raise BadArchive(f"{shown(member.name)} is refused by tarfile's data filter ({shown(exc)})") from None


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, entry: dict) -> None:
    """The member's bytes into a new file ``dest`` (0600; never through a link), checked against ``entry``."""
    src = tar.extractfile(member)
    digest, size = hashlib.sha256(), 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        for chunk in read_chunks(src):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        raise BadArchive(
            f"{shown(member.name)} does not match its manifest ({size} bytes, sha256 {digest.hexdigest()[:12]}…; "
            f"expected {entry['size']} bytes, {entry['sha256'][:12]}…)"
        )


def _extract_to_stage(path: Path, stage: Path) -> dict:
    """Read the whole archive into ``stage``, every member checked (:func:`archive.check_member`,
    :func:`_data_filter`) before it is written; the manifest."""
    manifest: dict | None = None
    expected: dict[str, dict] = {}
    folders: set[str] = set()
    seen: set[str] = set()
    for tar, member in _open_members(path):
        if manifest is None:
            manifest = _read_manifest(tar, member)
            expected = {entry["path"]: entry for entry in manifest["entries"]}
            continue
        entry = check_member(member, expected, folders, seen)
        _data_filter(member, stage)
        name, dest = member.name, stage / member.name
        if entry is None or entry["type"] == "dir":
            os.mkdir(dest, 0o700)
            folders.add(name)
        elif entry["type"] == "symlink":
            os.symlink(entry["target"], dest)
        else:
            _write_file(tar, member, dest, entry)
        seen.add(name)
    if manifest is None:
        raise BadArchive("it is empty")
    missing = sorted(set(expected) - seen)
    if missing:
        raise BadArchive(
            f"it lacks {len(missing)} entr{'y' if len(missing) == 1 else 'ies'} its manifest lists "
            f"(first: {shown(missing[0])})"
        )
    return manifest


def verify_stage(stage: Path, manifest: dict) -> None:
    """Read every staged file back from disk against the manifest (size and sha256), then give
    each entry its mode (:func:`archive.restored_mode`: the manifest's, without setuid, setgid,
    sticky or group/other write), the deepest first (folders stay writable for us until then)."""
    for entry in manifest["entries"]:
        path = stage / entry["path"]
        if entry["type"] == "file":
            size, sha = hash_file(path)
            if size != entry["size"] or sha != entry["sha256"]:
                raise BadArchive(f"{shown(entry['path'])} read back from {path} does not match its manifest")
    for entry in sorted(manifest["entries"], key=lambda e: e["path"].count("/"), reverse=True):
        if entry["type"] != "symlink":
            os.chmod(stage / entry["path"], restored_mode(entry["path"], entry["type"], entry["mode"]))


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return Path("/")


def _has_content(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _move(src: Path, dest: Path) -> None:
    if not dest.parent.is_dir():  # a parent that is there is the user's to judge; ensure() names it if open
        private_dir(dest.parent)
    try:
        os.rename(src, dest)
    except OSError:  # another file system
        shutil.move(str(src), str(dest))


def restore(settings: Settings, archive: str | os.PathLike, *, force: bool = False) -> dict:
    """Put the archive back into the configured sandbox (see the module doc); returns what was restored."""
    from openwork_sandbox.sandbox.locate import require_host_state, sandbox_status

    require_host_state(settings, "restore")
    path = Path(archive).expanduser().resolve()
    if not path.is_file():
        raise WorkflowError(f"restore {archive}: no such file", exit_code=EXIT_BAD_SETTINGS)
    try:
        manifest = read_manifest(path)
    except BadArchive as exc:
        raise WorkflowError(f"{path} cannot be restored: {exc}; nothing was changed") from None
    _rt, st = sandbox_status(settings)
    if st.state == "running":
        raise WorkflowError(
            f"sandbox {settings.name} is running: run `invoke down` first, then `invoke restore "
            f"{archive}` (restoring under a running server would mix two databases)"
        )
    state = SandboxState(settings)
    data_dir, ws_dir = Path(settings.data_dir), Path(settings.workspace_dir)
    with_ws = manifest["workspace"]
    occupied = [
        p
        for p, used in (
            (data_dir, _has_content(data_dir)),
            (state.tokens_path, state.tokens_path.exists()),
            (store_dir(settings), _has_content(store_dir(settings))),
            (ws_dir, with_ws and _has_content(ws_dir)),
        )
        if used
    ]
    if occupied and not force:
        raise WorkflowError(
            f"sandbox {settings.name} already holds data ({', '.join(map(str, occupied))}): restore "
            "into another name (--name / OPENWORK_MICROSANDBOX_NAME), or pass --force to keep what is "
            "there beside it as <name>.before-restore-<time> and restore over it"
        )

    started = time.monotonic()
    source = manifest["sandbox"]["name"]
    stage = Path(tempfile.mkdtemp(dir=_nearest_existing(data_dir.parent), prefix=".restore-"))
    try:
        with console.heartbeat(f"reading and verifying {path.name}"):
            try:
                with _reading_archive():
                    _extract_to_stage(path, stage)
                verify_stage(stage, manifest)
            except BadArchive as exc:
                raise WorkflowError(f"{path} cannot be restored: {exc}; nothing was changed") from None
            except OSError as exc:
                raise WorkflowError(
                    f"restoring {path} failed while staging it in {stage.parent} "
                    f"({exc.strerror or exc}); nothing was changed"
                ) from None
        console.info(
            f"{path.name} (sandbox {source}, made {manifest['created']}) read and verified; "
            f"moving it into {settings.name}"
        )
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept: list[str] = []
        private_dir(state.dir, own=True, git_ignored=True)
        with state.lock(action="restore"):
            places = [
                (stage / "data", data_dir),
                (stage / "server", store_dir(settings)),
                (stage / "state" / TOKENS_FILE, state.tokens_path),
            ]
            if with_ws:
                places.append((stage / "workspace", ws_dir))
            for staged, dest in places:
                if not staged.exists():
                    continue
                try:
                    if dest.is_dir() and not dest.is_symlink() and not _has_content(dest):
                        dest.rmdir()
                    elif dest.exists() or dest.is_symlink():
                        aside = dest.with_name(f"{dest.name}.before-restore-{stamp}")
                        os.rename(dest, aside)
                        kept.append(str(aside))
                    _move(staged, dest)
                except OSError as exc:
                    raise WorkflowError(
                        f"moving the verified copy of {path.name} to {dest} failed ({exc.strerror or exc}); "
                        f"what was there before is kept{' as ' + ', '.join(kept) if kept else ''}"
                    ) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    files = [e for e in manifest["entries"] if e["type"] == "file"]
    total = sum(e["size"] for e in files)
    result = {
        "name": settings.name,
        "from": source,
        "files": len(files),
        "bytes": total,
        "kept_aside": kept,
        "workspace": with_ws,
        "seconds": round(time.monotonic() - started, 3),
    }
    console.info(
        f"{console.OK} restored {len(files)} files ({console.human_bytes(total)}, every one sha256-verified "
        f"against the manifest) into {settings.name} in {result['seconds']:.1f}s; `invoke up` boots it"
    )
    for aside in kept:
        console.info(f"kept what was there as {aside}")
    for env in manifest["tokens_from_settings"]:
        if not getattr(settings, "token" if env == "OPENWORK_TOKEN" else "host_token"):
            console.info(f"note: {env} was set in the settings of {source}, not kept in the backup: set it again")
    return result
