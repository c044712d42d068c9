"""The stand-in for `openwork serve` (tests/standins/standin_openwork_orchestrator.py) keeps the real one's
contract: run here, on the host, with the real opencode and the stand-in server, it serves, passes
the children what the real one passes, and stops them all on SIGTERM or when one of them dies.
(The image with it, booted by `invoke up`, is covered by scripts/microvm-e2e and the Docker run of it.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from openwork_sandbox.net.ports import free_port
from tests.support.paths import STANDINS

STANDIN = STANDINS / "standin_openwork_orchestrator.py"
SERVER = STANDINS / "standin_openwork_server.py"


@pytest.fixture(scope="module")
def opencode(stack_image):
    """The real opencode the test image bakes (from the npm cache)."""
    from openwork_sandbox.image import artifacts as npm_artifacts

    return npm_artifacts.resolve(stack_image.settings, "amd64")["opencode"].path


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


def _start(tmp_path, opencode):
    port, oc_port = free_port(), free_port()
    workspace, home = tmp_path / "ws", tmp_path / "home"
    workspace.mkdir()
    home.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "OPENWORK_TOKEN": "c" * 30,
        "OPENWORK_HOST_TOKEN": "h" * 30,
        "OPENWORK_DATA_DIR": str(tmp_path / "data"),
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
    }
    argv = [
        sys.executable,
        str(STANDIN),
        "serve",
        "--workspace",
        str(workspace),
        "--openwork-port",
        str(port),
        "--opencode-host",
        "127.0.0.1",
        "--opencode-port",
        str(oc_port),
        "--approval",
        "auto",
        "--cors",
        "*",
        "--connect-host",
        "127.0.0.1",
        "--allow-external",
        "--sidecar-source",
        "external",
        "--opencode-source",
        "external",
        "--openwork-server-bin",
        str(SERVER),
        "--opencode-bin",
        str(opencode),
    ]
    log = open(tmp_path / "log.txt", "w+")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if "OpenWork orchestrator running" in (tmp_path / "log.txt").read_text():
            break
        time.sleep(0.2)
    text = (tmp_path / "log.txt").read_text()
    assert "OpenWork orchestrator running" in text, text
    return proc, port, workspace, text


def test_version_answers_the_pin():
    out = subprocess.run([sys.executable, str(STANDIN), "--version"], capture_output=True, text=True)
    assert out.stdout.strip() == "0.18.1" and out.returncode == 0


def test_serves_verifies_and_stops_its_children_on_sigterm(tmp_path, opencode):
    proc, port, workspace, log = _start(tmp_path, opencode)
    try:
        for line in (
            "[openwork-orchestrator] Run starting",
            "[opencode] Process spawned",
            "[opencode] Healthy",
            "[openwork-server] Healthy",
            "GET /workspaces",
            "GET /approvals",
            "POST /tokens",
        ):
            assert line in log, line
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["ok"] is True
        ws = requests.get(
            f"http://127.0.0.1:{port}/workspaces", headers={"Authorization": "Bearer " + "c" * 30}, timeout=5
        ).json()["items"][0]
        assert ws["path"] == str(workspace) and ws["opencode"]["username"] and ws["opencode"]["password"]
        session = requests.post(
            f"http://127.0.0.1:{port}/w/{ws['id']}/opencode/session",
            json={"title": "t"},
            headers={"Authorization": "Bearer " + "c" * 30},
            timeout=30,
        )
        assert session.status_code == 200  # the random basic-auth pair reached both opencode and the server
        children = _children(proc.pid)
        assert len(children) == 2
        assert (tmp_path / "home/.config/openwork/tokens.json").exists()  # the verification issued an owner token
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        time.sleep(0.5)
        assert [c for c in children if _alive(c)] == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_exits_when_a_child_dies(tmp_path, opencode):
    proc, port, _, _ = _start(tmp_path, opencode)
    try:
        server = [
            c
            for c in _children(proc.pid)
            if "openwork-server" in open(f"/proc/{c}/cmdline").read()
            or "standin_openwork_server" in open(f"/proc/{c}/cmdline").read()
        ]
        assert len(server) == 1
        os.kill(server[0], signal.SIGKILL)
        assert proc.wait(timeout=30) != 0
        assert "Run failed: openwork-server exited" in (tmp_path / "log.txt").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
