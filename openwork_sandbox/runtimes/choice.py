"""Which runtime a sandbox gets: one pure rule over host facts, used by ``doctor``, ``up`` and
``smoke --ephemeral``.

:class:`HostFacts` holds what the host is (gathered once by :func:`probe.host_facts`);
:func:`microvm_verdict` says whether microVMs boot there and why; :func:`decide_runtime` turns the
facts, the setting (``auto|microsandbox|docker``) and the runtime a sandbox already uses into one
:class:`RuntimeChoice`. Nothing here touches the host, so tests state the answers as tables.

microVMs boot on Linux with ``/dev/kvm`` readable and writable, plus on x86_64 the CPU's ``vmx`` or
``svm`` flag (a VM without nested virtualization has ``/dev/kvm`` but no flag, and every boot then
fails); arm64 Linux has no such flag, usable KVM is the signal. On macOS: Apple silicon only
(Hypervisor framework). Everywhere the msb runtime must be installed.
"""

from __future__ import annotations

import dataclasses

AUTO, DOCKER, MICROSANDBOX, SWARM = "auto", "docker", "microsandbox", "swarm"
RUNTIMES = (MICROSANDBOX, DOCKER, SWARM)
# the way out named wherever microVMs cannot run
DOCKER_HINT = "use the Docker runtime: invoke up --runtime docker (or OPENWORK_MICROSANDBOX_RUNTIME=docker)"
ARM64 = ("aarch64", "arm64")


@dataclasses.dataclass(frozen=True)
class HostFacts:
    """What decides the runtime, read from the host once (see ``probe.host_facts``)."""

    system: str  # platform.system(): Linux, Darwin, ...
    machine: str  # platform.machine(): x86_64, aarch64, arm64, ...
    kvm_present: bool = False
    kvm_usable: bool = False  # readable and writable by this user
    cpu_flag: str | None = None  # vmx or svm from /proc/cpuinfo
    msb: str | None = None  # path of the msb runtime
    docker: tuple[bool, str] | None = None  # (engine answers, detail); None: not asked
    avx: bool | None = None  # x86_64: the CPU has AVX (the orchestrator needs it); None: not known
    swarm: tuple[bool, str] | None = None  # (the engine is a swarm manager, detail); None: not asked

    @property
    def arm64(self) -> bool:
        """The machine is arm64 (``aarch64`` on Linux, ``arm64`` on macOS)."""
        return self.machine.lower() in ARM64


@dataclasses.dataclass(frozen=True)
class RuntimeChoice:
    """The runtime (None: none can work), why, and whether it can work here."""

    kind: str | None
    reason: str
    usable: bool = True


def kvm_verdict(f: HostFacts) -> tuple[bool, str]:
    """``(True, why)`` when KVM is usable by this user (Linux) or not needed (macOS), else
    ``(False, what to do)``."""
    if f.system == "Darwin":
        return True, "not needed on macOS (Hypervisor framework)"
    if not f.kvm_present:
        return False, "/dev/kvm is missing (load the kvm module, or enable nested virtualization)"
    if not f.kvm_usable:
        return False, "/dev/kvm is not readable and writable by this user (add yourself to the kvm group)"
    return True, "/dev/kvm is readable and writable"


def virtualization_verdict(f: HostFacts) -> tuple[bool, str]:
    """``(True, why)`` when the CPU offers hardware virtualization to this host (on arm64 Linux: KVM
    is there), else ``(False, what is missing)``; False on a system microsandbox does not run on."""
    if f.system == "Darwin":
        if f.arm64:
            return True, "Apple silicon with the Hypervisor framework"
        return False, "microsandbox on macOS needs Apple silicon"
    if f.system != "Linux":
        return False, f"microsandbox does not run on {f.system}"
    if f.arm64:  # arm64 has no cpuinfo flag for it: usable KVM is the signal
        return (True, "arm64: KVM is the signal, no CPU flag needed") if f.kvm_present else (False, "arm64 without KVM")
    if f.cpu_flag:
        return True, f"the CPU has {f.cpu_flag}"
    return (
        False,
        "no vmx/svm CPU flag in /proc/cpuinfo, so CPU virtualization is off; inside a VM, enable nested virtualization",
    )


def microvm_verdict(f: HostFacts) -> tuple[bool, str]:
    """``(True, why)`` when microVMs can boot on this host, else ``(False, what is missing)``."""
    if f.system != "Linux":
        ok, why = virtualization_verdict(f)
    else:
        ok, why = kvm_verdict(f)
        if ok:
            ok, flag_why = virtualization_verdict(f)
            why = f"/dev/kvm is usable and {flag_why}" if ok else flag_why
    if not ok:
        return False, why
    if f.msb is None:
        return False, "the msb runtime is missing (pip install microsandbox)"
    return True, why


def decide_runtime(f: HostFacts, setting: str, recorded: str | None = None) -> RuntimeChoice:
    """The runtime for ``setting`` (auto|microsandbox|docker|swarm) on a host with facts ``f``.

    ``auto``: the runtime this sandbox already uses (``recorded``) when it still works, else
    microsandbox where microVMs boot, else Docker when its engine answers (or was not asked); never
    swarm by itself (a sandbox there was put there by an explicit setting). An explicit setting is
    kept, and marked unusable when the host cannot run it.
    """
    vm_ok, vm_why = microvm_verdict(f)
    docker_ok, docker_why = f.docker if f.docker is not None else (True, "")
    swarm_ok, swarm_why = f.swarm if f.swarm is not None else (True, "")
    if setting == SWARM or (setting == AUTO and recorded == SWARM):
        why = "set to swarm" if setting == SWARM else "auto: the sandbox already uses swarm"
        return RuntimeChoice(SWARM, why + (f"; {swarm_why}" if swarm_why else ""), usable=swarm_ok)
    if setting == MICROSANDBOX:
        if vm_ok:
            return RuntimeChoice(MICROSANDBOX, f"set to microsandbox; {vm_why}")
        return RuntimeChoice(MICROSANDBOX, f"this host cannot run microVMs: {vm_why}; {DOCKER_HINT}", usable=False)
    if setting == DOCKER:
        return RuntimeChoice(DOCKER, "set to docker" + (f"; {docker_why}" if docker_why else ""), usable=docker_ok)
    if recorded == DOCKER or (recorded == MICROSANDBOX and vm_ok):
        return RuntimeChoice(recorded, f"auto: the sandbox already uses {recorded}")
    if vm_ok:
        return RuntimeChoice(MICROSANDBOX, f"auto: microVMs can boot here: {vm_why}")
    if docker_ok:
        return RuntimeChoice(
            DOCKER, f"auto: microVMs cannot boot here: {vm_why}" + (f"; {docker_why}" if docker_why else "")
        )
    return RuntimeChoice(
        None, f"no runtime can run the sandbox here: microVMs: {vm_why}; Docker: {docker_why}", usable=False
    )
