"""Benchmark many `invoke up` at once on one host; prints figures (asserts nothing).

    scripts/bench-concurrent [--image REF] [--counts 1,5,10,20] [--runtime docker] [--health-timeout 600]
                             [--start-slots N]

For each count N: N `invoke up` processes started together (distinct names and ports, one state
folder each under a temporary folder), each until it returns; then one `invoke smoke` each (one
after another), the memory of each sandbox after its smoke, and `invoke reset --yes` for all.
Prints, per N: how many became healthy (`up` exit 0 and its smoke passed), the wall time until
the last `up` returned, the per-start median and max, how many `up`s restarted a start or said it
was slow, and the memory per sandbox: the RSS of each of its programs (`docker top`) and the
container's memory use as the kernel counts it (`docker stats`: shared pages of the programs, which
all run from two binaries, are counted once there).

Everything runs under unique names (owbench-conc-*) and is removed at the end; traffic goes to
127.0.0.1 only. OPENWORK_OFFLINE is on. The figures depend on the host and on what else runs on
it: print them with the load (shown) in mind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.bench.common import image_or_setting
from harness.common import INVOKE, ROOT, back_to_caller_cwd, empty_env_file, run_task, task_env
from openwork_sandbox.net.ports import free_port


def program_of(args: str) -> str | None:
    """Which of a sandbox's programs a command line (``docker top``) is, or None (tini, the shell)."""
    if args.startswith("openwork "):
        return "orchestrator"
    if "opencode-gate.js" in args:
        return "opencode-gate" if " serve" in args else "openwork-server-gate"
    if args.startswith("/usr/local/bin/opencode"):
        return "opencode"
    if "openwork-server" in args:  # the real server, or the test image's stand-in (python3 .../openwork-server)
        return "openwork-server"
    return None


def memory(name: str) -> tuple[dict[str, float], float | None]:
    """({program: RSS MiB}, the container's memory use in MiB) of a running Docker sandbox."""
    top = subprocess.run(["docker", "top", name, "-eo", "pid,rss,args"], capture_output=True, text=True)
    rss: dict[str, float] = {}
    for line in top.stdout.splitlines()[1:]:
        _, kib, args = (line.split(None, 2) + ["", ""])[:3]
        label = program_of(args.strip())
        if label and kib.isdigit():
            rss[label] = rss.get(label, 0.0) + int(kib) / 1024
    stats = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", name], capture_output=True, text=True
    ).stdout
    found = re.match(r"\s*([\d.]+)\s*([KMG]i?B)", stats)
    used = None
    if found:
        used = float(found.group(1)) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}.get(found.group(2), 1)
    return rss, used


def run_count(n: int, env: dict, env_file: Path, tmp: Path) -> dict:
    names = [f"owbench-conc-{secrets.token_hex(3)}" for _ in range(n)]
    ports = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    procs = []
    began = time.monotonic()
    for name, port in zip(names, ports, strict=True):
        e = {**env, "OPENWORK_MICROSANDBOX_NAME": name, "OPENWORK_MICROSANDBOX_PORT": str(port)}
        with open(tmp / f"{name}.up.log", "w") as out:  # the up writes its own copy
            procs.append(
                (
                    name,
                    e,
                    time.monotonic(),
                    subprocess.Popen(
                        [*INVOKE, "up", "--env-file", str(env_file)],
                        env=e,
                        cwd=ROOT,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    ),
                )
            )
    took: dict[str, float] = {}
    codes: dict[str, int] = {}
    while len(codes) < n:
        for name, _, started, proc in procs:
            if name not in codes and proc.poll() is not None:
                codes[name], took[name] = proc.returncode, time.monotonic() - started
        time.sleep(0.1)
    wall = time.monotonic() - began
    said = {name: (tmp / f"{name}.up.log").read_text() for name in names}
    healthy, rss_all, used_all = 0, [], []
    try:
        for name, e, _, _ in procs:
            if codes[name] != 0:
                continue
            smoke = run_task("smoke", env=e, env_file=env_file)
            if smoke.returncode == 0:
                healthy += 1
                rss, used = memory(name)
                rss_all.append(rss)
                if used is not None:
                    used_all.append(used)
            else:
                lines = [x for x in (smoke.stdout + smoke.stderr).splitlines() if x.strip()]
                print(f"  {name}: smoke failed: {lines[-1] if lines else smoke.returncode}", file=sys.stderr)
    finally:
        for _, e, _, _ in procs:
            run_task("reset", "--yes", env=e, env_file=env_file)
    for name in names:
        if codes[name] != 0:
            lines = [x for x in said[name].splitlines() if x.strip()]
            print(f"  {name}: up failed (exit {codes[name]}): {lines[-1] if lines else ''}", file=sys.stderr)
    per_start = sorted(took.values())
    return {
        "n": n,
        "healthy": healthy,
        "wall": wall,
        "median": statistics.median(per_start),
        "max": per_start[-1],
        "restarted": sum("restarting it" in s or "exited during start-up" in s for s in said.values()),
        "slow": sum("slow start:" in s for s in said.values()),
        "rss": rss_all,
        "used": used_all,
    }


