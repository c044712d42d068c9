"""`invoke backup` and `invoke restore` with real parts: SQLite, tar/gzip, and (marked docker) the
real orchestrator and opencode in the test stack image, written to while the backup runs.

The docker test creates sessions with messages through the proxy in a loop (opencode stores them in
its real SQLite database, in WAL mode) while `invoke backup` runs in another process, restores the
archive into another name, boots that with `invoke up`, passes `invoke smoke`, and reads a session
and an issued token back from it. The other tests make their own WAL database with Python's sqlite3
and check each refusal's exact line and that nothing changed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import sqlite3
import stat
import tarfile
import time
from pathlib import Path

import pytest

from tests.support.lifecycle import invoke, make_settings

ROWS = 700


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = (
            "link" if path.is_symlink() else "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        )
    return out


def settings_for(tmp_path: Path, name: str):
    return make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=name, OPENWORK_MICROSANDBOX_RUNTIME="docker")


@pytest.fixture
def source(tmp_path):
    """A sandbox's folders (never booted) whose database has ROWS committed rows still in its WAL
    (a writer holds it open with automatic checkpoints off), an issued-token store and tokens."""
    from openwork_sandbox.state.store import SandboxState

    settings = settings_for(tmp_path, "owtest-bk-src")
    state = SandboxState(settings)
    state.ensure()
    token, host_token = state.tokens()
    share = settings.data_dir / "home/.local/share/opencode"
    share.mkdir(parents=True)
    writer = sqlite3.connect(share / "opencode.db", isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE session (id TEXT PRIMARY KEY, title TEXT)")
    for i in range(ROWS):
        writer.execute("INSERT INTO session VALUES (?, ?)", (f"ses_{i}", f"title {i}"))
    store = settings.data_dir / "home/.config/openwork"
    store.mkdir(parents=True)
    (store / "tokens.json").write_text('{"version": 1, "tokens": [{"token": "owt_issued", "scope": "collaborator"}]}\n')
    os.chmod(store / "tokens.json", 0o600)
    server_store = settings.sandbox_state_dir / "server-store"  # the server's private store (issued tokens)
    server_store.mkdir(mode=0o700)
    (server_store / "tokens.json").write_text(
        '{"version": 1, "tokens": [{"token": "owt_private", "scope": "owner"}]}\n'
    )
    os.chmod(server_store / "tokens.json", 0o600)
    (settings.data_dir / "home/.cache/opencode/bin").mkdir(parents=True)
    (settings.data_dir / "home/.cache/opencode/bin/tool").write_bytes(b"\0" * 1000)
    (settings.data_dir / "home/.local/state/opencode/locks").mkdir(parents=True)
    (settings.data_dir / "home/.local/state/opencode/locks/a.lock").write_text("")
    (settings.data_dir / "home/.local/state/opencode/model.json").write_text('{"recent": []}')
    (settings.workspace_dir / "notes.md").write_text("my notes\n")
    yield {
        "settings": settings,
        "writer": writer,
        "db": share / "opencode.db",
        "tokens": (token, host_token),
        "tmp": tmp_path,
    }
    writer.close()


def test_the_archive_holds_a_consistent_copy_with_the_wal_content_and_a_manifest(source):
    from openwork_sandbox.sandbox.backup import backup

    db, out = source["db"], source["tmp"] / "one.tar.gz"
    wal = Path(f"{db}-wal")
    assert wal.stat().st_size > 0 and db.stat().st_size <= 4096 * 2  # the rows are in the WAL, not in the file
    wal_before = hashlib.sha256(wal.read_bytes()).hexdigest()
    result = backup(source["settings"], output=out)

    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert hashlib.sha256(wal.read_bytes()).hexdigest() == wal_before  # the source was only read
    with tarfile.open(out) as tar:
        names = tar.getnames()
        assert names[0] == "manifest.json"
        manifest = json.loads(tar.extractfile("manifest.json").read())
        members = {m.name: m for m in tar.getmembers()}
        copy = tar.extractfile("data/home/.local/share/opencode/opencode.db").read()
    assert "data/home/.local/share/opencode/opencode.db-wal" not in names
    assert not any(n.startswith("data/home/.cache") or "/locks/" in n for n in names)
    assert "data/home/.local/state/opencode/model.json" in names and "state/tokens.json" in names
    assert not any(n.startswith("workspace") for n in names)  # only with --workspace
    for secret in ("state/tokens.json", "data/home/.config/openwork/tokens.json"):
        assert stat.S_IMODE(members[secret].mode) == 0o600, secret
    # every file in the manifest with its size and sha256, as the bytes in the archive have them
    files = {e["path"]: e for e in manifest["entries"] if e["type"] == "file"}
    assert set(files) == {n for n, m in members.items() if m.isreg()} - {"manifest.json"}
    with tarfile.open(out) as tar:
        for path, entry in files.items():
            body = tar.extractfile(path).read()
            assert (len(body), hashlib.sha256(body).hexdigest()) == (entry["size"], entry["sha256"]), path
    assert result["databases"] == ["data/home/.local/share/opencode/opencode.db"]
    # the copy is a whole database on its own: every committed row, no WAL needed
    restored = source["tmp"] / "copy.db"
    restored.write_bytes(copy)
    con = sqlite3.connect(f"{restored.as_uri()}?mode=ro", uri=True)
    assert con.execute("SELECT count(*), max(title) FROM session").fetchone() == (ROWS, "title 99")
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_the_workspace_goes_in_with_workspace(source):
    from openwork_sandbox.sandbox.backup import backup

    out = source["tmp"] / "ws.tar.gz"
    backup(source["settings"], output=out, workspace=True)
    with tarfile.open(out) as tar:
        assert tar.extractfile("workspace/notes.md").read() == b"my notes\n"


def test_restore_into_another_name_puts_everything_back(source):
    from openwork_sandbox.sandbox.backup import backup
    from openwork_sandbox.sandbox.restore import restore
    from openwork_sandbox.state.store import SandboxState

    out = source["tmp"] / "two.tar.gz"
    backup(source["settings"], output=out)
    other = settings_for(source["tmp"], "owtest-bk-dst")
    restore(other, out)
    con = sqlite3.connect(other.data_dir / "home/.local/share/opencode/opencode.db")
    assert con.execute("SELECT count(*) FROM session").fetchone() == (ROWS,)
    assert SandboxState(other).tokens(create=False) == source["tokens"]
    store = other.data_dir / "home/.config/openwork/tokens.json"
    assert "owt_issued" in store.read_text() and stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(SandboxState(other).tokens_path.stat().st_mode) == 0o600
    private = other.sandbox_state_dir / "server-store"
    assert "owt_private" in (private / "tokens.json").read_text()
    assert (
        stat.S_IMODE((private / "tokens.json").stat().st_mode) == 0o600
        and stat.S_IMODE(private.stat().st_mode) == 0o700
    )


def test_links_that_lead_outside_are_left_out_and_the_rest_restores(source, capsys):
    """restore refuses a link out of its folder, so backup leaves such links out (and says so):
    an archive backup writes is one restore takes."""
    from openwork_sandbox.sandbox.backup import backup
    from openwork_sandbox.sandbox.restore import restore

    home = source["settings"].data_dir / "home"
    (home / "abs").symlink_to("/etc")
    (home / "up").symlink_to("../../..")
    (home / "inside").symlink_to(".local/state/opencode/model.json")
    out = source["tmp"] / "links.tar.gz"
    backup(source["settings"], output=out)
    assert (
        "note: left out 2 symlinks that lead outside data/ (restore refuses them), first data/home/abs -> /etc"
        in capsys.readouterr().err
    )
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert "data/home/inside" in names and "data/home/abs" not in names and "data/home/up" not in names
    other = settings_for(source["tmp"], "owtest-bk-links")
    restore(other, out)
    assert (other.data_dir / "home/inside").is_symlink()
    assert (other.data_dir / "home/inside").read_text() == '{"recent": []}'


def test_restore_refuses_a_sandbox_that_holds_data_and_force_keeps_it_aside(source):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.sandbox.backup import backup
    from openwork_sandbox.sandbox.restore import restore

    out = source["tmp"] / "three.tar.gz"
    backup(source["settings"], output=out)
    target = settings_for(source["tmp"], "owtest-bk-full")
    target.data_dir.mkdir(parents=True)
    (target.data_dir / "mine.txt").write_text("keep me")
    before = snapshot(source["tmp"] / "state")
    with pytest.raises(WorkflowError) as info:
        restore(target, out)
    assert info.value.message == (
        f"sandbox owtest-bk-full already holds data ({target.data_dir}): restore into another name (--name / "
        "OPENWORK_MICROSANDBOX_NAME), or pass --force to keep what is there beside it as "
        "<name>.before-restore-<time> and restore over it"
    )
    assert snapshot(source["tmp"] / "state") == before

    result = restore(target, out, force=True)
    (aside,) = result["kept_aside"]
    assert Path(aside).name.startswith("data.before-restore-") and (Path(aside) / "mine.txt").read_text() == "keep me"
    assert (target.data_dir / "home/.local/share/opencode/opencode.db").is_file()
    assert not (target.data_dir / "mine.txt").exists()


def _refused(tmp_path: Path, archive: Path, name: str = "owtest-bk-new") -> str:
    """`invoke restore ARCHIVE` in another process: exit 1, one line, nothing under state/ changed."""
    state = tmp_path / "state"
    (tmp_path / "empty.env").write_text("")
    before = snapshot(state)
    proc = invoke(
        tmp_path, "restore", str(archive), OPENWORK_MICROSANDBOX_NAME=name, OPENWORK_MICROSANDBOX_RUNTIME="docker"
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert snapshot(state) == before
    assert not (state / name).exists()
    return lines[0]


def test_a_truncated_archive_is_refused_in_one_line_and_changes_nothing(source):
    from openwork_sandbox.sandbox.backup import backup

    good = source["tmp"] / "good.tar.gz"
    backup(source["settings"], output=good)
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 4):  # in the middle; only the gzip trailer lost
        bad = source["tmp"] / f"cut{cut}.tar.gz"
        bad.write_bytes(data[:cut])
        assert _refused(source["tmp"], bad) == (
            f"{bad} cannot be restored: it is truncated (the compressed data ends early); nothing was changed"
        )


def test_a_corrupt_archive_is_refused_in_one_line_and_changes_nothing(source):
    from openwork_sandbox.sandbox.backup import backup

    good = source["tmp"] / "good.tar.gz"
    backup(source["settings"], output=good)
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = source["tmp"] / "flipped.tar.gz"
    bad.write_bytes(bytes(data))
    line = _refused(source["tmp"], bad)
    # where the flipped byte lands decides who notices first: zlib, the gzip CRC, or the manifest's sha256
    assert re.fullmatch(
        rf"{re.escape(str(bad))} cannot be restored: (it is corrupt \(.+\)|\S+ does not match its "
        r"manifest \(.+\)); nothing was changed",
        line,
    ), line

    garbage = source["tmp"] / "not-a-backup.tar.gz"
    garbage.write_bytes(b"this is not gzip at all\n" * 10)
    assert _refused(source["tmp"], garbage) == (
        f"{garbage} cannot be restored: it is corrupt (Not a gzipped file (b'th')); nothing was changed"
    )


def _rewrite(src: Path, dest: Path, change) -> None:
    """A well-formed archive made from ``src`` with ``change(name, bytes) -> bytes | None`` applied to
    each member's data (None drops the member); the manifest is copied as it was."""
    out = io.BytesIO()
    with tarfile.open(src) as tar, tarfile.open(fileobj=out, mode="w:gz") as new:
        for member in tar.getmembers():
            body = tar.extractfile(member).read() if member.isreg() else None
            if body is not None:
                body = change(member.name, body)
                if body is None:
                    continue
                member.size = len(body)
            new.addfile(member, io.BytesIO(body) if body is not None else None)
    dest.write_bytes(out.getvalue())


