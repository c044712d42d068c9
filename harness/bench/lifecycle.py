"""Benchmark `up`/`down`/`status` against the floor; prints figures (not a test, asserts nothing).

    scripts/bench-lifecycle [--image REF] [--runtime docker|microsandbox] [--runs N]

- floor:     the image started directly with `docker run` (no workflow), until GET /health is 200
- pull:      `docker pull` of the image after untagging it (layers the engine already has are not
             fetched again; the figure says so)
- up cold:   `invoke up` with no sandbox and the image untagged (pull + create + wait healthy)
- up warm:   `invoke up` again (reuse), as a user runs it (includes Python start-up), N runs
- up start:  `invoke up` after `invoke down` (start + wait healthy)
- down, status: `invoke down`, `invoke status`

Targets: warm up under 1 s; cold up within 1.5 s of floor + pull.
Everything runs under a unique name and a temporary state folder, removed at the end.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.bench.common import image_or_setting, remove_container
from harness.common import ROOT, back_to_caller_cwd, empty_env_file, run_task, task_env
from openwork_sandbox.net.ports import free_port


def wait_health(url: str, timeout: float = 120) -> float:
    import requests

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return time.monotonic() - start
        except requests.RequestException:
            pass
        time.sleep(0.01)
    raise SystemExit(f"{url}/health not healthy within {timeout}s")


def timed(*args: str, env: dict, env_file: Path) -> float:
    """Seconds ``invoke ARGS`` took; exits the benchmark when it broke (an exit code beyond 1)."""
    proc = run_task(*args, env=env, env_file=env_file)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"invoke {' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.seconds


def floor(image: str) -> tuple[float, float]:
    """(docker run -> healthy, docker stop; docker start -> healthy) for the bare image."""
    port, oc_port = free_port(), free_port()
    name = f"owbench-floor-{secrets.token_hex(3)}"
    argv = [
        "docker",
        "run",
        "-d",
        "--init",
        "--name",
        name,
        "--network",
        "host",
        "-e",
        f"OPENWORK_PORT={port}",
        "-e",
        f"OPENWORK_OPENCODE_PORT={oc_port}",
        "-e",
        f"OPENWORK_TOKEN={secrets.token_urlsafe(32)}",
        "-e",
        f"OPENWORK_HOST_TOKEN={secrets.token_urlsafe(32)}",
        image,
    ]
    try:
        start = time.monotonic()
        subprocess.run(argv, check=True, capture_output=True)
        wait_health(f"http://127.0.0.1:{port}")
        run_s = time.monotonic() - start
        subprocess.run(["docker", "stop", "-t", "10", name], check=True, capture_output=True)
        start = time.monotonic()
        subprocess.run(["docker", "start", name], check=True, capture_output=True)
        wait_health(f"http://127.0.0.1:{port}")
        return run_s, time.monotonic() - start
    except SystemExit:
        logs = subprocess.run(["docker", "logs", "--tail", "30", name], capture_output=True, text=True)
        print(logs.stdout + logs.stderr, file=sys.stderr)
        raise
    finally:
        remove_container(name)


def untag(image: str) -> None:
    subprocess.run(["docker", "image", "rm", image], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench-lifecycle", description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="image reference (default: OPENWORK_MICROSANDBOX_IMAGE)")
    parser.add_argument("--runtime", default="docker", choices=["docker", "microsandbox"])
    parser.add_argument("--runs", type=int, default=5, help="warm runs and status runs")
    args = parser.parse_args()
    image = image_or_setting(args.image)

    source = image
    if subprocess.run(["docker", "pull", "-q", source], capture_output=True).returncode != 0:
        print(
            f"cannot pull {source}: push it first (invoke push-image, or run the tests to build the test image)",
            file=sys.stderr,
        )
        return 1
    # a private copy under another name, so untagging it for the cold runs disturbs nobody
    repo = source.rsplit("@", 1)[0]
    registry = repo.split("/", 1)[0]
    image = f"{registry}/owbench-lifecycle:{secrets.token_hex(3)}"
    subprocess.run(["docker", "tag", source, image], check=True, capture_output=True)
    subprocess.run(["docker", "push", image], check=True, capture_output=True)

    tmp = Path(tempfile.mkdtemp(prefix="owbench-"))
    env_file = empty_env_file(tmp)
    name = f"owbench-{secrets.token_hex(3)}"
    env = task_env(
        dict(
            OPENWORK_STATE_DIR=str(tmp / "state"),
            OPENWORK_MICROSANDBOX_NAME=name,
            OPENWORK_MICROSANDBOX_IMAGE=image,
            OPENWORK_MICROSANDBOX_PORT=str(free_port()),
            OPENWORK_MICROSANDBOX_RUNTIME=args.runtime,
        )
    )
    e = dict(env=env, env_file=env_file)
    figures: list[tuple[str, str]] = []
    try:
        pairs = [floor(image) for _ in range(2)]
        floors, start_floors = [p[0] for p in pairs], [p[1] for p in pairs]
        floor_s, start_floor_s = min(floors), min(start_floors)
        figures.append(
            (
                "floor (docker run -> healthy)",
                f"{floor_s:.2f}s (best of {len(floors)}: " + ", ".join(f"{f:.2f}" for f in floors) + ")",
            )
        )
        figures.append(
            (
                "floor (docker start -> healthy)",
                f"{start_floor_s:.2f}s (best of {len(start_floors)}: "
                + ", ".join(f"{f:.2f}" for f in start_floors)
                + ")",
            )
        )

        untag(image)
        start = time.monotonic()
        subprocess.run(["docker", "pull", "-q", image], check=True, capture_output=True)
        pull_s = time.monotonic() - start
        figures.append(("pull (layers already local)", f"{pull_s:.2f}s"))

        untag(image)
        cold = timed("up", **e)
        figures.append(
            (
                "up cold (pull+create+healthy)",
                f"{cold:.2f}s  overhead vs floor+pull: {cold - floor_s - pull_s:+.2f}s (target <= +1.5s)",
            )
        )

        warm = [timed("up", **e) for _ in range(args.runs)]
        figures.append(
            (
                "up warm (reuse)",
                f"median {statistics.median(warm):.2f}s, max {max(warm):.2f}s over {len(warm)} runs (target < 1s)",
            )
        )

        from openwork_sandbox.config import load_settings as load
        from openwork_sandbox.sandbox.up import up

        settings = load(environ=env, env_file=env_file, root=ROOT)
        import contextlib
        import io

        inproc = []
        for _ in range(args.runs):
            with contextlib.redirect_stderr(io.StringIO()):
                t = time.monotonic()
                up(settings)
                inproc.append(time.monotonic() - t)
        figures.append(("up warm, in-process (no start-up)", f"median {statistics.median(inproc) * 1000:.0f} ms"))

        st = [timed("status", **e) for _ in range(args.runs)]
        figures.append(("status", f"median {statistics.median(st):.2f}s"))

        down = timed("down", **e)
        figures.append(("down", f"{down:.2f}s"))
        down2 = timed("down", **e)
        figures.append(("down again (no-op)", f"{down2:.2f}s"))

        starts = []
        for _ in range(2):
            timed("down", **e)
            starts.append(timed("up", **e))
        figures.append(
            (
                "up after down (start+healthy)",
                f"best {min(starts):.2f}s of "
                + ", ".join(f"{s:.2f}" for s in starts)
                + f"; vs start floor {min(starts) - start_floor_s:+.2f}s",
            )
        )

        replaced = timed("up", "--replace", **e)
        figures.append(("up --replace (re-pull+recreate)", f"{replaced:.2f}s"))
    finally:
        run_task("reset", "--yes", **e)
        untag(image)
        shutil.rmtree(tmp, ignore_errors=True)

    width = max(len(k) for k, _ in figures)
    print(f"lifecycle benchmark: runtime {args.runtime}, image {source} (as {image})")
    for key, value in figures:
        print(f"  {key.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    back_to_caller_cwd()
    sys.exit(main())
