"""The suite's fixtures, loaded as a pytest plugin: the real local services (Docker engine,
registry), the base images made offline, the test stack image and containers of it, clean settings.

Tests use the real engine and registry started by ``scripts/services start`` (idempotent); traffic
goes to 127.0.0.1 only, containers use host networking.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess

import pytest

from openwork_sandbox.net.ports import free_port
from tests.support.paths import (
    ARM_BASE,
    PREBUILT_STACK,
    PROD_BASE_IMAGE,
    REGISTRY,
    ROOT,
    STACK_REPO,
    STACK_TAG,
    TEST_BASE_IMAGE,
)
from tests.support.stack import StackContainer, StackImage, stack_settings

# A suite started in the background of a script (`cmd &`) inherits SIGINT ignored, and so would every
# task it starts; the tests that press Ctrl+C need what a terminal gives
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
    proc = subprocess.run(
        [str(ROOT / "scripts" / "make-base-image"), TEST_BASE_IMAGE, "--include", "python3-minimal"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    return TEST_BASE_IMAGE


@pytest.fixture(scope="session")
def arm_base(test_base_image):
    """The test base for linux/arm64 (a foreign platform here), made offline when missing."""
    proc = subprocess.run(
        [
            str(ROOT / "scripts" / "make-base-image"),
            ARM_BASE,
            "--include",
            "python3-minimal",
            "--platform",
            "linux/arm64",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    return ARM_BASE


@pytest.fixture(scope="session")
def prod_base_image(services):
    """The production-like base (slim Debian + ca-certificates), made offline when missing."""
    proc = subprocess.run(
        [str(ROOT / "scripts" / "make-base-image"), PROD_BASE_IMAGE], capture_output=True, text=True, timeout=900
    )
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
        inspect = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Id}} {{json .Config.Labels}}", PREBUILT_STACK],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        image_id, labels = inspect.split(" ", 1)
        labels = json.loads(labels) or {}
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


@pytest.fixture
def stack_container(stack_image):
    """Factory: ``start(image=None, **env) -> StackContainer`` runs the stack image with host
    networking on free ports and fresh tokens; every container is removed at teardown."""
    started = []

    def start(image: str | None = None, wait: bool = True, **env: str) -> StackContainer:
        port, opencode_port = free_port(), free_port()
        while opencode_port == port:
            opencode_port = free_port()
        c = StackContainer(
            f"owtest-{secrets.token_hex(4)}",
            f"http://127.0.0.1:{port}",
            port,
            opencode_port,
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(24),
        )
        values = {
            "OPENWORK_PORT": str(port),
            "OPENWORK_OPENCODE_PORT": str(opencode_port),
            "OPENWORK_TOKEN": c.token,
            "OPENWORK_HOST_TOKEN": c.host_token,
            "OPENWORK_REMOTE_ACCESS": "0",  # host networking: keep the server on 127.0.0.1
            "OPENCODE_DISABLE_MODELS_FETCH": "1",  # what OPENWORK_OFFLINE=true passes (air-gapped here)
            **env,
        }
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
