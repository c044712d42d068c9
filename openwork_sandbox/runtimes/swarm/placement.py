"""Where a new swarm sandbox goes: one pure rule over the nodes as the manager reports them.

:func:`place` picks the ready, active node with the most memory left after every running
service's reservation (then the most CPUs), among those whose platform the image offers; a
sandbox that fits nowhere is refused in one line naming each node's shortfall, so ``up`` never
leaves a service pending without a word. :func:`node_trouble` says why a placed sandbox's node
cannot run it now (down, drained, gone). Nothing here asks Docker: tests state nodes as tables.
"""

from __future__ import annotations

import dataclasses

from openwork_sandbox.core.errors import WorkflowError

MIB = 1024 * 1024
NANO = 1_000_000_000


@dataclasses.dataclass(frozen=True)
class Node:
    """One swarm node as the manager sees it; ``reserved_*`` sums the running tasks' reservations."""

    id: str
    address: str
    hostname: str = ""
    state: str = "ready"  # ready | down | unknown | disconnected
    availability: str = "active"  # active | pause | drain
    role: str = "worker"
    platform: str = "linux/amd64"
    nano_cpus: int = 0
    memory_bytes: int = 0
    reserved_nano_cpus: int = 0
    reserved_memory_bytes: int = 0
    label: str = ""  # a name for people: the node label openwork-sandbox.node, else the hostname

    @property
    def free_cpus(self) -> float:
        return max(0, self.nano_cpus - self.reserved_nano_cpus) / NANO

    @property
    def free_mib(self) -> int:
        return max(0, self.memory_bytes - self.reserved_memory_bytes) // MIB

    @property
    def shown(self) -> str:
        """``node2 (10.213.0.12)``: how messages name a node."""
        return f"{self.label or self.hostname or self.id[:12]} ({self.address})"


def node_trouble(node: Node | None) -> str | None:
    """Why ``node`` (the one a sandbox's volumes are on) cannot run it now, with the way out; None when it can."""
    if node is None:
        return "its node has left the swarm (its volumes were there): `invoke reset` removes the sandbox"
    if node.state not in ("ready", "unknown"):  # unknown: a manager that just restarted has not heard from it yet
        return (
            f"its node {node.shown} is {node.state}: start that node's Docker engine again "
            "(the sandbox comes back with its state)"
        )
    if node.availability != "active":
        return (
            f"its node {node.shown} is set to {node.availability}: "
            f"`docker node update --availability active {node.id[:12]}` lets it run there again"
        )
    return None


def place(nodes: list[Node], cpus: float, memory_mib: int, platforms: frozenset[str] | None = None) -> Node:
    """The node a sandbox reserving ``cpus`` and ``memory_mib`` goes to (see the module doc).

    ``platforms``: the ``os/arch`` the image offers (None: not known, any node). WorkflowError (one
    line) when none fits: no node at all, none ready and active, none of the image's platforms, or
    each node's shortfall named."""
    if not nodes:
        raise WorkflowError("the swarm has no nodes: join one (docker swarm join) and run `invoke up` again")
    usable = [n for n in nodes if n.state == "ready" and n.availability == "active"]
    if not usable:
        seen = ", ".join(f"{n.shown} {n.state}/{n.availability}" for n in nodes)
        raise WorkflowError(f"no swarm node is ready and active ({seen}): start a node's engine or activate one")
    if platforms is not None:
        fitting = [n for n in usable if n.platform in platforms]
        if not fitting:
            have = ", ".join(sorted({n.platform for n in usable}))
            raise WorkflowError(
                f"the image offers {', '.join(sorted(platforms)) or 'no platform'} but the swarm's nodes are {have}: "
                "push an index with their platform too (OPENWORK_PLATFORMS, invoke build-image push-image)"
            )
        usable = fitting
    fits = [n for n in usable if n.free_cpus + 1e-9 >= cpus and n.free_mib >= memory_mib]
    if not fits:
        shortfall = "; ".join(f"{n.shown} has {n.free_cpus:g} CPUs and {n.free_mib} MiB free" for n in usable)
        raise WorkflowError(
            f"no swarm node has {cpus:g} CPUs and {memory_mib} MiB free for this sandbox ({shortfall}): lower "
            "OPENWORK_MICROSANDBOX_CPUS / OPENWORK_MICROSANDBOX_MEMORY, stop a sandbox (invoke down), or add a node"
        )
    return max(fits, key=lambda n: (n.free_mib, n.free_cpus, n.role != "manager", n.id))  # ties: a worker
