"""`invoke doctor`'s rows for the swarm runtime (shown when the setting, or the sandbox's record,
says swarm): the manager, each node, the sandbox's port on the nodes, the image's platforms against
the nodes', whether the nodes can pull the image, and which runtime ``auto`` would pick.

The row builders are pure functions over what the manager and the registry said (tests state them
as tables); :func:`survey` asks them once. Only the manager row and the nodes row (no node ready
and active) decide the exit code, with the port row and the image rows when no node could run the
sandbox at all.
Why a pull job: only a node's own pull proves that node reaches the registry (a ``global-job``
running ``true``: about 1 s when the nodes have the image; see docs/design-notes/swarm-doctor.md).
"""

from __future__ import annotations

from openwork_sandbox.config import Settings
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes.choice import AUTO, SWARM, HostFacts, decide_runtime
from openwork_sandbox.runtimes.swarm.placement import Node
from openwork_sandbox.sandbox.doctor_check import Check

NEEDED = frozenset({SWARM})
INFO: frozenset = frozenset()
PULLED = ("complete", "failed")  # failed: the image was pulled, its `true` exited non-zero


def applies(setting: str, recorded: str | None) -> bool:
    """The swarm rows are shown: the runtime is set to swarm, or auto keeps a sandbox already on swarm."""
    return setting == SWARM or (setting == AUTO and recorded == SWARM)


def node_name(node: Node) -> str:
    return node.label or node.hostname or node.id[:12]


def manager_check(support: tuple[bool, str]) -> Check:
    ok, detail = support
    return Check("swarm manager", ok, detail, "" if ok else "see the result", NEEDED)


def node_check(node: Node) -> Check:
    """One node: its address, state, availability, role, platform, and CPUs and memory free after
    the running tasks' reservations; not ok (never the exit code) when it cannot take a sandbox."""
    ok = node.state == "ready" and node.availability == "active"
    detail = (
        f"{node.address}, {node.state}, {node.availability}, {node.role}, {node.platform}, "
        f"{node.free_cpus:g} of {node.nano_cpus / 1e9:g} CPUs and {node.free_mib} of "
        f"{node.memory_bytes // (1024 * 1024)} MiB free"
    )
    fix = ""
    if node.state != "ready":
        fix = "start that node's Docker engine (its sandboxes come back with their state)"
    elif node.availability != "active":
        fix = f"docker node update --availability active {node.id[:12]}"
    return Check(f"swarm node {node_name(node)}", ok, detail, fix, INFO)


def nodes_check(nodes: list[Node]) -> Check:
    """How many nodes can take a sandbox; failing (the exit code) when none is ready and active."""
    usable = [n for n in nodes if n.state == "ready" and n.availability == "active"]
    detail = f"{len(usable)} of {len(nodes)} ready and active"
    fix = (
        "" if usable else "start a node's Docker engine, or activate a node (docker node update --availability active)"
    )
    return Check("swarm nodes", bool(usable), detail, fix, NEEDED)


def port_check(port: int, nodes: list[Node], published: dict[str, set[int]], own: str | None = None) -> Check:
    """Which ready and active nodes already publish ``port`` (``published``: node id -> host-mode ports
    its tasks publish); ``own``: the node this sandbox's service holds it on (that is its own). Fails
    the exit code when every such node publishes it (``up`` refuses then)."""
    usable = [n for n in nodes if n.state == "ready" and n.availability == "active"]
    taken = [n for n in usable if port in published.get(n.id, set()) and n.id != own]
    if not taken:
        return Check(f"port {port} on nodes", True, f"free on every ready node ({len(usable)})", "", INFO)
    detail = "published on " + ", ".join(node_name(n) for n in taken)
    if len(taken) < len(usable):
        return Check(f"port {port} on nodes", True, f"{detail}; a new sandbox goes to another node", "", INFO)
    fix = "choose another with --port / OPENWORK_MICROSANDBOX_PORT"
    return Check(f"port {port} on nodes", False, detail, fix, NEEDED)


def platforms_check(nodes: list[Node], offered: dict | None, problem: str | None = None) -> Check:
    """The image's platforms (``index_platforms``: ``{}`` for a single manifest) against each ready
    node's; which node's platform the image lacks. Decides the exit code only when no node is covered."""
    ready = [n for n in nodes if n.state == "ready"]
    if problem is not None:
        return Check("image platforms", False, f"not read: {problem}", "see the result", INFO)
    if not offered:
        return Check(
            "image platforms", True, "one manifest, no index: each node runs it if it is its platform", "", INFO
        )
    lacking = [n for n in ready if n.platform not in offered]
    have = ", ".join(sorted(offered))
    if not lacking:
        return Check("image platforms", True, f"{have}: covers every ready node", "", INFO)
    detail = f"{have}; lacks " + ", ".join(f"{node_name(n)}'s {n.platform}" for n in lacking)
    fix = "push an index with those platforms too (OPENWORK_PLATFORMS, invoke build-image push-image)"
    return Check("image platforms", False, detail, fix, NEEDED if len(lacking) == len(ready) else INFO)


