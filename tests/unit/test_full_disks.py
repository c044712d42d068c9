"""A full or read-only disk ends a task in one line (exit 1), no traceback, nothing half-made left:
`backup --output` there, `up` with the state folder there, and `doctor` names it (it writes a file).

The disks are small tmpfs mounts (64 kB) each test makes and removes: they need root.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lifecycle import invoke

NAME = "owtest-fulldisk"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@contextlib.contextmanager
def small_disk(folder: Path, *, full: bool = False, read_only: bool = False) -> Iterator[Path]:
    """A 64 kB tmpfs at ``folder``: filled to the last block (``full``) or remounted read-only."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        if full:
            with contextlib.suppress(OSError), open(folder / "fill", "wb") as fh:
                while True:
                    fh.write(b"\0" * 4096)
                    fh.flush()
            with pytest.raises(OSError):
                (folder / "probe").write_bytes(b"x")  # the disk really takes nothing more
            (folder / "probe").unlink()  # made empty (an inode is free), its byte refused
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def one_line(proc: subprocess.CompletedProcess, code: int) -> str:
    """The last stderr line, after checking the exit code and that no traceback came."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.splitlines()[-1]


def a_sandbox_to_back_up(tmp_path: Path) -> None:
    data = tmp_path / "state" / NAME / "data" / "home"
    data.mkdir(parents=True)
    (data / "notes.txt").write_text("kept\n" * 100)


@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_backup_to_a_disk_that_takes_nothing_is_one_line(tmp_path, kind):
    a_sandbox_to_back_up(tmp_path)
    with small_disk(tmp_path / "disk", full=kind == "full", read_only=kind == "read-only") as disk:
        before = sorted(p.name for p in disk.iterdir())
        target = disk / "copy.tar.gz"
        proc = invoke(
            tmp_path,
            "backup",
            "--output",
            str(target),
            OPENWORK_MICROSANDBOX_NAME=NAME,
            OPENWORK_MICROSANDBOX_RUNTIME="docker",
        )
        line = one_line(proc, 1)
        strerror = "No space left on device" if kind == "full" else "Read-only file system"
        assert line == (
            f"cannot write the archive {target} ({strerror}): free space on that disk or pick another "
            "--output; no archive was written"
        )
        assert sorted(p.name for p in disk.iterdir()) == before  # no archive, no staging folder, no temp file


def test_up_with_the_state_folder_on_a_full_disk_is_one_line(tmp_path):
    with small_disk(tmp_path / "disk", full=True) as disk:
        state = disk / "state"
        proc = invoke(
            tmp_path,
            "up",
            timeout=120,
            OPENWORK_STATE_DIR=str(state),
            OPENWORK_MICROSANDBOX_NAME=NAME,
            OPENWORK_MICROSANDBOX_RUNTIME="docker",
            OPENWORK_MICROSANDBOX_IMAGE="127.0.0.1:5000/owtest-never-pulled:none",
        )
        line = one_line(proc, 1)
        assert line == (
            f"cannot write {state / NAME / 'lock'} (No space left on device): free space on that disk or make it "
            "writable, or set OPENWORK_STATE_DIR to a folder that is"
        )
        assert sorted(p.name for p in disk.iterdir()) == ["fill"]  # not even an empty state folder


@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_doctor_fails_the_state_folders_on_a_disk_that_takes_nothing(tmp_path, kind):
    with small_disk(tmp_path / "disk", full=kind == "full", read_only=kind == "read-only") as disk:
        proc = invoke(
            tmp_path, "doctor", OPENWORK_STATE_DIR=str(disk / "state"), OPENWORK_MICROSANDBOX_NAME=NAME, timeout=120
        )
        strerror = "No space left on device" if kind == "full" else "Read-only file system"
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "state folders" in line]
        assert len(lines) == 1, proc.stdout + proc.stderr
        assert lines[0].startswith("✗"), lines[0]
        assert f"state {disk / 'state' / NAME} (at {disk}: {strerror})" in lines[0]
        assert "Traceback" not in proc.stderr
        assert sorted(p.name for p in disk.iterdir()) == (["fill"] if kind == "full" else [])


def test_doctor_passes_the_state_folders_on_a_disk_with_room(tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        proc = invoke(
            tmp_path, "doctor", OPENWORK_STATE_DIR=str(disk / "state"), OPENWORK_MICROSANDBOX_NAME=NAME, timeout=120
        )
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "state folders" in line]
        assert len(lines) == 1 and lines[0].startswith("✓"), proc.stdout + proc.stderr
        assert list(disk.iterdir()) == []  # the probe file is gone
