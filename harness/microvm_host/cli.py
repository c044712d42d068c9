"""The command line of the emulated host (``scripts/microvm-host``; ``help.txt`` is its ``--help``):
``run`` a command in it, the ``e2e`` scenario there, or only ``build`` its disk. A run boots it at
most twice: a second boot only after an emulation fault (or a setup failure) of the first.

Exit codes: the command's own; 2 usage; 69 the harness could not make or start the emulated host;
75 it failed twice (an emulation fault); 124 the command ran past MICROVM_HOST_TIMEOUT; 130
interrupted (QEMU is stopped on SIGTERM and SIGHUP too).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from harness.common import ROOT, back_to_caller_cwd
from harness.microvm_host.boot import Attempt
from harness.microvm_host.cache import cache_dir, ensure_host_packages
from harness.microvm_host.disk import ensure_guest
from harness.microvm_host.errors import EXIT_HOST_FAILED, EXIT_INTERRUPTED, EXIT_TIMEOUT, EXIT_USAGE, HarnessError, say
from harness.microvm_host.image import registry_seed, resolve_image, saved_image
from harness.microvm_host.logic import figures_line
from harness.microvm_host.share import guest_env, prepare_share, prune_runs

HELP = Path(__file__).with_name("help.txt").read_text()


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
            raise HarnessError(
                f"the emulated host could not be set up: {detail} (logs: {run_dir / 'share' / 'logs'}, "
                f"{run_dir / 'serial.log'})"
            )
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
    say(
        f"emulated host failed: {reasons[-1]} (twice; {earlier}); an emulation fault, not a failure of "
        f"the project (exit {EXIT_HOST_FAILED})"
    )
    print(f"microvm-host: {figures_line(fig)}", file=figures_to, flush=True)
    return EXIT_HOST_FAILED


def e2e() -> int:
    """The scenario (scripts/microvm-e2e) in the emulated host; its figures line after the scenario's own."""
    if not (ROOT / "scripts" / "microvm-e2e").exists():
        raise HarnessError("scripts/microvm-e2e (the scenario) does not exist in this checkout", EXIT_USAGE)
    # the scenario's first steps need only the registry's copy: the engine's loads meanwhile
    return run(["scripts/microvm-e2e"], figures_to=sys.stdout, load_in_background=True)  # after its own last line


def main(args: list[str]) -> int:
    """The command line: ``run [--no-image] [--] CMD...``, ``e2e``, ``build [--force]``, ``--help``.
    Returns the exit code; raises HarnessError (its code) for usage and harness failures."""
    if not args or args[0] in ("-h", "--help", "help"):
        print(HELP.strip())
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


def script() -> None:
    """Run the command line of this process and exit with its code (``python -m harness.microvm_host``)."""
    back_to_caller_cwd()
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
