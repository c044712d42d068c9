"""State that survives, without Docker: where the stand-in keeps issued tokens (a real process on
loopback, restarted), the migration's copy/verify/install rules, and the data-folder probe
(a real read-only mount and a real full filesystem where this machine lets root mount them)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.net.ports import free_port
from openwork_sandbox.state import persist
from tests.standins import standin_openwork_server as standin
from tests.support.lifecycle import make_settings, unique_name
from tests.support.paths import STANDIN_SERVER

HOST = "host-token-0123456789abcdef"
CLIENT = "client-token-0123456789abcdef"


# --- the stand-in's token store ----------------------------------------------------------------------


def test_token_store_location_follows_the_real_servers_rule(tmp_path):
    home = str(tmp_path / "home")
    assert standin.token_store_path({"HOME": home}) == f"{home}/.config/openwork/tokens.json"
    # HOME, not XDG_CONFIG_HOME
    assert (
        standin.token_store_path({"HOME": home, "XDG_CONFIG_HOME": "/elsewhere"})
        == f"{home}/.config/openwork/tokens.json"
    )
    assert standin.token_store_path({"HOME": home}, "/etc/ow/server.json") == "/etc/ow/tokens.json"
    assert (
        standin.token_store_path({"HOME": home, "OPENWORK_TOKEN_STORE": "/s/t.json"}, "/etc/ow/server.json")
        == "/s/t.json"
    )


@contextlib.contextmanager
def _standin(env: dict, *args: str):
    port = free_port()
    full = {"PATH": os.environ["PATH"], "OPENWORK_TOKEN": CLIENT, "OPENWORK_HOST_TOKEN": HOST, **env}
    proc = subprocess.Popen(
        [sys.executable, str(STANDIN_SERVER), "--port", str(port), "--workspace", "/workspace", *args],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/health", timeout=1).ok:
                    break
            time.sleep(0.05)
        yield url
    finally:
        # the stand-in exits at once on SIGTERM; on a loaded host (the suite beside an emulated host)
        # it once took over 10 s: these tests are about its tokens, not about its exit
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _issue(url: str) -> str:
    resp = requests.post(
        url + "/tokens",
        json={"scope": "collaborator", "label": "friend"},
        headers={"X-OpenWork-Host-Token": HOST},
        timeout=5,
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["token"]


def _accepted(url: str, token: str) -> int:
    return requests.get(url + "/workspaces", headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code


@pytest.mark.parametrize("where", ["home", "config", "store"])
def test_an_issued_token_is_accepted_after_a_restart(tmp_path, where):
    home = tmp_path / "home"
    env, args, expected = {"HOME": str(home)}, [], home / ".config" / "openwork" / "tokens.json"
    if where == "config":
        args, expected = ["--config", str(tmp_path / "cfg" / "server.json")], tmp_path / "cfg" / "tokens.json"
    elif where == "store":
        env["OPENWORK_TOKEN_STORE"] = str(tmp_path / "s" / "store.json")
        expected = tmp_path / "s" / "store.json"
    with _standin(env, *args) as url:
        token = _issue(url)
        assert _accepted(url, token) == 200
    assert expected.exists() and stat.S_IMODE(expected.stat().st_mode) == 0o600
    assert token in expected.read_text() and CLIENT not in expected.read_text()  # the configured one is not stored
    with _standin(env, *args) as url:
        assert _accepted(url, token) == 200
        assert _accepted(url, token + "x") == 401
    if where == "home":
        with _standin({"HOME": str(tmp_path / "other-home")}) as url:  # another home: another store
            assert _accepted(url, token) == 401


# --- migration: copy, verify, install ---------------------------------------------------------------


def _fake_sandbox_home(root: Path) -> dict[str, bytes]:
    files = {
        ".local/share/opencode/opencode.db": os.urandom(70000),
        ".local/share/opencode/opencode.db-wal": os.urandom(1234),
        ".local/share/opencode/storage/x.json": b'{"x": 1}',
        ".config/opencode/.gitignore": b"node_modules\n",
        ".config/openwork/tokens.json": b'{"version": 1, "tokens": []}',
        ".local/state/opencode/model.json": b"{}",
        ".local/state/opencode/locks/abc.lock/heartbeat": b"1",  # stale: not copied
        ".cache/opencode/bin/big": b"cache",  # not kept
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _local_fetch(guest_root: Path, corrupt: str | None = None, fail_on: str | None = None):
    """A fetch that reads a folder on this host as if it were the sandbox's home."""

    def fetch(home, stage, unit):
        assert home == persist.LEGACY_HOME
        if unit == fail_on:
            raise WorkflowError(f"could not copy {home}/{unit} out of the sandbox: boom")
        src = guest_root / unit
        out = []
        for path in sorted(src.rglob("*")) if src.exists() else []:
            rel = str(Path(unit) / path.relative_to(src))
            if path.is_file() and persist.is_kept(rel):
                out.append(
                    persist.write_staged(
                        stage,
                        rel,
                        [path.read_bytes()],
                        0o644,
                        path.stat().st_mtime,
                        expected_size=path.stat().st_size,
                        source=f"{src} from x",
                    )
                )
                if rel == corrupt:
                    (stage / rel).write_bytes(b"changed on the way")
        return out

    return fetch


