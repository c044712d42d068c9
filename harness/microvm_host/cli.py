#!/usr/bin/env python3
"""An emulated host where real microVMs boot: for laptops and runners without nested virtualization.

    scripts/microvm-host run [--] CMD...   run CMD inside the emulated host, in a copy of this checkout
                         (run --no-image -- CMD: without loading any image, for a quick look)
    scripts/microvm-host e2e               run the scenario (scripts/microvm-e2e) there
    scripts/microvm-host build [--force]   only make (or remake) the emulated host's disk

The emulated host is QEMU's software CPU (TCG, ``-cpu max``: AMD SVM with nested paging) running a
Debian bookworm made with debootstrap from this machine's Debian mirror; ``kvm_amd`` loads there,
``/dev/kvm`` appears and microsandbox boots its microVMs inside it (measured recipe:
docs in the project's shared notes, "KVM inside an emulated host"). It is 14-25x slower than this
machine. The guest has no network device: everything inside talks to its own loopback (its Docker
engine and a registry on 127.0.0.1:5000, started by this checkout's ``scripts/services start``), and
files go in through the disk image and a 9p share.

``run`` puts a copy of this checkout (tracked and untracked-not-ignored files, as they are now) at
/src/openwork-sandbox with its Python dependencies in /opt/venv (first on PATH; the package is
installed editable from that path), ``docker load``s the image ``OPENWORK_MICROSANDBOX_IMAGE``
(taken from this machine's Docker engine with ``docker save``; without that variable: the e2e image,
whose ref ``scripts/microvm-image`` prints on its last stdout line) and, when that ref names the
guest's registry (127.0.0.1:5000/...), puts it in that registry's storage before the registry starts
(pushed here to a scratch registry: no docker push inside, where gzip runs 14-25x slower). ``e2e``
starts the scenario while the engine still loads the image (its first steps need only the
registry's copy; a step that runs docker waits for MICROVM_HOST_IMAGE_LOAD_RC). It passes through every
``OPENWORK_*``, ``MSB_*`` and ``MICROVM_E2E_*`` variable and ``CI``/``GITHUB_ACTIONS``, runs CMD as root there, streams
its stdout and stderr here and exits with its exit code.

Exit codes: CMD's own; 2 bad usage or a missing input (one line says which); 69 the harness could
not make or start the emulated host (a build step, the guest's services); 75 the emulated host
failed twice (froze: no heartbeat; panicked: "Kernel panic"/"BUG:"/"Oops" on its console; or QEMU
died): an emulation fault, not a failure of the project; 124 CMD did not finish within
MICROVM_HOST_TIMEOUT seconds; 130 interrupted.

Cache: .state/microvm-host/ (MICROVM_HOST_CACHE overrides): guest/<key>/ (disk, kernel, initramfs;
the key hashes the package lists, the Debian mirror, the kernel's candidate version, the wheel set,
pyproject.toml and this build recipe), wheels/<hash>/ (pip download), images/<id>.tar (docker save,
by image id), images/<id>-<ref hash>.registry.tar (the registry's storage holding it), runs/ (the
share, overlay disk and console log of the last runs; a failed run's are kept for reading). Knobs: MICROVM_HOST_TIMEOUT (default 2400 s), MICROVM_HOST_STALL_SECONDS (no
heartbeat for this long = frozen; 120), MICROVM_HOST_BOOT_SECONDS (first heartbeat; 300),
MICROVM_HOST_MEMORY (8G), MICROVM_HOST_CPUS (1), MICROVM_HOST_CPU (QEMU's -cpu, max), MICROVM_HOST_ACCEL
(QEMU's -accel, tcg,thread=multi,tb-size=1024; with thread=single no nested microVM became ready), DEBIAN_MIRROR
(else the apt sources).

What the guest's scripts get: scripts/microvm-image runs here, in this checkout, with no arguments
(its stdout is shown; its last non-empty stdout line is the image's ref). CMD (and scripts/microvm-e2e)
runs as root in the guest, cwd /src/openwork-sandbox, stdin /dev/null, with PATH=/opt/venv/bin:...,
HOME=/root, PYTHONUNBUFFERED=1, MICROVM_HOST_GUEST=1, MICROVM_HOST_OUT=/share/out (a folder for files to
read after the run: it is kept on this machine under runs/), OPENWORK_MICROSANDBOX_IMAGE set to the loaded
image, the emulated host's task settings unless passed through (OPENWORK_HEALTH_TIMEOUT=900,
OPENWORK_REQUEST_TIMEOUT=300, OPENWORK_MICROSANDBOX_CPUS=1: EMULATED_HOST_SETTINGS), the services of `scripts/services start` up (OPENWORK_SERVICES_DIR=/var/lib/microvm-services)
and /dev/kvm mode 0666.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUEST_CHECKOUT = "/src/openwork-sandbox"
GUEST_VENV = "/opt/venv"

EXIT_USAGE = 2
EXIT_HARNESS = 69
EXIT_HOST_FAILED = 75
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130

# What the emulated host is made of. debootstrap's set is the measured one; the rest comes with apt
# in a chroot (apt resolves docker.io's dependencies, debootstrap's resolver is not made for that).
DEBOOTSTRAP_INCLUDE = ("kmod", "udev", "python3", "python3-venv", "python3-pip", "ca-certificates", "procps",
                       "iproute2", "linux-image-amd64", "initramfs-tools", "e2fsprogs")
# what scripts/services wants to find (so it installs nothing), what the scenario uses (useradd,
# setpriv, sudo), and tini as PID 1 (reaps the orphans of every daemon)
APT_PACKAGES = ("docker.io", "docker-registry", "skopeo", "debootstrap", "curl", "apache2-utils", "openssl",
                "qemu-user-static", "sudo", "passwd", "util-linux", "tini", "iptables", "less")
EXTRA_WHEELS = ("setuptools", "wheel")  # the editable install of the checkout, offline
HOST_PACKAGES = {"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils", "debootstrap": "debootstrap",
                 "mkfs.ext4": "e2fsprogs"}
DISK_SIZE = "16G"
ACCEL = "tcg,thread=multi,tb-size=1024"  # QEMU's -accel (MICROVM_HOST_ACCEL overrides)
# One vCPU (MICROVM_HOST_CPUS overrides): with two, the emulated host's kernel broke ("stack guard page
# was hit" in the KVM vCPU thread) in 8 of about 18 boots, each during an `up`; with one, in none of
# the runs since (about 15 boots), at about half the speed. A run that finishes beats a fast one.
CPUS = "1"

# The guest's /sbin/microvm-init: mounts the share and hands over to the init script of the run
# (written by the host each run, so changing it needs no rebuild).
GUEST_STUB_INIT = """#!/bin/sh
# PID 1 of the emulated host (scripts/microvm-host): the run's own init comes through the 9p share
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sys /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null  # the kernel may have mounted it already
modprobe 9pnet_virtio 2>/dev/null; modprobe 9p 2>/dev/null
mkdir -p /share
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 share /share; then
  echo "microvm-init: cannot mount the 9p share" >/dev/console
  echo o >/proc/sysrq-trigger; sleep 60
