"""`invoke logs --follow` on the real engine, when the sandbox goes away under it: stopped, removed, or
restarted by its engine, the follow ends with one line that says so and exit 1 (never silently, 0); `invoke up --follow`
(the test stack) ends the same way.

The sandbox is a container of that name that prints a line a second (the Docker runtime reads any
container by its name); the real `invoke logs --follow` runs in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.support.lifecycle import OFFLINE, docker_env, unique_name
from tests.support.paths import ROOT, TEST_BASE_IMAGE

pytestmark = [pytest.mark.docker]

TICK = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done"


def _container(name: str, script: str, *extra: str) -> None:
    made = subprocess.run(
        ["docker", "run", "-d", "--name", name, "--network", "host", *extra, TEST_BASE_IMAGE, "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr


def _follow(tmp_path, name: str) -> tuple[subprocess.Popen, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENWORK", "OPENCODE_VERSION"))}
    clean.update(
        {
            "OPENWORK_STATE_DIR": str(tmp_path / "state"),
            "OPENWORK_MICROSANDBOX_RUNTIME": "docker",
            "OPENWORK_MICROSANDBOX_NAME": name,
            **OFFLINE,
        }
    )
    (tmp_path / "empty.env").write_text("")
    out = open(tmp_path / "out.txt", "w+")  # read while the process writes it
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "logs", "--follow", "--env-file", str(tmp_path / "empty.env")],
        cwd=ROOT,
        env=clean,
        stdout=out,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while "tick" not in (tmp_path / "out.txt").read_text():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "logs --follow printed no line"
        time.sleep(0.2)
    return proc, out


def _ended(proc: subprocess.Popen, tmp_path) -> str:
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "tick 1" in (tmp_path / "out.txt").read_text()  # it did follow before it ended
    return lines[0]


@pytest.mark.parametrize("how", ["stop", "rm"])
def test_follow_ends_with_one_line_when_the_sandbox_stops_or_is_removed(tmp_path, how):
    name = unique_name(f"f31d-{how}")
    _container(name, TICK)
    try:
        proc, out = _follow(tmp_path, name)
        if how == "stop":
            subprocess.run(["docker", "stop", "-t", "1", name], capture_output=True, check=True, timeout=60)
            assert _ended(proc, tmp_path) == (
                f"{name} stopped (exited, exit code 137) while its log was followed: `invoke up` starts it again "
                "(`invoke logs --system` shows why it stopped)"
            )
        else:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=True, timeout=60)
            assert _ended(proc, tmp_path) == (
                f"{name} was removed while its log was followed: `invoke up` creates it again"
            )
        out.close()
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_follow_ends_with_one_line_when_the_engine_restarts_the_sandbox(tmp_path):
    name = unique_name("f31d-restart")
    # dies after a few lines; the engine's restart policy starts it again
    _container(name, "for i in 1 2 3; do echo tick $i; sleep 1; done; exit 3", "--restart", "always")
    try:
        proc, out = _follow(tmp_path, name)
        line = _ended(proc, tmp_path)
        out.close()
        # Docker counts the restart as it handles the exit, before the follow sees the log end
        assert line == (
            f"{name} stopped and its engine started it again (restart 1) while its log was followed: "
            "`invoke logs --follow` follows it again, `invoke status` shows why"
        )
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_up_follow_ends_with_the_same_one_line_when_the_sandbox_stops(stack_image, tmp_path):
    """`invoke up --follow` follows through the same code: the sandbox stopped under it ends it with
    the same line as `logs --follow` and exit 1."""
    env = docker_env(stack_image.ref, "f31d-up", health_timeout="300")
    name = env["OPENWORK_MICROSANDBOX_NAME"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENWORK", "OPENCODE_VERSION"))}
    clean.update({"OPENWORK_STATE_DIR": str(tmp_path / "state"), **OFFLINE, **env})
    (tmp_path / "empty.env").write_text("")
    err = open(tmp_path / "err.txt", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "up", "--follow", "--env-file", str(tmp_path / "empty.env")],
        cwd=ROOT,
        env=clean,
        stdout=subprocess.DEVNULL,
        stderr=err,
        text=True,
    )
    try:
        deadline = time.monotonic() + 900  # the host's start slots are shared: another boot may come first
        while "following the server log" not in (tmp_path / "err.txt").read_text():
            assert proc.poll() is None, (tmp_path / "err.txt").read_text()
            assert time.monotonic() < deadline, (
                "up --follow did not come to follow the log:\n" + (tmp_path / "err.txt").read_text()[-3000:]
            )
            time.sleep(0.5)
        subprocess.run(["docker", "stop", "-t", "20", name], capture_output=True, check=True, timeout=60)
        assert proc.wait(timeout=60) == 1
        said = (tmp_path / "err.txt").read_text()
        assert "Traceback" not in said
        last = said.strip().splitlines()[-1]
        assert last.startswith(f"{name} stopped (exited, exit code ") and last.endswith(
            ") while its log was followed: `invoke up` starts it again (`invoke logs --system` shows why it stopped)"
        ), said
    finally:
        if proc.poll() is None:
            proc.kill()
        err.close()
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
