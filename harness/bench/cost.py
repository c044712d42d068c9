"""Benchmark what one sandbox costs, per launch and runtime, in one run; prints figures (asserts nothing).

    scripts/bench-cost [--image REF] [--rounds 20] [--launches orchestrator,server]
                       [--runtimes docker,microsandbox] [--repeats 5]

For each runtime and each launch (``OPENWORK_LAUNCH``):

- cold ``up``: ROUNDS starts of a new sandbox (no container yet, image local) by ``invoke up``,
  paired with ROUNDS floor starts (``docker run`` of the same image with the same launch until
  ``GET /health`` is 200, ``bench-start``'s floor), alternating which goes first so both see the
  same load: median, p95, and each against the floor's median;
- warm ``up``: ``invoke up`` of a sandbox that ``invoke down`` stopped (container, image and state
  there), and ``up`` again of a running one (nothing to do), REPEATS times each: median;
- smoke: ``invoke smoke`` of that sandbox, REPEATS times: median;
- memory after one smoke: the sandbox as the kernel counts it (its cgroup: usage less inactive file
  pages, as ``docker stats``; the first sandbox on a host also pays the programs' file pages, later
  ones share them) and each program's RSS and its anonymous part (``/proc/PID/smaps_rollup``; the
  binaries' pages are shared, so RSS sums to more than the cgroup).

A runtime that cannot boot a sandbox here (microsandbox without hardware virtualization) gets one
line saying why (its first ``up``'s last line); the floor is Docker's, so it has no ratio there.
Everything runs under unique names and a temporary state folder, removed at the end; traffic goes to
127.0.0.1 only. OPENWORK_OFFLINE is on for every task, and the floor gets the same environment.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.bench.common import cgroup_memory_mib, image_or_setting
from harness.bench.concurrent import program_of
from harness.bench.start import floor_start, p95, up_start
from harness.common import back_to_caller_cwd, empty_env_file, run_task, task_env, teller
from openwork_sandbox.net.ports import free_port

say = teller("bench-cost")
LAUNCHES = ("orchestrator", "server")
RUNTIMES = ("docker", "microsandbox")


def container_mib(name: str) -> float | None:
    """The container's memory as ``docker stats`` counts it (cgroup usage less inactive file pages),
    MiB, under either of Docker's cgroup drivers; None when it cannot be read."""
    cid = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", name], capture_output=True, text=True).stdout.strip()
    for cgroup in (f"docker/{cid}", f"system.slice/docker-{cid}.scope") if cid else ():
        used = cgroup_memory_mib(cgroup)
        if used is not None:
            return used
    return None


def programs_mib(name: str) -> dict[str, tuple[float, float | None]]:
    """{program: (RSS MiB, anonymous MiB or None when /proc cannot be read)} of a running sandbox; the
    supervisor's shells and filters are "supervisor", anything else "other"."""
    top = subprocess.run(["docker", "top", name, "-eo", "pid,rss,args"], capture_output=True, text=True).stdout
    found: dict[str, tuple[float, float | None]] = {}
    for line in top.splitlines()[1:]:
        pid, kib, args = (line.split(None, 2) + ["", ""])[:3]
        if not kib.isdigit():
            continue
        label = program_of(args.strip()) or ("supervisor" if "openwork-supervise" in args or "awk" in args else "other")
        anon = None
        try:
            for row in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if row.startswith("Anonymous:"):
                    anon = int(row.split()[1]) / 1024
        except OSError:
            pass
        rss, had = found.get(label, (0.0, 0.0))
        found[label] = (rss + int(kib) / 1024, None if anon is None or had is None else had + anon)
    return found


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}s" if values else "-"


def cold(image: str, env: dict, env_file: Path, launch: str, rounds: int, with_floor: bool) -> dict:
    """ROUNDS cold ups (and as many floors, paired) of LAUNCH; {"floor": [s], "up": [s], "failed": [why]}."""
    out: dict[str, list] = {"floor": [], "up": [], "failed": []}
    for i in range(rounds):
        kinds = ("floor", "up") if i % 2 == 0 else ("up", "floor")
        for kind in kinds if with_floor else ("up",):
            if kind == "floor":
                took, outcome = floor_start(image, 90.0, {"OPENWORK_LAUNCH": launch})
            else:
                took, outcome = up_start(env, env_file, f"owbench-cost-{secrets.token_hex(3)}")
            (out[kind] if took is not None else out["failed"]).append(
                took if took is not None else f"{kind}: {outcome}"
            )
            shown = "-" if took is None else f"{took:.2f}s"
            say(f"{launch} cold {i + 1}/{rounds} {kind:<5} {shown:>7}  {outcome}")
            if took is None and kind == "up" and i == 0:
                return out  # a runtime that cannot boot here: one failure says it
    return out


