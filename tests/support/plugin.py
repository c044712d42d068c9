"""Shared fixtures: the real local services (Docker engine, registry) and settings helpers.

Tests use the real engine and registry started by ``scripts/services start`` (idempotent);
traffic goes to 127.0.0.1 only, containers use host networking.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = "127.0.0.1:5000"
TEST_BASE_IMAGE = "openwork-base:bookworm-slim-python"  # + python3-minimal for the stand-in server
PROD_BASE_IMAGE = "openwork-base:bookworm-slim"


from openwork_sandbox.net.ports import free_port  # noqa: E402,F401  (re-exported for the tests)

# A suite started in the background of a script (`cmd &`, `nohup ... &`) inherits SIGINT ignored, and
# so would every task it starts (Python keeps an ignored SIGINT); the tests that press Ctrl+C need what a
# terminal gives: a suite run so had `logs --follow` and `smoke --ephemeral` never see their Ctrl+C
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def services():
    """The real Docker engine and registry on loopback (started if not running)."""
    proc = subprocess.run([str(ROOT / "scripts" / "services"), "start"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"scripts/services start failed:\n{proc.stderr}"
    return {"registry": REGISTRY}


@pytest.fixture(scope="session")
def test_base_image(services):
    """A Debian base with python3-minimal (only for the stand-in server), made offline."""
    proc = subprocess.run([str(ROOT / "scripts" / "make-base-image"), TEST_BASE_IMAGE, "--include", "python3-minimal"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return TEST_BASE_IMAGE


@pytest.fixture(scope="session")
def prod_base_image(services):
    """The production-like base (slim Debian + ca-certificates), made offline when missing."""
    proc = subprocess.run([str(ROOT / "scripts" / "make-base-image"), PROD_BASE_IMAGE], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    return PROD_BASE_IMAGE


@pytest.fixture
def short_msb_home(monkeypatch):
    """A fresh, short MSB_HOME (microsandbox's own variable; Unix socket paths are limited)."""
    import shutil
    import tempfile

    home = tempfile.mkdtemp(prefix="msb", dir="/tmp")
    monkeypatch.setenv("MSB_HOME", home)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """An environment with no OPENWORK_* settings and an empty project root in tmp_path."""
    import os

    for key in list(os.environ):
        if key.startswith(("OPENWORK", "OPENCODE_VERSION", "NPM_CONFIG_REGISTRY")):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- the test stack image (issue 3): real openwork + opencode from npm, the stand-in server -------
#
# ``stack_image`` (session) builds the TEST image with the product's own build code
# (openwork_sandbox.image.build.build_image): base ``openwork-base:bookworm-slim-python``, the real
# openwork and opencode from the npm registry (downloaded once into .state/test-cache), and
# tests/standin_openwork_server.py baked as openwork-server through OPENWORK_SERVER_BIN. It pushes
# the image to the local registry and returns a StackImage with ``ref`` (registry ref), ``local``
# (local tag), ``image_id``, ``versions`` and ``settings`` (the Settings it was built with).
#
# Start a container from it with the ``stack_container`` factory (removed at teardown), or by hand:
#
#   docker run -d --network host -e OPENWORK_PORT=<free port> -e OPENWORK_OPENCODE_PORT=<free port> \
#     -e OPENWORK_TOKEN=<client token> -e OPENWORK_HOST_TOKEN=<host token> -e OPENWORK_REMOTE_ACCESS=0 <ref>
#
# With host networking both ports must be free on the host (the entrypoint honours
# OPENWORK_OPENCODE_PORT); the entrypoint exits 64 when a token is missing.

import dataclasses
import os
import secrets
import time

# Two checkouts on one machine share the engine and the registry: OPENWORK_TEST_STACK_REPO gives
# each its own repository, OPENWORK_TEST_CACHE_DIR lets them share one download cache.
STACK_REPO = os.environ.get("OPENWORK_TEST_STACK_REPO") or "openwork-microsandbox-test"
STACK_TAG = "stack"
STACK_CACHE_DIR = Path(os.environ.get("OPENWORK_TEST_CACHE_DIR") or ROOT / ".state" / "test-cache")  # npm downloads
STACK_STATE_DIR = ROOT / ".state" / "test-stack"  # build context, last-build.json
STANDIN_SERVER = ROOT / "tests" / "standin_openwork_server.py"


def stack_settings(tmp_dir: Path, **env: str):
    """Settings for a test build: only the given values and the test defaults, no .env file."""
    from openwork_sandbox.config.settings import load_settings

    env_file = tmp_dir / "empty.env"
    env_file.write_text("")
    environ = {
        "OPENWORK_BASE_IMAGE": TEST_BASE_IMAGE,
        "OPENWORK_SERVER_BIN": str(STANDIN_SERVER),
        "OPENWORK_CACHE_DIR": str(STACK_CACHE_DIR),
        "OPENWORK_STATE_DIR": str(STACK_STATE_DIR),
        "OPENWORK_MICROSANDBOX_IMAGE": f"{REGISTRY}/{STACK_REPO}:{STACK_TAG}",
        **env,
    }
    return load_settings(environ=environ, env_file=env_file, root=ROOT)


@dataclasses.dataclass
class StackImage:
    ref: str  # 127.0.0.1:5000/openwork-microsandbox-test:stack, pushed
    local: str  # openwork-microsandbox-test:stack, a local tag of the same image
    image_id: str
    versions: dict
    settings: object
    build: dict  # build_image()'s result
    push: dict  # push_image()'s result (digest, layers, msb pull)


# An image already in the local engine to use as the stack image, pushed but not built: inside the
# emulated host of scripts/microvm-host (no network, no AVX) it is the e2e image of
# scripts/microvm-image (the stand-in orchestrator and server, the real opencode).
PREBUILT_STACK = os.environ.get("OPENWORK_TEST_STACK_IMAGE")


@pytest.fixture(scope="session")
def stack_image(request, tmp_path_factory) -> StackImage:
    """The test image (real openwork + opencode, stand-in server), built and pushed once per session."""
    from openwork_sandbox.image.build import build_image
    from openwork_sandbox.image.push import push_image

    settings = stack_settings(tmp_path_factory.mktemp("stack"))
    if PREBUILT_STACK:
        request.getfixturevalue("services")
        tmp = tmp_path_factory.mktemp("prebuilt")  # no last build: push_image pushes the tag it is given
        settings = stack_settings(tmp, OPENWORK_STATE_DIR=str(tmp / "state"))
        inspect = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}} {{json .Config.Labels}}",
                                  PREBUILT_STACK], check=True, capture_output=True, text=True).stdout
        image_id, labels = inspect.split(" ", 1)
        labels = __import__("json").loads(labels) or {}
        versions = {p: labels.get(f"io.openwork.{p}.version") for p in ("openwork", "openwork-server", "opencode")}
        subprocess.run(["docker", "tag", image_id, settings.image], check=True, capture_output=True)
        local = f"{STACK_REPO}:{STACK_TAG}"
        subprocess.run(["docker", "tag", image_id, local], check=True, capture_output=True)
        build = {"image": settings.image, "image_id": image_id, "versions": versions}
        return StackImage(settings.image, local, image_id, versions, settings, build, push_image(settings))
    request.getfixturevalue("test_base_image")
    build = build_image(settings)
    local = f"{STACK_REPO}:{STACK_TAG}"
    subprocess.run(["docker", "tag", build["image_id"], local], check=True, capture_output=True)
    pushed = push_image(settings)
    return StackImage(settings.image, local, build["image_id"], build["versions"], settings, build, pushed)