def mib_summary(rss_all: list[dict[str, float]], used_all: list[float]) -> str:
    if not rss_all:
        return "-"
    programs = sorted({p for r in rss_all for p in r}, key=lambda p: -statistics.median(r.get(p, 0) for r in rss_all))
    parts = [f"{p} {statistics.median(r.get(p, 0) for r in rss_all):.0f}" for p in programs]
    total = statistics.median(sum(r.values()) for r in rss_all)
    used = f"; container {statistics.median(used_all):.0f} MiB" if used_all else ""
    return f"RSS {total:.0f} MiB ({', '.join(parts)}){used}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench-concurrent", description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="image reference (default: OPENWORK_MICROSANDBOX_IMAGE)")
    parser.add_argument("--counts", default="1,5,10,20", help="how many `up`s at once, comma-separated")
    parser.add_argument("--runtime", default="docker", choices=["docker", "microsandbox"])
    parser.add_argument("--health-timeout", default="600", help="OPENWORK_HEALTH_TIMEOUT for each `up`")
    parser.add_argument("--start-slots", help="OPENWORK_START_SLOTS for each `up` (default: its default, one per core)")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    image = image_or_setting(args.image)

    tmp = Path(tempfile.mkdtemp(prefix="owbench-conc-"))
    env_file = empty_env_file(tmp)
    env = task_env(
        dict(
            OPENWORK_STATE_DIR=str(tmp / "state"),
            OPENWORK_MICROSANDBOX_IMAGE=image,
            OPENWORK_MICROSANDBOX_RUNTIME=args.runtime,
            OPENWORK_OFFLINE="true",
            OPENWORK_HEALTH_TIMEOUT=args.health_timeout,
        )
    )
    if args.start_slots is not None:
        env["OPENWORK_START_SLOTS"] = args.start_slots
    mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(
        f"concurrent up benchmark: runtime {args.runtime}, image {image}, {os.cpu_count()} CPUs, "
        f"{mem_total:.0f} GiB memory, start slots {args.start_slots or 'default'}, "
        f"load {os.getloadavg()[0]:.1f} at start",
        flush=True,
    )
    results = []
    try:
        for n in counts:
            load = os.getloadavg()[0]
            r = run_count(n, env, env_file, tmp)
            results.append(r)
            print(
                f"N={n:<3} healthy {r['healthy']}/{n}  wall {r['wall']:6.1f}s  per start median {r['median']:6.1f}s "
                f"max {r['max']:6.1f}s  restarts {r['restarted']}  'slow start' {r['slow']}  (load {load:.1f} "
                f"before)\n       memory per sandbox after one smoke: {mib_summary(r['rss'], r['used'])}",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps([{k: v for k, v in r.items() if k not in ("rss", "used")} for r in results]))
    return 0


if __name__ == "__main__":
    back_to_caller_cwd()
    sys.exit(main())
