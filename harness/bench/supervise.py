"""Benchmark supervision: how long a sandbox takes to be healthy again after one of its programs
is killed, and how long `down` takes; prints figures (asserts nothing).

    scripts/bench-supervise --image REF [--rounds N]

Boots one sandbox with `invoke up` (Docker runtime, a unique name, a temporary state folder), then
N rounds of: SIGKILL openwork-server, opencode, the orchestrator (`docker exec ... kill -9`, what
an OOM kill does), each time measuring until GET /health and GET /workspaces answer 200 again and
waiting for the supervisor's backoff to reset (30 s healthy) before the next kill. Prints min,
median and max per program, the restarts the supervisor counted (a start that failed on a loaded
machine is one more), and `down`'s time. Target: healthy again within 30 s.
Traffic goes to 127.0.0.1 only; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from harness.bench.common import remove_container
from harness.common import TaskRun, back_to_caller_cwd, empty_env_file, run_task, task_env
from openwork_sandbox.net.ports import free_port

PROGRAMS = {
    "openwork-server": "/usr/local/bin/openwork-server",
    "opencode": "/usr/local/bin/opencode serve",
    "orchestrator": "openwork serve",
}


def invoke(env: dict, *args: str) -> TaskRun:
    return run_task(*args, env=env, timeout=600)


def ok(url: str, token: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            if resp.status != 200:
                return False
        req = urllib.request.Request(url + "/workspaces", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def pid_of(name: str, needle: str) -> str | None:
    script = (
        'for p in /proc/[0-9]*; do c=$(tr "\\0" " " < $p/cmdline 2>/dev/null); '
        'case "$c" in *"$0"*) echo ${p#/proc/};; esac; done'
    )
    out = subprocess.run(["docker", "exec", name, "sh", "-c", script, needle], capture_output=True, text=True).stdout
    found = [p for p in out.split() if p]
    return found[0] if found else None


def record(data: Path) -> dict:
    try:
        return json.loads((data / "supervisor.json").read_text())
    except (OSError, ValueError):
        return {}


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench-supervise", description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="image reference to boot (the test stack or a real one)")
    parser.add_argument("--rounds", type=int, default=3, help="kills per program")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-supervise-"))
    name = f"owbench-sup-{secrets.token_hex(3)}"
    env = task_env(
        dict(
            OPENWORK_STATE_DIR=str(tmp / "state"),
            OPENWORK_MICROSANDBOX_NAME=name,
            OPENWORK_OFFLINE="true",
            OPENWORK_MICROSANDBOX_IMAGE=args.image,
            OPENWORK_MICROSANDBOX_RUNTIME="docker",
            OPENWORK_MICROSANDBOX_PORT=str(free_port()),
            OPENWORK_HEALTH_TIMEOUT="300",
            OPENWORK_ENV_FILE=str(empty_env_file(tmp)),
        )
    )
    data = tmp / "state" / name / "data"
    try:
        up = invoke(env, "up", "--json", "--show-tokens")
        if up.returncode != 0:
            print(up.stderr, file=sys.stderr)
            return 1
        info = json.loads(up.stdout)
        url, token = info["url"], info["token"]
        times: dict[str, list[float]] = {p: [] for p in PROGRAMS}
        for round_no in range(1, args.rounds + 1):
            for program, needle in PROGRAMS.items():
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and not (
                    record(data).get("consecutive_failures") == 0 and ok(url, token)
                ):
                    time.sleep(1)
                pid = pid_of(name, needle)
                if pid is None:
                    print(f"round {round_no}: no {program} process found", flush=True)
                    continue
                before = record(data).get("restarts", 0)
                start = time.monotonic()
                subprocess.run(["docker", "exec", name, "sh", "-c", f"kill -9 {pid}"], capture_output=True)
                while time.monotonic() - start < 300:
                    if record(data).get("restarts", 0) > before and ok(url, token):
                        break
                    time.sleep(0.2)
                took = time.monotonic() - start
                times[program].append(took)
                print(
                    f"round {round_no}: {program} killed -> healthy in {took:.1f}s "
                    f"(supervisor restarts: {record(data).get('restarts', 0) - before})",
                    flush=True,
                )
        start = time.monotonic()
        invoke(env, "down")
        down_s = time.monotonic() - start
        print()
        for program, values in times.items():
            if values:
                print(
                    f"{program:16} n={len(values)}  min {min(values):.1f}s  median "
                    f"{statistics.median(values):.1f}s  max {max(values):.1f}s"
                )
        print(
            f"restarts counted: {record(data).get('restarts')}; `invoke down` took {down_s:.1f}s "
            f"(the supervisor's record: {record(data).get('state')})"
        )
        return 0
    finally:
        remove_container(name)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    back_to_caller_cwd()
    sys.exit(main())