@dataclasses.dataclass
class StackContainer:
    name: str
    url: str
    port: int
    opencode_port: int
    token: str
    host_token: str

    def logs(self) -> str:
        proc = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True)
        return proc.stdout + proc.stderr

    def running(self) -> bool:
        proc = subprocess.run(["docker", "inspect", "--format", "{{.State.Running}}", self.name],
                              capture_output=True, text=True)
        return proc.stdout.strip() == "true"

    def wait_healthy(self, timeout: float = 120, restarts: int = 2) -> None:
        """Poll GET /health (backoff from 50 ms) until 200; fail at once, with the container's log,
        when the container has exited, else after ``timeout`` seconds.

        Like `invoke up`, it restarts the container (up to ``restarts`` times) when the log has
        stopped at "opencode server listening" for 8 s: orchestrator 0.18.1 then waits forever on
        its first request to opencode, about one start in ten (an upstream hang, see README)."""
        import requests

        deadline, delay = time.monotonic() + timeout, 0.05
        last_log, changed_at = "", time.monotonic()
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if not self.running():
                pytest.fail(f"container {self.name} exited before {self.url}/health answered; log:\n"
                            f"{self.logs()[-3000:]}")
            log = self.logs()
            if log != last_log:
                last_log, changed_at = log, time.monotonic()
            elif (restarts > 0 and time.monotonic() - changed_at > 8
                  and log.strip().splitlines()[-1:] and "opencode server listening" in log.strip().splitlines()[-1]):
                subprocess.run(["docker", "restart", "-t", "1", self.name], capture_output=True, timeout=60)
                restarts -= 1
                last_log, changed_at = "", time.monotonic()
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        pytest.fail(f"{self.url}/health not 200 within {timeout}s; log:\n{self.logs()[-3000:]}")


@pytest.fixture
def stack_container(stack_image):
    """Factory: ``start(image=None, **env) -> StackContainer`` runs the stack image with host
    networking on free ports and fresh tokens; every container is removed at teardown."""
    started = []

    def start(image: str | None = None, wait: bool = True, **env: str) -> StackContainer:
        port, opencode_port = free_port(), free_port()
        while opencode_port == port:
            opencode_port = free_port()
        c = StackContainer(f"owtest-{secrets.token_hex(4)}", f"http://127.0.0.1:{port}", port, opencode_port,
                           secrets.token_urlsafe(24), secrets.token_urlsafe(24))
        values = {"OPENWORK_PORT": str(port), "OPENWORK_OPENCODE_PORT": str(opencode_port),
                  "OPENWORK_TOKEN": c.token, "OPENWORK_HOST_TOKEN": c.host_token,
                  "OPENWORK_REMOTE_ACCESS": "0",  # host networking: keep the server on 127.0.0.1
                  "OPENCODE_DISABLE_MODELS_FETCH": "1",  # what OPENWORK_OFFLINE=true passes (air-gapped here)
                  **env}
        argv = ["docker", "run", "-d", "--name", c.name, "--network", "host"]
        for key, value in values.items():
            argv += ["-e", f"{key}={value}"]
        proc = subprocess.run(argv + [image or stack_image.ref], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        started.append(c.name)
        if wait:
            c.wait_healthy()
        return c

    yield start
    for name in started:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