fi
exec /usr/bin/tini -s -- /bin/bash /share/init.sh
"""

# Lines on the emulated host's console that mean it is broken (an emulation fault: see the notes).
PANIC_PATTERNS = (  # at the start of a kernel line (after its timestamp and an optional "watchdog: ")
    re.compile(r"^(?:\[\s*\d+\.\d+\]\s*)?(?:[\w-]+: )?(?:BUG: |kernel BUG at |Kernel panic - not syncing|Oops: "
               r"|general protection fault)"),
)


def say(msg: str) -> None:
    print(f"microvm-host: {msg}", file=sys.stderr, flush=True)


class HarnessError(Exception):
    """The harness itself could not do its part (exit 69, or 2 for usage)."""

    def __init__(self, msg: str, code: int = EXIT_HARNESS):
        super().__init__(msg)
        self.code = code


# --- pure logic (tested in tests/test_microvm_host.py) ---------------------------------------------

def input_key(material: dict) -> str:
    """The cache key of the guest: a hash over every input, independent of dict order."""
    blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def panic_line(text: str) -> str | None:
    """The first console line that says the emulated host's kernel broke, if any."""
    for line in text.splitlines():
        if any(p.search(line) for p in PANIC_PATTERNS):
            return line.strip()
    return None


class ConsoleWatch:
    """Feeds the console log in chunks (a line may be split across reads) and finds a panic line."""

    def __init__(self) -> None:
        self._partial = ""
        self.fatal: str | None = None
        self.tail: list[str] = []

    def feed(self, chunk: str) -> str | None:
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            line = line.rstrip("\r")
            self.tail = (self.tail + [line])[-30:]
            if self.fatal is None:
                self.fatal = panic_line(line)
        return self.fatal


def host_verdict(now: float, started: float, last_beat: float | None, boot_seconds: float,
                 stall_seconds: float) -> str | None:
    """Why the emulated host counts as frozen at NOW, or None while it looks alive.

    Before its first heartbeat it has BOOT_SECONDS from STARTED; after, STALL_SECONDS between beats."""
    if last_beat is None:
        if now - started > boot_seconds:
            return f"no heartbeat within {boot_seconds:.0f} s of starting QEMU (froze while booting)"
        return None
    if now - last_beat > stall_seconds:
        return f"no heartbeat for {now - last_beat:.0f} s (froze)"
    return None


def passthrough_env(environ: dict) -> dict:
    """The variables that go into the guest: OPENWORK_*, MSB_*, MICROVM_E2E_* (the scenario's knobs),
    CI, GITHUB_ACTIONS."""
    return {k: v for k, v in environ.items()
            if k.startswith(("OPENWORK_", "MSB_", "MICROVM_E2E_")) or k in ("CI", "GITHUB_ACTIONS")}


def env_script(env: dict) -> str:
    """A bash file that exports ENV exactly (any value, quoted)."""
    bad = [k for k in env if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
    if bad:
        raise HarnessError(f"cannot pass variable {bad[0]!r} into the guest (not a shell name)", EXIT_USAGE)
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))


