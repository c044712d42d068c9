"""What ``bench-snapshot`` asks microsandbox and the snapshot's files: making a snapshot of the template
sandbox, its size, whether given bytes (the template's throw-away tokens) are anywhere in it, what
files its root-disk layer holds, and restoring a full (memory) snapshot. Each function runs its own
event loop (``asyncio.run``) and raises the SDK's errors unchanged, unless it says otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CHUNK = 8 << 20  # bytes read at a time when scanning a snapshot's files


@dataclass(frozen=True)
class Made:
    """A snapshot just made: its reference (a path) for ``Sandbox.restore``, the seconds
    ``Snapshot.create`` took, its size (logical: the layers' virtual size; allocated: what the disk
    holds, sparse holes left out) and the image digest it pins."""

    reference: str
    seconds: float
    logical: int | None
    allocated: int | None
    image_digest: str


def make_snapshot(name: str, source: str, *, full: bool = False) -> Made:
    """``Snapshot.create(NAME, from_sandbox=SOURCE)``: a disk snapshot of the stopped SOURCE, or with
    FULL its disk, memory and processes while it runs."""

    async def go() -> Made:
        from microsandbox import Snapshot

        began = time.monotonic()
        snap = await Snapshot.create(name, from_sandbox=source, full=full)
        seconds = time.monotonic() - began
        usage = await snap.storage_usage()
        return Made(snap.reference, seconds, usage.logical_bytes, usage.allocated_bytes, snap.image_manifest_digest)

    return asyncio.run(go())


def _data_ranges(fd: int, size: int):
    """(start, end) of each allocated range of the open file FD of SIZE bytes (its holes skipped); the
    whole file where the filesystem cannot say."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole from here on
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        pos = end


def count_bytes(folder: Path, needles: list[bytes]) -> tuple[list[int], int]:
    """(how many times each of NEEDLES occurs in the files under FOLDER, bytes read): every file, its
    allocated ranges only, a needle found across a chunk's edge too."""
    counts = [0] * len(needles)
    keep = max(len(n) for n in needles) - 1
    read = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        fd = os.open(path, os.O_RDONLY)
        try:
            for start, end in _data_ranges(fd, os.fstat(fd).st_size):
                os.lseek(fd, start, os.SEEK_SET)
                tail = b""
                left = end - start
                while left > 0:
                    chunk = os.read(fd, min(CHUNK, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    read += len(chunk)
                    window = tail + chunk
                    for i, needle in enumerate(needles):
                        counts[i] += window.count(needle) - tail.count(needle)
                    tail = window[-keep:] if keep else b""
        finally:
            os.close(fd)
    return counts, read


def layer_files(snapshot: Path, limit: int = 40) -> tuple[list[str], str | None]:
    """(the files and links the snapshot's root-disk layers hold, as ``SIZE PATH`` under their ``upper``
    folder, at most LIMIT; why not when they could not be read): each ``layers/*.raw`` (an ext4 image)
    copied out with ``debugfs rdump``, which needs no mount. Never raises."""
    lines: list[str] = []
    for layer in sorted((snapshot / "layers").glob("*.raw")):
        with tempfile.TemporaryDirectory(prefix="owsnap-layer-", dir="/var/tmp") as out:
            try:
                proc = subprocess.run(
                    ["debugfs", "-R", f"rdump /upper {out}", str(layer)], capture_output=True, text=True, timeout=600
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return lines, f"debugfs: {exc}"
            upper = Path(out) / "upper"
            if not upper.is_dir():
                return lines, f"debugfs rdump {layer.name}: {proc.stderr.strip()[-200:]}"
            for path in sorted(upper.rglob("*")):
                if path.is_file() or path.is_symlink():
                    lines.append(f"{path.lstat().st_size:>10} /{path.relative_to(upper)}")
    return (lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])), None


def captured_mounts(reference: str) -> list[str]:
    """The guest paths of the binds the snapshot REFERENCE was made with (its ``snapshot.json``): a
    restore must bind each again."""
    meta = json.loads((Path(reference) / "snapshot.json").read_text())
    return list(meta.get("extensions", {}).get("microsandbox.external-mounts", {}).get("guest_paths", []))


def restore_full_until_healthy(reference: str, name: str, port: int, guest_port: int, scratch: Path) -> float:
    """Seconds from ``Sandbox.restore`` of the full snapshot REFERENCE as NAME (PORT published to
    GUEST_PORT on 127.0.0.1, each captured bind to an empty folder under SCRATCH) to GET /health 200
    there; the restored processes answer, nothing is launched. Raises TimeoutError after 600 s; stops
    and removes NAME at the end."""
    import urllib.request

    volumes = {guest: scratch / guest.strip("/").replace("/", "-") for guest in captured_mounts(reference)}
    for folder in volumes.values():
        folder.mkdir(parents=True, exist_ok=True)

    async def go() -> float:
        from microsandbox import PortBinding, Sandbox, Volume

        began = time.monotonic()
        sb = await Sandbox.restore(
            reference,
            name=name,
            ports=[PortBinding.tcp(port, guest_port, bind="127.0.0.1")],
            volumes={guest: Volume.bind(str(host)) for guest, host in volumes.items()},
        )
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            while time.monotonic() - began < 600:
                try:
                    with opener.open(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                        if resp.status == 200:
                            return time.monotonic() - began
                except OSError:
                    pass
                await asyncio.sleep(0.5)
            raise TimeoutError(f"{name} restored from a full snapshot did not answer /health within 600 s")
        finally:
            await sb.stop()
            await Sandbox.remove(name)

    return asyncio.run(go())


def remove_snapshot(reference: str) -> None:
    """Remove the snapshot REFERENCE; never raises (a clean-up)."""

    async def go() -> None:
        from microsandbox import Snapshot

        await Snapshot.remove(reference, force=True)

    try:
        asyncio.run(go())
    except Exception:  # a clean-up: what is left is in MSB_HOME
        pass
