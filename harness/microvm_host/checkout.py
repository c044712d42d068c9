"""This checkout as the guest gets it: the files git lists (tracked and untracked-not-ignored, as they
are in the working tree now), packed in a tar."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

from harness.common import ROOT
from harness.microvm_host.logic import checkout_files


def git_listed(root: Path) -> list[str] | None:
    """What ``git ls-files`` lists in ROOT (tracked and untracked-not-ignored), or None outside git."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            timeout=60,
        )
    except OSError:
        return None
    if out.returncode != 0:
        return None
    return sorted(set(out.stdout.decode().split("\0")))


def checkout_tar(dest: Path) -> int:
    """This checkout as it is in the working tree, as a tar; returns the number of files."""
    listed = git_listed(ROOT)
    if listed is None:  # not a git checkout: everything but caches and state
        listed = [
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if not {".git", ".state", "__pycache__", "reports", ".pytest_cache"} & set(p.relative_to(ROOT).parts)
        ]
    files = checkout_files(ROOT, listed)
    with tarfile.open(dest, "w") as tar:
        for rel in files:
            tar.add(ROOT / rel, arcname=rel, recursive=False)
    return len(files)
