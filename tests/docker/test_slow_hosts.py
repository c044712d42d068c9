"""Starts that hold on any host: a sandbox throttled to a tenth of a core, a start while every core
is busy, many `up`s at once (issue 20).

The real image's programs run: the real orchestrator (openwork 0.18.1, which gives opencode and
openwork-server a fixed 10 s each to become healthy) and the real opencode; openwork-server is the
test stand-in (the real one cannot be downloaded here). Each sandbox is started with `invoke up` in
its own process, as a user would, and must then pass `invoke smoke`. No assertion is on seconds
(one is on the share of a start's wait spent in runtime calls): the figures are in scripts/bench-concurrent.

Concurrency: OPENWORK_TEST_CONCURRENT_UPS (default 10) `up`s at once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from openwork_sandbox.net.ports import free_port
from tests.support.lifecycle import OFFLINE, ROOT, invoke, unique_name, user_ports

pytestmark = [pytest.mark.docker, pytest.mark.slow]

DEADLINE = "600"  # OPENWORK_HEALTH_TIMEOUT: the one deadline; a shared CI host can be very slow
CONCURRENT = int(os.environ.get("OPENWORK_TEST_CONCURRENT_UPS") or 10)


def sandbox_env(stack_image, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "OPENWORK_MICROSANDBOX_NAME": unique_name(prefix),
        "OPENWORK_MICROSANDBOX_PORT": str(free_port()),
        "OPENWORK_MICROSANDBOX_IMAGE": stack_image.ref,
        "OPENWORK_MICROSANDBOX_RUNTIME": "docker",
        "OPENWORK_HEALTH_TIMEOUT": DEADLINE,
        **extra,
    }


def start_up(tmp_path, env: dict[str, str]) -> subprocess.Popen:
    """`invoke up` in its own process (as tests.support.lifecycle.invoke runs it), not waited for."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENWORK", "OPENCODE_VERSION"))}
    clean.update({"OPENWORK_STATE_DIR": str(tmp_path / "state"), **OFFLINE, **env})
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "up", "--env-file", str(env_file)],
        cwd=ROOT,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def inspect(name: str) -> dict:
    proc = subprocess.run(["docker", "inspect", name], capture_output=True, text=True)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else {}


def docker_logs(name: str) -> str:
    proc = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    return proc.stdout + proc.stderr


def up_and_smoke(tmp_path, env: dict[str, str]) -> str:
    """`invoke up` then `invoke smoke`, both must pass; returns what `up` said."""
    up = invoke(tmp_path, "up", timeout=float(DEADLINE) + 120, **env)
    assert up.returncode == 0, f"up failed:\n{up.stderr[-3000:]}"
    smoke = invoke(tmp_path, "smoke", timeout=300, **env)
    assert smoke.returncode == 0, f"smoke failed:\n{smoke.stdout[-2000:]}{smoke.stderr[-2000:]}"
    return up.stderr


def test_a_sandbox_throttled_to_a_tenth_of_a_core_starts_and_an_interrupted_start_is_stopped(stack_image, tmp_path):
    env = sandbox_env(stack_image, "i20-tenth", OPENWORK_MICROSANDBOX_CPUS="0.1")
    name = env["OPENWORK_MICROSANDBOX_NAME"]
    try:
        # 1. interrupted (as CI cancels: SIGTERM) while the orchestrator waits for opencode
        proc = start_up(tmp_path, env)
        waited = time.monotonic()
        while "[opencode] Waiting for health" not in docker_logs(name):
            assert proc.poll() is None, f"up ended before opencode started:\n{proc.communicate()[1][-3000:]}"
            assert time.monotonic() - waited < 300, "the orchestrator never started opencode"
            time.sleep(0.5)
        assert inspect(name)["HostConfig"]["NanoCpus"] == 100_000_000  # Docker's --cpus 0.1
        proc.send_signal(signal.SIGTERM)
        _, said = proc.communicate(timeout=120)
        assert proc.returncode == 130, said[-3000:]
        assert f"interrupted before {name} was healthy: stopped it" in said, said[-3000:]
        assert inspect(name)["State"]["Running"] is False  # nothing left half-started

        # 2. the next `up` starts it again, at a tenth of a core, without a restart, and says it was slow
        said = up_and_smoke(tmp_path, env)
        assert "made no progress" not in said and "restarting" not in said, said[-3000:]
        slow = [line for line in said.splitlines() if line.startswith("slow start:")]
        assert len(slow) == 1 and "opencode" in slow[0] and "0.1 CPU" in slow[0], said[-3000:]
        log = docker_logs(name)
        assert "opencode-gate: opencode still starting after" in log  # progress while it started
        # the server went through its gate: its one "answered after" line, which begins "start race held
        # off: ... dropped N request(s) ...; " when probes sent early were answered late (a loaded host)
        answered = [line for line in log.splitlines() if "openwork-server-gate:" in line and "answered after" in line]
        assert len(answered) == 1 and re.search(r"openwork-server answered after \d+ ms", answered[0]), "\n".join(
            line for line in log.splitlines() if "-gate:" in line
        )
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_a_start_while_every_core_is_busy(stack_image, tmp_path):
    spin = "import time\nend = time.monotonic() + 300\nwhile time.monotonic() < end:\n    pass\n"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2 * (os.cpu_count() or 1))]
    env = sandbox_env(stack_image, "i20-busy")
    try:
        time.sleep(1)
        assert all(p.poll() is None for p in spinners)  # the cores are busy during the whole start
        up_and_smoke(tmp_path, env)
        assert all(p.poll() is None for p in spinners)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
        subprocess.run(["docker", "rm", "-f", env["OPENWORK_MICROSANDBOX_NAME"]], capture_output=True)