def test_an_archive_whose_file_differs_from_its_manifest_is_refused(source):
    from openwork_sandbox.sandbox.backup import backup

    good = source["tmp"] / "good.tar.gz"
    backup(source["settings"], output=good)
    store = "data/home/.config/openwork/tokens.json"
    original = (source["settings"].data_dir / "home/.config/openwork/tokens.json").read_bytes()
    with tarfile.open(good) as tar:
        entry = next(e for e in json.loads(tar.extractfile("manifest.json").read())["entries"] if e["path"] == store)
    assert entry["sha256"] == hashlib.sha256(original).hexdigest()
    tampered = original.replace(b"owt_issued", b"owt_plante")  # the same size: only the sha256 tells
    bad = source["tmp"] / "tampered.tar.gz"
    _rewrite(good, bad, lambda name, body: tampered if name == store else body)
    assert _refused(source["tmp"], bad) == (
        f"{bad} cannot be restored: {store} does not match its manifest ({len(tampered)} bytes, sha256 "
        f"{hashlib.sha256(tampered).hexdigest()[:12]}…; expected {len(original)} bytes, "
        f"{hashlib.sha256(original).hexdigest()[:12]}…); nothing was changed"
    )
    longer = b'{"version": 1, "tokens": [{"token": "owt_planted", "scope": "owner"}]}\n'
    resized = source["tmp"] / "resized.tar.gz"
    _rewrite(good, resized, lambda name, body: longer if name == store else body)
    assert _refused(source["tmp"], resized) == (
        f"{resized} cannot be restored: {store} does not match its manifest ({len(longer)} bytes; expected "
        f"{len(original)} bytes); nothing was changed"
    )

    dropped = source["tmp"] / "dropped.tar.gz"
    _rewrite(good, dropped, lambda name, body: None if name == "state/tokens.json" else body)
    assert _refused(source["tmp"], dropped) == (
        f"{dropped} cannot be restored: it lacks 1 entry its manifest lists "
        "(first: state/tokens.json); nothing was changed"
    )


