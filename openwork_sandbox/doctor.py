"""`invoke doctor`: what this machine can and cannot run, one line per check, and what to do.

Each check is a small function returning a :class:`Check`. The runtime ``auto`` would pick is
derived from the checks; the exit code is 0 when the chosen runtime can work, 1 otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from . import commands, console, ports
from .health import health_once
from .runtimes import probe
from .settings import Settings

DOCKER = "docker"
MICROSANDBOX = "microsandbox"
BOTH = frozenset({DOCKER, MICROSANDBOX})

# lower bounds known to work (kept in step with pyproject.toml by a test)
PACKAGE_MINIMUMS = {"invoke": "2.2", "microsandbox": "0.7.11", "requests": "2.31", "python-dotenv": "1.0.1"}
PYTHON_MINIMUM = (3, 10)


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    needed_by: frozenset = BOTH

    def as_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix,
                "needed_by": sorted(self.needed_by)}


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_python() -> Check:
    version = platform.python_version()
    ok = sys.version_info[:2] >= PYTHON_MINIMUM
    return Check("python", ok, f"Python {version}",
                 "" if ok else f"use Python {'.'.join(map(str, PYTHON_MINIMUM))} or newer")


def check_packages() -> Check:
    found, problems = [], []
    for package, minimum in PACKAGE_MINIMUMS.items():
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            problems.append(f"{package} missing")
            continue
        found.append(f"{package} {version}")
        if _version_tuple(version) < _version_tuple(minimum):
            problems.append(f"{package} {version} < {minimum}")
    ok = not problems
    return Check("packages", ok, ", ".join(found) if ok else "; ".join(problems),
                 "" if ok else "pip install -e '.[test]' (see README)")


def check_docker_client() -> Check:
    if commands.which("docker") is None:
        return Check("docker client", False, "docker not on PATH", "scripts/services start (Debian) or install Docker",
                     frozenset({DOCKER}))
    proc = commands.run(["docker", "version", "--format", "{{.Client.Version}}"], check=False, timeout=15)
    version = proc.stdout.strip() or "unknown version"
    return Check("docker client", True, f"docker {version}", needed_by=frozenset({DOCKER}))


def check_docker_engine() -> Check:
    if commands.which("docker") is None:
        return Check("docker engine", False, "no docker client", "scripts/services start", frozenset({DOCKER}))
    proc = commands.run(["docker", "version", "--format", "{{.Server.Version}}"], check=False, timeout=15)
    if proc.returncode == 0 and proc.stdout.strip():
        return Check("docker engine", True, f"engine {proc.stdout.strip()} answers", needed_by=frozenset({DOCKER}))
    return Check("docker engine", False, f"does not answer ({commands.last_line(proc.stderr)})",
                 "scripts/services start (or start Docker Desktop)", frozenset({DOCKER}))


def check_registry(settings: Settings) -> Check:
    """``GET /v2/`` the way push-image asks it (registry.Registry: HTTPS first, Docker's login and CAs)."""
    from .errors import UnreachableError, WorkflowError
    from .registry import Registry

    ref = settings.image_ref
    host = ref.registry_host
    name = f"registry {host}"
    fix = "scripts/services start" if ref.registry_is_loopback else \
        "check OPENWORK_MICROSANDBOX_IMAGE's registry, or OPENWORK_REGISTRY_INSECURE for plain HTTP"
    try:
        registry = Registry.for_settings(settings)
        registry.timeout = 5
        code = registry.ping()
    except UnreachableError as exc:
        return Check(name, False, exc.message, fix)
    except WorkflowError as exc:  # a wrong login, a CA that is not trusted, not a registry
        return Check(name, False, exc.message, "see the detail")
    auth = f" (needs login: docker login {host}, or OPENWORK_REGISTRY_USERNAME/PASSWORD)" if code == 401 else ""
    return Check(name, True, f"{registry.base}/v2/ answers {code}{auth}")


def check_microsandbox() -> Check:
    needed = frozenset({MICROSANDBOX})
    try:
        version = metadata.version("microsandbox")
    except metadata.PackageNotFoundError:
        return Check("microsandbox", False, "SDK not installed", "pip install microsandbox", needed)
    msb = probe.msb_path()
    if msb is None:
        return Check("microsandbox", False, f"SDK {version}, but no msb runtime",
                     "pip install --force-reinstall microsandbox", needed)
    return Check("microsandbox", True, f"SDK {version}, runtime {msb}", needed_by=needed)


def check_kvm(path: Path = probe.KVM_DEVICE) -> Check:
    needed = frozenset({MICROSANDBOX})
    if platform.system() == "Darwin":
        return Check("/dev/kvm", True, "not needed on macOS (Hypervisor.framework)", needed_by=needed)
    if not path.exists():
        return Check("/dev/kvm", False, "missing", "enable KVM (load kvm_intel/kvm_amd) or use the Docker runtime", needed)
    if not os.access(path, os.R_OK | os.W_OK):
        return Check("/dev/kvm", False, "not readable and writable by this user",
                     "add yourself to the kvm group (sudo usermod -aG kvm $USER) and log in again", needed)
    return Check("/dev/kvm", True, "readable and writable", needed_by=needed)


def check_virtualization(cpuinfo: Path = probe.CPUINFO) -> Check:
    needed = frozenset({MICROSANDBOX})
    if platform.system() == "Darwin":
        return Check("virtualization", True, "macOS Hypervisor.framework", needed_by=needed)
    if platform.machine() in ("aarch64", "arm64"):
        # arm64 has no cpuinfo flag for it: KVM being present is the signal
        ok = probe.KVM_DEVICE.exists()
        return Check("virtualization", ok, "arm64 with KVM" if ok else "arm64 without KVM",
                     "" if ok else "use the Docker runtime", needed)
    flag = probe.cpu_virtualization_flag(cpuinfo)
    if flag:
        return Check("virtualization", True, f"CPU flag {flag} present", needed_by=needed)
    return Check("virtualization", False,
                 "no vmx/svm CPU flag: this machine is a VM without nested virtualization, microVMs cannot boot",
                 "use the Docker runtime (OPENWORK_MICROSANDBOX_RUNTIME=docker), or a host with KVM", needed)


def check_port(settings: Settings) -> Check:
    address, port = settings.bind_address, settings.port
    if ports.port_is_free(port, address):
        return Check(f"port {port}", True, f"{address}:{port} is free")
    if (health_once(settings.url, timeout_s=2) or {}).get("ok") is True:
        return Check(f"port {port}", True, f"{address}:{port} is held by a running OpenWork server (invoke status)")
    return Check(f"port {port}", False, f"{address}:{port} is in use: {ports.port_holder(port)}",
                 "free it, or set OPENWORK_MICROSANDBOX_PORT to a free port")


def _writable(path: Path) -> tuple[bool, Path]:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK | os.X_OK) and probe.is_dir(), probe


