"""Benchmark the start-up tail: cold `up` against the floor, paired; prints figures (asserts nothing).

    scripts/bench-start [--image REF] [--pairs N] [--runtime docker] [--hang-rate N]

- floor:   `docker run --network host` of the image until GET /health is 200 (no workflow);
- up:      cold `invoke up` (no sandbox yet, image local) until it returns, then `invoke reset`.
Floor and up alternate (which goes first alternates too), so both see the same load. Each start's
server log says whether opencode's start race struck and how it was resolved: held off by the
image's start gate (openwork_sandbox/image/context/opencode-gate.js), a watchdog restart by `up` (its
"made no progress" line), or not at all (a floor start that never got healthy within --deadline).
Target: up p95 <= 1.3 x floor median, over at least 30 pairs.

--hang-rate N also starts bare `opencode serve` N times inside the image, without and with the
start gate, polling it from the host every 60 ms (each request gets 2 s to answer), and counts the
starts in which a request was read and never answered: the race itself, and what the gate leaves
of it for the orchestrator.

Everything runs under unique names and a temporary state folder, removed at the end; traffic goes
to 127.0.0.1 only. OPENWORK_OFFLINE is on for `up`, and the floor gets the same environment.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.bench.common import image_or_setting, remove_container
from harness.common import back_to_caller_cwd, empty_env_file, run_task, task_env
from openwork_sandbox.net.health import FIRST_POLL_TIMEOUT
from openwork_sandbox.net.ports import free_port
from openwork_sandbox.sandbox.start_gate import GATE_MARK, RACE_MARK

OFFLINE_ENV = {"OPENCODE_DISABLE_MODELS_FETCH": "1"}  # what OPENWORK_OFFLINE=true passes to the sandbox


def http_status(port: int, path: str, timeout: float) -> int | None:
    """Status of GET path on 127.0.0.1:port; None when refused; 0 when no answer within timeout."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=1)
    except OSError:
        return None
    with sock:
        sock.settimeout(timeout)
        try:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(64)
        except TimeoutError:
            return 0
        except OSError:
            return None
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def wait_health(port: int, deadline: float, name: str) -> float | str:
    """Seconds until /health is 200; else "exited" (the container stopped) or "hung" (deadline)."""
    start = next_check = time.monotonic()
    timeout = FIRST_POLL_TIMEOUT  # as `up` polls (net.health): a poll held longer stalls the orchestrator
    while time.monotonic() - start < deadline:
        status = http_status(port, "/health", timeout)
        if status == 200:
            return time.monotonic() - start
        if status == 0:
            timeout = min(timeout * 2, 1.0)
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + 1.0
            running = subprocess.run(
                ["docker", "inspect", "--format", "{{.State.Running}}", name], capture_output=True, text=True
            ).stdout.strip()
            if running != "true":
                return "exited"
        time.sleep(0.01)
    return "hung"


def docker_logs(name: str) -> str:
    proc = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    return proc.stdout + proc.stderr


def floor_start(image: str, deadline: float, extra_env: dict[str, str] | None = None) -> tuple[float | None, str]:
    """(seconds until /health 200 or None, how the start race went) for one `docker run`; EXTRA_ENV
    goes to the container too (e.g. ``OPENWORK_LAUNCH``, which the image's entrypoint reads)."""
    port, oc_port = free_port(), free_port()
    name = f"owbench-start-{secrets.token_hex(3)}"
    env = {
        "OPENWORK_PORT": str(port),
        "OPENWORK_OPENCODE_PORT": str(oc_port),
        "OPENWORK_REMOTE_ACCESS": "0",
        "OPENWORK_TOKEN": secrets.token_urlsafe(32),
        "OPENWORK_HOST_TOKEN": secrets.token_urlsafe(32),
        **OFFLINE_ENV,
        **(extra_env or {}),
    }
    argv = ["docker", "run", "-d", "--name", name, "--network", "host"]
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    try:
        start = time.monotonic()
        subprocess.run([*argv, image], check=True, capture_output=True)
        waited = wait_health(port, deadline, name)
        log = docker_logs(name)
        if waited == "exited":
            last = [line for line in log.splitlines() if line.strip()][-1:] or ["no output"]
            race = ", race held off by the gate" if RACE_MARK in log else ""
            return None, f"failed{race}: {last[0][:120]}"
        return (None if waited == "hung" else time.monotonic() - start), race_outcome(log, hung=waited == "hung")
    finally:
        remove_container(name)


