"""The pod `invoke manifests` renders, run on Docker under exactly the constraints it declares
(tests/support/kube_on_docker.py), its two non-root containers as a pod: healthy, `invoke smoke --url`
passing with the Secret's tokens, the tokens nowhere the agent's container can read, and a session and
an issued token surviving the containers' removal and a second run on the same claims."""

from __future__ import annotations

import base64
import secrets
import subprocess

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
    assert [c["image"].split("@")[1][:7] for c in pod.containers.values()] == ["sha256:", "sha256:"]
    pod.start()
    pod.wait_ready()
    # the engine holds what the manifest declares, for each container
    for c in ("server", "agent"):
        assert pod.inspect(c, "{{.HostConfig.ReadonlyRootfs}}") == "true"
        assert pod.inspect(c, "{{.Config.User}}") == "61001:61001"
        assert pod.inspect(c, "{{json .HostConfig.CapDrop}}") == '["ALL"]'
        assert pod.inspect(c, "{{json .HostConfig.CapAdd}}") == "null"
        assert "no-new-privileges" in pod.inspect(c, "{{json .HostConfig.SecurityOpt}}")
        assert token not in pod.inspect(c, "{{json .Config.Env}}")
    assert pod.exec_probe("agent").returncode == 0  # its probe: opencode answers behind its gate
    assert "cannot be kept from the server's tokens" not in pod.logs()  # the pod keeps them apart: no warning

    assert pod.url.startswith(pod.objs["Service"]["spec"]["ports"][0]["appProtocol"] + "://")
    ca = {"OPENWORK_TLS_CA": str(tmp_path / "state" / pod.name[len("owtest-") :] / "tls" / "ca.crt")}
    ca = ca if pod.url.startswith("https") else {}
    smoke = invoke(tmp_path, "smoke", "--url", pod.url, "--token", token, "--host-token", host_token, timeout=300, **ca)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr

    # the boundary, through the agent's shell: no token file, no server process, its own keys only
    said = agent_shell(
        pod.url,
        token,
        "id -u; ls /srv/openwork/secrets 2>&1; cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo; "
        "cat /etc/openwork-sandbox/sandbox.env 2>&1",
    )
    assert "61001" in said.split() and "No such file or directory" in said, said
    assert token not in said and host_token not in said
    assert "openwork-server" not in said and "opencode" in said  # its PID namespace: opencode's side only
    assert "export OWTEST_PROVIDER_KEY='provider-key-for-the-agent'" in said  # its own keys it reads
    # and as any command in the agent's container: the tokens in no file, no process's environment or
    # command line (the values come on stdin, so no process here holds them but this shell)
    found = pod.exec(
        "agent",
        'read -r a; read -r b; pats=$(printf \'%s\\n%s\' "$a" "$b"); '
        "printf '%s\\n' \"$pats\" | grep -rlsF -f - --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev /; "
        "printf '%s\\n' \"$pats\" | grep -alsF -f - /proc/[0-9]*/environ /proc/[0-9]*/cmdline; "
        "env | grep -c OPENWORK_TOKEN; echo searched",
        stdin=f"{token}\n{host_token}\n",
    )
    assert found.split() == ["0", "searched"], found
    seen = pod.exec("server", 'read -r a; grep -c -F "$a" /srv/openwork/secrets/openwork-token', stdin=token + "\n")
    assert seen.strip() == "1"  # the same search finds it where it is: in the server's container

    sid = make_session(pod.url, token, "kept across pods")
    issued = issue_token(pod.url, host_token)
    pod.remove_containers()  # as `kubectl delete pod` (or Recreate): the claims stay
    pod.start()
    pod.wait_ready()
    session, texts = read_session(pod.url, token, sid)
    assert session["id"] == sid and texts == ["kept across pods"]
    assert status_with(pod.url, issued) == 200  # the server's store is its own claim
    assert status_with(pod.url, issued + "x") == 401


@pytest.mark.parametrize(
    ("user", "role", "says"),
    [
        ("0:0", "server", "OPENWORK_POD_ROLE=server is for a pod's non-root containers"),
        ("61001:61001", "both", "OPENWORK_POD_ROLE=both is not server or agent"),
    ],
)
def test_the_entrypoint_refuses_a_pod_role_as_root_or_unknown(stack_image, user, role, says):
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--user", user, "--env", f"OPENWORK_POD_ROLE={role}",
         "--env", "OPENWORK_TOKEN=t", "--env", "OPENWORK_HOST_TOKEN=h", stack_image.local],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 64, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"microsandbox-entrypoint: {says}"), proc.stderr