def requirements(pyproject: dict) -> list[str]:
    """The wheel set's requirement lines: the project's dependencies and its test extra, plus the
    editable install's setuptools and wheel. As pyproject.toml says them (not pinned to what this
    machine has installed: the guest can be built before or while this machine installs them)."""
    project = pyproject.get("project", {})
    reqs = list(project.get("dependencies", [])) + list(project.get("optional-dependencies", {}).get("test", []))
    names = {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in reqs}
    reqs += [r for r in EXTRA_WHEELS if r not in names]
    return sorted(set(reqs), key=str.lower)


def checkout_files(root: Path, listed: list[str]) -> list[str]:
    """The files of the checkout copy: what git lists (tracked + untracked-not-ignored) that exists
    now (a deleted tracked file is left out), never the harness's own cache."""
    return sorted(p for p in listed if p and not p.startswith(".state/")
                  and ((root / p).is_symlink() or (root / p).is_file()))


def figures_line(fig: dict) -> str:
    parts = []
    for key, label in (("guest", "guest"), ("build_s", "guest build s"), ("image_save_s", "image save s"),
                       ("registry_seed_s", "registry seed s"), ("boot_to_init_s", "boot to init s"), ("guest_uptime_at_init_s", "guest uptime at init s"),
                       ("services_s", "services s"), ("image_load_s", "image load s"),
                       ("cmd_s", "command s"), ("total_s", "total s"), ("attempts", "attempts")):
        if key in fig:
            value = fig[key]
            parts.append(f"{label}={value:.1f}" if isinstance(value, float) else f"{label}={value}")
    return "harness figures: " + " ".join(parts)


# --- host side: packages, inputs, cache ------------------------------------------------------------

def cache_dir() -> Path:
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
    run_logged([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "-d", str(tmp),
                "-r", str(tmp / "requirements.txt")], cache_dir() / "pip.log", "pip download")
    (tmp / ".complete").write_text("")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    for other in folder.parent.iterdir():  # the wheels of earlier requirement sets
        if other != folder and not other.name.endswith(".partial"):
            shutil.rmtree(other, ignore_errors=True)
    return folder


def recipe_source() -> str:
    """This build recipe's own text: the functions and constants that make the guest's disk."""
    parts = [inspect.getsource(build_guest), inspect.getsource(_chroot_install), GUEST_STUB_INIT,
             repr(DEBOOTSTRAP_INCLUDE), repr(APT_PACKAGES), repr(EXTRA_WHEELS), DISK_SIZE, GUEST_CHECKOUT, GUEST_VENV]
    return "\n".join(parts)


def guest_material(wheels: Path, mirror: str) -> dict:
    return {
        "recipe": hashlib.sha256(recipe_source().encode()).hexdigest(),
        "mirror": mirror,
        "kernel": candidate_version("linux-image-amd64"),
        "docker": candidate_version("docker.io"),
        "wheels": sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in wheels.glob("*.whl")),
        "pyproject": hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest(),
    }


def git_listed(root: Path) -> list[str] | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, timeout=60)
    except OSError:
        return None
    if out.returncode != 0:
        return None
    return sorted(set(out.stdout.decode().split("\0")))


def checkout_tar(dest: Path) -> int:
    """This checkout as it is in the working tree, as a tar; returns the number of files."""
    listed = git_listed(ROOT)
    if listed is None:  # not a git checkout: everything but caches and state
        listed = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                  if not {".git", ".state", "__pycache__", "reports", ".pytest_cache"} & set(p.relative_to(ROOT).parts)]
    files = checkout_files(ROOT, listed)
    with tarfile.open(dest, "w") as tar:
        for rel in files:
            tar.add(ROOT / rel, arcname=rel, recursive=False)
    return len(files)


# --- the guest's disk ------------------------------------------------------------------------------