def test_an_archive_with_a_path_outside_its_layout_is_refused(source):
    from openwork_sandbox.sandbox.backup import backup

    good = source["tmp"] / "good.tar.gz"
    backup(source["settings"], output=good)
    out = io.BytesIO()
    with tarfile.open(good) as tar, tarfile.open(fileobj=out, mode="w:gz") as new:
        for member in tar.getmembers():
            new.addfile(member, tar.extractfile(member) if member.isreg() else None)
        evil = tarfile.TarInfo("data/../../escaped.txt")
        evil.size = 4
        new.addfile(evil, io.BytesIO(b"evil"))
    bad = source["tmp"] / "escape.tar.gz"
    bad.write_bytes(out.getvalue())
    assert _refused(source["tmp"], bad) == (
        f"{bad} cannot be restored: it holds data/../../escaped.txt, a path that is not plain (it could lead "
        "out of its folder); nothing was changed"
    )
    assert not (source["tmp"] / "escaped.txt").exists()


def test_a_running_microvm_is_not_copied_live(source, monkeypatch):
    """A running microVM cannot boot here: its status is given (the real runtime object otherwise)."""
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.runtimes import RUNNING, RuntimeStatus
    from openwork_sandbox.runtimes.microsandbox.runtime import MicrosandboxRuntime
    from openwork_sandbox.sandbox import locate
    from openwork_sandbox.sandbox.backup import backup

    settings = source["settings"]
    rt = MicrosandboxRuntime(settings.name, settings.sandbox_state_dir)
    monkeypatch.setattr(locate, "sandbox_status", lambda s: (rt, RuntimeStatus(RUNNING)))
    out = source["tmp"] / "never.tar.gz"
    with pytest.raises(WorkflowError) as info:
        backup(settings, output=out)
    assert info.value.message == (
        "the microsandbox sandbox owtest-bk-src is running: the host cannot take a consistent copy of a database a "
        "microVM is writing; run `invoke down`, then `invoke backup` (and `invoke up` again)"
    )
    assert not out.exists() and not list(out.parent.glob(".backup-*"))


