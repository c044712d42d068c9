"""The image's opencode start gate (openwork_sandbox/image/context/opencode-gate.js) against the start race.

opencode 1.17 drops a request that connects before its HTTP handler is attached, and the real
orchestrator 0.18 then waits forever. The race is random, so the test image bakes a stand-in
(tests/standins/standin_opencode_drops_first_request.py) in front of the real opencode that drops the
first request every time; the real orchestrator runs in front of it. With the gate the start is
healthy without a restart, `up` says in one line that the race was held off, and `logs` shows the
gate's own line.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time

import pytest
import requests

from openwork_sandbox.net.ports import free_port
from tests.support.lifecycle import build_and_push, make_settings, unique_name
from tests.support.paths import REGISTRY, STACK_REPO, STANDINS

pytestmark = pytest.mark.docker

STANDIN = STANDINS / "standin_opencode_drops_first_request.py"
STANDIN_IN_IMAGE = "/usr/local/bin/opencode-standin-drops-first-request"


def test_race_note_reads_the_gates_line():
    from openwork_sandbox.sandbox.start_gate import race_note

    raced = (
        "[opencode] opencode-gate: start race held off: opencode dropped 2 request(s) sent before its "
        "handler was attached; opencode answered after 812 ms; serving 127.0.0.1:4096 (opencode on port 4"
    )
    clean = "[opencode] opencode-gate: opencode answered after 700 ms; serving 127.0.0.1:4096 (opencode on port 4"
    note = race_note(["[opencode] Process spawned", raced, "[opencode] Healthy", "[openwork-server] Healthy"])
    assert note is not None and "dropped 2 early request(s)" in note and "\n" not in note
    assert race_note(["[opencode] Process spawned", clean, "[opencode] Healthy"]) is None
    assert race_note(["[opencode] opencode server listening on http://127.0.0.1:4096", "[opencode] Healthy"]) is None
    assert race_note([]) is None


def test_a_slow_start_is_one_line_naming_the_slowest_program():
    from openwork_sandbox.sandbox.start_gate import answer_times, slow_start_note

    lines = [
        "[opencode] opencode-gate: opencode still starting after 5 s, 0.3 s of CPU so far",
        "[opencode] opencode-gate: opencode answered after 3000 ms (0.9 s of CPU); serving 127.0.0.1:4096",
        "[openwork-orchestrator] ERROR Run failed",  # an earlier start, then a new one
        "[opencode] opencode-gate: start race held off: opencode dropped 1 request(s) sent before its handler "
        "was attached; opencode answered after 39338 ms (3.0 s of CPU); serving 127.0.0.1:4096",
        "[openwork-server] openwork-server-gate: openwork-server answered after 1778 ms (0.0 s of CPU); serving",
    ]
    assert answer_times(lines) == {"opencode": 39.338, "openwork-server": 1.778}
    note = slow_start_note(52.3, lines, cpus=0.1)
    assert note == (
        "slow start: healthy after 52.3s; opencode was slowest (39.3s to answer; openwork-server 1.8s; "
        "boot and orchestrator 11.2s); the host is busy or slow, this sandbox has 0.1 CPU"
    )
    server_slow = [
        "[opencode] opencode-gate: opencode answered after 900 ms; serving",
        "[openwork-server] openwork-server-gate: openwork-server answered after 14000 ms; serving",
    ]
    assert slow_start_note(16, server_slow, cpus=2).startswith(
        "slow start: healthy after 16.0s; openwork-server was slowest (14.0s to answer; opencode 0.9s;"
    )
    assert slow_start_note(9.9, lines) is None  # not slow: nothing to say
    assert "no start gate" in slow_start_note(12, ["[opencode] Healthy"])


def test_the_gate_answers_version_as_the_baked_opencode_does(stack_image):
    def run(entrypoint: str) -> str:
        proc = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                entrypoint,
                "-e",
                "HOME=/tmp",
                stack_image.ref,
                "--version",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert run("/usr/local/bin/opencode-gate") == run("/usr/local/bin/opencode") == stack_image.versions["opencode"]


@pytest.fixture(scope="module")
def racing_image(stack_image, tmp_path_factory):
    """The stack image with opencode behind a stand-in that drops opencode's first request."""
    ctx = tmp_path_factory.mktemp("race")
    shutil.copy(STANDIN, ctx / "standin")
    return build_and_push(
        ctx,
        f"FROM {stack_image.ref}\nCOPY standin {STANDIN_IN_IMAGE}\nENV OPENWORK_OPENCODE_REAL={STANDIN_IN_IMAGE}\n",
        f"{REGISTRY}/{STACK_REPO}:race-first-request",
    )


