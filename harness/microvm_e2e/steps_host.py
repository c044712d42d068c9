"""The steps that need this host as a whole: the suite's tests that boot a microVM, and the Docker
runtime beside microsandbox in the same host. Each takes the Scenario, returns its one-line detail
and raises StepFailed when it does not hold."""

from __future__ import annotations

import subprocess
import sys
import time

from harness.common import ROOT, task_env
from harness.microvm_e2e.guest import harness_share
from harness.microvm_e2e.outcome import StepFailed
from harness.microvm_e2e.scenario import TASK_TIMEOUT, Scenario
from openwork_sandbox.net.ports import free_port

# the microVM tests boot five microVMs in all, each slow with one vCPU under emulation
TESTS_TIMEOUT = 3 * TASK_TIMEOUT


def microvm_tests(sc: Scenario) -> str:
    """The suite's tests that need a booted microVM (``pytest -m microvm``; they skip on a host
    without one), with the loaded image as their stack image and this scenario's health deadline."""
    sc.engines_copy()
    env = task_env(
        {"OPENWORK_TEST_STACK_IMAGE": sc.loaded_image},
        {
            k: sc.settings_env[k]
            for k in ("OPENWORK_HEALTH_TIMEOUT", "OPENWORK_REQUEST_TIMEOUT", "OPENWORK_MICROSANDBOX_CPUS")
        },
    )
    started = time.monotonic()
    # pytest's folders on this scenario's disk: the emulated host's /tmp is a tmpfs (Linux 6.1)
    # without the extended attributes microVM binds need (`up` says so, and the tests failed so)
    # its output goes to the log as it comes, so a run cut off by the timeout still says how far it got;
    # under the harness that log is in its share (readable on the outer machine while the tests run)
    log = (harness_share() or sc.log_dir) / "pytest-microvm.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        try:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-m",
                    "microvm",
                    "-v",
                    "-rs",
                    "-p",
                    "no:cacheprovider",
                    "--basetemp",
                    str(sc.tmp / "pytest"),
                    "tests",
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=TESTS_TIMEOUT,
            )
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            returncode = None
    lines = log.read_text().strip().splitlines() or ["no output"]
    summary = lines[-1].strip("= ") if returncode is not None else f"cut off after {TESTS_TIMEOUT:.0f} s"
    if returncode != 0 or "skipped" in summary or "passed" not in summary:
        print("\n".join(lines[-30:]), file=sys.stderr)
        raise StepFailed(f"pytest -m microvm: {summary}")
    sc.figures["microvm_tests"] = time.monotonic() - started
    return summary


def docker_pair(sc: Scenario) -> str:
    """The same image on the Docker runtime in the same host: cold up, warm up, smoke."""
    env = {
        "OPENWORK_MICROSANDBOX_RUNTIME": "docker",
        "OPENWORK_MICROSANDBOX_NAME": f"{sc.name}-d",
        "OPENWORK_MICROSANDBOX_PORT": str(free_port()),
    }
    sc.local_run_ref()  # its cold up is a create, not a pull, as the microVM's figures are
    try:
        cold = sc.task("up", env=env).seconds
        sc.task("down", env=env)
        warm = sc.task("up", env=env).seconds
        smoke = sc.task("smoke", env=env).seconds
    finally:
        sc.task("reset", "--yes", env=env, check=False)
    sc.figures.update(docker_cold_up=cold, docker_warm_up=warm, docker_smoke=smoke)
    return f"docker: cold up {cold:.1f}s, warm up {warm:.1f}s, smoke {smoke:.1f}s"
