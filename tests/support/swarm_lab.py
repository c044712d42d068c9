"""The multi-node swarm test bed, loaded as a pytest plugin: ``scripts/swarm-lab up 3`` once per session
(three ``dockerd`` nodes in network namespaces, node 1 the manager, a registry at 10.213.0.1:5000),
torn down at the session's end when this session made it (a lab that was up already is left up).

Skips only where the lab cannot be made at all (not root, no ``nsenter`` or ``ip``); where it can
(CI runs as root), a failing ``up`` fails the tests with the script's output."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess

import pytest

from tests.support.paths import ROOT

SWARM_LAB = ROOT / "scripts" / "swarm-lab"
LAB_NODES = 3


def _lab(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(SWARM_LAB), *args], capture_output=True, text=True, timeout=timeout)


def _checked(*args: str, timeout: float = 180) -> str:
    """Run ``scripts/swarm-lab ARGS``; its stdout, or a failure with everything it said."""
    proc = _lab(*args, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"scripts/swarm-lab {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


@dataclasses.dataclass
class SwarmLab:
    docker_host: str  # unix://... of the manager (node 1)
    registry: str  # the lab registry every node pulls from: "10.213.0.1:5000"
    nodes: list[tuple[int, str, str]]  # (index, address, swarm node id), node 1 first

    def stop_node(self, index: int) -> None:
        """Stop node ``index``'s engine (its containers stop with it); returns once it is gone."""
        _checked("stop-node", str(index))

    def start_node(self, index: int) -> None:
        """Start node ``index``'s engine again; returns once the manager sees it Ready."""
        _checked("start-node", str(index))

    def seed(self, src_ref: str) -> str:
        """Copy ``src_ref`` (an image or index in the loopback registry) into the lab registry;
        the lab's reference by digest, ``10.213.0.1:5000/REPO@sha256:...``."""
        return _checked("seed", src_ref).strip().splitlines()[-1]

    def env(self) -> dict[str, str]:
        """The environment for running ``invoke`` (or ``docker``) against the swarm's manager."""
        return {"DOCKER_HOST": self.docker_host}

    def docker(self, *args: str, node: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """``docker ARGS`` against the manager, or node ``node``'s own engine; never checked."""
        host = self.docker_host if node is None else self.docker_host.replace("node1.sock", f"node{node}.sock")
        return subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, "DOCKER_HOST": host}
        )

    def checked(self, *args: str, node: int | None = None, timeout: float = 120) -> str:
        """``docker ARGS`` (see :meth:`docker`) that must succeed; its stdout, stripped."""
        proc = self.docker(*args, node=node, timeout=timeout)
        assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
        return proc.stdout.strip()

    def sandbox_env(self, image: str, name: str, **extra: str) -> dict[str, str]:
        """The settings of a swarm sandbox ``name`` of ``image`` (from the lab registry) on this lab:
        half a CPU, 768 MiB, the lab registry's plain HTTP allowed."""
        return {
            **self.env(),
            "OPENWORK_MICROSANDBOX_RUNTIME": "swarm",
            "OPENWORK_MICROSANDBOX_IMAGE": image,
            "OPENWORK_REGISTRY_INSECURE": "true",
            "OPENWORK_MICROSANDBOX_NAME": name,
            "OPENWORK_MICROSANDBOX_CPUS": "0.5",
            "OPENWORK_MICROSANDBOX_MEMORY": "768",
            **extra,
        }


def _node_id(docker_host: str) -> str:
    proc = subprocess.run(
        ["docker", "info", "-f", "{{.Swarm.NodeID}}"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "DOCKER_HOST": docker_host},
    )
    assert proc.returncode == 0 and proc.stdout.strip(), f"docker info at {docker_host}: {proc.stderr}"
    return proc.stdout.strip()


@pytest.fixture(scope="session")
def swarm_lab():
    """A swarm of three nodes, Ready, with its registry (see ``SwarmLab``)."""
    if os.geteuid() != 0:
        pytest.skip("the swarm lab needs root (network namespaces, a bridge, dockerd)")
    missing = [tool for tool in ("nsenter", "ip") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the swarm lab needs {' and '.join(missing)} (Debian: util-linux, iproute2)")
    was_up = _lab("env", timeout=60).returncode == 0
    _checked("up", str(LAB_NODES), timeout=300)
    values = dict(line.split("=", 1) for line in _checked("env").split())
    socket_dir = values["DOCKER_HOST"].removeprefix("unix://").rsplit("/", 1)[0]
    nodes = [
        (index, f"10.213.0.{10 + index}", _node_id(f"unix://{socket_dir}/node{index}.sock"))
        for index in range(1, LAB_NODES + 1)
    ]
    yield SwarmLab(docker_host=values["DOCKER_HOST"], registry=values["SWARM_LAB_REGISTRY"], nodes=nodes)
    if not was_up:
        _checked("down", timeout=300)