@pytest.mark.parametrize("launch", ["orchestrator", "server"])
def test_up_is_healthy_without_a_restart_when_opencode_drops_its_first_request(racing_image, tmp_path, capsys, launch):
    """Under either launch (OPENWORK_LAUNCH=server: openwork-server starts opencode-gate itself, and the
    stand-in reaches it as OPENWORK_OPENCODE_REAL through the server's gate and the server)."""
    from openwork_sandbox.sandbox.logs import logs
    from openwork_sandbox.sandbox.up import up

    settings = make_settings(
        tmp_path,
        OPENWORK_LAUNCH=launch,
        OPENWORK_MICROSANDBOX_NAME=unique_name("race"),
        OPENWORK_MICROSANDBOX_RUNTIME="docker",
        OPENWORK_MICROSANDBOX_PORT=str(free_port()),
        OPENWORK_MICROSANDBOX_IMAGE=racing_image,
        OPENWORK_HEALTH_TIMEOUT="120",
    )
    try:
        ep = up(settings)
        said = capsys.readouterr().err
        assert requests.get(ep.url + "/health", timeout=5).ok
        assert "made no progress" not in said and "restarting" not in said  # no watchdog restart
        race_lines = [line for line in said.splitlines() if "start race held off" in line]
        assert len(race_lines) == 1, said

        logs(settings)
        log = capsys.readouterr().out
        assert "[standin-opencode-drops-first-request] read the first request" in log  # the race did strike
        assert "opencode-gate: start race held off: opencode dropped" in log
        if launch == "orchestrator":
            assert log.count("[opencode] Healthy") == 1 and "Run starting" in log
        else:  # the gate's lines reach the log, and the server took the gate's port, not opencode's own
            managed = re.search(r"Managed OpenCode listening on http://127\.0\.0\.1:(\d+)", log)
            gate = re.search(r"opencode-gate: start race held off.* serving 127\.0\.0\.1:(\d+) \(opencode on", log)
            assert managed and gate and managed.group(1) == gate.group(1), log[-3000:]
    finally:
        subprocess.run(["docker", "rm", "-f", settings.name], capture_output=True)


def test_the_gate_keeps_asking_through_a_start_race_that_lasts(racing_image):
    """On a host a hundred times slower (a nested microVM under emulation) the gap between opencode's
    listen() and its handler lasts seconds, and every probe the gate sends in it is read and never
    answered. The gate used to stop probing once 50 of them were open (2 s of probes): such a start
    then hung for good, opencode idle (about one start in three there). Here the stand-in drops every
    connection of its first 8 s, and the gate's caller still gets opencode's answer."""
    port, name = free_port(), unique_name("gap")
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "-e",
            "HOME=/tmp",
            "-e",
            "OPENCODE_STANDIN_GAP_SECONDS=8",
            "--entrypoint",
            "/usr/local/bin/opencode-gate",
            racing_image,
            "serve",
            "--hostname",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        check=True,
        capture_output=True,
    )
    try:
        began = time.monotonic()
        while True:  # the gate listens at once, when Bun has started
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                assert time.monotonic() - began < 60, "the gate did not listen within 60 s"
                time.sleep(0.2)
        # the gate holds this request until opencode answers one of its probes, then forwards it
        answer = requests.get(f"http://127.0.0.1:{port}/global/health", timeout=150)
        assert answer.status_code == 200 and answer.json().get("healthy") is True, answer.text
        log = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stdout
        assert "nor any other in its first 8 s" in log, log  # the long race did strike
        dropped = re.search(r"start race held off: opencode dropped (\d+) request", log)
        assert dropped and int(dropped.group(1)) > 50, log  # it kept asking past the 50 it used to stop at
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