def test_migration_copies_what_users_would_miss_and_verifies_it(tmp_path):
    guest, data = tmp_path / "guest-root", tmp_path / "data"
    files = _fake_sandbox_home(guest)
    data.mkdir()
    line = persist.copy_home_state(_local_fetch(guest), data, "the docker sandbox x")
    assert line and "6 files" in line and "sha256 verified" in line
    for rel, content in files.items():
        target = data / "home" / rel
        if "locks" in rel or rel.startswith(".cache"):
            assert not target.exists(), rel
        else:
            assert target.read_bytes() == content, rel
    record = json.loads((data / "home" / persist.MIGRATION_RECORD).read_text())
    assert record["files"] == 6 and set(record["moved"]) == set(persist.KEPT)
    assert not list(data.glob(".migrating-*"))  # staging is gone
    assert persist.copy_home_state(_local_fetch(tmp_path / "empty"), data, "y") is None  # nothing there: no-op


def test_newer_data_already_under_data_is_never_overwritten(tmp_path):
    guest, data = tmp_path / "guest-root", tmp_path / "data"
    _fake_sandbox_home(guest)
    newer = data / "home" / ".local/share/opencode/opencode.db"
    newer.parent.mkdir(parents=True)
    newer.write_bytes(b"newer database")
    future = time.time() + 3600
    os.utime(newer, (future, future))
    line = persist.copy_home_state(_local_fetch(guest), data, "the docker sandbox x")
    assert "kept the newer .local/share/opencode" in line
    assert newer.read_bytes() == b"newer database"
    assert (data / "home" / ".config/openwork/tokens.json").exists()  # the other units moved

    # an OLDER folder there is kept beside the copy, not overwritten
    older = data / "home" / ".config/opencode/.gitignore"
    older.write_bytes(b"old")
    os.utime(older, (1, 1))
    persist.copy_home_state(_local_fetch(guest), data, "the docker sandbox x")
    assert older.read_bytes() == b"node_modules\n"
    backups = list((data / "home" / ".config").glob("opencode.before-migration-*"))
    assert len(backups) == 1 and (backups[0] / ".gitignore").read_bytes() == b"old"


@pytest.mark.parametrize("how", ["corrupt", "fails"])
def test_a_failed_or_corrupt_copy_changes_nothing(tmp_path, how):
    guest, data = tmp_path / "guest-root", tmp_path / "data"
    _fake_sandbox_home(guest)
    (data / "home").mkdir(parents=True)
    (data / "home" / "mine.txt").write_text("keep")
    fetch = (
        _local_fetch(guest, corrupt=".local/share/opencode/opencode.db")
        if how == "corrupt"
        else _local_fetch(guest, fail_on=".config/openwork")
    )
    with pytest.raises(WorkflowError) as err:
        persist.copy_home_state(fetch, data, "the docker sandbox x")
    assert ("does not match" if how == "corrupt" else "boom") in err.value.message
    assert sorted(p.name for p in data.iterdir()) == ["home"]  # no staging left
    assert [p.name for p in (data / "home").iterdir()] == ["mine.txt"]


# --- the data folder must be writable ---------------------------------------------------------------


def _mount(*args: str) -> bool:
    return os.geteuid() == 0 and subprocess.run(["mount", *args], capture_output=True).returncode == 0


def test_a_read_only_data_folder_is_refused_in_one_line(tmp_path):
    settings = make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=unique_name("ro"))
    data = Path(settings.data_dir)
    data.mkdir(parents=True)
    (data / "kept.txt").write_text("mine")
    assert persist.data_dir_problem(data) is None
    if not (_mount("--bind", str(data), str(data)) and _mount("-o", "remount,bind,ro", str(data))):
        subprocess.run(["umount", str(data)], capture_output=True)
        pytest.skip("needs root and bind mounts to make a read-only folder")
    try:
        with pytest.raises(WorkflowError) as err:
            persist.check_data_dir(settings)
        msg = err.value.message
        assert "\n" not in msg and str(data) in msg and "read-only" in msg
        assert "OPENWORK_MICROSANDBOX_DATA_DIR" in msg and "keep nothing" in msg
    finally:
        subprocess.run(["umount", str(data)], check=True)
    assert (data / "kept.txt").read_text() == "mine" and not list(data.glob(".openwork-write-probe*"))


def test_a_full_data_folder_is_refused(tmp_path):
    data = tmp_path / "full"
    data.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(data)):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        with contextlib.suppress(OSError), open(data / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        problem = persist.data_dir_problem(data)
        assert problem and "is full" in problem and str(data) in problem
    finally:
        subprocess.run(["umount", str(data)], check=True)


def test_the_entrypoints_line_becomes_the_one_line_error(tmp_path):
    settings = make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=unique_name("dl"))
    persist.raise_if_data_unwritable(settings, ["[opencode] starting", "something else"])  # not that: no error
    line = (
        "microsandbox-entrypoint: /data is not writable by uid 1000 (read-only, full, or owned by another user); "
        "the sandbox would keep nothing"
    )
    with pytest.raises(WorkflowError) as err:
        persist.raise_if_data_unwritable(settings, ["x", line])
    assert str(settings.data_dir) in err.value.message and "\n" not in err.value.message