def race_outcome(text: str, *, hung: bool = False, restarted: bool = False) -> str:
    if restarted:
        return "watchdog restart"
    if "exited during start-up" in text:  # `up` restarted a start that died (not the race)
        return "restart after an early exit" + (", race held off by the gate" if RACE_MARK in text else "")
    if hung:
        return f"hung (never healthy{', held off by the gate' if RACE_MARK in text else ''})"
    if RACE_MARK in text:
        return "held off by the gate"
    return "no race" if GATE_MARK in text else "no race (no gate in the image)"


def up_start(env: dict, env_file: Path, name: str) -> tuple[float | None, str]:
    """(seconds `invoke up` took, or None when it failed; how the start race went)."""
    env = {**env, "OPENWORK_MICROSANDBOX_NAME": name, "OPENWORK_MICROSANDBOX_PORT": str(free_port())}
    proc = run_task("up", env=env, env_file=env_file)
    took = proc.seconds
    said = proc.stderr
    # `up` prints the gate's race in its own words (start_gate.race_note) and a restart as "made no progress"
    outcome = race_outcome(
        said.replace("start race held off", RACE_MARK + " " + GATE_MARK), restarted="made no progress" in said
    ).replace(" (no gate in the image)", "")
    if proc.returncode != 0:
        last = [line for line in said.splitlines() if line.strip()][-1:] or ["no output"]
        outcome, took = f"failed after {outcome}: {last[0][:120]}", None
    run_task("reset", "--yes", env=env, env_file=env_file)
    return took, outcome


