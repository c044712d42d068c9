"""Benchmark `up` from a disk snapshot against a cold boot, with microsandbox in the emulated host;
prints figures (asserts nothing).

    scripts/bench-snapshot [--rounds N] [--image REF] [--full]

From this machine it runs itself inside the emulated host (``scripts/microvm-host run``) with the
e2e image (``scripts/microvm-image``, or REF), and prints:
- the template: a sandbox of that image that became healthy once (`invoke up`) with throw-away
  tokens and empty folders, then stopped (`invoke down`); its disk snapshot's creation time and size
  (``Snapshot.create``), how often the template's token bytes occur in the snapshot's files (the
  tokens are files in binds, so none is expected), and the files its root-disk layer holds;
- per kind, paired round by round (the kinds alternate which goes first), a fresh sandbox name,
  fresh tokens and empty folders each time: ``cold`` (the product's `invoke up`: ``Sandbox.create``)
  and ``snapshot`` (the same `up`, its microVM restored from the snapshot: see
  ``harness.bench.snapshot_start``); for each the task's wall time, the seconds to the first GET
  /health 200 and the boot's share; median, min and max;
- with ``--full``, after the rounds, a full snapshot (memory and processes) of another running
  template, its size, the token bytes in it, and one restore of it until /health answers
  (informational: a full snapshot holds the template's server with its tokens; microsandbox 0.7.11
  refuses it while the server job runs, and this says so).
Inside the emulated host (``--inside``) it measures only. Names and folders are temporary and
removed at the end (the snapshots too).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.bench.microvm import SLOW_HOST_SETTINGS, in_emulated_host, invoke, registry_ref
from harness.bench.snapshot_sdk import (
    count_bytes,
    layer_files,
    make_snapshot,
    remove_snapshot,
    restore_full_until_healthy,
)
from harness.common import ROOT, back_to_caller_cwd, empty_env_file, run_task, task_env

KINDS = ("cold", "snapshot")
START_TIMEOUT = 3600  # seconds one start may take in the emulated host (starts there took 4-11 minutes)


def say(line: str) -> None:
    print(line, flush=True)


class Bench:
    """The run's scratch folder, its env file, the image's registry reference and its settings."""

    def __init__(self, tmp: Path, ref: str):
        self.tmp, self.ref = tmp, ref
        self.env_file = empty_env_file(tmp)

    def settings(self, prefix: str) -> dict[str, str]:
        """A fresh sandbox's settings: its own name, port and state folder (so fresh tokens, empty folders)."""
        from openwork_sandbox.net.ports import free_port

        name = f"{prefix}-{secrets.token_hex(3)}"
        return {
            "OPENWORK_STATE_DIR": str(self.tmp / name),
            "OPENWORK_MICROSANDBOX_RUNTIME": "microsandbox",
            "OPENWORK_MICROSANDBOX_NAME": name,
            "OPENWORK_MICROSANDBOX_PORT": str(free_port()),
            "OPENWORK_MICROSANDBOX_IMAGE": self.ref,
            "OPENWORK_OFFLINE": "true",
            "OPENWORK_HEALTH_TIMEOUT": "900",
            **{k: os.environ[k] for k in SLOW_HOST_SETTINGS if os.environ.get(k)},
        }

    def reset(self, env: dict[str, str]) -> None:
        run_task("reset", "--yes", env=task_env(env), env_file=self.env_file, timeout=900)

    def start(self, kind: str, snapshot: str, env: dict[str, str]) -> dict[str, float]:
        """One `up` of KIND (``harness.bench.snapshot_start``) in its own process: seconds of the task
        (``up``), to the first healthy answer (``healthy``) and of the boot (``boot``). Exits the
        benchmark when it failed."""
        marks_path = self.tmp / f"marks-{secrets.token_hex(3)}.json"
        argv = [sys.executable, "-m", "harness.bench.snapshot_start", kind, snapshot, str(marks_path)]
        argv += ["up", "--env-file", str(self.env_file)]
        began = time.time()
        proc = subprocess.run(argv, cwd=ROOT, env=task_env(env), capture_output=True, text=True, timeout=START_TIMEOUT)
        seconds = time.time() - began
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.strip().splitlines()[-10:] + proc.stderr.strip().splitlines()[-15:])
            raise SystemExit(f"bench-snapshot: {kind} up failed (exit {proc.returncode}):\n{tail}")
        marks = json.loads(marks_path.read_text())
        return {
            "up": seconds,
            "healthy": marks["healthy"] - began,
            "boot": marks["boot_end"] - marks["boot_start"],
            "python": marks["began"] - began,
        }


def template_tokens(bench: Bench, env: dict[str, str]) -> list[bytes]:
    """The template's two tokens as `up` keeps them (tokens.json)."""
    from openwork_sandbox.config import load_settings
    from openwork_sandbox.state.store import SandboxState

    settings = load_settings(environ=task_env(env), env_file=bench.env_file, root=ROOT)
    return [t.encode() for t in SandboxState(settings).tokens(create=False) if t]


