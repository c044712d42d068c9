"""One-off jobs on a sandbox's node: the way to touch its volumes, which the manager cannot reach.

:func:`empty_volumes` runs ``docker service create --mode replicated-job`` of the sandbox's image,
constrained to its node, with its volumes mounted where the sandbox mounts them, that deletes what
they hold; it waits for the
job and removes it. The volume names stay on the node, empty (swarm has no call to delete a
volume on another node: ``docker volume rm`` there does).

:func:`pull_check` runs a ``global-job`` of an image (``true``) on every ready node and reports,
per node, whether that node could pull it: ``doctor``'s proof that the nodes reach the registry.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from openwork_sandbox.core import console, processes
from openwork_sandbox.runtimes.swarm import service

PLACE_FILE = "swarm-node.json"  # under .state/<name>/: the node, volumes and image, for reset after the service went
JOB_TIMEOUT = 180.0


def remember(state_dir: Path, node_id: str, node_shown: str, image: str, volumes: dict[str, str]) -> None:
    """Keep where the sandbox's volumes are (guest path -> volume), so ``reset`` can empty them after
    its service is gone."""
    from openwork_sandbox.state.store import write_private_file

    write_private_file(
        state_dir / PLACE_FILE,
        json.dumps({"node": node_id, "node_shown": node_shown, "image": image, "volumes": volumes}) + "\n",
    )


def remembered(state_dir: Path) -> dict | None:
    """What :func:`remember` kept, or None."""
    try:
        return json.loads((state_dir / PLACE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _job_state(name: str) -> str | None:
    proc = processes.docker("service", "ps", "--format", "{{.CurrentState}}", name, check=False, timeout=30)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return proc.stdout.split()[0].lower()


def empty_volumes(sandbox: str, state_dir: Path) -> str | None:
    """Empty the sandbox's volumes on its node (see the module doc); one line saying what was done,
    or None when nothing was remembered. A node that does not run the job in time: the line says so
    and names the ``docker volume rm`` to run there; the job is removed either way."""
    where = remembered(state_dir)
    if not where or not where.get("volumes"):
        return None
    job = f"{sandbox}-reset"
    processes.docker("service", "rm", job, check=False, timeout=60)
    argv = [
        "service",
        "create",
        "--detach",
        "--mode",
        "replicated-job",
        "--name",
        job,
        "--label",
        f"{service.LABEL}sandbox={sandbox}",
        "--constraint",
        f"node.id=={where['node']}",
        "--restart-condition",
        "none",
        "--entrypoint",
        "find",
    ]
    # each at its own path: the image declares /workspace and /data volumes, which would otherwise be made anew
    for guest, vol in where["volumes"].items():
        argv += ["--mount", f"type=volume,source={vol},target={guest}"]
    argv += [where["image"], *where["volumes"], "-mindepth", "1", "-delete"]
    shown = where.get("node_shown") or where["node"]
    names = " ".join(where["volumes"].values())
    proc = processes.docker(*argv, check=False, timeout=120)
    if proc.returncode != 0:
        return f"could not empty the volumes on node {shown} ({processes.last_line(proc.stderr)}): there, run `docker volume rm {names}`"
    deadline = time.monotonic() + JOB_TIMEOUT
    state = None
    try:
        with console.heartbeat(f"emptying the volumes of {sandbox} on node {shown}"):
            while time.monotonic() < deadline:
                state = _job_state(job)
                if state in ("complete", "failed", "rejected"):
                    break
                time.sleep(1)
    finally:
        processes.docker("service", "rm", job, check=False, timeout=60)
    if state != "complete":
        return f"the volumes on node {shown} were not emptied (job {state or 'not run'}): there, run `docker volume rm {names}`"
    (state_dir / PLACE_FILE).unlink(missing_ok=True)
    return (
        f"emptied the volumes {names} on node {shown} (their empty names stay there: `docker volume rm` removes them)"
    )


PULL_TIMEOUT = 45.0
PULL_DONE = ("complete", "failed", "rejected", "shutdown")  # failed: it was pulled and ran (``true`` missing)


def _node_results(tasks: list[dict]) -> dict[str, tuple[str, str]]:
    """Node id -> ``(state, error)`` of its newest task (swarm retries a rejected job task anew)."""
    out: dict[str, tuple[str, str]] = {}
    for task in sorted(tasks, key=lambda t: t.get("CreatedAt", "")):
        status = task.get("Status") or {}
        out[task.get("NodeID", "")] = (status.get("State", ""), status.get("Err") or "")
    return out


def pull_check(image: str, node_ids: list[str], timeout: float = PULL_TIMEOUT) -> dict[str, tuple[str, str]]:
    """Node id -> ``(state, error)`` of a ``global-job`` running ``true`` from ``image`` on each node of
    ``node_ids``: ``complete`` or ``failed`` (it was pulled), ``rejected`` with the pull's error, or a
    state still on its way (``preparing``: pulling) when ``timeout`` ran out. The job is removed
    either way; a job that cannot be made: WorkflowError (one line)."""
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.runtimes.swarm import cluster

    job = f"openwork-doctor-pull-{socket.gethostname()}-{os.getpid()}"[:63]
    argv = ["service", "create", "--detach", "--mode", "global-job", "--name", job, "--no-resolve-image"]
    argv += ["--label", f"{service.LABEL}doctor=1", "--restart-condition", "none", "--entrypoint", "true", image]
    processes.docker("service", "rm", job, check=False, timeout=60)
    proc = processes.docker(*argv, check=False, timeout=60)
    if proc.returncode != 0:
        raise WorkflowError(f"docker service create (a pull check) failed: {processes.last_line(proc.stderr)}")
    found: dict[str, tuple[str, str]] = {}
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _node_results(cluster.tasks(job))
            if all(found.get(n, ("", ""))[0] in PULL_DONE for n in node_ids):
                break
            time.sleep(0.5)
    finally:
        processes.docker("service", "rm", job, check=False, timeout=60)
    return {n: found.get(n, ("not scheduled", "")) for n in node_ids}