def tally(outcomes: dict[tuple[str, str], int], words: tuple[str, ...]) -> str:
    """'floor held off by the gate: 3, up watchdog restart: 1' for the outcomes naming any of words."""
    hits = [
        f"{kind} {outcome}: {n}" for (kind, outcome), n in sorted(outcomes.items()) if any(w in outcome for w in words)
    ]
    return "; ".join(hits) or "none"


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def hang_rate(image: str, starts: int, gate: bool) -> tuple[int, int, list[float]]:
    """(starts with a dropped request, starts, seconds to first answer) for bare opencode in the image."""
    struck, answered_at = 0, []
    for _ in range(starts):
        port = free_port()
        name = f"owbench-oc-{secrets.token_hex(3)}"
        binary = "/usr/local/bin/opencode-gate" if gate else "/usr/local/bin/opencode"
        argv = [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "--entrypoint",
            binary,
            "-e",
            "HOME=/tmp",
            "-e",
            "OPENCODE_DISABLE_MODELS_FETCH=1",
            "-w",
            "/tmp",
            image,
            "serve",
            "--hostname",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        try:
            subprocess.run(argv, check=True, capture_output=True)
            start, dropped = time.monotonic(), 0
            while time.monotonic() - start < 60:
                status = http_status(port, "/global/health", 2.0)
                if status == 0:
                    dropped += 1
                elif status is not None:
                    answered_at.append(time.monotonic() - start)
                    break
                else:
                    time.sleep(0.06)
            struck += dropped > 0
        finally:
            remove_container(name)
    return struck, starts, answered_at


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench-start", description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="image reference (default: OPENWORK_MICROSANDBOX_IMAGE)")
    parser.add_argument("--pairs", type=int, default=30, help="floor/up pairs (default 30)")
    parser.add_argument("--runtime", default="docker", choices=["docker", "microsandbox"])
    parser.add_argument("--deadline", type=float, default=60.0, help="a floor start not healthy by then has hung")
    parser.add_argument(
        "--hang-rate",
        type=int,
        default=0,
        metavar="N",
        help="also start bare opencode N times without and with the gate (0: skip)",
    )
    args = parser.parse_args()
    image = image_or_setting(args.image)
    if (
        subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0
        and subprocess.run(["docker", "pull", "-q", image], capture_output=True).returncode != 0
    ):
        print(f"cannot find or pull {image}: build or push it first", file=sys.stderr)
        return 1
    load = os.getloadavg()

    tmp = Path(tempfile.mkdtemp(prefix="owbench-start-"))
    env_file = empty_env_file(tmp)
    env = task_env(
        dict(
            OPENWORK_STATE_DIR=str(tmp / "state"),
            OPENWORK_MICROSANDBOX_IMAGE=image,
            OPENWORK_MICROSANDBOX_RUNTIME=args.runtime,
            OPENWORK_OFFLINE="true",
        )
    )
    floors: list[float] = []
    ups: list[float] = []
    ups_kept: list[float] = []  # without restarts after an early exit (a floor start that exits counts as failed)
    outcomes: dict[tuple[str, str], int] = {}
    try:
        for i in range(args.pairs):
            order = ("floor", "up") if i % 2 == 0 else ("up", "floor")
            for kind in order:
                if kind == "floor":
                    took, outcome = floor_start(image, args.deadline)
                    if took is not None:
                        floors.append(took)
                else:
                    took, outcome = up_start(env, env_file, f"owbench-up-{secrets.token_hex(3)}")
                    if took is not None:
                        ups.append(took)
                        if "early exit" not in outcome:
                            ups_kept.append(took)
                outcomes[(kind, outcome)] = outcomes.get((kind, outcome), 0) + 1
                shown = "-" if took is None else f"{took:.2f}s"
                print(f"pair {i + 1:>2}/{args.pairs} {kind:<5} {shown:>7}  {outcome}", file=sys.stderr, flush=True)
        rates = []
        if args.hang_rate:
            for gate in (False, True):
                rates.append((gate, *hang_rate(image, args.hang_rate, gate)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    load_after = os.getloadavg()
    floor_median = statistics.median(floors) if floors else float("nan")
    print(
        f"start benchmark: runtime {args.runtime}, image {image}, {os.cpu_count()} CPUs, "
        f"load {load[0]:.1f} before, {load_after[0]:.1f} after"
    )
    rows = [
        (
            "starts",
            f"{args.pairs} floor ({args.pairs - len(floors)} never healthy or failed), "
            f"{args.pairs} up ({args.pairs - len(ups)} failed)",
        ),
        ("hangs seen (start race)", tally(outcomes, ("held off", "hung", "watchdog"))),
        ("other start failures", tally(outcomes, ("failed", "early exit"))),
        ("floor median", f"{floor_median:.2f}s (min {min(floors):.2f}, max {max(floors):.2f})" if floors else "-"),
        ("up median / p95 / max", f"{statistics.median(ups):.2f}s / {p95(ups):.2f}s / {max(ups):.2f}s" if ups else "-"),
        ("ratio p95 / floor median", f"{p95(ups) / floor_median:.2f} (target <= 1.3)" if ups and floors else "-"),
    ]
    if ups_kept and len(ups_kept) < len(ups):
        rows.append(
            (
                "  same, without early exits",
                f"up p95 {p95(ups_kept):.2f}s over {len(ups_kept)} starts, ratio "
                f"{p95(ups_kept) / floor_median:.2f} (the floor's exits are not "
                "in its median either)",
            )
        )
    for gate, struck, starts, answered in rates:
        label = f"bare opencode, {'with' if gate else 'without'} gate"
        rows.append(
            (
                label,
                f"a request dropped in {struck} of {starts} starts; first answer median "
                f"{statistics.median(answered):.2f}s"
                if answered
                else f"{struck} of {starts}",
            )
        )
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    back_to_caller_cwd()
    sys.exit(main())
