"""`doctor`'s swarm rows (issue 29): each row builder over nodes and answers stated as tables, with
the rows' literal texts; the pull job's reading of its tasks; which rows decide the exit code."""

from __future__ import annotations

import pytest

from openwork_sandbox.runtimes.choice import HostFacts
from openwork_sandbox.runtimes.swarm.jobs import _node_results
from openwork_sandbox.runtimes.swarm.placement import Node
from openwork_sandbox.sandbox.doctor_swarm import (
    applies,
    auto_check,
    manager_check,
    node_check,
    nodes_check,
    platforms_check,
    port_check,
    registry_check,
)

GIB = 1024**3
N1 = Node(
    "id1aaaaaaaaaaaa", "10.0.0.11", "vm", role="manager", nano_cpus=2 * 10**9, memory_bytes=4 * GIB, label="node1"
)
N2 = Node(
    "id2bbbbbbbbbbbb",
    "10.0.0.12",
    "vm",
    nano_cpus=2 * 10**9,
    memory_bytes=4 * GIB,
    reserved_nano_cpus=5 * 10**8,
    reserved_memory_bytes=GIB,
    label="node2",
)
DOWN = Node("id3cccccccccccc", "10.0.0.13", "host3", state="down", nano_cpus=10**9, memory_bytes=GIB)
DRAINED = Node("id4dddddddddddd", "10.0.0.14", "host4", availability="drain", platform="linux/arm64")
ARM = Node("id5eeeeeeeeeeee", "10.0.0.15", "pi", platform="linux/arm64", label="node5")


@pytest.mark.parametrize(
    "setting,recorded,expected",
    [("swarm", None, True), ("auto", "swarm", True), ("auto", "docker", False), ("docker", "swarm", False)],
)
def test_the_rows_are_shown_for_swarm_set_or_kept_by_auto(setting, recorded, expected):
    assert applies(setting, recorded) is expected


@pytest.mark.parametrize(
    "node,ok,detail,fix",
    [
        (N1, True, "10.0.0.11, ready, active, manager, linux/amd64, 2 of 2 CPUs and 4096 of 4096 MiB free", ""),
        (N2, True, "10.0.0.12, ready, active, worker, linux/amd64, 1.5 of 2 CPUs and 3072 of 4096 MiB free", ""),
        (
            DOWN,
            False,
            "10.0.0.13, down, active, worker, linux/amd64, 1 of 1 CPUs and 1024 of 1024 MiB free",
            "start that node's Docker engine (its sandboxes come back with their state)",
        ),
        (
            DRAINED,
            False,
            "10.0.0.14, ready, drain, worker, linux/arm64, 0 of 0 CPUs and 0 of 0 MiB free",
            "docker node update --availability active id4ddddddddd",
        ),
    ],
)
def test_a_node_row_says_where_it_is_and_what_is_free(node, ok, detail, fix):
    row = node_check(node)
    assert (row.ok, row.detail, row.fix, row.needed_by) == (ok, detail, fix, frozenset())


def test_node_rows_are_named_by_label_then_hostname():
    assert [node_check(n).name for n in (N1, DOWN)] == ["swarm node node1", "swarm node host3"]


@pytest.mark.parametrize(
    "nodes,ok,detail",
    [
        ([N1, N2, DOWN], True, "2 of 3 ready and active"),
        ([DOWN, DRAINED], False, "0 of 2 ready and active"),
        ([], False, "0 of 0 ready and active"),
    ],
)
def test_the_nodes_row_fails_the_exit_code_only_when_none_can_take_a_sandbox(nodes, ok, detail):
    row = nodes_check(nodes)
    assert (row.ok, row.detail, row.needed_by) == (ok, detail, frozenset({"swarm"}))


def test_the_manager_row_is_the_probe_answer_and_counts():
    row = manager_check((False, "this Docker engine is a swarm worker: point DOCKER_HOST at a manager"))
    assert (row.ok, row.detail, row.needed_by) == (
        False,
        "this Docker engine is a swarm worker: point DOCKER_HOST at a manager",
        frozenset({"swarm"}),
    )


AMD = {"linux/amd64": "r/x@sha256:a"}
BOTH = {"linux/amd64": "r/x@sha256:a", "linux/arm64": "r/x@sha256:b"}