def test_many_ups_at_once_all_end_healthy_and_pass_smoke(stack_image, tmp_path):
    # ports from the kernel's ephemeral range would race the ports the starting sandboxes take from it
    # (each opencode's under host networking): the orchestrator then moves a server off its port
    envs = [
        sandbox_env(stack_image, f"i20-many{i}", OPENWORK_MICROSANDBOX_PORT=port)
        for i, port in enumerate(user_ports(CONCURRENT))
    ]
    try:
        procs = [start_up(tmp_path, e) for e in envs]
        results = [(e, p, *p.communicate(timeout=float(DEADLINE) + 300)) for e, p in zip(envs, procs, strict=True)]
        failed = [f"{e['OPENWORK_MICROSANDBOX_NAME']}: {err[-1500:]}" for e, p, _, err in results if p.returncode != 0]
        assert not failed, "\n".join(failed)
        for e, _, _, err in results:
            assert "made no progress" not in err, err[-3000:]  # slow is not stuck
            smoke = invoke(tmp_path, "smoke", timeout=300, **e)
            assert smoke.returncode == 0, f"smoke of {e['OPENWORK_MICROSANDBOX_NAME']} failed:\n{smoke.stdout[-2000:]}"
    finally:
        for e in envs:
            subprocess.run(["docker", "rm", "-f", e["OPENWORK_MICROSANDBOX_NAME"]], capture_output=True)


class SlowHostDockerRuntime:
    """The real Docker runtime on a host where every `docker` call takes DELAY seconds longer (as in
    the emulated host of scripts/microvm-host, where one took about 1 s): a test stand-in for the
    host's speed only; every call still goes to the real engine. It keeps each look as
    ``(call, began, seconds)``; the calls per kind and the seconds spent are read from those."""

    def __init__(self, name: str, state_dir, delay: float):
        from openwork_sandbox.runtimes.docker import DockerRuntime

        self.real, self.delay = DockerRuntime(name, state_dir), delay
        self.looks: list[tuple[str, float, float]] = []

    @property
    def calls(self) -> Counter:
        return Counter(kind for kind, _, _ in self.looks)

    @property
    def spent(self) -> float:
        return sum(took for _, _, took in self.looks)

    def _timed(self, call, *args):
        t0 = time.monotonic()
        time.sleep(self.delay)
        try:
            return call(*args)
        finally:
            self.looks.append((call.__name__, t0, time.monotonic() - t0))

    def is_alive(self) -> bool:
        return self._timed(self.real.is_alive)

    def log_tail(self, lines: int = 40) -> list[str]:
        return self._timed(self.real.log_tail, lines)

    def log_hint(self) -> str:
        return self.real.log_hint()


def late_looks(looks, call: str, every: float, slack: float) -> list[str]:
    """The looks of kind CALL that came later than EVERY seconds (or 20 times what the look before took,
    the watch's spacing by cost) plus SLACK after the one before: a watch that stopped looking."""
    mine = [(began, took) for kind, began, took in looks if kind == call]
    return [
        f"{call} {b - a:.2f} s after one that took {took:.2f} s"
        for (a, took), (b, _) in zip(mine, mine[1:], strict=False)
        if b - a > max(every, 20 * took) + slack
    ]


@pytest.mark.parametrize("delay", [0.0, 0.45])
def test_a_starts_watch_spends_a_tenth_of_the_time_in_runtime_calls_however_slow_they_are(
    test_base_image, tmp_path, delay
):
    """While `up` waits for health it asks the runtime whether the sandbox runs and reads its log's
    tail. Where each call is slow, those looks used to take about half of a start's time (in the
    emulated host a starting opencode got 15% of the CPU); they are now spaced by what they cost.
    Where calls are quick the watch still looks every few seconds (a server that dies is seen soon)."""
    from openwork_sandbox.sandbox.start_watch import StartWatch

    name = unique_name("i19-watch")
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            test_base_image,
            "sh",
            "-c",
            "while :; do echo tick; sleep 1; done",
        ],
        check=True,
        capture_output=True,
    )
    try:
        rt = SlowHostDockerRuntime(name, tmp_path, delay)
        watch = StartWatch(rt, None, "0.18.1", free_port())
        began = time.monotonic()
        while time.monotonic() - began < 12:
            assert watch() is True
            time.sleep(0.1)  # as the health wait calls it: between its polls
        wall = time.monotonic() - began
        share = rt.spent / wall
        if delay:
            assert share <= 0.2, f"{share:.0%} of {wall:.1f} s spent in runtime calls of {delay} s or more: {rt.calls}"
        else:
            # quick calls: looked at every few seconds (the log's tail every 2 s, is_alive backing off to
            # 3 s), each later only by what the look before cost; a loaded host makes calls slower,
            # so the number of looks is not fixed, their spacing is
            assert rt.calls["is_alive"] >= 3 and rt.calls["log_tail"] >= 2, rt.calls
            slack = 0.5 + max(took for _, _, took in rt.looks)  # a poll's sleep, and the other look first
            late = late_looks(rt.looks, "log_tail", 2.0, slack) + late_looks(rt.looks, "is_alive", 3.0, slack)
            assert not late, late
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
