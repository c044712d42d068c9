"""The version gate for a platform this host cannot run: each program under qemu-user.

The image of another platform cannot run in a container here, so its programs run under
Debian's ``qemu-user-static`` (``qemu-aarch64-static -L ROOT PROGRAM --version``), ``ROOT`` being that
platform's base image unpacked (once per base image id, in ``<cache>/rootfs/``): the dynamic
loader and the C library the programs will find in the image. A script (``#!``) runs under the
base's own interpreter, also under qemu. The programs are the files the image's ``COPY`` layers
hold (the staged build context). Where qemu-user is not installed, each program's ELF header is
checked instead (its architecture), and one line says so.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import tempfile
from pathlib import Path

from openwork_sandbox.core import processes
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.core.platforms import ELF_NAMES, QEMU_USER, Platform, elf_arch

VERSION_TIMEOUT = 180.0  # seconds one program's --version may take under emulation


def base_rootfs(cache_dir: Path, base_id: str) -> Path:
    """The base image's files, unpacked once per image id (``docker export`` of a created container,
    into ``tar``); a base that cannot be unpacked is a one-line WorkflowError."""
    root = cache_dir / "rootfs" / base_id.split(":")[-1][:24]
    if (root / ".complete").exists():
        return root
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cid = processes.docker("create", base_id, "/bin/true").stdout.strip()
    try:
        with processes.stream_bytes(
            ["docker", "export", cid],
            finish_timeout=60,
            check=False,
            progress=f"unpacking base {base_id[:19]} for qemu-user",
        ) as export:
            untar = processes.run(
                ["tar", "-x", "-C", str(root), "--no-same-owner", "--exclude=dev/*"],
                stdin=export.stdout,
                timeout=600,
                check=False,
                text=False,
            )
    finally:
        processes.docker("rm", cid, check=False)
    if export.returncode != 0 or untar.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise WorkflowError(
            f"cannot unpack base {base_id[:19]}: {untar.stderr.decode(errors='replace').strip()[-200:]}"
        )
    (root / ".complete").write_text("")
    return root


def _interpreter(root: Path, program: Path) -> list[str] | None:
    """For a ``#!`` script: the argv that runs it with the base's interpreter; None for a binary. A
    script whose interpreter the base does not have is a one-line WorkflowError."""
    with open(program, "rb") as f:
        head = f.readline(256)
    if not head.startswith(b"#!"):
        return None
    words = head[2:].decode(errors="replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env" and len(words) > 1:
        words = words[1:]
        for folder in ("usr/local/bin", "usr/bin", "bin"):
            if (root / folder / words[0]).exists():
                words[0] = f"/{folder}/{words[0]}"
                break
    inside = root / words[0].lstrip("/")
    real = _resolve_inside(root, inside)
    if real is None:
        raise WorkflowError(f"{program.name} is a script for {words[0]}, which the base does not have")
    return [str(real), *words[1:]]


def _resolve_inside(root: Path, path: Path) -> Path | None:
    """Follow symlinks as the image would (absolute links are relative to the root)."""
    for _ in range(20):
        if not path.is_symlink():
            return path if path.exists() else None
        target = os.readlink(path)
        path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
    return None


def check(cache_dir: Path, plat: Platform, base_id: str, programs: dict[str, Path]) -> tuple[dict[str, str], str]:
    """Each program's ``--version`` output (``{name: output}``, ``""`` for a program that failed or did
    not answer within :data:`VERSION_TIMEOUT`) and one line saying how it was checked. Without
    qemu-user there are no outputs, and a program of another architecture is a one-line WorkflowError."""
    qemu = processes.which(QEMU_USER.get(plat.arch, ""))
    if qemu is None:
        wrong = {name: elf_arch(_head(path)) for name, path in programs.items()}
        bad = [f"{n} ({a})" for n, a in wrong.items() if a not in (None, plat.arch)]
        if bad:
            raise WorkflowError(f"{plat} programs of another architecture: {', '.join(bad)}")
        return {}, (
            f"{QEMU_USER.get(plat.arch)} is not installed (Debian: qemu-user-static): checked instead that the "
            f"{plat} programs are {ELF_NAMES[plat.arch]} ELF files (or scripts), not their --version"
        )
    root = base_rootfs(cache_dir, base_id)
    home = tempfile.mkdtemp(prefix="ow-qemu-home-")
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(programs) or 1) as pool:
            futures = {name: pool.submit(_version, qemu, root, path, home) for name, path in programs.items()}
            outputs = {name: f.result() for name, f in futures.items()}
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return outputs, f"ran each {plat} program's --version under {os.path.basename(qemu)}"


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(20)


def _version(qemu: str, root: Path, program: Path, home: str) -> str:
    """``program --version`` under ``qemu`` on ``root`` (stdout and stderr); ``""`` when it fails or times out."""
    interpreter = _interpreter(root, program)
    argv = [*(interpreter + [str(program)] if interpreter else [str(program)]), "--version"]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8"}
    try:
        proc = processes.qemu_user(qemu, root, argv, env=env, timeout=VERSION_TIMEOUT)
    except processes.CommandTimeout:
        return ""
    return (proc.stdout + " " + proc.stderr) if proc.returncode == 0 else ""
