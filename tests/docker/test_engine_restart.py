"""The Docker runtime's sandbox comes back after an engine restart, and `down` is for good (issue 17).

The shared engine must not be restarted (other checkouts use it), so this test starts its own
second dockerd (own socket, data root, exec root and pid file; no bridge, no iptables), loads the
test stack image into it (``docker save | docker load``), boots the sandbox there with
``DOCKER_HOST``, restarts that engine and watches the sandbox come back healthy; after ``down``,
another engine restart leaves it down.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.support.lifecycle import docker_env, invoke

pytestmark = pytest.mark.docker


class Engine:
    """A second dockerd of the test's own (the real engine binary), stopped and started at will."""

    def __init__(self, root: Path):
        self.root = root
        self.sock = root / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        log = open(self.root / "dockerd.log", "a")
        self.proc = subprocess.Popen(
            [
                "dockerd",
                "-H",
                self.host,
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(self.root / "exec"),
                "--pidfile",
                str(self.root / "docker.pid"),
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.docker("info", check=False).returncode == 0:
                return
            if self.proc.poll() is not None:
                pytest.fail(f"the test's dockerd exited: {(self.root / 'dockerd.log').read_text()[-2000:]}")
            time.sleep(0.5)
        pytest.fail("the test's dockerd did not answer within 60s")

    def stop(self) -> None:
        """What a host shutdown does to the engine: SIGTERM, and wait for it to finish."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def docker(self, *args: str, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(["docker", "-H", self.host, *args], capture_output=True, text=True, timeout=timeout, **kw)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def state(self, name: str) -> dict:
        return json.loads(self.docker("inspect", "--format", "{{json .State}}", name).stdout)


@pytest.fixture(scope="module")
def engine(stack_image):
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        pytest.skip(
            "a second engine needs dockerd and root (here: "
            + ("no dockerd" if shutil.which("dockerd") is None else "not root")
            + ")"
        )
    root = Path(tempfile.mkdtemp(prefix="i17a-engine-", dir="/tmp"))  # short: a socket path limit applies
    eng = Engine(root)
    eng.start()
    try:
        save = subprocess.Popen(["docker", "save", stack_image.ref], stdout=subprocess.PIPE)
        load = subprocess.run(
            ["docker", "-H", eng.host, "load"], stdin=save.stdout, capture_output=True, text=True, timeout=600
        )
        save.stdout.close()
        assert save.wait(timeout=60) == 0 and load.returncode == 0, load.stderr
        yield eng
    finally:
        if eng.proc and eng.proc.poll() is None:
            for cid in eng.docker("ps", "-aq", check=False).stdout.split():
                eng.docker("rm", "-f", cid, check=False)
        eng.stop()
        # dockerd leaves its network namespace mounted under the exec root
        with open("/proc/mounts") as fh:
            mounted = [line.split()[1] for line in fh if line.split()[1].startswith(str(root))]
        for point in sorted(mounted, reverse=True):
            subprocess.run(["umount", point], capture_output=True)
        subprocess.run(["rm", "-rf", str(root)], capture_output=True)


def _healthy(url: str) -> bool:
    try:
        return requests.get(url + "/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _wait(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"not within {timeout}s: {what}")


def test_the_sandbox_comes_back_after_an_engine_restart_and_down_is_for_good(engine, stack_image, tmp_path):
    env = {**docker_env(stack_image.ref, "i17a-eng", health_timeout="300"), "DOCKER_HOST": engine.host}
    name, url = env["OPENWORK_MICROSANDBOX_NAME"], f"http://127.0.0.1:{env['OPENWORK_MICROSANDBOX_PORT']}"
    up = invoke(tmp_path, "up", timeout=420, **env)
    assert up.returncode == 0, up.stderr
    assert (
        engine.docker("inspect", "--format", "{{.HostConfig.RestartPolicy.Name}}", name).stdout.strip()
        == "unless-stopped"
    )

    engine.stop()  # the host goes down: the engine stops its containers
    assert not _healthy(url)
    started = time.monotonic()
    engine.start()
    _wait("the sandbox healthy again after the engine restart", lambda: _healthy(url), 300)
    print(f"\nengine restart -> sandbox healthy again in {time.monotonic() - started:.1f}s")
    status = invoke(tmp_path, "status", "--json", **env)
    assert status.returncode == 0 and json.loads(status.stdout)["healthy"] is True, status.stderr

    down = invoke(tmp_path, "down", **env)
    assert down.returncode == 0, down.stderr
    assert engine.state(name)["Running"] is False
    engine.stop()
    engine.start()
    time.sleep(5)  # give a (wrong) restart policy the time to bring it back
    assert engine.state(name)["Running"] is False and not _healthy(url)