def warm(env: dict, env_file: Path, runtime: str, launch: str, repeats: int) -> dict:
    """One sandbox of LAUNCH: memory after one smoke, then REPEATS smokes, warm ups after ``down`` and
    ups of the running sandbox; reset at the end."""
    name = f"owbench-cost-{secrets.token_hex(3)}"
    env = {**env, "OPENWORK_MICROSANDBOX_NAME": name, "OPENWORK_MICROSANDBOX_PORT": str(free_port())}
    out: dict = {"smoke": [], "after_down": [], "running": [], "memory": None, "programs": {}, "failed": []}
    try:
        made = run_task("up", env=env, env_file=env_file)
        if made.returncode != 0:
            out["failed"].append(f"up: {(made.stderr.strip().splitlines() or ['no output'])[-1][:160]}")
            return out
        for i in range(repeats):
            ran = run_task("smoke", env=env, env_file=env_file)
            if ran.returncode != 0:
                out["failed"].append(f"smoke: {(ran.stdout + ran.stderr).strip().splitlines()[-1][:160]}")
                return out
            out["smoke"].append(ran.seconds)
            if i == 0 and runtime == "docker":
                out["memory"], out["programs"] = container_mib(name), programs_mib(name)
        for _ in range(repeats):
            out["running"].append(run_task("up", env=env, env_file=env_file).seconds)
            run_task("down", env=env, env_file=env_file)
            again = run_task("up", env=env, env_file=env_file)
            (out["after_down"] if again.returncode == 0 else out["failed"]).append(
                again.seconds if again.returncode == 0 else "warm up failed"
            )
        say(f"{launch} warm: smoke {median(out['smoke'])}, up after down {median(out['after_down'])}")
    finally:
        run_task("reset", "--yes", env=env, env_file=env_file)
    return out


def report(runtime: str, launch: str, c: dict, w: dict) -> list[str]:
    """The lines for one runtime and launch."""
    lines = [f"{runtime} / {launch}:"]
    floors, ups = c["floor"], c["up"]
    if not ups:
        return [*lines, f"  skipped: {c['failed'][0] if c['failed'] else 'no start'}"]
    lines.append(f"  cold up            median {median(ups)}, p95 {p95(ups):.2f}s over {len(ups)} starts")
    if floors:
        base = statistics.median(floors)
        lines.append(
            f"  floor (docker run) median {base:.2f}s, p95 {p95(floors):.2f}s; up/floor: median "
            f"{statistics.median(ups) / base:.3f} x, p95 {p95(ups) / base:.3f} x"
        )
    lines.append(f"  warm up            after down {median(w['after_down'])}, running {median(w['running'])}")
    lines.append(f"  smoke              {median(w['smoke'])}")
    if w["memory"] is not None:
        parts = ", ".join(
            f"{k} {rss:.0f}" + (f" ({anon:.0f} anon)" if anon is not None else "")
            for k, (rss, anon) in sorted(w["programs"].items(), key=lambda kv: -kv[1][0])
        )
        lines.append(f"  memory after smoke {w['memory']:.0f} MiB (cgroup); RSS MiB by program: {parts}")
    for why in c["failed"] + w["failed"]:
        lines.append(f"  failed: {why}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench-cost", description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="image reference (default: OPENWORK_MICROSANDBOX_IMAGE)")
    parser.add_argument("--rounds", type=int, default=20, help="cold up / floor pairs per launch (default 20)")
    parser.add_argument("--repeats", type=int, default=5, help="warm ups and smokes per launch (default 5)")
    parser.add_argument("--launches", default=",".join(LAUNCHES), help="OPENWORK_LAUNCH values, comma-separated")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="runtimes, comma-separated")
    args = parser.parse_args()
    image = image_or_setting(args.image)
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        print(f"bench-cost: the engine has no image {image}: build it first (invoke build-image)", file=sys.stderr)
        return 1
    load = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="owbench-cost-"))
    lines: list[str] = []
    try:
        env_file = empty_env_file(tmp)
        for runtime in args.runtimes.split(","):
            for launch in args.launches.split(","):
                env = task_env(
                    dict(
                        OPENWORK_STATE_DIR=str(tmp / "state"),
                        OPENWORK_MICROSANDBOX_IMAGE=image,
                        OPENWORK_MICROSANDBOX_RUNTIME=runtime,
                        OPENWORK_LAUNCH=launch,
                        OPENWORK_OFFLINE="true",
                    )
                )
                c = cold(image, env, env_file, launch, args.rounds, with_floor=runtime == "docker")
                w = warm(env, env_file, runtime, launch, args.repeats) if c["up"] else {}
                lines += report(runtime, launch, c, w)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    after = os.getloadavg()
    print(f"cost benchmark: image {image}, {os.cpu_count()} CPUs, load {load[0]:.1f} before, {after[0]:.1f} after")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    back_to_caller_cwd()
    sys.exit(main())
