"""Can this host boot microVMs, and does a Docker engine answer? Reads only: nothing is started.

``host_facts()`` gathers the facts once (kernel files, ``msb``'s path; ``docker info`` only when
asked, since it can take seconds); :mod:`openwork_sandbox.runtimes.choice` decides from them.
``microvm_support()`` is that verdict for this host, cached for the process.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

from openwork_sandbox.core import processes
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes.choice import (
    AUTO,
    DOCKER,
    SWARM,
    HostFacts,
    RuntimeChoice,
    decide_runtime,
    microvm_verdict,
)

CPUINFO = Path("/proc/cpuinfo")
KVM_DEVICE = Path("/dev/kvm")
DOCKER_START = processes.DOCKER_START  # the way out when the engine does not answer


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (the first ``flags`` line); None when unreadable."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return None


def cpu_virtualization_flag(cpuinfo: Path = CPUINFO, flags: frozenset[str] | None = None) -> str | None:
    """``"vmx"`` (Intel VT-x) or ``"svm"`` (AMD-V) when the CPU advertises it, else None."""
    flags = cpu_flags(cpuinfo) if flags is None else flags
    return next((flag for flag in ("vmx", "svm") if flag in (flags or ())), None)


def cpu_has_avx(machine: str, flags: frozenset[str] | None) -> bool | None:
    """Whether an x86_64 CPU has AVX (the orchestrator needs it); None where that is not known or
    not asked (another architecture, no ``/proc/cpuinfo``)."""
    if machine.lower() not in ("x86_64", "amd64") or flags is None:
        return None
    return "avx" in flags


def msb_path() -> str | None:
    """The msb runtime binary: on PATH, or the one bundled in the microsandbox wheel."""
    found = processes.which("msb")
    if found:
        return found
    try:
        from importlib.util import find_spec

        spec = find_spec("microsandbox")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    bundled = Path(spec.origin).parent / "_bundled" / "bin" / "msb"
    return str(bundled) if bundled.is_file() else None


def docker_support(timeout: float = 15) -> tuple[bool, str]:
    """``(True, engine version)`` when a Docker engine answers, else ``(False, what is missing and
    the way out)``: not installed, no answer, or a socket this user may not use.

    The one "does Docker answer" probe (``doctor``, ``up``'s runtime choice, finding a sandbox)."""
    if processes.which("docker") is None:
        return False, f"docker is not installed: {processes.INSTALL_HINTS['docker']}"
    try:
        proc = processes.run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=timeout, check=False)
    except WorkflowError:  # did not finish in time
        return False, f"the Docker engine did not answer within {timeout:g}s: {DOCKER_START}"
    if proc.returncode != 0 or not proc.stdout.strip():
        denied = processes.docker_socket_denied(proc.stderr)
        return False, denied or f"the Docker engine does not answer: {DOCKER_START}"
    return True, f"Docker engine {proc.stdout.strip()} answers"


def host_facts(*, docker: bool = True) -> HostFacts:
    """What this host is, read once: system, CPU, KVM, msb, and (with ``docker``) the Docker engine."""
    import platform

    flags = cpu_flags()
    return HostFacts(
        system=platform.system(),
        machine=platform.machine(),
        kvm_present=KVM_DEVICE.exists(),
        kvm_usable=os.access(KVM_DEVICE, os.R_OK | os.W_OK),
        cpu_flag=cpu_virtualization_flag(flags=flags),
        avx=cpu_has_avx(platform.machine(), flags),
        msb=msb_path(),
        docker=docker_support() if docker else None,
    )


@functools.cache
def microvm_support() -> tuple[bool, str]:
    """``(True, why)`` when microVMs can boot here, else ``(False, what is missing)`` (see choice);
    read once per process."""
    return microvm_verdict(host_facts(docker=False))


def swarm_support() -> tuple[bool, str]:
    """``(True, "swarm of N nodes, manager ...")`` when the engine ``docker`` talks to is a swarm
    manager, else ``(False, what is wrong and what to do)``."""
    if processes.which("docker") is None:
        return False, f"docker is not installed: {processes.INSTALL_HINTS['docker']}"
    import json

    proc = processes.docker("info", "--format", "{{json .Swarm}}", check=False, timeout=15)
    if proc.returncode != 0 or not proc.stdout.strip():
        denied = processes.docker_socket_denied(proc.stderr or "")
        return False, denied or (
            "the Docker engine does not answer (DOCKER_HOST / DOCKER_CONTEXT must point at a swarm manager): "
            f"{processes.last_line(proc.stderr)}"
        )
    info = json.loads(proc.stdout)
    if info.get("LocalNodeState") != "active":
        return False, "this Docker engine is not in a swarm: `docker swarm init` (or point DOCKER_HOST at a manager)"
    if not info.get("ControlAvailable"):
        return False, "this Docker engine is a swarm worker: point DOCKER_HOST (or DOCKER_CONTEXT) at a manager"
    return True, f"swarm of {info.get('Nodes')} nodes, manager {info.get('NodeAddr')}"


def choose_runtime(setting: str, recorded: str | None = None) -> RuntimeChoice:
    """:func:`.choice.decide_runtime` on this host; Docker (or the swarm) is asked only when the choice needs it."""
    facts = host_facts(docker=False)
    if setting == SWARM or (setting == AUTO and recorded == SWARM):
        facts = dataclasses.replace(facts, swarm=swarm_support())
    if setting == AUTO and recorded != DOCKER and not microvm_verdict(facts)[0]:
        facts = dataclasses.replace(facts, docker=docker_support())
    return decide_runtime(facts, setting, recorded)