def check_state_folders(settings: Settings) -> Check:
    bad = []
    for label, path in (("state", settings.sandbox_state_dir), ("workspace", settings.workspace_dir),
                        ("data", settings.data_dir)):
        ok, probe = _writable(path)
        if not ok:
            bad.append(f"{label} {path} (at {probe})")
    if bad:
        return Check("state folders", False, "not writable: " + "; ".join(bad),
                     "fix permissions or set OPENWORK_STATE_DIR / OPENWORK_MICROSANDBOX_WORKSPACE_DIR / _DATA_DIR")
    return Check("state folders", True, f"writable under {settings.sandbox_state_dir}")


def collect_checks(settings: Settings) -> list[Check]:
    return [
        check_python(),
        check_packages(),
        check_docker_client(),
        check_docker_engine(),
        check_registry(settings),
        check_microsandbox(),
        check_kvm(),
        check_virtualization(),
        check_port(settings),
        check_state_folders(settings),
    ]


def _missing_for(checks: list[Check], runtime: str) -> list[str]:
    """The failing checks that only this runtime needs (what rules it in or out)."""
    return [c.name for c in checks if c.needed_by == frozenset({runtime}) and not c.ok]


def pick_runtime(checks: list[Check], setting: str) -> tuple[str | None, str]:
    """Which runtime ``setting`` (auto|microsandbox|docker) resolves to, and why."""
    if setting != "auto":
        bad = _missing_for(checks, setting)
        return setting, f"set to {setting}" + (f"; failing: {', '.join(bad)}" if bad else "")
    ms_missing = _missing_for(checks, MICROSANDBOX)
    if not ms_missing:
        return MICROSANDBOX, "microVMs can boot here (microsandbox, KVM and CPU virtualization present)"
    docker_missing = _missing_for(checks, DOCKER)
    if not docker_missing:
        return DOCKER, f"microVMs cannot boot here ({', '.join(ms_missing)} ✗) and the Docker engine answers"
    return None, (f"neither runtime can work: microsandbox needs {', '.join(ms_missing)}; "
                  f"Docker needs {', '.join(docker_missing)}")


def run_doctor(settings: Settings, *, as_json: bool = False) -> int:
    checks = collect_checks(settings)
    chosen, why = pick_runtime(checks, settings.runtime)
    ok = chosen is not None and all(c.ok for c in checks if chosen in c.needed_by)
    if as_json:
        console.emit_json({
            "ok": ok,
            "runtime": {"setting": settings.runtime, "chosen": chosen, "why": why},
            "checks": [c.as_dict() for c in checks],
        })
    else:
        rows = [(console.OK if c.ok else console.BAD, c.name, c.detail, "" if c.ok else c.fix) for c in checks]
        console.print_table(rows, headers=("", "check", "result", "what to do"))
        console.info()
        label = "auto → " if settings.runtime == "auto" else ""
        console.info(f"runtime: {label}{chosen or 'none'} ({why})")
        console.info(f"{console.OK} {chosen} can work here" if ok else f"{console.BAD} the chosen runtime cannot work here")
    return 0 if ok else 1
