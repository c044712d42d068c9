"""Benchmark the microVM path under emulation; prints figures (asserts nothing).

    scripts/bench-microvm [--rounds N] [--runtimes microsandbox,docker]

From this machine it runs itself inside the emulated host (`scripts/microvm-host run`), with the
e2e image (`scripts/microvm-image`), and prints:
- per runtime, in the same emulated host, paired round by round (the runtimes alternate which goes
  first): cold `up` (create: pull from the registry on the guest's loopback, boot, start), warm
  `up` (after `down`: start, relaunch), `smoke`; median, min and max over the rounds;
- the harness's own overhead as the harness reports it ("harness figures": guest build or cache,
  `docker save`, boot to init, services, image load, the command, total).
Inside the emulated host (``--inside``, or wherever microVMs boot) it measures only the rounds.
Every `invoke` call runs as a user would, in its own process; names and state folders are
temporary and removed at the end. OPENWORK_HEALTH_TIMEOUT, _REQUEST_TIMEOUT and _MICROSANDBOX_CPUS
come from the environment (the emulated host's from scripts/microvm-host); the deadline is 900 s without.
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

from harness.common import LOCAL_REGISTRY, ROOT, back_to_caller_cwd, empty_env_file, run_task, task_env

# the slow host's settings (the emulated host's come from scripts/microvm-host): taken from the
# environment, else a 900 s health deadline
SLOW_HOST_SETTINGS = ("OPENWORK_HEALTH_TIMEOUT", "OPENWORK_REQUEST_TIMEOUT", "OPENWORK_MICROSANDBOX_CPUS")


def say(line: str) -> None:
    print(line, flush=True)


def invoke(env: dict, env_file: Path, *args: str) -> float:
    """Seconds ``invoke ARGS`` took with the settings ENV (over a clean environment); exits the
    benchmark when it failed."""
    proc = run_task(*args, env=task_env(env), env_file=env_file, timeout=3600)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-12:] + proc.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"bench-microvm: invoke {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
    return proc.seconds


def registry_serves(ref: str) -> bool:
    """The guest's registry answers for REF (scripts/microvm-host put it in that registry's storage)."""
    from openwork_sandbox.config import ImageRef
    from openwork_sandbox.core.errors import UnreachableError, WorkflowError
    from openwork_sandbox.registry.client import Registry

    if not ref.startswith(LOCAL_REGISTRY + "/") or "@" in ref:
        return False
    image = ImageRef.parse(ref)
    try:
        Registry(LOCAL_REGISTRY, plain_http=True, timeout=60).head_manifest(image.repository, image.reference)
    except UnreachableError:
        raise
    except WorkflowError:  # no such manifest
        return False
    return True


def registry_ref(image: str) -> str:
    """IMAGE where a microVM pulls it: as it is when the harness put it in the guest's registry (its
    copy of the very image loaded); else pushed under a bench tag (plain docker, which gzips every
    layer at the emulated speed: the product's push is measured by the e2e scenario, not here)."""
    if registry_serves(image):
        return image
    ref = f"{LOCAL_REGISTRY}/openwork-microsandbox-bench:run"
    for argv in (["docker", "tag", image, ref], ["docker", "push", ref]):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"bench-microvm: {' '.join(argv[:2])} failed: {proc.stderr.strip()[-300:]}")
    return ref


