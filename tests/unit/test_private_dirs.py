"""Private wherever it is: every folder made for a sandbox is 0700 whatever the umask, wherever the
settings point, and a folder of the user's that others can enter is named once per run.

`up` runs against the in-memory runtime (tests/support/fake_runtime.py); the second local user is
real: ``setpriv`` runs ``cat``/``ls`` as uid 65534 (when the tests run as root, where it can).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from openwork_sandbox.core.files import private_dir
from tests.support.fake_runtime import NAME, flow_settings


@pytest.fixture
def umask():
    """Run the test under ``umask(value)`` (0o022 unless the test sets another), then put it back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o000, 0o277])
def test_missing_folders_are_made_0700_whatever_the_umask(tmp_path, umask, mask):
    umask(mask)
    private_dir(tmp_path / "some" / "new" / "dir")
    assert [mode(tmp_path / p) for p in ("some", "some/new", "some/new/dir")] == [0o700, 0o700, 0o700]


def test_an_open_folder_of_the_users_is_named_once_and_left_as_it_is(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    folder.chmod(0o755)
    private_dir(folder)
    private_dir(folder)
    assert capsys.readouterr().err == (
        f"! {folder} is open to other local users (mode 0755): `chmod 700 {folder}` keeps them out of what "
        "the sandbox keeps there\n"
    )
    assert mode(folder) == 0o755


def test_an_open_folder_of_the_tools_own_is_closed_without_a_word(tmp_path, capsys):
    folder = tmp_path / "own"
    folder.mkdir()
    folder.chmod(0o775)
    private_dir(folder, own=True)
    assert mode(folder) == 0o700 and capsys.readouterr().err == ""


def test_an_own_folder_that_cannot_be_closed_is_named_instead(tmp_path, capsys, monkeypatch):
    """A read-only or someone else's folder (chmod refused, as on a read-only mount): a warning, no error."""
    from openwork_sandbox.core import files

    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o755)

    def refuse(path, mode):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(files.os, "chmod", refuse)
    private_dir(folder, own=True)
    assert capsys.readouterr().err.startswith(f"! {folder} is open to other local users (mode 0755)")


def test_a_closed_folder_is_left_alone_and_a_file_in_the_way_is_an_error(tmp_path, capsys):
    folder = tmp_path / "closed"
    folder.mkdir()
    folder.chmod(0o700)
    private_dir(folder)
    assert capsys.readouterr().err == ""
    (tmp_path / "plain").write_text("x")
    with pytest.raises(FileExistsError):
        private_dir(tmp_path / "plain" / "below")


def test_up_makes_every_folder_private_wherever_the_settings_point(fake_engine, tmp_path, umask, capsys):
    """A data folder at a new custom path, a workspace of the user's (0755) and the default state
    folder: made 0700 (the workspace only named, once, though `up` looks at it several times);
    the token and record files 0600."""
    from openwork_sandbox.sandbox.up import up

    data = tmp_path / "some" / "new" / "dir"
    workspace = tmp_path / "project-ws"
    workspace.mkdir()
    workspace.chmod(0o755)
    settings = flow_settings(
        tmp_path, OPENWORK_MICROSANDBOX_DATA_DIR=str(data), OPENWORK_MICROSANDBOX_WORKSPACE_DIR=str(workspace)
    )
    up(settings)
    err = capsys.readouterr().err
    state = tmp_path / "state"
    folders = [tmp_path / "some", tmp_path / "some/new", data, state, state / NAME]
    assert {str(p): oct(mode(p)) for p in folders} == {str(p): oct(0o700) for p in folders}
    for secret in ("tokens.json", "sandbox.json"):
        assert mode(state / NAME / secret) == 0o600, secret
    warnings = [line for line in err.splitlines() if line.startswith("! ")]
    assert warnings == [
        f"! {workspace} is open to other local users (mode 0755): `chmod 700 {workspace}` keeps them out of "
        "what the sandbox keeps there"
    ]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_a_second_local_user_cannot_read_what_up_made(fake_engine, umask):
    """As uid 65534: the data folder cannot be listed nor the tokens read, while a file in an
    open folder beside them can (the same command, so the refusal is the modes')."""
    from openwork_sandbox.sandbox.up import up

    tmp_path = Path(tempfile.mkdtemp(prefix="owtest-private-"))  # pytest's are 0700: the other user could not walk in
    tmp_path.chmod(0o711)
    try:
        _second_user_is_kept_out(tmp_path, up)
    finally:
        shutil.rmtree(tmp_path)


def _second_user_is_kept_out(tmp_path: Path, up) -> None:
    data = tmp_path / "custom-data"
    settings = flow_settings(tmp_path, OPENWORK_MICROSANDBOX_DATA_DIR=str(data))
    up(settings)
    (data / "opencode.db").write_text("provider keys")
    open_folder = tmp_path / "open"
    open_folder.mkdir(mode=0o755)
    (open_folder / "note").write_text("anyone")

    def as_nobody(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv], capture_output=True, text=True
        )

    assert as_nobody("cat", str(open_folder / "note")).stdout == "anyone"
    for argv in (
        ("ls", str(data)),
        ("cat", str(data / "opencode.db")),
        ("cat", str(tmp_path / "state" / NAME / "tokens.json")),
        ("ls", str(tmp_path / "state")),
    ):
        proc = as_nobody(*argv)
        assert proc.returncode != 0 and "Permission denied" in proc.stderr, (argv, proc.stderr)
