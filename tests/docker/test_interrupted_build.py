"""SIGTERM (as CI cancels a job) and Ctrl+C during the real `invoke build-image`, while its `docker build`
runs on the real engine: the build is stopped with everything it started (no `docker build` left,
re-parented to init), one line says what was stopped, the exit is 130 (as Ctrl+C), and nothing is
half-made: no tag, no last-build record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.paths import REGISTRY, ROOT, STACK_CACHE_DIR, STACK_REPO, STANDIN_SERVER

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _docker_builds(mark: str) -> dict[int, int]:
    """pid -> parent pid of every `docker build` process on this host whose command line names ``mark``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = _cmdline(int(entry.name))
            if argv[:2] == ["docker", "build"] and any(mark in arg for arg in argv):
                found[int(entry.name)] = _parent(int(entry.name))
    return found


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        pid = _parent(pid)
        if pid == ancestor:
            return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_docker_build_stops_it_in_one_line(test_base_image, stack_image, tmp_path, sig):
    # a base of its own, so no layer is cached and `docker build` runs long enough to be interrupted
    base = f"{STACK_REPO}-base:interrupted-{os.getpid()}-{sig}"
    made = subprocess.run(
        ["docker", "build", "-q", "-t", base, "-"],
        input=f"FROM {test_base_image}\nLABEL interrupted={time.time()}\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    image = f"{REGISTRY}/{STACK_REPO}:interrupted"
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENWORK", "OPENCODE_VERSION", "GITHUB_"))}
    env.update(
        OPENWORK_BASE_IMAGE=base,
        OPENWORK_SERVER_BIN=str(STANDIN_SERVER),
        OPENWORK_CACHE_DIR=str(STACK_CACHE_DIR),
        OPENWORK_STATE_DIR=str(state),
        OPENWORK_MICROSANDBOX_IMAGE=image,
    )
    (tmp_path / "empty.env").write_text("")
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "build-image", "--env-file", str(tmp_path / "empty.env")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not any(_descends_from(pid, proc.pid) for pid in _docker_builds(str(state))):
            assert proc.poll() is None, f"build-image ended before docker build ran:\n{proc.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "no docker build started"
            time.sleep(0.1)
        time.sleep(1)  # the engine is building now
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err[-3000:]
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1] == (
            f"interrupted: stopped docker build of {image} (nothing of it is left running); "
            "push-image still pushes the last finished build: `invoke build-image` builds again"
        )
        assert not [line for line in err.strip().splitlines()[:-1] if line.startswith("interrupted")]  # one line
        assert _docker_builds(str(state)) == {}  # none left, re-parented or not
        assert not (state / "last-build.json").exists()  # nothing recorded
        tagged = subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True)
        assert tagged.returncode != 0  # nothing tagged
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _docker_builds(str(state)):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["docker", "rmi", "-f", image, base], capture_output=True)
