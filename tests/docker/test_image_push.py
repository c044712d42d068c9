"""push-image against the real registry on 127.0.0.1:5000: the digest it prints is what the
registry serves (checked independently with skopeo), every blob exists, msb pulls it, a server
change pushes one small layer, and failures are one line."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from openwork_sandbox.net.ports import free_port
from tests.support.paths import REGISTRY, STACK_REPO, STACK_STATE_DIR, STANDIN_SERVER
from tests.support.stack import stack_settings

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_push_is_pullable_manifest_blobs_and_msb(stack_image, short_msb_home, capsys):
    from openwork_sandbox.image.push import push_image
    from openwork_sandbox.runtimes.probe import msb_path

    result = push_image(stack_image.settings, as_json=True)
    assert json.loads(capsys.readouterr().out)["digest"] == result["digest"]
    assert result["digest"].startswith("sha256:") and result["manifest_ok"] and result["blobs_ok"]
    assert result["layers_pushed"] == 0 and result["bytes_pushed"] == 0  # the fixture pushed it already
    assert result["pinned"] == f"{REGISTRY}/{STACK_REPO}@{result['digest']}"

    # independent check: skopeo reads the same digest from the registry
    skopeo = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{stack_image.ref}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert skopeo.returncode == 0, skopeo.stderr
    assert json.loads(skopeo.stdout)["Digest"] == result["digest"]

    if msb_path() is None:
        pytest.skip("microsandbox (msb) is not installed: the msb pull part cannot run here")
    assert result["msb_pull"] is True
    cached = subprocess.run(
        [msb_path(), "image", "inspect", stack_image.ref], capture_output=True, text=True, timeout=60
    )
    assert cached.returncode == 0 and result["digest"] in cached.stdout


def test_server_only_change_pushes_one_small_layer(stack_image, tmp_path, short_msb_home):
    from openwork_sandbox.image.build import build_image
    from openwork_sandbox.image.push import push_image

    changed = tmp_path / "openwork-server"
    changed.write_bytes(STANDIN_SERVER.read_bytes() + b"\n# changed for the push test\n")
    changed.chmod(0o755)
    ref = f"{REGISTRY}/{STACK_REPO}:server-change"
    settings = stack_settings(
        tmp_path,
        OPENWORK_SERVER_BIN=str(changed),
        OPENWORK_MICROSANDBOX_IMAGE=ref,
        OPENWORK_STATE_DIR=str(tmp_path / "state"),
    )
    try:
        built = build_image(settings)
        assert built["downloaded_bytes"] == 0 and built["image_id"] != stack_image.image_id
        pushed = push_image(settings)
    finally:
        subprocess.run(["docker", "rmi", ref], capture_output=True)
    assert pushed["layers_pushed"] == 1, pushed
    assert 0 < pushed["bytes_pushed"] < changed.stat().st_size + 1_000_000


def test_a_push_that_happened_is_reported_as_pushed_when_the_pull_check_fails(stack_image, tmp_path, monkeypatch):
    """The microsandbox pull fails for real (its MSB_HOME cannot exist): the error still says what was pushed."""
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.image.push import push_image
    from openwork_sandbox.runtimes.probe import msb_path
    from openwork_sandbox.state.pin import read_pushes

    if msb_path() is None:
        pytest.skip("microsandbox (msb) is not installed: there is no pull check to fail")
    monkeypatch.setenv("MSB_HOME", "/dev/null/msb")
    settings = stack_settings(tmp_path, OPENWORK_STATE_DIR=str(tmp_path / "state"))
    subprocess.run(["docker", "tag", stack_image.image_id, settings.image], check=True, capture_output=True)
    with pytest.raises(WorkflowError) as err:
        push_image(settings)
    pinned = read_pushes(settings)[settings.image]["pinned"]
    assert pinned == f"{REGISTRY}/{STACK_REPO}@{stack_image.push['digest']}"
    assert err.value.message.startswith(f"pushed {pinned}, but the pull check failed: microsandbox could not pull")
    assert "\n" not in err.value.message and err.value.exit_code == 1


def test_push_to_a_port_without_a_registry_is_one_line(stack_image, tmp_path):
    from openwork_sandbox.core.errors import UnreachableError
    from openwork_sandbox.image.push import push_image

    port = free_port()
    settings = stack_settings(
        tmp_path, OPENWORK_MICROSANDBOX_IMAGE=f"127.0.0.1:{port}/nothing:here", OPENWORK_STATE_DIR=str(STACK_STATE_DIR)
    )
    with pytest.raises(UnreachableError) as err:
        push_image(settings)
    message = err.value.message
    assert f"127.0.0.1:{port}" in message and "Connection refused" in message and "\n" not in message
    tags = subprocess.run(["docker", "image", "inspect", f"127.0.0.1:{port}/nothing:here"], capture_output=True)
    assert tags.returncode != 0  # nothing was tagged for a registry that is not there


def test_login_uses_the_credentials(stack_image, tmp_path, monkeypatch, short_msb_home):
    """The local registry accepts any login; Docker keeps what it was given in DOCKER_CONFIG."""
    from openwork_sandbox.image.push import push_image

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    settings = stack_settings(
        tmp_path,
        OPENWORK_REGISTRY_USERNAME="ci-user",
        OPENWORK_REGISTRY_PASSWORD="s3cret-pass-word",
        OPENWORK_STATE_DIR=str(STACK_STATE_DIR),
    )
    push_image(settings)
    auths = json.loads((tmp_path / "docker" / "config.json").read_text())["auths"]
    assert base64.b64decode(auths[REGISTRY]["auth"]).decode() == "ci-user:s3cret-pass-word"


def test_login_needs_both_credentials(tmp_path):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.image.push import login

    settings = stack_settings(tmp_path, OPENWORK_REGISTRY_USERNAME="ci-user")
    with pytest.raises(WorkflowError, match="OPENWORK_REGISTRY_PASSWORD is not set"):
        login(settings)


# --- retries: a flaky registry cannot be made from the real one, so a small double stands in ---


class FlakyRegistryDouble(BaseHTTPRequestHandler):
    """TEST DOUBLE of a registry's GET /v2/: answers the queued statuses, then 200."""

    statuses: list[int] = []
    hits = 0

    def do_GET(self):
        type(self).hits += 1
        status = type(self).statuses.pop(0) if type(self).statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_registry():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyRegistryDouble)
    FlakyRegistryDouble.hits = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", FlakyRegistryDouble
    server.shutdown()


def test_registry_retries_5xx_then_succeeds(flaky_registry):
    from openwork_sandbox.registry.client import Registry

    host, double = flaky_registry
    double.statuses = [503, 502]
    assert Registry(host, plain_http=True, backoff=0.01).ping() == 200
    assert double.hits == 3


def test_registry_gives_up_on_lasting_5xx_with_one_line(flaky_registry):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.registry.client import RETRIES, Registry

    host, double = flaky_registry
    double.statuses = [500] * 10
    with pytest.raises(WorkflowError) as err:
        Registry(host, plain_http=True, backoff=0.01).ping()
    assert f"registry {host} answered HTTP 500" in err.value.message and "\n" not in err.value.message
    assert double.hits == RETRIES


def test_registry_retries_a_reset_connection():
    """The first connection is reset (RST), the second is served: the check goes through."""
    from openwork_sandbox.registry.client import Registry

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]

    def serve():
        first, _ = listener.accept()
        first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        first.recv(1024)
        first.close()  # linger 0: the client sees "connection reset by peer"
        second, _ = listener.accept()
        second.recv(4096)
        second.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        second.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert Registry(f"127.0.0.1:{port}", plain_http=True, backoff=0.01).ping() == 200
    finally:
        listener.close()
