"""The share: the folder QEMU gives the guest as 9p, holding what one run needs (its init, the
command, its environment, the checkout, the image) and what the guest leaves (output, heartbeat,
phases, exit code, logs); and the runs' folders, of which the last few are kept."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from harness.microvm_host.checkout import checkout_tar
from harness.microvm_host.logic import GUEST_CHECKOUT, GUEST_VENV, env_script, passthrough_env

# the run's init in the guest (PID 1 hands over to it through the share; @CHECKOUT@: GUEST_CHECKOUT)
GUEST_INIT = Path(__file__).with_name("guest-init.sh").read_text()

# The settings every task needs in the emulated host (a slow host: long starts, a slow first request
# to opencode, one vCPU for the nested microVM), given to the command unless this machine's
# environment sets them; the measurements behind them are in docs/design-notes/harness.md
EMULATED_HOST_SETTINGS = {
    "OPENWORK_HEALTH_TIMEOUT": "900",
    "OPENWORK_REQUEST_TIMEOUT": "300",
    "OPENWORK_MICROSANDBOX_CPUS": "1",
}


def prepare_share(
    run_dir: Path,
    argv: list[str],
    env: dict,
    image: tuple[Path, str, str] | None,
    seed: Path | None = None,
    load_in_background: bool = False,
) -> None:
    """RUN_DIR/share: the run's init (guest-init.sh), ARGV, ENV as a script, the checkout's tar and,
    when given, the image's tar with its id and ref (IMAGE) and the registry seed (SEED)."""
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


def guest_env(image_ref: str | None, load_in_background: bool = False) -> dict:
    """The command's environment in the guest: EMULATED_HOST_SETTINGS, then what passes through from
    here, then the image, the image load's exit-code file (LOAD_IN_BACKGROUND) and the guest's own."""
    env = {**EMULATED_HOST_SETTINGS, **passthrough_env(dict(os.environ))}
    if image_ref:
        env["OPENWORK_MICROSANDBOX_IMAGE"] = image_ref
    if image_ref and load_in_background:
        env["MICROVM_HOST_IMAGE_LOAD_RC"] = "/share/image-load.rc"
    env.update(
        {
            "PATH": f"{GUEST_VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "USER": "root",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "VIRTUAL_ENV": GUEST_VENV,
            "MICROVM_HOST_GUEST": "1",
            "MICROVM_HOST_OUT": "/share/out",
        }
    )
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