def inside(rounds: int, runtimes: list[str]) -> int:
    from openwork_sandbox.net.ports import free_port

    image = os.environ.get("OPENWORK_MICROSANDBOX_IMAGE")
    if not image:
        raise SystemExit("bench-microvm: set OPENWORK_MICROSANDBOX_IMAGE (scripts/microvm-image prints it)")
    tmp = Path(tempfile.mkdtemp(prefix="owbench-", dir="/var/tmp"))  # microVM binds need xattrs: not a tmpfs
    env_file = empty_env_file(tmp)
    figures: dict[str, dict[str, list[float]]] = {rt: {"cold up": [], "warm up": [], "smoke": []} for rt in runtimes}
    try:
        ref = registry_ref(image)
        for n in range(rounds):
            order = runtimes if n % 2 == 0 else list(reversed(runtimes))
            for rt in order:
                env = {
                    "OPENWORK_STATE_DIR": str(tmp / "state"),
                    "OPENWORK_MICROSANDBOX_RUNTIME": rt,
                    "OPENWORK_MICROSANDBOX_NAME": f"bench-{rt[:3]}-{secrets.token_hex(2)}",
                    "OPENWORK_MICROSANDBOX_PORT": str(free_port()),
                    "OPENWORK_MICROSANDBOX_IMAGE": ref,
                    "OPENWORK_OFFLINE": "true",
                    "OPENWORK_HEALTH_TIMEOUT": "900",
                    **{k: os.environ[k] for k in SLOW_HOST_SETTINGS if os.environ.get(k)},
                }
                try:
                    cold = invoke(env, env_file, "up")
                    smoke = invoke(env, env_file, "smoke")
                    invoke(env, env_file, "down")
                    warm = invoke(env, env_file, "up")
                finally:
                    run_task("reset", "--yes", env=task_env(env), env_file=env_file, timeout=900)
                for key, value in (("cold up", cold), ("warm up", warm), ("smoke", smoke)):
                    figures[rt][key].append(value)
                say(f"round {n + 1} {rt}: cold up {cold:.1f}s, smoke {smoke:.1f}s, warm up {warm:.1f}s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"figures over {rounds} round(s), emulated host (median [min-max] s):")
    for rt in runtimes:
        cells = [f"{k} {statistics.median(v):.1f} [{min(v):.1f}-{max(v):.1f}]" for k, v in figures[rt].items() if v]
        say(f"  {rt:<12} " + ", ".join(cells))
    if len(runtimes) == 2 and all(figures[rt]["cold up"] for rt in runtimes):
        a, b = runtimes
        ratio = {
            k: statistics.median(figures[a][k]) / max(statistics.median(figures[b][k]), 1e-6)
            for k in ("cold up", "warm up", "smoke")
        }
        say(f"  {a}/{b}: " + ", ".join(f"{k} x{v:.2f}" for k, v in ratio.items()))
    say("BENCH-JSON " + json.dumps(figures))
    return 0


def outside(args) -> int:
    return in_emulated_host("harness.bench.microvm", ["--rounds", str(args.rounds), "--runtimes", args.runtimes])


def in_emulated_host(module: str, args: list[str], image: str | None = None) -> int:
    """Run ``python3 -m MODULE --inside ARGS`` in the emulated host (``scripts/microvm-host run``) with
    IMAGE (default: the e2e image ``scripts/microvm-image`` builds), its output streamed here, then one
    line with the harness's own overhead as microvm-host reports it; returns its exit code."""
    if image is None:
        proc = subprocess.run([str(ROOT / "scripts" / "microvm-image")], capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        image = proc.stdout.strip().splitlines()[-1]
    env = {**os.environ, "OPENWORK_MICROSANDBOX_IMAGE": image}
    argv = [
        str(ROOT / "scripts" / "microvm-host"),
        "run",
        "--",
        "python3",
        "-m",
        module,
        "--inside",
        *args,
    ]
    t0 = time.monotonic()
    run = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    harness = []

    def pump_err():
        for line in run.stderr:
            sys.stderr.write(line)
            if line.startswith("microvm-host: harness figures:"):
                harness.append(line.split("harness figures:", 1)[1].strip())

    import threading

    threading.Thread(target=pump_err, daemon=True).start()
    for line in run.stdout:
        sys.stdout.write(line)
    code = run.wait()
    time.sleep(0.2)
    say(
        f"harness overhead (as microvm-host reports it): {harness[-1] if harness else 'not reported'}; "
        f"wall {time.monotonic() - t0:.1f}s"
    )
    return code


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench-microvm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runtimes", default="microsandbox,docker")
    parser.add_argument("--inside", action="store_true", help="measure here (inside the emulated host)")
    args = parser.parse_args()
    if args.inside:
        return inside(args.rounds, [r for r in args.runtimes.split(",") if r])
    return outside(args)


if __name__ == "__main__":
    back_to_caller_cwd()
    sys.exit(main())
