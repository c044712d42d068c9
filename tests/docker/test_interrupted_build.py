"""SIGTERM (as CI cancels a job) and Ctrl+C during the real `invoke build-image`, while its `docker build`
runs on the real engine: the build is stopped with everything it started (no `docker build` left,
re-parented to init), one line says what was stopped, the exit is 130 (as Ctrl+C), and nothing is
half-made: no tag, no last-build record. The same for `invoke push-image` while the engine's push
waits on a registry (on 127.0.0.1) that never finishes: no `docker push` left, nothing pinned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.paths import REGISTRY, ROOT, STACK_CACHE_DIR, STACK_REPO, STANDIN_SERVER, TEST_BASE_IMAGE

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


def _start_task(task: str, tmp_path: Path, *, base: str, image: str) -> subprocess.Popen:
    """The real ``invoke TASK`` started in the background with the test stack's settings (the state
    folder ``tmp_path/state``, no settings file of the project's), its output piped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENWORK", "OPENCODE_VERSION", "GITHUB_"))}
    env.update(
        OPENWORK_BASE_IMAGE=base,
        OPENWORK_SERVER_BIN=str(STANDIN_SERVER),
        OPENWORK_CACHE_DIR=str(STACK_CACHE_DIR),
        OPENWORK_STATE_DIR=str(tmp_path / "state"),
        OPENWORK_MICROSANDBOX_IMAGE=image,
    )
    (tmp_path / "empty.env").write_text("")
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", task, "--env-file", str(tmp_path / "empty.env")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


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
    proc = _start_task("build-image", tmp_path, base=base, image=image)
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


# --- push-image: SIGTERM while `docker push` waits on a registry that does not finish ----------------


class _StallingRegistry(ThreadingHTTPServer):
    """A v2 registry on 127.0.0.1 that answers the API check and the push-access check, then holds every
    request of the push itself open (``stalled`` is set once one is held) until ``release`` is set."""

    daemon_threads = True

    def __init__(self) -> None:
        self.stalled, self.release = threading.Event(), threading.Event()
        self.checked_push = False
        super().__init__(("127.0.0.1", 0), _StallingHandler)


class _StallingHandler(BaseHTTPRequestHandler):
    server: _StallingRegistry

    def log_message(self, *args):
        pass

    def _answer(self, status: int, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _stall(self) -> None:
        self.server.stalled.set()
        self.server.release.wait(120)
        self._answer(503)

    def do_GET(self):
        self._answer(200) if self.path == "/v2/" else self._stall()

    def do_POST(self):
        if self.path.endswith("/blobs/uploads/") and not self.server.checked_push:  # push-image's own check
            self.server.checked_push = True
            self._answer(202, Location=self.path + "check")
        else:
            self._stall()

    def do_DELETE(self):
        self._answer(202)

    do_HEAD = do_PUT = do_PATCH = _stall


def _docker_pushes(ref: str) -> dict[int, int]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _cmdline(int(entry.name)) == ["docker", "push", ref]:
            found[int(entry.name)] = _parent(int(entry.name))
    return found


def test_sigterm_during_docker_push_stops_it_in_one_line_and_pins_nothing(stack_image, tmp_path):
    registry = _StallingRegistry()
    threading.Thread(target=registry.serve_forever, daemon=True).start()
    ref = f"127.0.0.1:{registry.server_address[1]}/{STACK_REPO}-stall:interrupted"
    state = tmp_path / "state"
    # its pre-task builds ref from the stack's cached layers first
    proc = _start_task("push-image", tmp_path, base=TEST_BASE_IMAGE, image=ref)
    try:
        deadline = time.monotonic() + 300
        while not (registry.stalled.is_set() and any(_descends_from(p, proc.pid) for p in _docker_pushes(ref))):
            assert proc.poll() is None, (
                f"push-image ended before docker push was held:\n{proc.communicate()[1][-3000:]}"
            )
            assert time.monotonic() < deadline, "docker push never reached the registry"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err[-3000:]
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        assert lines[-1] == (
            f"interrupted: stopped docker push of {ref} (nothing of it is left running); nothing was pinned, "
            "up boots what it booted before: `invoke push-image` pushes again"
        )
        assert not [line for line in lines[:-1] if line.startswith("interrupted")]  # one line says it
        assert _docker_pushes(ref) == {}  # none left, re-parented or not
        assert not (state / "last-push.json").exists()  # nothing pinned
    finally:
        registry.release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _docker_pushes(ref):
            os.kill(pid, signal.SIGKILL)
        registry.shutdown()
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)
