"""What the swarm manager says about its nodes and about one sandbox's service, through ``docker``
(``core.processes``): the engine ``DOCKER_HOST`` / ``DOCKER_CONTEXT`` points at, a manager
(``probe.swarm_support`` says whether it is one).

:func:`nodes` lists the nodes with
what the running tasks reserve and publish; :func:`service` and :func:`tasks` read one service.
Every reader returns plain data (``placement.Node``, dicts); nothing here changes the swarm.
"""

from __future__ import annotations

import json

from openwork_sandbox.core import processes
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes.swarm.placement import Node

NODE_LABEL = "openwork-sandbox.node"  # a node label naming the node for people (else its hostname)
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}
RUNNING_TASK = ("running", "starting", "preparing", "assigned", "accepted", "pending", "ready")


def _json(*args: str, timeout: float = 30) -> list:
    """``docker inspect``-style JSON. What went away between listing and inspecting (swarm prunes old
    tasks at any moment: "task ... not found") is left out, not an error."""
    proc = processes.docker(*args, check=False, timeout=timeout)
    try:
        found = json.loads(proc.stdout or "[]")
    except ValueError:
        found = None
    if proc.returncode != 0 and (found is None or (not found and "not found" not in (proc.stderr or "").lower())):
        raise WorkflowError(f"docker {' '.join(args[:2])} failed: {processes.last_line(proc.stderr)}")
    return found or []


def manager_node_id() -> str:
    """The id of the node whose engine ``docker`` talks to."""
    proc = processes.docker("info", "--format", "{{.Swarm.NodeID}}", timeout=15)
    return proc.stdout.strip()


def _node(info: dict, reserved: tuple[int, int]) -> Node:
    desc = info.get("Description") or {}
    spec = info.get("Spec") or {}
    status = info.get("Status") or {}
    address = status.get("Addr") or ""
    if address in ("", "0.0.0.0") and info.get("ManagerStatus"):
        address = info["ManagerStatus"].get("Addr", "").rsplit(":", 1)[0]
    plat = desc.get("Platform") or {}
    arch = ARCH.get(plat.get("Architecture", ""), plat.get("Architecture", ""))
    res = desc.get("Resources") or {}
    return Node(
        id=info.get("ID", ""),
        address=address,
        hostname=desc.get("Hostname", ""),
        state=status.get("State", "unknown"),
        availability=spec.get("Availability", "active"),
        role=spec.get("Role", "worker"),
        platform=f"{(plat.get('OS') or 'linux').lower()}/{arch}",
        nano_cpus=int(res.get("NanoCPUs") or 0),
        memory_bytes=int(res.get("MemoryBytes") or 0),
        reserved_nano_cpus=reserved[0],
        reserved_memory_bytes=reserved[1],
        label=(spec.get("Labels") or {}).get(NODE_LABEL, ""),
    )


def running_tasks(node_ids: list[str]) -> list[dict]:
    """The tasks the manager wants running on ``node_ids``, as ``docker inspect`` gives them."""
    if not node_ids:
        return []
    proc = processes.docker("node", "ps", "-q", "--filter", "desired-state=running", *node_ids, check=False, timeout=30)
    ids = sorted(set(proc.stdout.split())) if proc.returncode == 0 else []
    return _json("inspect", "--type", "task", *ids, timeout=60) if ids else []


def published_ports(task: dict) -> set[int]:
    """The host-mode ports ``task`` publishes (asked, or once it runs, held)."""
    ports = {p.get("PublishedPort") for p in ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []}
    ports |= {p.get("PublishedPort") for p in ((task.get("Endpoint") or {}).get("Spec") or {}).get("Ports") or []}
    return {p for p in ports if p}


def nodes(with_tasks: bool = True) -> tuple[list[Node], dict[str, set[int]]]:
    """Every node, with the running tasks' reservations summed (``with_tasks``), and the host-mode
    ports each node's tasks publish (node id -> ports)."""
    proc = processes.docker("node", "ls", "-q", check=False, timeout=30)
    if proc.returncode != 0:
        raise WorkflowError(f"docker node ls failed: {processes.last_line(proc.stderr)}")
    ids = proc.stdout.split()
    infos = _json("node", "inspect", *ids) if ids else []
    reserved: dict[str, list[int]] = {i: [0, 0] for i in ids}
    ports: dict[str, set[int]] = {i: set() for i in ids}
    for task in running_tasks(ids) if with_tasks else []:
        node = task.get("NodeID")
        if node not in reserved:
            continue
        res = ((task.get("Spec") or {}).get("Resources") or {}).get("Reservations") or {}
        reserved[node][0] += int(res.get("NanoCPUs") or 0)
        reserved[node][1] += int(res.get("MemoryBytes") or 0)
        ports[node] |= published_ports(task)
    return [_node(info, tuple(reserved.get(info.get("ID"), (0, 0)))) for info in infos], ports


def replicas(svc: dict | None) -> int:
    """The tasks a service (as ``service`` reads it) asks for: 1, 0 after ``down``, 0 for no service."""
    return int((((svc or {}).get("Spec") or {}).get("Mode") or {}).get("Replicated", {}).get("Replicas", 0))


def service(name: str) -> dict | None:
    """``docker service inspect NAME`` (None when there is no such service)."""
    proc = processes.docker("service", "inspect", name, check=False, timeout=30)
    if proc.returncode != 0:
        if "no such service" in (proc.stderr or "").lower():
            return None
        raise WorkflowError(f"docker service inspect {name} failed: {processes.last_line(proc.stderr)}")
    found = json.loads(proc.stdout or "[]")
    return found[0] if found else None


def tasks(name: str) -> list[dict]:
    """The service's tasks (its history too), newest first."""
    proc = processes.docker("service", "ps", "-q", "--no-trunc", name, check=False, timeout=30)
    ids = proc.stdout.split() if proc.returncode == 0 else []
    found = _json("inspect", "--type", "task", *ids, timeout=60) if ids else []
    return sorted(found, key=lambda t: t.get("CreatedAt", ""), reverse=True)


def unschedulable(name: str) -> str | None:
    """Why swarm cannot start the service's newest task (no node has the resources, its port is taken
    there: the scheduler's own words), or None when it is scheduled or has no such complaint."""
    current = next(iter(tasks(name)), None)
    status = (current or {}).get("Status") or {}
    if status.get("State") in ("new", "pending") and status.get("Err"):
        return status["Err"]
    return None


def assigned(name: str) -> bool:
    """The service's newest task is on a node (so its reservation counts there), or has ended."""
    current = next(iter(tasks(name)), None)
    return current is not None and (bool(current.get("NodeID")) or (current.get("Status") or {}).get("Err") is not None)
