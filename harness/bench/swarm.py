"""Benchmark the swarm runtime on the swarm lab: many sandboxes started at once over its nodes;
prints figures (asserts nothing timed).

    scripts/bench-swarm [--nodes 3] [--per-node 2] [--cpus 0.5] [--memory 1024] [--image REF]
                        [--health-timeout 600] [--start-slots N] [--stagger SECONDS]
                        [--port-base 19610] [--json]

Makes the lab (``scripts/swarm-lab up NODES``; a lab that is up already is reused and left up),
seeds IMAGE (a reference the loopback registry holds; default: the image setting) into the lab
registry, reads each node's memory, then starts NODES x PER_NODE sandboxes at once (or STAGGER
seconds apart: each `up` picks its node before it makes its service, so `up`s started together see
the same free nodes and pick the same one), each through its own real ``invoke up --json`` (its
own name ``bench-sw<hex>-<i>``, port and state folder, the runtime ``swarm``, the CPUs and memory
as the sandbox's reservation and limit). Then: each
sandbox's node, health and memory (``invoke status --json``; its container's cgroup), each node's
memory again, one real ``invoke smoke`` against the first sandbox, and ``invoke reset --yes`` of
all of them at once (then the empty volume names ``reset`` leaves on the nodes are removed too). Prints a table (or, with ``--json``, one JSON object) on stdout; progress goes
to stderr, a line at least every 10 s.

Memory is what the kernel counts for a cgroup less its inactive file pages (as ``docker stats``
does): the node's cgroup ``/openwork-lab-nodeI`` (all its containers, other users' too: the
difference before/after is the benchmark's) and each sandbox's container. Ctrl+C or SIGTERM stops
the ``up``s still running and removes every sandbox the run started (a second Ctrl+C is ignored
until then); exit 130. Exit 1 when the lab cannot be made or seeded, or a sandbox did not become
healthy or the smoke failed (the figures are printed first); 0 otherwise. Needs root (the lab).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from harness.bench.common import cgroup_memory_mib, image_or_setting
from harness.common import INVOKE, ROOT, back_to_caller_cwd, empty_env_file, run_task, task_env, teller

SWARM_LAB = ROOT / "scripts" / "swarm-lab"
SHOWN = ("name", "port", "up_exit", "up_seconds", "up_said", "node", "healthy", "memory_mib")  # a sandbox's figures
PROGRESS_EVERY = 10.0  # seconds between progress lines while something is waited for
say = teller("bench-swarm")


class Interrupted(Exception):
    """Ctrl+C or SIGTERM: stop, clean up, exit 130."""


@dataclass
class Sandbox:
    """One sandbox of the run and what was measured of it."""

    name: str
    port: int
    env: dict[str, str] = field(repr=False)
    proc: subprocess.Popen | None = field(default=None, repr=False)
    started: float = 0.0
    up_exit: int | None = None
    up_seconds: float | None = None  # wall time of its `invoke up` process, until it returned
    up_said: str = ""  # the last line `up` wrote on stderr when it failed
    node: str | None = None
    healthy: bool = False
    memory_mib: float | None = None


def lab(*args: str, timeout: float = 300) -> str:
    """``scripts/swarm-lab ARGS``' stdout; RuntimeError with what it said when it fails."""
    proc = subprocess.run([str(SWARM_LAB), *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(
            f"scripts/swarm-lab {' '.join(args)} failed (exit {proc.returncode}): {said[-1] if said else ''}"
        )
    return proc.stdout


def node_memory(nodes: int) -> dict[str, float | None]:
    """``nodeI`` -> the memory of lab node I's cgroup (MiB), for I in 1..NODES."""
    return {f"node{i}": cgroup_memory_mib(f"openwork-lab-node{i}") for i in range(1, nodes + 1)}


def container_memory(docker_env: dict[str, str], service: str, nodes: int) -> float | None:
    """Memory (MiB) of the container the running task of SERVICE has, found under the lab nodes' cgroups."""
    docker = ["docker", "service", "ps", service, "--no-trunc", "-q", "--filter", "desired-state=running"]
    tasks = subprocess.run(docker, capture_output=True, text=True, env=docker_env, timeout=60).stdout.split()
    for task in tasks[:1]:
        cid = subprocess.run(
            ["docker", "inspect", "-f", "{{.Status.ContainerStatus.ContainerID}}", task],
            capture_output=True,
            text=True,
            env=docker_env,
            timeout=60,
        ).stdout.strip()
        for i in range(1, nodes + 1):
            found = cgroup_memory_mib(f"openwork-lab-node{i}/{cid}") if cid else None
            if found is not None:
                return found
    return None


def wait_all(procs: dict[str, subprocess.Popen], what: str, began: float) -> dict[str, float]:
    """Wait for every process of PROCS (name -> process) to end, a progress line every few seconds;
    name -> seconds from BEGAN until it ended."""
    ended: dict[str, float] = {}
    next_line = time.monotonic() + PROGRESS_EVERY
    while len(ended) < len(procs):
        for name, proc in procs.items():
            if name not in ended and proc.poll() is not None:
                ended[name] = time.monotonic() - began
        if time.monotonic() >= next_line and len(ended) < len(procs):
            failed = sum(procs[n].returncode != 0 for n in ended)
            say(f"{time.monotonic() - began:5.0f} s: {len(ended)}/{len(procs)} {what} returned ({failed} failed)")
            next_line += PROGRESS_EVERY
        time.sleep(0.1)
    return ended


def start_all(boxes: list[Sandbox], env_file: Path, logs: Path, stagger: float) -> float:
    """Start every sandbox's ``invoke up --json``, STAGGER seconds apart (0: at once), and wait for all;
    the wall time from the first start until the last returned."""
    began = time.monotonic()
    for n, box in enumerate(boxes):
        if n and stagger:
            time.sleep(stagger)
            say(f"{time.monotonic() - began:5.0f} s: started {n + 1}/{len(boxes)}")
        with open(logs / f"{box.name}.up.out", "w") as out, open(logs / f"{box.name}.up.err", "w") as err:
            box.started = time.monotonic()
            box.proc = subprocess.Popen(
                [*INVOKE, "up", "--json", "--env-file", str(env_file)], cwd=ROOT, env=box.env, stdout=out, stderr=err
            )
    ended = wait_all({b.name: b.proc for b in boxes}, "up", began)
    for box in boxes:
        box.up_exit = box.proc.returncode
        box.up_seconds = ended[box.name] - (box.started - began)
        if box.up_exit != 0:
            lines = [x for x in (logs / f"{box.name}.up.err").read_text().splitlines() if x.strip()]
            box.up_said = lines[-1] if lines else ""
    return time.monotonic() - began


def read_status(box: Sandbox, env_file: Path, docker_env: dict[str, str], nodes: int) -> None:
    """Fill in BOX's node, health and container memory from ``invoke status --json`` and its cgroup."""
    status = run_task("status", "--json", env=box.env, env_file=env_file, timeout=120)
    try:
        shown = json.loads(status.stdout)
    except ValueError:
        shown = {}
    box.node, box.healthy = shown.get("node"), shown.get("healthy") is True
    box.memory_mib = container_memory(docker_env, box.name, nodes)


def stop_ups(boxes: list[Sandbox]) -> None:
    """SIGTERM every ``up`` still running (each stops what it was starting), SIGKILL after 60 s."""
    running = [b.proc for b in boxes if b.proc is not None and b.proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    for proc in running:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def reset_all(boxes: list[Sandbox], env_file: Path, docker_env: dict[str, str], nodes: int) -> float:
    """``invoke reset --yes`` of every sandbox at once; then any service, secret or network of theirs
    that is left is removed (and said), and the empty volume names on the nodes. Seconds until the
    last reset returned."""
    began = time.monotonic()
    procs = {
        b.name: subprocess.Popen(
            [*INVOKE, "reset", "--yes", "--env-file", str(env_file)],
            cwd=ROOT,
            env=b.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for b in boxes
    }
    wait_all(procs, "reset", began)
    took = time.monotonic() - began
    for name, proc in procs.items():
        if proc.returncode != 0:
            lines = [x for x in proc.stderr.read().splitlines() if x.strip()]
            say(f"reset of {name} failed (exit {proc.returncode}): {lines[-1] if lines else ''}")
    names = {b.name for b in boxes}
    for kind in ("service", "secret", "network"):
        listed = subprocess.run(
            ["docker", kind, "ls", "--format", "{{.Name}}"], capture_output=True, text=True, env=docker_env, timeout=60
        ).stdout.split()
        left = [x for x in listed if x in names or x.split(".", 1)[0] in names or x.removesuffix("-net") in names]
        if left:
            say(f"removing what reset left: {kind}s {' '.join(left)}")
            subprocess.run(["docker", kind, "rm", *left], capture_output=True, env=docker_env, timeout=120)
    remove_volumes(names, docker_env, nodes)
    return took


def remove_volumes(names: set[str], docker_env: dict[str, str], nodes: int, wait: float = 60) -> None:
    """Remove the volume names ``reset`` leaves on the node (``<sandbox>-workspace`` ...), through each
    lab node's own engine (its socket beside the manager's), with the ended containers of ``reset``'s
    job that still hold them (swarm removes a removed job's containers only a while later); tried
    for up to WAIT seconds, then what is left is said."""
    sockets = Path(docker_env["DOCKER_HOST"].removeprefix("unix://")).parent
    deadline = time.monotonic() + wait
    for i in range(1, nodes + 1):
        env = {**docker_env, "DOCKER_HOST": f"unix://{sockets}/node{i}.sock"}
        while True:
            ended = subprocess.run(
                ["docker", "ps", "-a", "--filter", "status=exited", "--format", "{{.ID}} {{.Names}}"],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            ).stdout.splitlines()
            jobs = [line.split()[0] for line in ended if line.split()[-1].split("-reset.", 1)[0] in names]
            if jobs:
                subprocess.run(["docker", "rm", *jobs], capture_output=True, env=env, timeout=120)
            mine = _volumes_of(names, env)
            if not mine:
                break
            subprocess.run(["docker", "volume", "rm", *mine], capture_output=True, env=env, timeout=120)
            if time.monotonic() > deadline:
                left = _volumes_of(names, env)
                if left:
                    say(f"node{i} still holds volumes {' '.join(left)} (in use?): docker volume rm them there")
                break
            time.sleep(2)


def _volumes_of(names: set[str], env: dict[str, str]) -> list[str]:
    listed = subprocess.run(["docker", "volume", "ls", "-q"], capture_output=True, text=True, env=env, timeout=60)
    return [v for v in listed.stdout.split() if v.rsplit("-", 1)[0] in names]


def _interrupt(signum, frame):
    raise Interrupted


def run(args: argparse.Namespace, tmp: Path) -> dict:
    """One run (see the module doc): the figures as a dict."""
    say(f"making or reusing the swarm lab of {args.nodes} nodes (scripts/swarm-lab up {args.nodes})")
    lab("up", str(args.nodes))
    lab_env = dict(line.split("=", 1) for line in lab("env").split())
    image = lab("seed", image_or_setting(args.image)).strip().splitlines()[-1]
    say(f"image in the lab registry: {image}")
    docker_env = {k: v for k, v in os.environ.items() if k != "DOCKER_CONTEXT"}
    docker_env["DOCKER_HOST"] = lab_env["DOCKER_HOST"]
    env_file = empty_env_file(tmp)
    common = task_env(
        {k: v for k, v in docker_env.items() if k == "DOCKER_HOST"},
        dict(
            OPENWORK_MICROSANDBOX_RUNTIME="swarm",
            OPENWORK_MICROSANDBOX_IMAGE=image,
            OPENWORK_REGISTRY_INSECURE="true",
            OPENWORK_MICROSANDBOX_CPUS=str(args.cpus),
            OPENWORK_MICROSANDBOX_MEMORY=str(args.memory),
            OPENWORK_HEALTH_TIMEOUT=str(args.health_timeout),
            OPENWORK_OFFLINE="true",
        ),
    )
    common.pop("DOCKER_CONTEXT", None)
    if args.start_slots is not None:
        common["OPENWORK_START_SLOTS"] = str(args.start_slots)
    tag = secrets.token_hex(2)
    boxes = []
    for i in range(1, args.nodes * args.per_node + 1):
        name, port = f"bench-sw{tag}-{i}", args.port_base + i
        state = tmp / "state" / name
        env = {**common, "OPENWORK_MICROSANDBOX_NAME": name, "OPENWORK_MICROSANDBOX_PORT": str(port)}
        boxes.append(Sandbox(name, port, {**env, "OPENWORK_STATE_DIR": str(state)}))
    result: dict = {"nodes": args.nodes, "per_node": args.per_node, "cpus": args.cpus, "memory_mib": args.memory}
    result.update(image=image, start_slots=args.start_slots, stagger=args.stagger)
    result["load_before"] = round(os.getloadavg()[0], 1)
    mem_before = node_memory(args.nodes)
    try:
        when = f"{args.stagger} s apart" if args.stagger else "at once"
        say(f"starting {len(boxes)} sandboxes {when} ({boxes[0].name} .. {boxes[-1].name}, ports {boxes[0].port}..)")
        result["wall_seconds"] = start_all(boxes, env_file, tmp, args.stagger)
        say("reading each sandbox's status and memory")
        for box in boxes:
            if box.up_exit == 0:
                read_status(box, env_file, docker_env, args.nodes)
        result["node_memory_before"], result["node_memory_after"] = mem_before, node_memory(args.nodes)
        result["load_after"] = round(os.getloadavg()[0], 1)
        first = next((b for b in boxes if b.healthy), None)
        if first is not None:
            say(f"invoke smoke against {first.name}")
            smoke = run_task("smoke", env=first.env, env_file=env_file, timeout=600)
            lines = [x for x in (smoke.stdout + smoke.stderr).splitlines() if x.strip()]
            result["smoke"] = dict(sandbox=first.name, exit=smoke.returncode, seconds=smoke.seconds, said=lines[-1:])
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up runs to its end (the resets inherit it)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_ups(boxes)
        say(f"removing the {len(boxes)} sandboxes (invoke reset --yes, all at once)")
        result["reset_seconds"] = reset_all(boxes, env_file, docker_env, args.nodes)
        result["sandboxes"] = [{f.name: getattr(b, f.name) for f in fields(b) if f.name in SHOWN} for b in boxes]
    return result


def table(r: dict) -> str:
    """The figures of one run, as a user reads them."""
    boxes = r["sandboxes"]
    ok = [b for b in boxes if b["up_exit"] == 0 and b["healthy"]]
    times = sorted(b["up_seconds"] for b in boxes if b["up_exit"] == 0)
    started = f"{r['stagger']} s apart" if r["stagger"] else "at once"
    out = [
        f"swarm benchmark: {r['nodes']} nodes x {r['per_node']} sandboxes, {r['cpus']} CPUs and {r['memory_mib']} MiB "
        f"each, start slots {r['start_slots'] if r['start_slots'] is not None else 'default'}, started {started}; "
        f"this machine: "
        f"{os.cpu_count()} CPUs, load {r['load_before']} before, {r.get('load_after', '-')} when all were up",
        "",
        f"{'sandbox':<18} {'node':<22} {'up s':>7} {'healthy':>8} {'MiB':>6}",
    ]
    for b in boxes:
        up = f"{b['up_seconds']:.1f}" if b["up_seconds"] is not None else "-"
        mib = f"{b['memory_mib']:.0f}" if b["memory_mib"] is not None else "-"
        healthy = "yes" if b["healthy"] else f"no ({b['up_exit']})"
        out.append(f"{b['name']:<18} {b['node'] or '-':<22} {up:>7} {healthy:>8} {mib:>6}")
        if b["up_said"]:
            out.append(f"  up said: {b['up_said']}")
    out += ["", f"{'node':<8} {'sandboxes':>9} {'MiB before':>11} {'after':>8} {'difference':>11}"]
    before, after = r.get("node_memory_before", {}), r.get("node_memory_after", {})
    for node in before:
        count = sum(1 for b in boxes if (b["node"] or "").split(" ")[0] == node)
        was, now = before[node], after.get(node)
        diff = f"{now - was:+.0f}" if was is not None and now is not None else "-"
        out.append(f"{node:<8} {count:>9} {_mib(was):>11} {_mib(now):>8} {diff:>11}")
    out.append("")
    if times:
        out.append(
            f"healthy: {len(ok)}/{len(boxes)}; all `up`s returned after {r['wall_seconds']:.1f} s; per `up` that returned 0: median "
            f"{statistics.median(times):.1f} s, min {times[0]:.1f} s, max {times[-1]:.1f} s"
        )
    mems = sorted(b["memory_mib"] for b in boxes if b["memory_mib"] is not None)
    if mems:
        out.append(
            f"memory per sandbox (its container): median {statistics.median(mems):.0f} MiB, max {mems[-1]:.0f} MiB"
        )
    smoke = r.get("smoke")
    if smoke:
        verdict = "passed" if smoke["exit"] == 0 else f"FAILED (exit {smoke['exit']})"
        out.append(f"smoke of {smoke['sandbox']}: {verdict} in {smoke['seconds']:.1f} s: {' '.join(smoke['said'])}")
    out.append(f"reset of all: {r['reset_seconds']:.1f} s")
    return "\n".join(out)


def _mib(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "-"


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench-swarm", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3, help="nodes of the lab (default 3)")
    parser.add_argument("--per-node", type=int, default=2, help="sandboxes per node (default 2)")
    parser.add_argument("--cpus", type=float, default=0.5, help="OPENWORK_MICROSANDBOX_CPUS of each (default 0.5)")
    parser.add_argument(
        "--memory", type=int, default=1024, help="OPENWORK_MICROSANDBOX_MEMORY of each, MiB (default 1024)"
    )
    parser.add_argument("--image", help="image in the loopback registry to seed (default: OPENWORK_MICROSANDBOX_IMAGE)")
    parser.add_argument("--health-timeout", type=int, default=600, help="OPENWORK_HEALTH_TIMEOUT of each `up`")
    parser.add_argument("--start-slots", type=int, help="OPENWORK_START_SLOTS of each `up` (default: its default)")
    parser.add_argument(
        "--stagger", type=float, default=0.0, help="seconds between two `up`s' starts (default 0: at once)"
    )
    parser.add_argument("--port-base", type=int, default=19610, help="sandbox I gets port PORT_BASE+I (default 19610)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    if args.nodes < 1 or args.per_node < 1:
        parser.error("--nodes and --per-node must be at least 1")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored (a shell's background job)
    tmp = Path(tempfile.mkdtemp(prefix="owbench-swarm-"))
    try:
        result = run(args, tmp)
    except (Interrupted, KeyboardInterrupt):
        say("interrupted: the sandboxes this run started are removed")
        return 130
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        say(str(exc))
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else table(result), flush=True)
    boxes = result["sandboxes"]
    smoke_ok = result.get("smoke", {}).get("exit") == 0
    return 0 if smoke_ok and all(b["healthy"] for b in boxes) else 1


if __name__ == "__main__":
    back_to_caller_cwd()
    sys.exit(main())
