"""The sandboxes this tool made, as each runtime lists them, with their marks (``state.ownership``).

``sandbox.leftovers`` judges them (stale, orphan) for ``doctor`` and ``reset --stale``. Each function
returns ``(name, marks, running)`` tuples, the marks without their label prefix. The one module of
``runtimes`` that reads every runtime's labels.
"""

from __future__ import annotations

import json

from openwork_sandbox.core import processes
from openwork_sandbox.runtimes.docker import LABEL_MANAGED
from openwork_sandbox.runtimes.docker import MARK_PREFIX as DOCKER_MARK
from openwork_sandbox.runtimes.microsandbox.sdk import SdkLoop
from openwork_sandbox.runtimes.microsandbox.spec import LABEL_FP
from openwork_sandbox.runtimes.microsandbox.spec import MARK_PREFIX as MSB_MARK
from openwork_sandbox.runtimes.swarm.cluster import replicas
from openwork_sandbox.runtimes.swarm.service import LABEL as SWARM_LABEL


def docker_managed() -> list[tuple[str, dict[str, str], bool]]:
    """``(name, marks, running)`` of every container this tool made (label ``managed``), on the
    engine ``docker`` talks to; marks without their prefix."""
    proc = processes.docker("ps", "-aq", "--filter", f"label={LABEL_MANAGED}=1", check=False, timeout=30)
    ids = proc.stdout.split() if proc.returncode == 0 else []
    if not ids:
        return []
    proc = processes.docker("inspect", *ids, check=False, timeout=60)
    found = []
    for info in json.loads(proc.stdout or "[]"):
        labels = (info.get("Config") or {}).get("Labels") or {}
        marks = {k[len(DOCKER_MARK) :]: v for k, v in labels.items() if k.startswith(DOCKER_MARK)}
        found.append((info.get("Name", "").lstrip("/"), marks, bool((info.get("State") or {}).get("Running"))))
    return found


def swarm_managed() -> list[tuple[str, dict[str, str], bool]]:
    """``(name, marks, running)`` of every swarm service this tool made (label ``managed``), on the
    swarm whose manager ``docker`` talks to; running: it wants a task (not scaled to 0)."""
    proc = processes.docker("service", "ls", "-q", "--filter", f"label={SWARM_LABEL}managed=1", check=False, timeout=30)
    ids = proc.stdout.split() if proc.returncode == 0 else []
    if not ids:
        return []
    proc = processes.docker("service", "inspect", *ids, check=False, timeout=60)
    found = []
    for info in json.loads(proc.stdout or "[]") if proc.returncode == 0 else []:
        spec = info.get("Spec") or {}
        labels = spec.get("Labels") or {}
        marks = {k[len(SWARM_LABEL) :]: v for k, v in labels.items() if k.startswith(SWARM_LABEL)}
        found.append((spec.get("Name", ""), marks, bool(replicas(info))))
    return found


def microsandbox_managed() -> list[tuple[str, dict[str, str], bool]]:
    """``(name, marks, running)`` of every microVM this tool made (label ``fingerprint``), from
    microsandbox's own records (no VM is booted to ask); the SDK's errors pass unchanged."""
    from microsandbox import Sandbox, SandboxStatus

    async def go():
        page = await Sandbox.list()
        out = []
        for handle in page.sandboxes:
            labels = (handle.config() or {}).get("labels") or {}
            if LABEL_FP not in labels:
                continue
            marks = {k[len(MSB_MARK) :]: v for k, v in labels.items() if k.startswith(MSB_MARK) and k != LABEL_FP}
            out.append((handle.name, marks, handle.status in (SandboxStatus.RUNNING, SandboxStatus.STARTING)))
        return out

    sdk = SdkLoop()
    try:
        return sdk.run(go())
    finally:
        sdk.close()