def test_backup_never_overwrites_and_says_so(source):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.sandbox.backup import backup

    out = source["tmp"] / "taken.tar.gz"
    out.write_text("someone's file")
    with pytest.raises(WorkflowError) as info:
        backup(source["settings"], output=out)
    assert info.value.exit_code == 2
    assert info.value.message == f"{out} exists: nothing is overwritten; pick another --output or move it away"
    assert out.read_text() == "someone's file"


def test_the_default_archive_is_under_state_backups_with_name_and_utc_time(source):
    from openwork_sandbox.sandbox.backup import backup

    result = backup(source["settings"])
    path = Path(result["path"])
    assert path.parent == source["tmp"] / "state" / "backups"
    stamp = path.name.removeprefix("owtest-bk-src-").removesuffix(".tar.gz")
    taken = time.mktime(time.strptime(stamp, "%Y%m%dT%H%M%SZ")) - time.mktime(time.gmtime(0))
    assert abs(taken - time.time()) < 120
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with gzip.open(path) as fh:
        fh.read()  # a whole gzip stream


def test_a_sandbox_named_backups_is_refused(tmp_path):
    from openwork_sandbox.core.errors import SettingsError

    with pytest.raises(SettingsError) as info:
        make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME="backups")
    assert info.value.problems == [
        'OPENWORK_MICROSANDBOX_NAME="backups" (from environment): is reserved for the '
        "tool's own state (.state/backups); pick another name"
    ]


# --- the real sandbox ---------------------------------------------------------------------------------
