"""The emulated host's disk: a Debian bookworm made with debootstrap from this machine's Debian mirror,
then apt and pip in a chroot, packed with mkfs.ext4 into guest/<key>/ of the cache with its kernel
and initramfs. Built only when its inputs (``guest_material``) change; one is kept."""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from harness.common import ROOT
from harness.microvm_host.cache import cache_dir, candidate_version, debian_mirror, run_logged, wheel_dir
from harness.microvm_host.checkout import checkout_tar
from harness.microvm_host.errors import HarnessError, say
from harness.microvm_host.logic import EXTRA_WHEELS, GUEST_CHECKOUT, GUEST_VENV, input_key

# debootstrap's set makes a system that boots; the rest comes with apt in a chroot (apt resolves
# docker.io's dependencies, debootstrap's resolver is not made for that)
DEBOOTSTRAP_INCLUDE = (
    "kmod",
    "udev",
    "python3",
    "python3-venv",
    "python3-pip",
    "ca-certificates",
    "procps",
    "iproute2",
    "linux-image-amd64",
    "initramfs-tools",
    "e2fsprogs",
)
# what scripts/services wants to find (so it installs nothing), what the scenario uses (useradd,
# setpriv, sudo), and tini as PID 1 (reaps the orphans of every daemon)
APT_PACKAGES = (
    "docker.io",
    "docker-registry",
    "skopeo",
    "debootstrap",
    "curl",
    "apache2-utils",
    "openssl",
    "qemu-user-static",
    "sudo",
    "passwd",
    "util-linux",
    "tini",
    "iptables",
    "less",
)
DISK_SIZE = "16G"
# the disk's /sbin/microvm-init: mounts the share and hands over to the run's init script (written
# into the share each run, so changing that needs no rebuild)
GUEST_STUB_INIT = Path(__file__).with_name("microvm-init.sh").read_text()


def recipe_source() -> str:
    """This build recipe's own text: the functions and constants that make the guest's disk."""
    parts = [
        inspect.getsource(build_guest),
        inspect.getsource(_chroot_install),
        GUEST_STUB_INIT,
        repr(DEBOOTSTRAP_INCLUDE),
        repr(APT_PACKAGES),
        repr(EXTRA_WHEELS),
        DISK_SIZE,
        GUEST_CHECKOUT,
        GUEST_VENV,
    ]
    return "\n".join(parts)


def guest_material(wheels: Path, mirror: str) -> dict:
    """Every input of the guest's disk, for its cache key: the recipe, the mirror, the kernel's and
    docker's candidate versions there, the wheels, pyproject.toml."""
    return {
        "recipe": hashlib.sha256(recipe_source().encode()).hexdigest(),
        "mirror": mirror,
        "kernel": candidate_version("linux-image-amd64"),
        "docker": candidate_version("docker.io"),
        "wheels": sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in wheels.glob("*.whl")),
        "pyproject": hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest(),
    }