def test_up_passes_a_home_under_data_and_the_layout_is_in_the_fingerprint(tmp_path):
    from openwork_sandbox.sandbox.launch import launch_spec

    settings = make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=unique_name("env"))
    spec = launch_spec(settings, "docker", "t" * 40, "h" * 40)
    assert spec.env["HOME"] == "/data/home" and spec.mounts["/data"] == Path(settings.data_dir).resolve()
    old_layout = persist.LAYOUT
    try:
        persist.LAYOUT = old_layout - 1
        assert launch_spec(settings, "docker", "t" * 40, "h" * 40).fingerprint != spec.fingerprint
    finally:
        persist.LAYOUT = old_layout


def test_docker_runs_as_the_invoking_user_on_linux(monkeypatch):
    from openwork_sandbox.runtimes import docker

    monkeypatch.setattr(docker, "engine_is_rootless", lambda: False)
    monkeypatch.setattr(docker.sys, "platform", "linux")
    monkeypatch.setattr(docker.os, "getuid", lambda: 1234)
    monkeypatch.setattr(docker.os, "getgid", lambda: 99)
    assert docker.run_as_user() == "1234:99"
    monkeypatch.setattr(docker.os, "getuid", lambda: 0)
    assert docker.run_as_user() is None  # root keeps running as root
    monkeypatch.setattr(docker.os, "getuid", lambda: 1234)
    monkeypatch.setattr(docker, "engine_is_rootless", lambda: True)
    assert docker.run_as_user() is None  # rootless: the container's root already is the user


class _GuestFs:
    """The part of the SDK's ``sandbox.fs`` that copy_folder uses, over a host folder (the SDK's own
    FsEntry kinds), since no microVM boots here."""

    def __init__(self, root: Path, lie_about: str | None = None):
        self.root, self.lie_about = root, lie_about

    def _host(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    async def exists(self, path: str) -> bool:
        return self._host(path).exists()

    async def list(self, path: str):
        from types import SimpleNamespace

        from microsandbox import FsEntryKind

        out = []
        for child in sorted(self._host(path).iterdir()):
            st = child.lstat()
            kind = FsEntryKind.DIRECTORY if child.is_dir() else FsEntryKind.FILE
            size = st.st_size + (1 if child.name == self.lie_about else 0)
            out.append(
                SimpleNamespace(
                    path=f"{path}/{child.name}", kind=kind, size=size, mode=st.st_mode, modified=st.st_mtime
                )
            )
        return out

    async def read(self, path: str) -> bytes:
        return self._host(path).read_bytes()


def test_the_home_a_microvm_was_created_with_is_read_from_either_shape_of_its_env():
    from openwork_sandbox.runtimes.microsandbox.copy import home_in_config

    assert home_in_config({"env": [{"key": "PATH", "value": "/bin"}, {"key": "HOME", "value": "/root"}]}) == "/root"
    assert home_in_config({"env": {"PATH": "/bin", "HOME": "/data/home"}}) == "/data/home"
    assert home_in_config({"env": [{"key": "PATH", "value": "/bin"}, "HOME=/nope"]}) is None
    assert home_in_config({}) is None


def test_microsandbox_copy_through_the_sdks_file_access(tmp_path):
    pytest.importorskip("microsandbox")
    import asyncio

    from openwork_sandbox.runtimes.microsandbox.copy import copy_folder

    guest = tmp_path / "guest"
    files = _fake_sandbox_home(guest / "root")
    stage = tmp_path / "stage"
    copied = asyncio.run(
        copy_folder(_GuestFs(guest), "/root/.local/share/opencode", ".local/share/opencode", stage, "vm")
    )
    assert sorted(c.rel for c in copied) == sorted(r for r in files if r.startswith(".local/share/opencode"))
    for c in copied:
        assert (stage / c.rel).read_bytes() == files[c.rel]
        assert c.sha256 == hashlib.sha256(files[c.rel]).hexdigest()
    persist.verify(stage, copied)
    assert asyncio.run(copy_folder(_GuestFs(guest), "/root/.config/nothing", ".config/nothing", stage, "vm")) == []
    locks = asyncio.run(
        copy_folder(_GuestFs(guest), "/root/.local/state/opencode", ".local/state/opencode", stage, "vm")
    )
    assert [c.rel for c in locks] == [".local/state/opencode/model.json"]  # stale locks are not copied
    with pytest.raises(WorkflowError, match="arrived with"):
        asyncio.run(
            copy_folder(
                _GuestFs(guest, lie_about="opencode.db"),
                "/root/.local/share/opencode",
                ".local/share/opencode",
                tmp_path / "stage2",
                "vm",
            )
        )