def size(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MiB"


def make_template(bench: Bench) -> str:
    """The template sandbox, up once and stopped, and its disk snapshot: the snapshot's reference.
    Prints what it cost and holds; the template itself is removed."""
    env = bench.settings("snap-tpl")
    name = env["OPENWORK_MICROSANDBOX_NAME"]
    try:
        first = invoke(env, bench.env_file, "up")
        say(f"template {name}: first up {first:.1f}s (the image pulled into microsandbox's cache)")
        tokens = template_tokens(bench, env)
        down = invoke(env, bench.env_file, "down")
        made = make_snapshot(f"{name}-disk", name)
        found, read = count_bytes(Path(made.reference), tokens)
        say(
            f"disk snapshot (stopped template, image {made.image_digest[:19]}): created in {made.seconds:.2f}s "
            f"(down {down:.1f}s before it), {size(made.allocated)} allocated ({size(made.logical)} logical); "
            f"the template's {len(tokens)} tokens occur {sum(found)} time(s) in its {size(read)} of data"
        )
        files, why = layer_files(Path(made.reference))
        say(f"its root-disk layer holds{' (not listed: ' + why + ')' if why else ''}:")
        for line in files:
            say(f"    {line}")
        return made.reference
    finally:
        bench.reset(env)  # the template and its state; the snapshot stands alone


def rounds(bench: Bench, snapshot: str, count: int) -> dict[str, dict[str, list[float]]]:
    figures: dict[str, dict[str, list[float]]] = {k: {"up": [], "healthy": [], "boot": [], "python": []} for k in KINDS}
    for n in range(count):
        for kind in KINDS if n % 2 == 0 else reversed(KINDS):
            env = bench.settings(f"snap-{kind[:4]}")
            try:
                got = bench.start(kind, snapshot, env)
            finally:
                bench.reset(env)
            for key, value in got.items():
                figures[kind][key].append(value)
            say(
                f"round {n + 1} {kind}: up {got['up']:.1f}s, healthy at {got['healthy']:.1f}s, "
                f"boot {got['boot']:.1f}s, python to the task {got['python']:.1f}s"
            )
    return figures


def full_experiment(bench: Bench) -> str | None:
    """Informational: another template, up once; a full snapshot of it while it runs (its cost, size
    and the template's token bytes in it); the template removed; one restore of that snapshot until
    /health answers. Returns the snapshot's reference (None when none was made); never raises but
    SystemExit (a failed `up`)."""
    from openwork_sandbox.config import GUEST_PORT
    from openwork_sandbox.net.ports import free_port

    env = bench.settings("snap-full")
    name = env["OPENWORK_MICROSANDBOX_NAME"]
    try:
        invoke(env, bench.env_file, "up")
        tokens = template_tokens(bench, env)
        made = make_snapshot(f"{name}-full", name, full=True)
        found, read = count_bytes(Path(made.reference), tokens)
        say(
            f"full snapshot (running template): created in {made.seconds:.1f}s, {size(made.allocated)} allocated "
            f"({size(made.logical)} logical); the template's {len(tokens)} tokens occur {sum(found)} time(s) in "
            f"its {size(read)} of data"
        )
    except Exception as exc:  # informational: say what the SDK said and go on
        say(f"full snapshot: not made: {type(exc).__name__}: {str(exc)[:300]}")
        return None
    finally:
        bench.reset(env)
    try:
        restored = f"snap-fres-{secrets.token_hex(3)}"
        seconds = restore_full_until_healthy(made.reference, restored, free_port(), GUEST_PORT, bench.tmp / restored)
        say(f"full snapshot restored: /health 200 after {seconds:.1f}s (nothing launched: its processes resumed)")
    except Exception as exc:  # informational
        say(f"full snapshot restore: failed: {type(exc).__name__}: {str(exc)[:300]}")
    return made.reference


def report(figures: dict[str, dict[str, list[float]]]) -> None:
    if not figures["cold"]["up"]:
        say("no rounds (--rounds 0): the template and its snapshot only")
        return
    say(f"figures over {len(figures['cold']['up'])} round(s), emulated host (median [min-max] s):")
    for kind in KINDS:
        cells = [f"{k} {statistics.median(v):.1f} [{min(v):.1f}-{max(v):.1f}]" for k, v in figures[kind].items() if v]
        say(f"  {kind:<9} " + ", ".join(cells))
    if all(figures[k]["up"] for k in KINDS):
        ratio = {
            m: statistics.median(figures["snapshot"][m]) / statistics.median(figures["cold"][m]) for m in ("up", "boot")
        }
        say("  snapshot/cold: " + ", ".join(f"{m} x{v:.2f}" for m, v in ratio.items()))
    say("BENCH-JSON " + json.dumps(figures))


def inside(count: int, full: bool) -> int:
    image = os.environ.get("OPENWORK_MICROSANDBOX_IMAGE")
    if not image:
        raise SystemExit("bench-snapshot: set OPENWORK_MICROSANDBOX_IMAGE (scripts/microvm-image prints it)")
    tmp = Path(tempfile.mkdtemp(prefix="owsnap-", dir="/var/tmp"))  # microVM binds need xattrs: not a tmpfs
    made: list[str] = []
    try:
        bench = Bench(tmp, registry_ref(image))
        snapshot = make_template(bench)
        made.append(snapshot)
        report(rounds(bench, snapshot, count))
        if full:
            made.append(full_experiment(bench) or "")
    finally:
        for reference in filter(None, made):
            remove_snapshot(reference)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench-snapshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image", help="the image to boot (default: the e2e image scripts/microvm-image builds)")
    parser.add_argument("--full", action="store_true", help="also try a full (memory) snapshot, restored once")
    parser.add_argument("--inside", action="store_true", help="measure here (inside the emulated host)")
    args = parser.parse_args()
    if args.inside:
        try:
            code = inside(args.rounds, args.full)
        except SystemExit as exc:  # a failed step: its message, then the same exit as below
            print(exc, file=sys.stderr, flush=True)
            code = 1
        sys.stdout.flush()
        os._exit(code)  # the SDK's threads must not meet the interpreter's finalization
    return in_emulated_host(
        "harness.bench.snapshot", ["--rounds", str(args.rounds), *(["--full"] if args.full else [])], image=args.image
    )


if __name__ == "__main__":
    back_to_caller_cwd()
    sys.exit(main())
