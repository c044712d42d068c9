"""The swarm runtime's placement rule (runtimes.swarm.placement): which node a new sandbox goes to, and
the one line when none fits; why a placed sandbox's node cannot run it now. Nodes stated as tables."""

from __future__ import annotations

import pytest

from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes.swarm.placement import Node, node_trouble, place

GIB = 1024**3
CPU = 1_000_000_000


def node(n: int, *, free_gib: float = 8, free_cpus: float = 2, **kw) -> Node:
    return Node(
        id=f"id{n}",
        address=f"10.0.0.{n}",
        label=f"node{n}",
        nano_cpus=4 * CPU,
        memory_bytes=16 * GIB,
        reserved_nano_cpus=int((4 - free_cpus) * CPU),
        reserved_memory_bytes=int((16 - free_gib) * GIB),
        **kw,
    )


@pytest.mark.parametrize(
    ("nodes", "cpus", "mib", "chosen"),
    [
        ([node(1, free_gib=2), node(2, free_gib=6), node(3, free_gib=4)], 1, 1024, "id2"),  # most memory free
        ([node(1, free_gib=6, free_cpus=0.5), node(2, free_gib=2)], 1, 1024, "id2"),  # node 1 lacks CPUs
        ([node(1, free_gib=8, state="down"), node(2, free_gib=1)], 0.5, 512, "id2"),  # down is never chosen
        ([node(1, free_gib=8, availability="drain"), node(2, free_gib=1)], 0.5, 512, "id2"),  # nor drained
        ([node(1, free_gib=4, free_cpus=1), node(2, free_gib=4, free_cpus=3)], 1, 1024, "id2"),  # then most CPUs
    ],
)
def test_a_sandbox_goes_where_the_most_is_free(nodes, cpus, mib, chosen):
    assert place(nodes, cpus, mib).id == chosen


def test_a_sandbox_that_fits_nowhere_names_each_nodes_shortfall():
    with pytest.raises(WorkflowError) as err:
        place([node(1, free_gib=1, free_cpus=0.5), node(2, free_gib=0.5, free_cpus=2)], 1, 2048)
    assert err.value.message == (
        "no swarm node has 1 CPUs and 2048 MiB free for this sandbox (node1 (10.0.0.1) has 0.5 CPUs and 1024 MiB "
        "free; node2 (10.0.0.2) has 2 CPUs and 512 MiB free): lower OPENWORK_MICROSANDBOX_CPUS / "
        "OPENWORK_MICROSANDBOX_MEMORY, stop a sandbox (invoke down), or add a node"
    )


def test_a_platform_the_image_lacks_is_said():
    with pytest.raises(WorkflowError) as err:
        place([node(1, platform="linux/arm64")], 1, 512, frozenset({"linux/amd64"}))
    assert err.value.message.startswith("the image offers linux/amd64 but the swarm's nodes are linux/arm64: push")
    assert place([node(1, platform="linux/arm64"), node(2, free_gib=1)], 1, 512, frozenset({"linux/amd64"})).id == "id2"


def test_no_ready_node_is_said_with_each_nodes_state():
    with pytest.raises(WorkflowError) as err:
        place([node(1, state="down"), node(2, availability="drain")], 1, 512)
    assert err.value.message == (
        "no swarm node is ready and active (node1 (10.0.0.1) down/active, node2 (10.0.0.2) ready/drain): "
        "start a node's engine or activate one"
    )


@pytest.mark.parametrize(
    ("state", "availability", "said"),
    [
        ("ready", "active", None),
        ("unknown", "active", None),  # a manager that just restarted has not heard from it yet
        ("down", "active", "its node node1 (10.0.0.1) is down: start that node's Docker engine again"),
        ("ready", "drain", "its node node1 (10.0.0.1) is set to drain: `docker node update --availability active"),
    ],
)
def test_why_a_placed_sandbox_cannot_run(state, availability, said):
    trouble = node_trouble(node(1, state=state, availability=availability))
    assert trouble == said if said is None else trouble.startswith(said)


def test_a_node_that_left_the_swarm_is_said():
    assert node_trouble(None).startswith("its node has left the swarm")
