"""The host side of the emulated host: the harness's cache folder, running a build step with its
log, this machine's packages (QEMU, debootstrap), its Debian mirror and the guest's wheels."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness.common import ROOT
from harness.microvm_host.errors import EXIT_USAGE, HarnessError, say
from harness.microvm_host.logic import requirements

HOST_PACKAGES = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
}


def cache_dir() -> Path:
    """.state/microvm-host/ of this checkout, or MICROVM_HOST_CACHE."""
    return Path(os.environ.get("MICROVM_HOST_CACHE") or ROOT / ".state" / "microvm-host")


def run_logged(cmd: list[str], log: Path, what: str, **kw) -> None:
    """Run CMD with its output in LOG, printing a progress line every 10 s; fail with its tail."""
    t0 = time.monotonic()
    with open(log, "ab") as fh:
        fh.write(f"\n$ {shlex.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
        while True:
            try:
                rc = proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                say(f"{what}: {time.monotonic() - t0:.0f} s")
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise HarnessError(f"{what} failed (exit {rc}); log {log}:\n  " + "\n  ".join(tail))


def ensure_host_packages() -> None:
    """QEMU, qemu-img, debootstrap and mkfs.ext4 on this machine: installed with apt-get when missing
    and run as root; else a HarnessError naming them."""
    missing = sorted({pkg for cmd, pkg in HOST_PACKAGES.items() if not shutil.which(cmd)})
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise HarnessError(f"missing {' '.join(missing)}: install them (Debian: apt-get install {' '.join(missing)})")
    say(f"installing {' '.join(missing)} (Debian packages)")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log = cache / "apt.log"
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]  # another apt-get (scripts/setup) may hold the lock
    try:
        run_logged([*apt, "install", "-y", "-q", "--no-install-recommends", *missing], log, "apt-get install", env=env)
    except HarnessError:
        run_logged([*apt, "update", "-q"], log, "apt-get update", env=env)
        run_logged([*apt, "install", "-y", "-q", "--no-install-recommends", *missing], log, "apt-get install", env=env)


def debian_mirror() -> str:
    """DEBIAN_MIRROR, else the first non-security mirror of this machine's apt sources; raises a usage
    HarnessError when there is none."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            m = re.match(r"URIs:\s*(\S+)", line)
            if m and "security" not in m.group(1):
                return m.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[0] == "deb" and "security" not in line:
                return parts[1] if not parts[1].startswith("[") else parts[2]
    raise HarnessError("no Debian mirror in /etc/apt/sources.list.d/debian.sources: set DEBIAN_MIRROR", EXIT_USAGE)


def candidate_version(package: str) -> str:
    """The version apt would install here (this machine's lists: the same mirror), or ''."""
    try:
        out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"Candidate:\s*(\S+)", out)
    return m.group(1) if m and m.group(1) != "(none)" else ""


def wheel_dir() -> Path:
    """The wheels for the guest (pip download once per requirement set)."""
    import tomllib

    reqs = requirements(tomllib.loads((ROOT / "pyproject.toml").read_text()))
    digest = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:16]
    folder = cache_dir() / "wheels" / digest
    if (folder / ".complete").exists():
        return folder
    tmp = folder.with_name(digest + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "requirements.txt").write_text("\n".join(reqs) + "\n")
    say(f"downloading the guest's Python packages ({len(reqs)} requirements, with their dependencies)")
    run_logged(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "-d",
            str(tmp),
            "-r",
            str(tmp / "requirements.txt"),
        ],
        cache_dir() / "pip.log",
        "pip download",
    )
    (tmp / ".complete").write_text("")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    for other in folder.parent.iterdir():  # the wheels of earlier requirement sets
        if other != folder and not other.name.endswith(".partial"):
            shutil.rmtree(other, ignore_errors=True)
    return folder