def _chroot_install(rootfs: Path, log: Path, wheels: Path) -> None:
    """apt packages, the venv with the wheels, the editable checkout, the init stub (in a chroot)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8",
           "HOME": "/root"}
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
        for src, dst, args in (("proc", "proc", ["-t", "proc"]), ("sysfs", "sys", ["-t", "sysfs"]),
                               ("/dev", "dev", ["--bind"]), ("/dev/pts", "dev/pts", ["--bind"])):
            subprocess.run(["mount", *args, src, str(rootfs / dst)], check=True)
            mounts.append(rootfs / dst)
        chroot = ["chroot", str(rootfs)]
        run_logged([*chroot, "apt-get", "update", "-q"], log, "building guest: apt-get update", env=env)
        run_logged([*chroot, "apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES], log,
                   "building guest: apt-get install docker.io, docker-registry, ...", env=env)
        run_logged([*chroot, "apt-get", "clean"], log, "building guest: apt-get clean", env=env)
        # the venv with the wheels, and this checkout installed editable at its fixed path
        shutil.copytree(wheels, rootfs / "tmp" / "wheels")
        run_logged([*chroot, "python3", "-m", "venv", GUEST_VENV], log, "building guest: venv", env=env)
        pip = [*chroot, f"{GUEST_VENV}/bin/pip", "install", "--quiet", "--no-index", "--find-links", "/tmp/wheels",
               "--disable-pip-version-check"]
        run_logged([*pip, "-r", "/tmp/wheels/requirements.txt"], log, "building guest: pip install", env=env)
        checkout = rootfs / GUEST_CHECKOUT.lstrip("/")
        checkout.mkdir(parents=True)
        with tempfile.TemporaryDirectory() as tmp:
            checkout_tar(Path(tmp) / "c.tar")
            with tarfile.open(Path(tmp) / "c.tar") as tar:
                tar.extractall(checkout)
        run_logged([*pip, "--no-deps", "--no-build-isolation", "-e", GUEST_CHECKOUT], log,
                   "building guest: pip install -e the checkout", env=env)
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
    run_logged(["debootstrap", "--variant=minbase", f"--include={','.join(DEBOOTSTRAP_INCLUDE)}", "bookworm",
                str(rootfs), mirror], log, "building guest: debootstrap")
    _chroot_install(rootfs, log, wheels)
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise HarnessError(f"no kernel in {rootfs}/boot after the build; log {log}")
    version = kernels[-1].name[len("vmlinuz-"):]
    shutil.copy(kernels[-1], work / "vmlinuz")
    shutil.copy(rootfs / "boot" / f"initrd.img-{version}", work / "initrd.img")
    run_logged(["mkfs.ext4", "-q", "-d", str(rootfs), "-F", str(work / "root.img"), DISK_SIZE], log,
               "building guest: mkfs.ext4 -d")
    shutil.rmtree(rootfs)
    seconds = time.monotonic() - t0
    (work / "info.json").write_text(json.dumps({"key": key, "kernel": version, "build_s": round(seconds, 1),
                                                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                "material": material}, indent=1))
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


# --- the image ---------------------------------------------------------------------------------------

def resolve_image() -> str:
    ref = os.environ.get("OPENWORK_MICROSANDBOX_IMAGE", "").strip()
    if ref:
        return ref
    script = ROOT / "scripts" / "microvm-image"
    if not script.exists():
        raise HarnessError("OPENWORK_MICROSANDBOX_IMAGE is not set and scripts/microvm-image (which builds the e2e "
                           "image) does not exist yet: set OPENWORK_MICROSANDBOX_IMAGE to an image in the local "
                           "Docker engine", EXIT_USAGE)
    say("OPENWORK_MICROSANDBOX_IMAGE is not set: making the e2e image with scripts/microvm-image")
    proc = subprocess.Popen([str(script)], cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    last = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.strip():
            last = line.strip()
    if proc.wait() != 0 or not last:
        raise HarnessError(f"scripts/microvm-image failed (exit {proc.returncode}); it must print the image's ref "
                           "on its last stdout line")
    return last


def saved_image(ref: str) -> tuple[Path, str, dict]:
    """`docker save REF` as images/<id>.tar (kept by image id): (tar, id, figures)."""
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:
        raise HarnessError(f"OPENWORK_MICROSANDBOX_IMAGE={ref} is not in the local Docker engine: build it "
                           "(invoke build-image) or pull it first", EXIT_USAGE)
    image_id = proc.stdout.strip()
    folder = cache_dir() / "images"
    folder.mkdir(parents=True, exist_ok=True)
    tar = folder / f"{image_id.split(':')[-1]}.tar"
    if tar.exists():
        return tar, image_id, {"image_save_s": 0.0}
    t0 = time.monotonic()
    say(f"docker save {ref} ({image_id[:19]})")
    tmp = tar.with_suffix(".partial")
    run_logged(["docker", "save", "-o", str(tmp), ref], folder / "save.log", f"docker save {ref}")
    tmp.rename(tar)
    prune_images(folder)
    return tar, image_id, {"image_save_s": time.monotonic() - t0}


def prune_images(folder: Path, keep: int = 3) -> None:
    """Keep the KEEP newest image tars and, apart from them, the KEEP newest registry seeds."""
    seeds = list(folder.glob(f"*{SEED_SUFFIX}"))
    tars = [p for p in folder.glob("*.tar") if p not in seeds]
    for kind in (tars, seeds):
        for old in sorted(kind, key=lambda p: p.stat().st_mtime, reverse=True)[keep:]:
            old.unlink()


GUEST_REGISTRY = "127.0.0.1:5000"  # the registry `scripts/services start` runs in the guest
SEED_SUFFIX = ".registry.tar"


def registry_seed(ref: str, image_id: str) -> tuple[Path | None, dict]:
    """The guest registry's storage already holding REF, as images/<id>-<ref hash>.registry.tar, when
    REF names that registry: (tar or None, figures). Made by pushing REF from this machine's engine
    to a scratch registry (the same docker-registry, on a free loopback port, storage in a temporary
    folder) and packing its storage; the guest unpacks it before its registry starts. So microsandbox
    in the guest pulls REF from its first request, and no `docker push` there has to gzip every layer
    at the emulated host's speed (84-126 s for the 265 MB e2e image)."""
    if not ref.startswith(GUEST_REGISTRY + "/") or "@" in ref:
        return None, {}
    folder = cache_dir() / "images"
    tar = folder / f"{image_id.split(':')[-1]}-{hashlib.sha256(ref.encode()).hexdigest()[:12]}{SEED_SUFFIX}"
    if tar.exists():
        return tar, {"registry_seed_s": 0.0}
    registry = shutil.which("docker-registry")
    if registry is None:
        say("docker-registry is not installed here: the guest's docker push puts the image in its registry")
        return None, {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="registry-seed-", dir=folder) as tmp:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = Path(tmp) / "config.yml"
        config.write_text(f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {tmp}/data}}\n"
                          f"http: {{addr: 127.0.0.1:{port}}}\n")
        scratch = f"127.0.0.1:{port}/{ref[len(GUEST_REGISTRY) + 1:]}"
        log = folder / "registry-seed.log"
        with open(log, "ab") as out:
            server = subprocess.Popen([registry, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            say(f"putting {ref} into the guest registry's storage (docker push to a scratch registry)")
            run_logged(["docker", "tag", image_id, scratch], log, "docker tag")
            try:
                run_logged(["docker", "push", scratch], log, f"docker push {scratch}")
            finally:
                subprocess.run(["docker", "rmi", scratch], capture_output=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
        partial = tar.with_suffix(".partial")
        with tarfile.open(partial, "w") as out:
            out.add(Path(tmp) / "data", arcname=".")
        partial.rename(tar)
    prune_images(folder)
    return tar, {"registry_seed_s": time.monotonic() - t0}


# --- one boot ------------------------------------------------------------------------------------------

GUEST_INIT = r"""#!/bin/bash
# The run's init in the emulated host (scripts/microvm-host writes it into the share each run).
S=/share
exec >/dev/console 2>&1
log() { echo "microvm-init: $*"; }
phase() { echo "$1 $(cut -d' ' -f1 /proc/uptime)" >>"$S/phases"; }
poweroff_now() { sync; echo o >/proc/sysrq-trigger; sleep 60; }
setup_failed() { log "setup failed: $*"; collect; echo "$*" >"$S/setup-failed"; poweroff_now; }
collect() {
  mkdir -p "$S/logs"
  for f in /var/lib/microvm-services/dockerd.log /var/lib/microvm-services/registry.log; do
    [ -f "$f" ] && tail -c 200000 "$f" >"$S/logs/$(basename "$f")"
  done
  dmesg >"$S/logs/dmesg.txt" 2>/dev/null
}
trap 'collect; poweroff_now' EXIT
phase init
mkdir -p /dev/pts /dev/shm /run /tmp /sys/fs/cgroup
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for l in fd:/proc/self/fd stdin:/proc/self/fd/0 stdout:/proc/self/fd/1 stderr:/proc/self/fd/2; do
  [ -e "/dev/${l%%:*}" ] || ln -s "${l#*:}" "/dev/${l%%:*}"
done
hostname microvm-host
ip link set lo up || setup_failed "cannot bring up loopback"
( n=0; while :; do n=$((n+1)); echo "$n $(cut -d' ' -f1 /proc/uptime)" >"$S/heartbeat.tmp" && mv -f "$S/heartbeat.tmp" "$S/heartbeat"; sleep 3; done ) &
modprobe kvm_amd || setup_failed "modprobe kvm_amd failed (does the QEMU CPU offer svm?)"
for i in $(seq 50); do [ -c /dev/kvm ] && break; sleep 0.1; done
[ -c /dev/kvm ] || setup_failed "no /dev/kvm after modprobe kvm_amd"
chmod 0666 /dev/kvm
modprobe overlay 2>/dev/null; modprobe br_netfilter 2>/dev/null; modprobe vhost_vsock 2>/dev/null
phase kvm
source "$S/env.sh"
rm -rf "@CHECKOUT@"/* "@CHECKOUT@"/.[!.]* 2>/dev/null
tar -C "@CHECKOUT@" -xf "$S/checkout.tar" || setup_failed "cannot unpack the checkout"
phase checkout
cd "@CHECKOUT@"
if [ -f "$S/registry.tar" ]; then  # the registry's storage with the image in it, before the registry starts
  mkdir -p /var/lib/microvm-services/registry-data
  tar -C /var/lib/microvm-services/registry-data -xf "$S/registry.tar" || setup_failed "cannot unpack the registry's storage"
fi
OPENWORK_SERVICES_DIR=/var/lib/microvm-services OPENWORK_SERVICES_WAIT=${OPENWORK_SERVICES_WAIT:-300} \
  scripts/services start || setup_failed "scripts/services start failed in the emulated host (dockerd or the registry)"
phase services
load_image() {  # prints why it failed; the "image" phase marks its end
  mkdir -p "$S/logs"
  ( while :; do { date; top -bn1 | head -20; } >>"$S/logs/top-during-load.txt"; sleep 20; done ) >/dev/null 2>&1 & top_pid=$!
  docker load -i "$S/image.tar" >"$S/logs/image-load.txt" 2>&1 || { kill $top_pid; echo "docker load of the image failed: $(tail -1 "$S/logs/image-load.txt")"; return 1; }
  kill $top_pid 2>/dev/null
  ref=$(cat "$S/image-ref"); id=$(cat "$S/image-id")
  case "$ref" in *@*) ;; *) docker tag "$id" "$ref" || { echo "docker tag $id $ref failed"; return 1; } ;; esac
  phase image
}
if [ ! -f "$S/image.tar" ]; then
  phase image
elif [ -f "$S/load-in-background" ]; then  # the command waits for $S/image-load.rc when it needs the engine's copy
  ( why=$(load_image); rc=$?; echo "$why" >"$S/image-load.why"; echo $rc >"$S/image-load.rc" ) &
else
  why=$(load_image) || setup_failed "$why"
fi
mapfile -d '' -t cmd <"$S/cmd"
log "running: ${cmd[*]}"
phase cmd-start
( cd "@CHECKOUT@" && exec "${cmd[@]}" ) >"$S/stdout" 2>"$S/stderr" </dev/null
rc=$?
phase cmd-end
echo "$rc" >"$S/rc.tmp" && mv -f "$S/rc.tmp" "$S/rc"
log "command exited $rc; powering off"
"""


class Attempt:
    """One boot of the emulated host running CMD. Result: ('done', rc) or ('host', reason) or
    ('setup', reason) or ('timeout', reason)."""

    def __init__(self, guest: Path, run_dir: Path, deadline: float):
        self.guest = guest
        self.run_dir = run_dir
        self.share = run_dir / "share"
        self.deadline = deadline
        self.qemu: subprocess.Popen | None = None
        self.phases: dict[str, float] = {}
        self.first_beat_at: float | None = None

    def start(self) -> None:
        disk = self.run_dir / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.guest / "root.img"),
                        str(disk)], check=True, timeout=60)
        cmd = ["qemu-system-x86_64", "-accel", os.environ.get("MICROVM_HOST_ACCEL", ACCEL), "-cpu", os.environ.get("MICROVM_HOST_CPU", "max"),
               "-smp", os.environ.get("MICROVM_HOST_CPUS", CPUS), "-m", os.environ.get("MICROVM_HOST_MEMORY", "8G"),
               "-kernel", str(self.guest / "vmlinuz"), "-initrd", str(self.guest / "initrd.img"),
               "-append", "root=/dev/vda rw console=ttyS0 init=/sbin/microvm-init mitigations=off panic=-1",
               "-drive", f"file={disk},if=virtio,format=qcow2,cache=unsafe",
               "-virtfs", f"local,path={self.share},mount_tag=share,security_model=none,id=share",
               "-nic", "none", "-display", "none", "-monitor", "none", "-serial", f"file:{self.run_dir / 'serial.log'}",
               "-no-reboot", "-pidfile", str(self.run_dir / "qemu.pid")]
        (self.run_dir / "serial.log").write_text("")
        self.qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(self.run_dir / "qemu.log", "wb"),
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, start_new_session=True)

    def stop(self) -> None:
        if self.qemu and self.qemu.poll() is None:
            self.qemu.terminate()
            try:
                self.qemu.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.qemu.kill()
                self.qemu.wait()

    def _read_phases(self) -> None:
        path = self.share / "phases"
        if path.exists():
            for line in path.read_text().splitlines():
                name, _, uptime = line.partition(" ")
                if name and name not in self.phases:
                    try:
                        self.phases[name] = float(uptime)
                    except ValueError:
                        pass
                    say(f"emulated host: {name} (guest uptime {uptime} s)")

    def watch(self) -> tuple[str, object]:
        started = time.monotonic()
        boot_s = float(os.environ.get("MICROVM_HOST_BOOT_SECONDS", "300"))
        stall_s = float(os.environ.get("MICROVM_HOST_STALL_SECONDS", "120"))
        console = ConsoleWatch()
        outs = {"stdout": (self.share / "stdout", sys.stdout.buffer), "stderr": (self.share / "stderr", sys.stderr.buffer)}
        positions = {"stdout": 0, "stderr": 0, "serial": 0}
        last_beat_text, last_beat = None, None
        last_print = time.monotonic()
        fatal_at = None

        def drain() -> bool:
            nonlocal last_print
            wrote = False
            for name, (path, sink) in outs.items():
                if path.exists():
                    with open(path, "rb") as fh:
                        fh.seek(positions[name])
                        data = fh.read()
                    if data:
                        positions[name] += len(data)
                        sink.write(data)
                        sink.flush()
                        wrote = True
            if wrote:
                last_print = time.monotonic()
            return wrote

        while True:
            now = time.monotonic()
            drain()
            with open(self.run_dir / "serial.log", "rb") as fh:
                fh.seek(positions["serial"])
                chunk = fh.read()
            positions["serial"] += len(chunk)
            if chunk and console.feed(chunk.decode(errors="replace")) and fatal_at is None:
                fatal_at = now
            beat = self.share / "heartbeat"
            try:
                text = beat.read_text()
            except OSError:
                text = None
            if text and text != last_beat_text:
                last_beat_text, last_beat = text, now
                if self.first_beat_at is None:
                    self.first_beat_at = now - started
            self._read_phases()
            if (self.share / "rc").exists():
                drain()
                try:
                    self.qemu.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
                return "done", int((self.share / "rc").read_text().strip() or 1)
            if (self.share / "setup-failed").exists():
                return "setup", (self.share / "setup-failed").read_text().strip()
            if fatal_at is not None and (now - fatal_at > 3 or self.qemu.poll() is not None):
                return "host", f"its kernel broke: {console.fatal}"
            if self.qemu.poll() is not None:
                time.sleep(0.5)
                drain()
                if (self.share / "rc").exists():
                    continue
                try:
                    qemu_log = (self.run_dir / "qemu.log").read_text(errors="replace").strip()[-300:]
                except OSError:
                    qemu_log = ""
                tail = " | ".join(line for line in console.tail[-3:] if line.strip())
                return "host", (f"QEMU exited (code {self.qemu.returncode}) before the command finished"
                                + (f"; qemu: {qemu_log}" if qemu_log else "") + (f"; console: {tail}" if tail else ""))
            frozen = host_verdict(now, started, last_beat, boot_s, stall_s)
            if frozen:
                return "host", frozen
            if now > self.deadline:
                return "timeout", "the command did not finish in time"
            if now - last_print >= 10:
                where = max(self.phases, key=self.phases.get) if self.phases else "booting"
                beat_age = f"heartbeat {now - last_beat:.0f} s ago" if last_beat else "no heartbeat yet"
                say(f"waiting: {now - started:.0f} s since boot, last step '{where}', {beat_age}")
                last_print = now
            time.sleep(0.5)


