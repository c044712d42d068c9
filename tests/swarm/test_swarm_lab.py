"""The swarm test bed itself (scripts/swarm-lab): three nodes Ready, each at its own address with its
label; the lab registry serves a seeded image that a worker runs as a service, answering at the
worker's address from this namespace; a worker's engine stopped is Down at the manager, and Ready
again once started."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from tests.support.paths import REGISTRY, STACK_REPO

pytestmark = pytest.mark.swarm

PROBE_PORT = 18080
# a one-request-at-a-time HTTP answer on node 2's address; exits at once on SIGTERM
PROBE = f"""
import signal, socket, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.213.0.12", {PROBE_PORT}))
s.listen()
while True:
    c, _ = s.accept()
    c.recv(1024)
    c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\nswarm-lab probe\\n")
    c.close()
"""


def _docker(lab, *args: str, timeout: float = 60) -> str:
    return lab.checked(*args, timeout=timeout)


def _until(what: str, check, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} within {seconds}s"
        time.sleep(0.3)


def _probe() -> bytes:
    try:
        with socket.create_connection(("10.213.0.12", PROBE_PORT), timeout=2) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return conn.recv(4096)
    except OSError:
        return b""


def test_three_nodes_each_at_its_own_address_with_its_label(swarm_lab):
    ids = {index: node_id for index, _, node_id in swarm_lab.nodes}
    assert len(set(ids.values())) == 3
    for index, expected_addr in ((1, "10.213.0.11"), (2, "10.213.0.12"), (3, "10.213.0.13")):
        got = _docker(
            swarm_lab,
            "node",
            "inspect",
            "-f",
            '{{.Status.State}} {{.Status.Addr}} {{.Spec.Role}} {{index .Spec.Labels "openwork-lab.node"}}',
            ids[index],
        )
        role = "manager" if index == 1 else "worker"
        assert got == f"ready {expected_addr} {role} node{index}"
    assert swarm_lab.registry == "10.213.0.1:5000"


def test_a_worker_runs_a_seeded_image_and_is_down_while_its_engine_is_stopped(swarm_lab, test_base_image):
    src = f"{REGISTRY}/{STACK_REPO}/swarm-lab:base"
    subprocess.run(["docker", "tag", test_base_image, src], check=True, timeout=60)
    subprocess.run(["docker", "push", "-q", src], check=True, capture_output=True, timeout=300)
    ref = swarm_lab.seed(src)
    assert ref.startswith(f"10.213.0.1:5000/{STACK_REPO}/swarm-lab@sha256:")

    node2 = next(node_id for index, _, node_id in swarm_lab.nodes if index == 2)
    service = f"swarm-lab-probe-{os.getpid()}"
    _docker(
        swarm_lab,
        "service",
        "create",
        "-d",
        "-q",
        "--name",
        service,
        "--network",
        "host",
        "--constraint",
        "node.labels.openwork-lab.node==node2",
        "--restart-condition",
        "none",
        ref,
        "python3",
        "-c",
        PROBE,
    )
    try:
        assert _until("the probe answers at node 2's address", _probe).endswith(b"swarm-lab probe\n")
        task_node = _docker(swarm_lab, "service", "ps", "-q", "--filter", "desired-state=running", service)
        assert _docker(swarm_lab, "inspect", "-f", "{{.NodeID}}", task_node) == node2

        swarm_lab.stop_node(2)
        assert _probe() == b""  # its container stopped with the engine
        node_state = ["node", "inspect", "-f", "{{.Status.State}}", node2]
        _until("the manager reports node 2 down", lambda: _docker(swarm_lab, *node_state) == "down")

        swarm_lab.start_node(2)
        assert _docker(swarm_lab, *node_state) == "ready"
    finally:
        subprocess.run(
            ["docker", "service", "rm", service], capture_output=True, timeout=60, env={**os.environ, **swarm_lab.env()}
        )
