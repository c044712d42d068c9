"""The pod `invoke manifests` renders, run on Docker under exactly the constraints it declares
(tests/support/kube_on_docker.py): healthy, `invoke smoke --url` passing with the Secret's tokens, and
a session and an issued token surviving the container's removal and a second run on the same claims."""

from __future__ import annotations

import base64
import secrets

import pytest

from tests.support.kube_on_docker import PodOnDocker, load
from tests.support.lifecycle import invoke
from tests.support.openwork_client import agent_shell, issue_token, make_session, read_session, status_with

pytestmark = pytest.mark.docker


@pytest.fixture(params=["http", "https"])
def pod(request, stack_image, tmp_path, monkeypatch):
    from openwork_sandbox.net.ports import free_port

    name = f"k8s-dock-{secrets.token_hex(3)}"
    out = tmp_path / "manifests"
    proc = invoke(
        tmp_path,
        "manifests",
        "--output",
        str(out),
        OPENWORK_MICROSANDBOX_NAME=name,
        OPENWORK_MICROSANDBOX_IMAGE=stack_image.push["pinned"],  # the digest the stack image was pushed as
        OPENWORK_TLS="true" if request.param == "https" else "false",
        OPENWORK_SANDBOX_ENV="OWTEST_PROVIDER_KEY",
        OWTEST_PROVIDER_KEY="provider-key-for-the-agent",
    )
    assert proc.returncode == 0, proc.stderr
    port = free_port()
    opencode_port = free_port()
    while opencode_port == port:
        opencode_port = free_port()
    ca = tmp_path / "state" / name / "tls" / "ca.crt"  # the certificate manifests made (TLS on)
    if request.param == "https":
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))  # this test's own requests verify with it
    running = PodOnDocker(f"owtest-{name}", load(out), f"owtest-{name}", port, opencode_port)
    try:
        yield running
    finally:
        running.remove_all()


def test_the_rendered_pod_runs_healthy_passes_smoke_and_keeps_sessions(pod, tmp_path):
    data = pod.objs["Secret"]["data"]
    token = base64.b64decode(data["openwork-token"]).decode().strip()
    host_token = base64.b64decode(data["openwork-host-token"]).decode().strip()
    assert pod.container["image"].split("@")[1].startswith("sha256:")
    pod.start()
    pod.wait_ready()
    # the engine holds what the manifest declares
    assert pod.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    assert pod.inspect("{{.Config.User}}") == "0:0"
    assert pod.inspect("{{json .HostConfig.CapDrop}}") == '["ALL"]'
    assert "no-new-privileges" in pod.inspect("{{json .HostConfig.SecurityOpt}}")
    assert token not in pod.inspect("{{json .Config.Env}}")

    assert pod.url.startswith(pod.objs["Service"]["spec"]["ports"][0]["appProtocol"] + "://")
    ca = {"OPENWORK_TLS_CA": str(tmp_path / "state" / pod.name[len("owtest-") :] / "tls" / "ca.crt")}
    ca = ca if pod.url.startswith("https") else {}
    smoke = invoke(tmp_path, "smoke", "--url", pod.url, "--token", token, "--host-token", host_token, timeout=300, **ca)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr

    # the boundary holds under these constraints: the agent reads neither token file nor the server's memory
    said = agent_shell(
        pod.url,
        token,
        "id -u; cat /srv/openwork/secrets/* /proc/1/environ 2>&1; cat /etc/openwork-sandbox/sandbox.env 2>&1",
    )
    assert said.splitlines()[0] != "0" and "Permission denied" in said
    assert token not in said and host_token not in said
    assert "export OWTEST_PROVIDER_KEY='provider-key-for-the-agent'" in said  # its own keys it reads (0444)

    sid = make_session(pod.url, token, "kept across pods")
    issued = issue_token(pod.url, host_token)
    pod.remove_container()  # as `kubectl delete pod` (or Recreate): the claims stay
    pod.start()
    pod.wait_ready()
    session, texts = read_session(pod.url, token, sid)
    assert session["id"] == sid and texts == ["kept across pods"]
    assert status_with(pod.url, issued) == 200  # the server's store is its own claim
    assert status_with(pod.url, issued + "x") == 401
