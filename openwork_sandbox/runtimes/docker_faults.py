"""What the Docker engine knows of a start that failed for want of a resource: the kernel's OOM kills.

``State.OOMKilled`` is set only once the container's own process dies of it; the image's supervisor
outlives the programs the kernel kills and restarts them, so the engine's ``oom`` events (one per
kill in the container's memory cgroup) are what counts.
"""

from __future__ import annotations

import json
import time

from openwork_sandbox.core import processes


def memory_kills(name: str) -> int:
    """Times the kernel killed a program of the container ``name`` for lack of memory since it was
    made; 0 for no container or when the engine does not say."""
    proc = processes.docker(
        "container", "inspect", "--format", "{{json .State.OOMKilled}} {{.Created}}", name, check=False, timeout=30
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return 0
    killed, _, created = proc.stdout.strip().partition(" ")
    since = processes.docker(
        "events",
        "--since",
        created or str(int(time.time() - 3600)),
        "--until",
        str(int(time.time()) + 1),
        "--filter",
        f"container={name}",
        "--filter",
        "event=oom",
        "--format",
        "{{.Action}}",
        check=False,
        timeout=30,
    )
    events = sum(1 for line in since.stdout.splitlines() if line.strip() == "oom") if since.returncode == 0 else 0
    return max(events, 1 if json.loads(killed or "false") is True else 0)
