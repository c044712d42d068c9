"""A start that cannot work for want of a resource says so (issue 31): a nearly full data folder
is refused before anything is pulled or made, through the real `invoke up` and a real 1 MB tmpfs;
the engine's OOM kills are counted while the container (its supervisor) runs on, with the real
engine and a program the kernel really kills."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.support.lifecycle import docker_env, invoke, unique_name
from tests.support.paths import REGISTRY

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
