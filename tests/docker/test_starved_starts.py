"""A start that cannot work for want of a resource says so (issue 31): a nearly full data folder
is refused before anything is pulled or made, through the real `invoke up` and a real 1 MB tmpfs;
the engine's OOM kills are counted while the container (its supervisor) runs on, with the real
engine and a program the kernel really kills; and `status` calls the restart count unknown when the
image's real supervisor could not write its record to a filled tmpfs."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time

import pytest

from tests.support.lifecycle import docker_env, invoke, unique_name
from tests.support.paths import REGISTRY, ROOT

SUPERVISOR = ROOT / "openwork_sandbox" / "image" / "context" / "openwork-supervise"

pytestmark = pytest.mark.docker


def _mount_tmpfs(path, size: str) -> None:
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)])
    if proc.returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")


def test_a_nearly_full_data_folder_stops_up_in_one_line_before_anything_is_made(services, tmp_path):
    data = tmp_path / "data"
    _mount_tmpfs(data, "1m")
    # an image never pushed: a pull would fail with another line, so the refusal comes before it
    env = docker_env(f"{REGISTRY}/owtest-never-pushed:x", "f31afull", OPENWORK_MICROSANDBOX_DATA_DIR=str(data))
    try:
        up = invoke(tmp_path, "up", timeout=300, **env)
        assert up.returncode == 1, up.stderr[-2000:]
        assert up.stderr.splitlines()[-1] == (
            f"the data folder {data} is nearly full (1.0 MB free; a start needs 4.0 MB): free some space there "
            "or point OPENWORK_MICROSANDBOX_DATA_DIR at a folder with room"
        )
        assert "Traceback" not in up.stderr and "pulling" not in up.stderr
        names = subprocess.run(
            ["docker", "ps", "-a", "--filter", f"name={env['OPENWORK_MICROSANDBOX_NAME']}", "--format", "{{.Names}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert names.strip() == ""
        assert list(data.iterdir()) == []
    finally:
        subprocess.run(["umount", str(data)], check=False)


def test_the_engines_oom_kills_are_counted_while_the_container_runs_on(test_base_image):
    """As the image's supervisor: the killed program's parent lives on, so State.OOMKilled stays false."""
    from openwork_sandbox.runtimes.docker_faults import memory_kills

    name = unique_name("f31aoom")
    hog = "python3 -c 'b = bytearray(256 * 1024 * 1024)'; python3 -c 'b = bytearray(256 * 1024 * 1024)'; sleep 120"
    run = ["docker", "run", "-d", "--name", name, "--memory", "32m", "--memory-swap", "32m", "--network", "none"]
    subprocess.run([*run, "--entrypoint", "sh", test_base_image, "-c", hog], check=True, capture_output=True)
    try:
        deadline = time.monotonic() + 60
        while memory_kills(name) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        state = subprocess.run(
            ["docker", "inspect", "--format", "{{.State.Running}} {{.State.OOMKilled}}", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert state == ["true", "false"]
        assert memory_kills(name) == 2
        assert memory_kills(unique_name("f31a-none")) == 0
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def _fill(folder) -> None:
    """Write ``folder``'s filesystem to its last block (a file named fill)."""
    with contextlib.suppress(OSError), open(folder / "fill", "wb") as fh:
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()


def _supervised(name: str, image: str, data, child: str) -> None:
    """A container running the image's real supervisor over ``child`` (sh -c), /data on ``data``."""
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "--network", "none", "-v", f"{data}:/data"]
        + ["-v", f"{SUPERVISOR}:/usr/local/bin/openwork-supervise:ro", "--entrypoint", "bash", image]
        + ["/usr/local/bin/openwork-supervise", "sh", "-c", child],
        check=True,
        capture_output=True,
    )


def test_status_says_the_restarts_are_unknown_when_the_supervisor_could_not_write_its_record(test_base_image, tmp_path):
    """The real supervisor on a data folder filled after an earlier start: it restarts its program but
    cannot write its record, so `status` must not repeat that earlier start's "0"."""
    data = tmp_path / "data"
    _mount_tmpfs(data, "1m")
    env = docker_env(test_base_image, "f31arec", OPENWORK_MICROSANDBOX_DATA_DIR=str(data))
    name = env["OPENWORK_MICROSANDBOX_NAME"]
    try:
        _supervised(name, test_base_image, data, "sleep 300")  # the earlier start, with room
        deadline = time.monotonic() + 30
        while not (data / "supervisor.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        earlier = json.loads((data / "supervisor.json").read_text())
        assert earlier["restarts"] == 0
        subprocess.run(["docker", "rm", "-f", name], check=True, capture_output=True)
        while time.time() < earlier["started_at"] + 7:  # the next start is plainly a later one
            time.sleep(0.5)
        _fill(data)
        _supervised(name, test_base_image, data, "sleep 1; exit 3")  # dies, is restarted, over and over
        deadline = time.monotonic() + 60
        while "restart 2 " not in _log(name) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "restart 2 " in _log(name)
        assert json.loads((data / "supervisor.json").read_text())["restarts"] == 0  # it really could not write

        said = invoke(tmp_path, "status", **env)
        assert said.returncode == 1 and "Traceback" not in said.stderr, said.stderr
        row = next(line for line in said.stderr.splitlines() if line.startswith("restarts "))
        free = shutil.disk_usage(data).free
        assert row.split(None, 1)[1] == (
            f"unknown: the supervisor could not write its record in {data}; the one there is from an earlier "
            f"start (0 then) (disk full? {free} B free there)"
        )
        assert f"✗ the data folder {data} is nearly full ({free} B free; a start needs 4.0 MB)" in said.stderr
        as_json = invoke(tmp_path, "status", "--json", **env)
        assert json.loads(as_json.stdout)["restarts_unknown"] == row.split(None, 1)[1]
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        subprocess.run(["umount", str(data)], check=False)


def _log(name: str) -> str:
    out = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    return out.stdout + out.stderr