def _chroot_install(rootfs: Path, log: Path, wheels: Path) -> None:
    """apt packages, the venv with the wheels, the editable checkout, the init stub (in a chroot)."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "LANG": "C.UTF-8",
        "HOME": "/root",
    }
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        if k in os.environ:
            env[k] = os.environ[k]
    shutil.copy("/etc/resolv.conf", rootfs / "etc" / "resolv.conf")
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists() and not os.environ.get("DEBIAN_MIRROR"):
        shutil.copy(sources, rootfs / "etc/apt/sources.list.d/debian.sources")
        (rootfs / "etc/apt/sources.list").write_text("")
    policy = rootfs / "usr/sbin/policy-rc.d"  # no service starts in the chroot
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    mounts = []
    try:
        for src, dst, args in (
            ("proc", "proc", ["-t", "proc"]),
            ("sysfs", "sys", ["-t", "sysfs"]),
            ("/dev", "dev", ["--bind"]),
            ("/dev/pts", "dev/pts", ["--bind"]),
        ):
            subprocess.run(["mount", *args, src, str(rootfs / dst)], check=True)
            mounts.append(rootfs / dst)
        chroot = ["chroot", str(rootfs)]
        run_logged([*chroot, "apt-get", "update", "-q"], log, "building guest: apt-get update", env=env)
        run_logged(
            [*chroot, "apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES],
            log,
            "building guest: apt-get install docker.io, docker-registry, ...",
            env=env,
        )
        run_logged([*chroot, "apt-get", "clean"], log, "building guest: apt-get clean", env=env)
        # the venv with the wheels, and this checkout installed editable at its fixed path
        shutil.copytree(wheels, rootfs / "tmp" / "wheels")
        run_logged([*chroot, "python3", "-m", "venv", GUEST_VENV], log, "building guest: venv", env=env)
        pip = [
            *chroot,
            f"{GUEST_VENV}/bin/pip",
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            "/tmp/wheels",
            "--disable-pip-version-check",
        ]
        run_logged([*pip, "-r", "/tmp/wheels/requirements.txt"], log, "building guest: pip install", env=env)
        checkout = rootfs / GUEST_CHECKOUT.lstrip("/")
        checkout.mkdir(parents=True)
        with tempfile.TemporaryDirectory() as tmp:
            checkout_tar(Path(tmp) / "c.tar")
            with tarfile.open(Path(tmp) / "c.tar") as tar:
                tar.extractall(checkout)
        run_logged(
            [*pip, "--no-deps", "--no-build-isolation", "-e", GUEST_CHECKOUT],
            log,
            "building guest: pip install -e the checkout",
            env=env,
        )
    finally:
        for m in reversed(mounts):
            subprocess.run(["umount", "-l", str(m)])
    shutil.rmtree(rootfs / "tmp" / "wheels", ignore_errors=True)
    policy.unlink()
    # the apt sources and resolver name this machine's mirror and network: leave none behind
    (rootfs / "etc/apt/sources.list").write_text("")
    for p in (rootfs / "etc/apt/sources.list.d").glob("*"):
        p.unlink()
    (rootfs / "etc/resolv.conf").write_text("nameserver 127.0.0.1\n")
    for p in (rootfs / "var/lib/apt/lists").glob("*"):
        if p.is_file():
            p.unlink()
    stub = rootfs / "sbin" / "microvm-init"
    stub.write_text(GUEST_STUB_INIT)
    stub.chmod(0o755)
    (rootfs / "etc/hostname").write_text("microvm-host\n")
    (rootfs / "etc/hosts").write_text("127.0.0.1 localhost microvm-host\n::1 localhost ip6-localhost\n")
    (rootfs / "etc/fstab").write_text("")


def build_guest(key: str, material: dict, wheels: Path, mirror: str) -> Path:
    """Make guest/<KEY>/ (root.img, vmlinuz, initrd.img, info.json) from Debian and PyPI packages."""
    if os.geteuid() != 0:
        raise HarnessError("building the emulated host needs root (debootstrap, chroot, mount): run as root once")
    cache = cache_dir()
    final = cache / "guest" / key
    work = cache / "guest" / f"{key}.building"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "build.log"
    rootfs = work / "rootfs"
    t0 = time.monotonic()
    say(f"building the emulated host's disk (key {key}); log: {log}")
    run_logged(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(DEBOOTSTRAP_INCLUDE)}",
            "bookworm",
            str(rootfs),
            mirror,
        ],
        log,
        "building guest: debootstrap",
    )
    _chroot_install(rootfs, log, wheels)
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise HarnessError(f"no kernel in {rootfs}/boot after the build; log {log}")
    version = kernels[-1].name[len("vmlinuz-") :]
    shutil.copy(kernels[-1], work / "vmlinuz")
    shutil.copy(rootfs / "boot" / f"initrd.img-{version}", work / "initrd.img")
    run_logged(
        ["mkfs.ext4", "-q", "-d", str(rootfs), "-F", str(work / "root.img"), DISK_SIZE],
        log,
        "building guest: mkfs.ext4 -d",
    )
    shutil.rmtree(rootfs)
    seconds = time.monotonic() - t0
    (work / "info.json").write_text(
        json.dumps(
            {
                "key": key,
                "kernel": version,
                "build_s": round(seconds, 1),
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "material": material,
            },
            indent=1,
        )
    )
    shutil.rmtree(final, ignore_errors=True)
    work.rename(final)
    for other in (cache / "guest").iterdir():  # one guest is kept: the disks are large
        if other != final and not other.name.endswith(".building"):
            shutil.rmtree(other, ignore_errors=True)
    say(f"✓ emulated host's disk built in {seconds:.0f} s (kernel {version})")
    return final


def ensure_guest(force: bool = False) -> tuple[Path, dict]:
    """The guest for the current inputs: (folder, figures). Built only when the inputs changed."""
    mirror = debian_mirror()
    wheels = wheel_dir()
    material = guest_material(wheels, mirror)
    key = input_key(material)
    cache = cache_dir()
    (cache / "guest").mkdir(parents=True, exist_ok=True)
    with open(cache / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        final = cache / "guest" / key
        if not force and (final / "info.json").exists():
            return final, {"guest": f"cached({key})"}
        t0 = time.monotonic()
        folder = build_guest(key, material, wheels, mirror)
        return folder, {"guest": f"built({key})", "build_s": time.monotonic() - t0}