def _die_with_parent() -> None:
    """QEMU dies with the harness, even when the harness is killed (PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


def prepare_share(run_dir: Path, argv: list[str], env: dict, image: tuple[Path, str, str] | None,
                  seed: Path | None = None, load_in_background: bool = False) -> None:
    share = run_dir / "share"
    share.mkdir(parents=True)
    (share / "init.sh").write_text(GUEST_INIT.replace("@CHECKOUT@", GUEST_CHECKOUT))
    (share / "cmd").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    (share / "env.sh").write_text(env_script(env))
    checkout_tar(share / "checkout.tar")
    if image:
        tar, image_id, ref = image
        link_or_copy(tar, share / "image.tar")
        (share / "image-id").write_text(image_id)
        (share / "image-ref").write_text(ref)
        if load_in_background:
            (share / "load-in-background").write_text("")
    if seed is not None:
        link_or_copy(seed, share / "registry.tar")


def link_or_copy(src: Path, dest: Path) -> None:
    """A hard link (the cache and the runs share a filesystem, usually), else a copy."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy(src, dest)


# The settings every task needs in the emulated host (measured there, 14-25x slower than this machine),
# given to CMD unless this machine's environment sets them: starts take 7-11 minutes, so a 900 s health
# deadline; the first request to opencode after a start takes 89 to over 120 s; and a nested microVM with
# two vCPUs was stopped by its emulated CPU (KVM_EXIT_SHUTDOWN) in most boots, one vCPU in none.
EMULATED_HOST_SETTINGS = {"OPENWORK_HEALTH_TIMEOUT": "900", "OPENWORK_REQUEST_TIMEOUT": "300",
                          "OPENWORK_MICROSANDBOX_CPUS": "1"}


