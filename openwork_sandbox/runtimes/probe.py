"""Can this host boot microVMs, and does a Docker engine answer? Quick checks, nothing started.

``microvm_support()`` is shared by ``up`` (the ``auto`` runtime rule, and failing before a ~11 s
doomed boot) and by ``doctor``. It reads what it can from the kernel in milliseconds; ``msb doctor``
(about a second) is only run on request.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from .. import commands

CPUINFO = Path("/proc/cpuinfo")
KVM_DEVICE = Path("/dev/kvm")


def cpu_virtualization_flag(cpuinfo: Path = CPUINFO) -> str | None:
    """``"vmx"`` (Intel VT-x) or ``"svm"`` (AMD-V) when the CPU advertises it, else None."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            flags = set(line.split(":", 1)[1].split())
            for flag in ("vmx", "svm"):
                if flag in flags:
                    return flag
            return None
    return None


def msb_path() -> str | None:
    """The msb runtime binary: on PATH, or the one bundled in the microsandbox wheel."""
    found = commands.which("msb")
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


@functools.lru_cache(maxsize=None)
def microvm_support(*, run_msb_doctor: bool = False) -> tuple[bool, str]:
    """``(True, why)`` when microVMs can boot here, else ``(False, what is missing)``.

    Checks, fastest first: KVM present and usable (Linux), the CPU's vmx/svm flag (a VM without
    nested virtualization has ``/dev/kvm`` but no flag, and every boot then fails after ~11 s),
    the msb runtime; optionally ``msb doctor``.
    """
    import platform

    system = platform.system()
    if system == "Darwin":
        if platform.machine() != "arm64":
            return False, "microsandbox on macOS needs Apple silicon"
    elif system == "Linux":
        if not KVM_DEVICE.exists():
            return False, "/dev/kvm is missing (load the kvm module, or enable nested virtualization)"
        if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
            return False, "/dev/kvm is not readable and writable by this user (add yourself to the kvm group)"
        flag = cpu_virtualization_flag()
        if flag is None:
            return False, "no vmx/svm flag in /proc/cpuinfo, so CPU virtualization is off; inside a VM, enable nested virtualization"
    else:
        return False, f"microsandbox does not run on {system}"
    msb = msb_path()
    if msb is None:
        return False, "the msb runtime is missing (pip install microsandbox)"
    if run_msb_doctor:
        proc = commands.run([msb, "doctor"], timeout=30, check=False)
        if proc.returncode != 0:
            out = (proc.stdout or "") + (proc.stderr or "")
            m = re.search(r"error: (.+)", out)
            return False, f"msb doctor: {m.group(1).strip() if m else commands.last_line(out)}"
    if system == "Linux":
        return True, f"/dev/kvm is usable and the CPU has {flag}"
    return True, "Apple silicon with the Hypervisor framework"


def docker_support() -> tuple[bool, str]:
    """``(True, engine version)`` when a Docker engine answers, else ``(False, what is missing)``."""
    if commands.which("docker") is None:
        return False, f"docker is not installed: {commands.INSTALL_HINTS['docker']}"
    proc = commands.run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=15, check=False)
    if proc.returncode != 0:
        return False, "the Docker engine does not answer: run scripts/services start (or start Docker Desktop)"
    return True, f"Docker engine {proc.stdout.strip()} answers"