@pytest.mark.parametrize(
    "nodes,offered,problem,ok,detail,needed",
    [
        ([N1, N2], AMD, None, True, "linux/amd64: covers every ready node", frozenset()),
        ([N1, ARM], BOTH, None, True, "linux/amd64, linux/arm64: covers every ready node", frozenset()),
        ([N1, ARM], AMD, None, False, "linux/amd64; lacks node5's linux/arm64", frozenset()),
        ([ARM], AMD, None, False, "linux/amd64; lacks node5's linux/arm64", frozenset({"swarm"})),
        ([N1, DOWN], AMD, None, True, "linux/amd64: covers every ready node", frozenset()),
        ([N1], {}, None, True, "one manifest, no index: each node runs it if it is its platform", frozenset()),
        ([N1], None, "registry r does not answer", False, "not read: registry r does not answer", frozenset()),
    ],
)
def test_the_image_platforms_against_each_ready_node(nodes, offered, problem, ok, detail, needed):
    row = platforms_check(nodes, offered, problem)
    assert (row.ok, row.detail, row.needed_by) == (ok, detail, needed)


IMG = "10.213.0.1:5000/x@sha256:1"


@pytest.mark.parametrize(
    "pulls,ok,detail,needed",
    [
        (
            {N1.id: ("complete", ""), N2.id: ("failed", "task: non-zero exit (127)")},
            True,
            "node1 pulled it; node2 pulled it",
            frozenset(),
        ),
        (
            {N1.id: ("complete", ""), N2.id: ("rejected", "No such image: 10.213.0.1:5000/x@sha256:1")},
            False,
            "node1 pulled it; node2 could not: No such image: 10.213.0.1:5000/x@sha256:1",
            frozenset(),
        ),
        (
            {N1.id: ("rejected", "No such image: x"), N2.id: ("rejected", "")},
            False,
            "node1 could not: No such image: x; node2 could not: rejected",
            frozenset({"swarm"}),
        ),
        (
            {N1.id: ("complete", ""), N2.id: ("preparing", "")},
            True,
            "node1 pulled it; node2 still preparing (a large first pull?)",
            frozenset(),
        ),
    ],
)
def test_the_registry_row_reads_each_nodes_pull(pulls, ok, detail, needed):
    row = registry_check(IMG, False, [N1, N2], pulls)
    assert (row.name, row.ok, row.detail, row.needed_by) == ("registry from nodes", ok, detail, needed)


def test_an_image_on_loopback_is_one_failing_row_that_counts():
    row = registry_check("127.0.0.1:5000/x:stack", True, [N1, N2], None)
    assert (row.ok, row.detail, row.needed_by) == (
        False,
        "127.0.0.1:5000/x:stack is on this host's loopback (127.0.0.1): the swarm's nodes cannot reach it",
        frozenset({"swarm"}),
    )


def test_no_ready_node_pulls_nothing():
    row = registry_check(IMG, False, [DOWN], {})
    assert (row.ok, row.detail) == (False, "no ready and active node to pull the image")


@pytest.mark.parametrize(
    "facts,kind",
    [
        (HostFacts("Linux", "x86_64", True, True, "vmx", msb="/bin/msb", swarm=(True, "")), "microsandbox"),
        (HostFacts("Linux", "x86_64", docker=(True, "Docker 28 answers"), swarm=(True, "")), "docker"),
        (HostFacts("Linux", "x86_64", docker=(False, "no engine"), swarm=(True, "")), "none"),
    ],
)
def test_auto_never_picks_swarm(facts, kind):
    row = auto_check(facts)
    assert row.ok and row.detail.startswith(f"{kind} (") and row.detail.endswith("; never swarm by itself")


def test_the_pull_job_reads_each_nodes_newest_task():
    tasks = [
        {"NodeID": "a", "CreatedAt": "2026-12-06T10:00:01Z", "Status": {"State": "rejected", "Err": "No such image"}},
        {"NodeID": "a", "CreatedAt": "2026-12-06T10:00:03Z", "Status": {"State": "preparing"}},
        {"NodeID": "b", "CreatedAt": "2026-12-06T10:00:02Z", "Status": {"State": "complete"}},
    ]
    assert _node_results(tasks) == {"a": ("preparing", ""), "b": ("complete", "")}


@pytest.mark.parametrize(
    "nodes,published,own,ok,detail,needed",
    [
        ([N1, N2], {}, None, True, "free on every ready node (2)", frozenset()),
        (
            [N1, N2],
            {N2.id: {19000, 8787}},
            None,
            True,
            "published on node2; a new sandbox goes to another node",
            frozenset(),
        ),
        ([N1, N2], {N1.id: {8787}, N2.id: {8787}}, None, False, "published on node1, node2", frozenset({"swarm"})),
        (
            [N1, N2],
            {N1.id: {8787}, N2.id: {8787}},
            N2.id,
            True,
            "published on node1; a new sandbox goes to another node",
            frozenset(),
        ),
        ([N1, DOWN], {DOWN.id: {8787}}, None, True, "free on every ready node (1)", frozenset()),
    ],
)
def test_the_port_row_names_the_nodes_that_publish_it(nodes, published, own, ok, detail, needed):
    row = port_check(8787, nodes, published, own)
    assert (row.name, row.ok, row.detail, row.needed_by) == ("port 8787 on nodes", ok, detail, needed)