def registry_check(
    image: str, loopback: bool, nodes: list[Node], pulls: dict[str, tuple[str, str]] | None, problem: str | None = None
) -> Check:
    """Whether each ready and active node could pull ``image`` (``pulls``: node id -> its pull job's
    state and error; a node without an entry was not asked); an image on this host's loopback fails
    at once (no node can reach it)."""
    name = "registry from nodes"
    if loopback:
        return Check(
            name,
            False,
            f"{image} is on this host's loopback (127.0.0.1): the swarm's nodes cannot reach it",
            "push it to a registry every node pulls from and set OPENWORK_MICROSANDBOX_IMAGE to it",
            NEEDED,
        )
    if problem is not None:
        return Check(name, False, f"not asked: {problem}", "see the result", INFO)
    ready = [n for n in nodes if n.state == "ready" and n.id in (pulls or {})]
    if not ready:
        return Check(name, False, "no ready and active node to pull the image", "", INFO)
    parts, failed, pending = [], [], []
    for node in ready:
        state, err = pulls[node.id]
        if state in PULLED:
            parts.append(f"{node_name(node)} pulled it")
        elif state == "rejected":
            failed.append(node)
            parts.append(f"{node_name(node)} could not: {err or 'rejected'}")
        else:
            pending.append(node)
            parts.append(f"{node_name(node)} still {state or 'waiting'} (a large first pull?)")
    fix = "" if not failed else "make the registry reachable from those nodes (address, login, insecure-registries)"
    needed = NEEDED if failed and len(failed) == len(ready) else INFO
    return Check(name, not failed, "; ".join(parts), fix, needed)


def auto_check(facts: HostFacts) -> Check:
    """Which runtime ``auto`` would pick for a new sandbox here (never swarm by itself)."""
    picked = decide_runtime(facts, AUTO, None)
    return Check("auto would pick", True, f"{picked.kind or 'none'} ({picked.reason}); never swarm by itself", "", INFO)


def node_facts(node: Node) -> dict:
    """``doctor --json``'s facts about one node."""
    return {
        "name": node_name(node),
        "id": node.id,
        "address": node.address,
        "state": node.state,
        "availability": node.availability,
        "role": node.role,
        "platform": node.platform,
        "cpus": node.nano_cpus / 1e9,
        "memory_mib": node.memory_bytes // (1024 * 1024),
        "free_cpus": node.free_cpus,
        "free_memory_mib": node.free_mib,
    }


def survey(settings: Settings, facts: HostFacts) -> tuple[list[Check], dict]:
    """Ask the manager, the registry and the nodes (a pull job) once: the rows and ``doctor --json``'s
    ``swarm`` object (the same facts). ``facts.swarm``: ``probe.swarm_support()``'s answer."""
    from openwork_sandbox.registry.client import index_platforms
    from openwork_sandbox.runtimes.swarm import cluster, jobs
    from openwork_sandbox.runtimes.swarm.service import LABEL

    support = facts.swarm or (False, "not asked")
    rows = [manager_check(support)]
    out: dict = {"manager": {"ok": support[0], "detail": support[1]}, "nodes": []}
    image, loopback = settings.image, settings.image_ref.registry_is_loopback
    if support[0]:
        try:
            found, published = cluster.nodes()
            nodes = sorted(found, key=lambda n: (node_name(n), n.address))
        except WorkflowError as exc:
            rows.append(Check("swarm nodes", False, exc.message, "see the result", NEEDED))
            nodes = []
        else:
            own = ((cluster.service(settings.name) or {}).get("Spec") or {}).get("Labels", {}).get(LABEL + "node")
            rows += [node_check(n) for n in nodes] + [
                nodes_check(nodes),
                port_check(settings.port, nodes, published, own),
            ]
        out["nodes"] = [node_facts(n) for n in nodes]
        offered, problem = None, None
        try:
            offered = index_platforms(settings, image)
        except WorkflowError as exc:
            problem = exc.message
        rows.append(platforms_check(nodes, offered, problem))
        out["image"] = {"ref": image, "platforms": sorted(offered or {}), "problem": problem}
        pulls, problem = None, None
        ready = [n.id for n in nodes if n.state == "ready" and n.availability == "active"]  # where a job runs
        if not loopback and ready:
            try:
                pulls = jobs.pull_check(image, ready)
            except WorkflowError as exc:
                problem = exc.message
        rows.append(registry_check(image, loopback, nodes, pulls, problem))
        out["pulls"] = {nid: {"state": s, "error": e} for nid, (s, e) in (pulls or {}).items()}
    auto = decide_runtime(facts, AUTO, None)
    rows.append(auto_check(facts))
    out["auto_would_pick"] = auto.kind
    return rows, out
