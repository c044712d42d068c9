"""Field cases of the settings file and the state folder, each through a real task in its own process:
an env file that is no regular file, a `.env` that is a folder, names the tool keeps for itself (any
case), a state folder git ignores from inside, and `reset` of a state folder whose data is a file or
a link. One line, the exit code, no traceback, nothing left behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.lifecycle import OFFLINE, invoke
from tests.support.paths import ROOT

NAME = "owtest-statecase"


def program(cwd: Path, *args: str, timeout: float = 20, **env: str) -> subprocess.CompletedProcess:
    """The console program (the tasks `invoke` runs) in ``cwd``, its project folder, without --env-file."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENWORK", "OPENCODE_VERSION"))}
    clean.update({"PYTHONPATH": str(ROOT), "OPENWORK_STATE_DIR": str(cwd / "state"), **OFFLINE, **env})
    return subprocess.run(
        [sys.executable, "-m", "openwork_sandbox", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def only_line(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --- the settings file ---------------------------------------------------------------------------------


def test_an_env_file_that_is_a_fifo_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "settings.env"
    os.mkfifo(fifo)
    proc = program(tmp_path, "status", OPENWORK_ENV_FILE=str(fifo))  # opening it would block: the timeout fails
    assert only_line(proc, 2) == (
        f"OPENWORK_ENV_FILE={fifo} is not a regular file (a FIFO, socket or device); point it at a settings "
        "file or drop the setting (see .env.example)"
    )


def test_an_env_file_that_is_a_socket_is_refused(tmp_path):
    path = tmp_path / "s.env"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        proc = program(tmp_path, "status", OPENWORK_ENV_FILE=str(path))
    assert only_line(proc, 2).startswith(f"OPENWORK_ENV_FILE={path} is not a regular file")


def test_a_default_env_that_is_a_folder_names_the_default_not_the_setting(tmp_path):
    (tmp_path / ".env").mkdir()
    line = only_line(program(tmp_path, "status"), 2)
    assert line == (
        f"{tmp_path / '.env'} (the default .env of the project folder) is a folder; move it away or make it "
        "a file (see .env.example)"
    )
    assert "OPENWORK_ENV_FILE" not in line


def test_an_env_file_setting_that_is_a_folder_names_the_setting(tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    line = only_line(program(tmp_path, "status", OPENWORK_ENV_FILE=str(folder)), 2)
    assert line == (
        f"OPENWORK_ENV_FILE={folder} is a folder; point it at a settings file or drop the setting (see .env.example)"
    )


# --- reserved names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["microvm-host", "microvm-image", "Backups", "SERVICES", "test-stack", "Test-Cache", "image-context-arm64"]
)
def test_names_the_tool_keeps_under_the_state_folder_are_refused_in_any_case(tmp_path, name):
    (tmp_path / "state" / "microvm-host").mkdir(parents=True)
    (tmp_path / "state" / "microvm-host" / "disk.img").write_text("the emulated host's disk")
    proc = invoke(tmp_path, "reset", "--yes", "--name", name)
    assert only_line(proc, 2) == (
        f'OPENWORK_MICROSANDBOX_NAME="{name}" (from flag --name): is reserved for the tool\'s own state '
        f"(.state/{name}); pick another name"
    )
    assert (tmp_path / "state" / "microvm-host" / "disk.img").is_file()


def test_every_file_the_tool_keeps_in_the_state_folder_is_reserved():
    from openwork_sandbox.config.values import reserved_name
    from openwork_sandbox.image import build, multiplatform
    from openwork_sandbox.sandbox.backup import BACKUPS_DIR
    from openwork_sandbox.state.pin import LAST_PUSH

    kept = [BACKUPS_DIR, build.LAST_BUILD, build.VERIFIED, LAST_PUSH, multiplatform.BASE_ARCH, multiplatform.BUILDS]
    kept += ["image-context", "services", "microvm-host", "microvm-image", "test-cache", "test-stack", "bench-1"]
    assert [name for name in kept if not reserved_name(name)] == []
    assert reserved_name("bench-platforms-42") and reserved_name("BENCH-7")
    assert [n for n in ("openwork-microsandbox", "tester", "bench-mic-1a2b", "owtest-x") if reserved_name(n)] == []


# --- a state folder git ignores ----------------------------------------------------------------------


def test_a_relative_state_folder_made_in_a_checkout_is_ignored_by_git(tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    proc = program(
        checkout,
        "up",
        timeout=120,
        OPENWORK_STATE_DIR="sandboxes/here",
        OPENWORK_MICROSANDBOX_NAME=NAME,
        OPENWORK_MICROSANDBOX_RUNTIME="docker",
        OPENWORK_MICROSANDBOX_IMAGE="127.0.0.1:1/owtest-none:none",
    )
    assert proc.returncode != 0  # no image: what matters is what it made before failing
    tokens = checkout / "sandboxes" / "here" / NAME / "tokens.json"
    assert tokens.is_file(), proc.stderr
    assert (checkout / "sandboxes" / ".gitignore").read_text() == "*\n"  # the first folder the tool made
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=checkout, capture_output=True, text=True
    )
    assert status.stdout == ""


# --- reset cleans what it finds ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "link out", "dangling link"])
def test_reset_cleans_a_state_folder_whose_data_is_not_a_folder(tmp_path, kind):
    folder = tmp_path / "state" / NAME
    folder.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("not the tool's")
    (folder / "workspace").mkdir()
    if kind == "file":
        (folder / "data").write_text("an archive's data that was a file")
    elif kind == "link out":
        (folder / "data").symlink_to(outside)
    else:
        (folder / "data").symlink_to(tmp_path / "nowhere")
    proc = invoke(tmp_path, "reset", "--yes", OPENWORK_MICROSANDBOX_NAME=NAME, OPENWORK_MICROSANDBOX_RUNTIME="docker")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not folder.exists() and not folder.is_symlink()
    assert (outside / "precious").read_text() == "not the tool's"  # the link was removed, never followed


def test_up_names_reset_for_a_default_data_folder_that_is_a_file(tmp_path):
    folder = tmp_path / "state" / NAME
    folder.mkdir(parents=True)
    (folder / "data").write_text("x")
    proc = invoke(tmp_path, "up", OPENWORK_MICROSANDBOX_NAME=NAME, OPENWORK_MICROSANDBOX_RUNTIME="docker")
    assert only_line(proc, 2) == (
        f"OPENWORK_MICROSANDBOX_DATA_DIR={folder / 'data'} (from default) is a file, not a folder; point "
        f"OPENWORK_MICROSANDBOX_DATA_DIR at a folder, or move the file away, or `invoke reset --name {NAME}` "
        f"(deletes {folder})"
    )
