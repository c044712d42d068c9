"""OPENWORK_MICROSANDBOX_NETWORK on the real Docker engine: what it cannot hold is refused by the
real `invoke up` in one line, nothing made; what it holds on host networking is said plainly.

Two engines: the shared one (``--bridge=none``: host networking) and, for the bridge cases, an
engine of the test's own (``bridge_engine``): a second dockerd with a bridge, in a network
namespace made for it, so its bridge and iptables rules never touch the host's. The bridge tests
also measure the two facts the bridge refusal rests on (an ``--internal`` network reaches the
engine's host, and publishes no port), so a Docker that changes either fails them."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import time

import pytest

from tests.support.lifecycle import ROOT, docker_env, invoke
from tests.support.paths import PROD_BASE_IMAGE, REGISTRY

pytestmark = pytest.mark.docker

HOST_WHY = (
    "this Docker engine has no bridge network, so the container shares the host's network "
    "(its loopback services, the LAN)"
)
BRIDGE_WHY = (
    "Docker cannot filter what a container sends: on its bridge it reaches the host's own addresses and the LAN "
    "(an --internal network reaches the host too, and publishes no port)"
)
SHARED = (
    "network: the agent shares the host's network (host networking): it reaches the host's loopback services "
    "and the LAN as any program on the host does"
)
ALLOW_ALL = "; or set OPENWORK_MICROSANDBOX_NETWORK=allow-all"
ABSENT_IMAGE = f"{REGISTRY}/owtest-netpol-never-pushed:x"  # a refusal comes before any pull


def containers(name: str, docker_host: str | None = None) -> list[str]:
    """The names of every container (running or not) called ``name`` on the engine."""
    env = {**os.environ, **({"DOCKER_HOST": docker_host} if docker_host else {})}
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"name=^/{name}$", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    return out.split()


def state_files(state: os.PathLike) -> dict[str, str]:
    """The files `up` keeps in ``.state/<name>/`` (not the two mounted folders the server writes) with their sha256."""
    from pathlib import Path

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(state).iterdir()) if p.is_file()}


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def host_networking(services):
    from openwork_sandbox.runtimes.docker import engine_has_bridge

    if engine_has_bridge():
        pytest.skip("the engine has a bridge network: these tests need one whose containers use host networking")


# --- the shared engine: host networking ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["none", "public-only"])
def test_up_refuses_what_host_networking_cannot_hold_and_makes_nothing(host_networking, tmp_path, policy):
    env = docker_env(ABSENT_IMAGE, "np")
    proc = invoke(tmp_path, "up", OPENWORK_MICROSANDBOX_NETWORK=policy, **env)
    line = one_line(proc)
    assert line.startswith(
        f"OPENWORK_MICROSANDBOX_NETWORK={policy} (from environment) cannot be enforced by the docker runtime: "
        f"{HOST_WHY}; "
    )
    assert "the microsandbox runtime" in line and line.endswith(ALLOW_ALL)
    assert containers(env["OPENWORK_MICROSANDBOX_NAME"]) == []
    assert not (tmp_path / "state").exists()


@pytest.fixture(scope="module")
def shared_box(host_networking, stack_image, tmp_path_factory):
    """A sandbox of the stack image booted by the real `invoke up` with allow-all: (tmp, env, up's stderr)."""
    tmp = tmp_path_factory.mktemp("netpol")
    env = docker_env(stack_image.ref, "np")
    proc = invoke(tmp, "up", timeout=300, **env)
    yield tmp, env, proc
    subprocess.run(["docker", "rm", "-f", env["OPENWORK_MICROSANDBOX_NAME"]], capture_output=True)


def test_up_on_host_networking_says_the_agent_shares_the_host_network(shared_box):
    _, env, proc = shared_box
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines().count(SHARED) == 1
    # and it does: from inside, the registry on the host's loopback answers
    probe = "exec 3<>/dev/tcp/127.0.0.1/5000 && printf 'GET /v2/ HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3"
    got = subprocess.run(
        ["docker", "exec", env["OPENWORK_MICROSANDBOX_NAME"], "bash", "-c", probe], capture_output=True, text=True
    )
    assert got.stdout.startswith("HTTP/1.") and " 200" in got.stdout, got


def test_none_later_is_refused_and_the_running_sandbox_is_left_as_it_is(shared_box):
    tmp, env, _ = shared_box
    name = env["OPENWORK_MICROSANDBOX_NAME"]
    state = tmp / "state" / name
    before = (containers(name), state_files(state))
    cid = subprocess.run(
        ["docker", "inspect", "-f", "{{.Id}} {{.State.Running}}", name], capture_output=True, text=True
    )
    line = one_line(invoke(tmp, "up", OPENWORK_MICROSANDBOX_NETWORK="none", **env))
    assert line.startswith("OPENWORK_MICROSANDBOX_NETWORK=none (from environment) cannot be enforced by the docker")
    assert line.endswith(
        f"{ALLOW_ALL}; the sandbox {name} that runs now does not hold it either: `invoke down` stops it"
    )
    assert (containers(name), state_files(state)) == before
    again = subprocess.run(
        ["docker", "inspect", "-f", "{{.Id}} {{.State.Running}}", name], capture_output=True, text=True
    )
    assert again.stdout == cid.stdout and cid.stdout.endswith("true\n")


# --- an engine with a bridge: a second dockerd in a network namespace of its own ------------------------------


class BridgeEngine:
    """A dockerd with its default bridge, in the network namespace ``netns``, answering on ``host``."""

    def __init__(self, root, netns: str):
        self.root, self.netns = root, netns
        self.host = f"unix://{root}/sock"
        self.proc: subprocess.Popen | None = None

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {**os.environ, "DOCKER_HOST": self.host}
        return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, check=check, timeout=timeout)

    def start(self) -> None:
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"], check=True)
        # nsenter --net, not `ip netns exec`: the latter remounts /sys and dockerd then finds no cgroups
        with open(self.root / "dockerd.log", "wb") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/var/run/netns/{self.netns}", "dockerd", "--data-root", str(self.root / "data"),
                 "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "pid"), "-H", self.host],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while self.docker("info", "--format", "{{.ServerVersion}}", check=False).returncode != 0:
            assert self.proc.poll() is None, (self.root / "dockerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the second dockerd did not answer within 60 s"
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None:
            self.docker("rm", "-f", *self.docker("ps", "-aq", check=False).stdout.split(), check=False)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def bridge_engine(services, prod_base_image, tmp_path_factory):
    """A second engine, with a bridge, in a network namespace made for it; the slim base image loaded."""
    missing = [p for p in ("ip", "nsenter", "dockerd") if shutil.which(p) is None]
    if os.geteuid() != 0 or missing:
        pytest.skip(
            f"no engine with a bridge can be started here (needs root and ip, nsenter, dockerd; missing: {missing})"
        )
    engine = BridgeEngine(tmp_path_factory.mktemp("bridge"), f"owtest-br-{secrets.token_hex(3)}")
    try:
        engine.start()
        assert "bridge" in engine.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
        saved = subprocess.Popen(["docker", "save", prod_base_image], stdout=subprocess.PIPE)
        env = {**os.environ, "DOCKER_HOST": engine.host}
        subprocess.run(["docker", "load", "-q"], stdin=saved.stdout, env=env, check=True, capture_output=True)
        assert saved.wait() == 0
        yield engine
    finally:
        engine.stop()


@pytest.mark.parametrize("policy", ["none", "public-only"])
def test_up_refuses_what_a_bridge_cannot_hold_and_makes_nothing(bridge_engine, tmp_path, policy):
    env = docker_env(ABSENT_IMAGE, "npb")
    proc = invoke(tmp_path, "up", OPENWORK_MICROSANDBOX_NETWORK=policy, DOCKER_HOST=bridge_engine.host, **env)
    line = one_line(proc)
    assert line.startswith(
        f"OPENWORK_MICROSANDBOX_NETWORK={policy} (from environment) cannot be enforced by the docker runtime: "
        f"{BRIDGE_WHY}; "
    )
    assert line.endswith(ALLOW_ALL)
    assert bridge_engine.docker("ps", "-aq").stdout == ""
    assert not (tmp_path / "state").exists()


def test_doctor_on_a_bridge_holds_allow_all_without_the_shared_network_line(bridge_engine, tmp_path):
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENWORK_")}
    env.update(
        DOCKER_HOST=bridge_engine.host,
        OPENWORK_STATE_DIR=str(tmp_path / "state"),
        OPENWORK_MICROSANDBOX_RUNTIME="docker",
        OPENWORK_MICROSANDBOX_NAME="owtest-npb-doctor",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "doctor", "--json"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    [row] = [c for c in json.loads(proc.stdout)["checks"] if c["name"] == "network"]
    assert row["ok"] and row["detail"] == (
        "allow-all, held by the docker runtime: the sandbox reaches the host, the LAN and the internet"
    )


def test_an_internal_network_reaches_the_engines_host_and_publishes_nothing(bridge_engine):
    """Why the bridge refusal stands: Docker's one egress switch, --internal, is not `none`."""
    listener = subprocess.Popen(
        ["nsenter", f"--net=/var/run/netns/{bridge_engine.netns}", sys.executable, "-c",
         "import socket; s = socket.create_server(('0.0.0.0', 7411)); print('ready', flush=True); "
         "c, _ = s.accept(); c.sendall(b'host answers'); c.close()"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert listener.stdout.readline().strip() == "ready"
        bridge_engine.docker("network", "create", "--internal", "owtest-internal")
        gateway = bridge_engine.docker(
            "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", "owtest-internal"
        ).stdout.strip()
        probe = f"exec 3<>/dev/tcp/{gateway}/7411 && head -c 12 <&3"
        got = bridge_engine.docker(
            "run", "--rm", "--network", "owtest-internal", PROD_BASE_IMAGE, "bash", "-c", probe, check=False
        )
        assert got.stdout == "host answers", got
        bridge_engine.docker(
            "run", "-d", "--name", "owtest-internal-published", "--network", "owtest-internal", "-p",
            "127.0.0.1:7412:8787", PROD_BASE_IMAGE, "sleep", "30",
        )  # fmt: skip
        ports = bridge_engine.docker("port", "owtest-internal-published").stdout
        assert ports == "", ports  # -p is ignored on an internal network
        bridge_engine.docker("run", "-d", "--name", "owtest-bridge-published", "-p", "127.0.0.1:7412:8787",
                             PROD_BASE_IMAGE, "sleep", "30")  # fmt: skip
        assert bridge_engine.docker("port", "owtest-bridge-published").stdout.strip() == "8787/tcp -> 127.0.0.1:7412"
    finally:
        listener.kill()
        listener.wait()
        bridge_engine.docker("rm", "-f", "owtest-internal-published", "owtest-bridge-published", check=False)
        bridge_engine.docker("network", "rm", "owtest-internal", check=False)