def guest_env(image_ref: str | None, load_in_background: bool = False) -> dict:
    env = {**EMULATED_HOST_SETTINGS, **passthrough_env(dict(os.environ))}
    if image_ref:
        env["OPENWORK_MICROSANDBOX_IMAGE"] = image_ref
    if image_ref and load_in_background:
        env["MICROVM_HOST_IMAGE_LOAD_RC"] = "/share/image-load.rc"
    env.update({"PATH": f"{GUEST_VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": "/root", "USER": "root", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
                "VIRTUAL_ENV": GUEST_VENV, "MICROVM_HOST_GUEST": "1", "MICROVM_HOST_OUT": "/share/out"})
    return env


def run_in_use(run_dir: Path) -> bool:
    """Its QEMU still runs (another harness sharing MICROVM_HOST_CACHE): not to be pruned."""
    try:
        pid = int((run_dir / "qemu.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def prune_runs(runs: Path, keep: int = 3) -> None:
    """Keep the KEEP newest runs' logs, and every run whose QEMU still runs."""
    dirs = sorted((d for d in runs.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
    for old in dirs[keep:]:
        if not run_in_use(old):
            shutil.rmtree(old, ignore_errors=True)


def run(argv: list[str], figures_to=sys.stderr, with_image: bool = True, load_in_background: bool = False) -> int:
    """Run ARGV in the emulated host; the harness's figures line goes to FIGURES_TO at the end.
    LOAD_IN_BACKGROUND: ARGV starts while the guest's engine still loads the image (it is in the
    guest's registry already when it names it) and waits for MICROVM_HOST_IMAGE_LOAD_RC when it
    needs the engine's copy."""
    if not argv:
        raise HarnessError("usage: scripts/microvm-host run [--no-image] -- CMD...", EXIT_USAGE)
    t_total = time.monotonic()
    ensure_host_packages()
    image, ref, seed, fig_img = None, None, None, {}
    if with_image:
        ref = resolve_image()
        tar, image_id, fig_img = saved_image(ref)
        image = (tar, image_id, ref)
        seed, fig_seed = registry_seed(ref, image_id)
        fig_img.update(fig_seed)
    load_in_background = load_in_background and image is not None
    guest, fig = ensure_guest()
    fig.update(fig_img)
    env = guest_env(ref, load_in_background)
    runs = cache_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    timeout = float(os.environ.get("MICROVM_HOST_TIMEOUT", "2400"))
    deadline = time.monotonic() + timeout
    reasons, setup_failures = [], []
    for attempt_no in (1, 2):
        prune_runs(runs)
        run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%dT%H%M%S-"), dir=runs))
        prepare_share(run_dir, argv, env, image, seed, load_in_background)
        attempt = Attempt(guest, run_dir, deadline)
        say(f"booting the emulated host (attempt {attempt_no} of 2; console log {run_dir / 'serial.log'})")
        attempt.start()
        try:
            kind, detail = attempt.watch()
        finally:
            attempt.stop()
        fig["attempts"] = attempt_no
        p = attempt.phases
        if attempt.first_beat_at is not None:
            fig["boot_to_init_s"] = attempt.first_beat_at
        if "init" in p:
            fig["guest_uptime_at_init_s"] = p["init"]
        if "services" in p and "checkout" in p:
            fig["services_s"] = p["services"] - p["checkout"]
        if "image" in p and "services" in p:
            fig["image_load_s"] = p["image"] - p["services"]
        if "cmd-end" in p and "cmd-start" in p:
            fig["cmd_s"] = p["cmd-end"] - p["cmd-start"]
        fig["total_s"] = time.monotonic() - t_total
        (run_dir / "disk.qcow2").unlink(missing_ok=True)  # large; the logs are kept (the last runs')
        (run_dir / "share" / "image.tar").unlink(missing_ok=True)
        (run_dir / "share" / "registry.tar").unlink(missing_ok=True)
        if (run_dir / "share" / "out").is_dir():
            say(f"the command left files for reading in {run_dir / 'share' / 'out'}")
        if kind == "done":
            print(f"microvm-host: {figures_line(fig)}", file=figures_to, flush=True)
            return int(detail)
        if kind == "setup" and (attempt_no == 2 or time.monotonic() > deadline):
            raise HarnessError(f"the emulated host could not be set up: {detail} (logs: {run_dir / 'share' / 'logs'}, "
                               f"{run_dir / 'serial.log'})")
        if kind == "setup":
            say(f"the emulated host could not be set up (attempt 1 of 2): {detail}; retrying once (logs: {run_dir})")
            setup_failures.append(detail)
            continue
        if kind == "timeout":
            say(f"the command did not finish within MICROVM_HOST_TIMEOUT={timeout:.0f} s; logs: {run_dir}")
            return EXIT_TIMEOUT
        reasons.append(detail)
        if attempt_no == 1:
            say(f"emulated host failed (attempt 1 of 2): {detail}; retrying once (logs: {run_dir})")
    earlier = f"first: {reasons[0]}" if len(reasons) == 2 else f"attempt 1 could not be set up: {setup_failures[0]}"
    say(f"emulated host failed: {reasons[-1]} (twice; {earlier}); an emulation fault, not a failure of "
        f"the project (exit {EXIT_HOST_FAILED})")
    print(f"microvm-host: {figures_line(fig)}", file=figures_to, flush=True)
    return EXIT_HOST_FAILED


def e2e() -> int:
    if not (ROOT / "scripts" / "microvm-e2e").exists():
        raise HarnessError("scripts/microvm-e2e (the scenario) does not exist in this checkout", EXIT_USAGE)
    # the scenario's first steps need only the registry's copy: the engine's loads meanwhile
    return run(["scripts/microvm-e2e"], figures_to=sys.stdout, load_in_background=True)  # after its own last line


def main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0 if args else EXIT_USAGE
    cmd, rest = args[0], args[1:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    if cmd == "run":
        no_image = bool(rest) and rest[0] == "--no-image"
        if no_image:
            rest = rest[1:]
            if rest and rest[0] == "--":
                rest = rest[1:]
        return run(rest, with_image=not no_image)
    if cmd == "e2e":
        if rest:
            raise HarnessError("usage: scripts/microvm-host e2e (no arguments)", EXIT_USAGE)
        return e2e()
    if cmd == "build":
        ensure_host_packages()
        folder, fig = ensure_guest(force="--force" in rest)
        info = json.loads((folder / "info.json").read_text())
        say(f"✓ emulated host ready: {folder} ({fig['guest']}, kernel {info['kernel']}, built in {info['build_s']} s)")
        return 0
    raise HarnessError(f"unknown subcommand {cmd!r}: use run -- CMD..., e2e or build", EXIT_USAGE)


def _on_signal(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        sys.exit(main(sys.argv[1:]))
    except HarnessError as exc:
        say(str(exc))
        sys.exit(exc.code)
    except KeyboardInterrupt:
        say("interrupted; QEMU stopped")
        sys.exit(EXIT_INTERRUPTED)
