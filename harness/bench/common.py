"""What the benchmarks share besides ``harness.common``: the image they measure, removing what they
started, the memory of a cgroup."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.common import ROOT

CGROUP_ROOT = Path("/sys/fs/cgroup")


def image_or_setting(image: str | None) -> str:
    """IMAGE (a ``--image`` flag) when given, else the image setting as ``invoke`` reads it here
    (environment, this checkout's ``.env``, default). Raises SettingsError on a bad setting."""
    from openwork_sandbox.config import load_settings

    return image or load_settings(root=ROOT).image


def remove_container(name: str) -> None:
    """``docker rm -f NAME``, quietly: the clean-up after a container a benchmark started itself."""
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def cgroup_memory_mib(cgroup: str) -> float | None:
    """Memory of CGROUP (a path under the memory hierarchy) in MiB, less its inactive file pages;
    cgroup v1 or v2, whichever this machine has. None when the cgroup does not exist."""
    v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
    folder = CGROUP_ROOT / cgroup.lstrip("/") if v2 else CGROUP_ROOT / "memory" / cgroup.lstrip("/")
    try:
        usage = int((folder / ("memory.current" if v2 else "memory.usage_in_bytes")).read_text())
        stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines() if " " in line)
    except (OSError, ValueError):
        return None
    inactive = int(stat.get("inactive_file" if v2 else "total_inactive_file", 0))
    return max(usage - inactive, 0) / 2**20
