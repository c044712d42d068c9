"""The image the emulated host boots: which one (OPENWORK_MICROSANDBOX_IMAGE or scripts/microvm-image's),
``docker save``d into the cache by image id, and, when it is named in the guest's registry, that
registry's storage already holding it (the registry seed)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from harness.common import LOCAL_REGISTRY, ROOT, docker_image_id, scratch_registry
from harness.microvm_host.cache import cache_dir, run_logged
from harness.microvm_host.errors import EXIT_USAGE, HarnessError, say

SEED_SUFFIX = ".registry.tar"


def resolve_image() -> str:
    """OPENWORK_MICROSANDBOX_IMAGE, else the e2e image's ref, the last stdout line of scripts/microvm-image
    (run here, its stdout shown); raises a HarnessError when neither gives one."""
    ref = os.environ.get("OPENWORK_MICROSANDBOX_IMAGE", "").strip()
    if ref:
        return ref
    script = ROOT / "scripts" / "microvm-image"
    if not script.exists():
        raise HarnessError(
            "OPENWORK_MICROSANDBOX_IMAGE is not set and scripts/microvm-image (which builds the e2e "
            "image) does not exist yet: set OPENWORK_MICROSANDBOX_IMAGE to an image in the local "
            "Docker engine",
            EXIT_USAGE,
        )
    say("OPENWORK_MICROSANDBOX_IMAGE is not set: making the e2e image with scripts/microvm-image")
    proc = subprocess.Popen([str(script)], cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    last = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.strip():
            last = line.strip()
    if proc.wait() != 0 or not last:
        raise HarnessError(
            f"scripts/microvm-image failed (exit {proc.returncode}); it must print the image's ref "
            "on its last stdout line"
        )
    return last


def saved_image(ref: str) -> tuple[Path, str, dict]:
    """`docker save REF` as images/<id>.tar (kept by image id): (tar, id, figures)."""
    image_id = docker_image_id(ref)
    if image_id is None:
        raise HarnessError(
            f"OPENWORK_MICROSANDBOX_IMAGE={ref} is not in the local Docker engine: build it "
            "(invoke build-image) or pull it first",
            EXIT_USAGE,
        )
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


def registry_seed(ref: str, image_id: str) -> tuple[Path | None, dict]:
    """The guest registry's storage already holding REF, as images/<id>-<ref hash>.registry.tar, when
    REF names that registry: (tar or None, figures). Made by pushing REF from this machine's engine
    to a scratch registry (the same docker-registry, storage in a temporary folder) and packing its
    storage; the guest unpacks it before its registry starts. So microsandbox in the guest pulls REF
    from its first request, and no `docker push` there has to gzip every layer at the emulated host's
    speed. Without docker-registry here: (None, {}), and the guest pushes."""
    if not ref.startswith(LOCAL_REGISTRY + "/") or "@" in ref:
        return None, {}
    folder = cache_dir() / "images"
    tar = folder / f"{image_id.split(':')[-1]}-{hashlib.sha256(ref.encode()).hexdigest()[:12]}{SEED_SUFFIX}"
    if tar.exists():
        return tar, {"registry_seed_s": 0.0}
    if shutil.which("docker-registry") is None:
        say("docker-registry is not installed here: the guest's docker push puts the image in its registry")
        return None, {}
    t0 = time.monotonic()
    log = folder / "registry-seed.log"
    with tempfile.TemporaryDirectory(prefix="registry-seed-", dir=folder) as tmp:
        try:
            with scratch_registry(Path(tmp), log) as addr:
                scratch = f"{addr}/{ref[len(LOCAL_REGISTRY) + 1 :]}"
                say(f"putting {ref} into the guest registry's storage (docker push to a scratch registry)")
                run_logged(["docker", "tag", image_id, scratch], log, "docker tag")
                try:
                    run_logged(["docker", "push", scratch], log, f"docker push {scratch}")
                finally:
                    subprocess.run(["docker", "rmi", scratch], capture_output=True)
        except RuntimeError as exc:  # the scratch registry did not answer
            raise HarnessError(f"{exc}; log {log}") from None
        partial = tar.with_suffix(".partial")
        with tarfile.open(partial, "w") as out:
            out.add(Path(tmp) / "data", arcname=".")
        partial.rename(tar)
    prune_images(folder)
    return tar, {"registry_seed_s": time.monotonic() - t0}
