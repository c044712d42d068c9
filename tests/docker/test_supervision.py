"""Supervision inside the sandbox (issue 17, item 1), on the real Docker runtime.

The image is the test stack (the real orchestrator and opencode, the stand-in openwork-server). Each
program is killed inside the running sandbox (``docker exec ... kill -9``, what an OOM kill does)
and must come back healthy without any command; ``status`` shows the restarts and the last exit
reason; a server that cannot start any more is reported as a crash loop; ``down`` is prompt and
final. One sandbox is shared by the module; its tests run in file order. The last test boots its own
sandbox with OPENWORK_LAUNCH=server, where opencode's gate stops the server when opencode dies.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import requests

from tests.support.lifecycle import docker_env, invoke, make_settings

pytestmark = pytest.mark.docker

BACK_WITHIN = 240  # generous: on a loaded 2-core machine opencode can miss the orchestrator's 10 s a few times; the figure is printed


def pids(name: str, needle: str) -> list[str]:
    """Pids of the processes in container ``name`` whose command line starts with ``needle``."""
    script = (
        'for p in /proc/[0-9]*; do c=$(tr "\\0" " " < $p/cmdline 2>/dev/null); '
        'case "$c" in "$0"*) echo ${p#/proc/};; esac; done'
    )
    out = subprocess.run(
        ["docker", "exec", name, "sh", "-c", script, needle], capture_output=True, text=True, timeout=30
    ).stdout
    return out.split()


def record(settings) -> dict:
    try:
        return json.loads((settings.data_dir / "supervisor.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_for(what: str, predicate, timeout: float, name: str | None = None):
    deadline, delay = time.monotonic() + timeout, 0.1
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    log = ""
    if name:
        out = subprocess.run(["docker", "logs", "-t", "--tail", "60", name], capture_output=True, text=True)
        log = "\n".join(line for line in (out.stdout + out.stderr).splitlines() if "GET /health" not in line)
    pytest.fail(f"not within {timeout}s: {what}\n{log}")


def healthy(settings, token) -> bool:
    try:
        ok = requests.get(settings.url + "/health", timeout=2).status_code == 200
        return (
            ok
            and requests.get(
                settings.url + "/workspaces", headers={"Authorization": f"Bearer {token}"}, timeout=2
            ).status_code
            == 200
        )
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def box(stack_image, tmp_path_factory):
    from openwork_sandbox.sandbox.up import up

    tmp = tmp_path_factory.mktemp("supervise")
    env = docker_env(stack_image.ref, "i17a-sup", health_timeout="300")  # a loaded 2-core machine
    settings = make_settings(tmp, **env)
    ep = up(settings)
    yield {"settings": settings, "tmp": tmp, "env": env, "endpoint": ep}
    subprocess.run(["docker", "rm", "-f", settings.name], capture_output=True)


# the program, how its command line starts inside the sandbox, what the reason must name
PROGRAMS = [
    ("openwork-server", "python3 /usr/local/bin/openwork-server", "[openwork-server] ERROR Process exited"),
    ("opencode", "/usr/local/bin/opencode serve", "[opencode] ERROR Process exited"),
    ("the orchestrator", "openwork serve", "openwork exited with status 137 (SIGKILL)"),
]


def test_the_sandbox_runs_under_the_supervisor_with_a_restart_policy(box):
    settings = box["settings"]
    rec = wait_for(
        "the supervisor's record says healthy", lambda: record(settings).get("healthy_at") and record(settings), 60
    )
    assert rec["supervisor"] == "openwork-supervise" and rec["state"] == "running"
    # starts that failed on the way up (opencode slower than the orchestrator's 10 s on a loaded
    # machine) are restarts too: as many as the supervisor's own lines in the log say
    said = subprocess.run(["docker", "logs", settings.name], capture_output=True, text=True)
    assert rec["restarts"] == (said.stdout + said.stderr).count("; restart ")
    assert pids(settings.name, "/bin/bash /usr/local/bin/openwork-supervise openwork serve")
    policy = subprocess.run(
        ["docker", "inspect", "--format", "{{.HostConfig.RestartPolicy.Name}}", settings.name],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert policy == "unless-stopped"
    # the server's lines pass the supervisor's filter as they come, not in a block at its exit
    # (what up's stall watch and `logs --follow` rely on): opencode starts seconds before the server
    stamped = subprocess.run(["docker", "logs", "-t", settings.name], capture_output=True, text=True).stdout
    first = {}
    for line in stamped.splitlines():
        stamp, _, text = line.partition(" ")
        for mark in ("[opencode] Process spawned", "[openwork-server] Healthy"):
            if text.startswith(mark):
                first.setdefault(mark, stamp)
    from openwork_sandbox.runtimes.base import parse_engine_time as _parse_time

    gap = _parse_time(first["[openwork-server] Healthy"]) - _parse_time(first["[opencode] Process spawned"])
    assert gap > 0.3, f"the log lines came in one block: {first}"


@pytest.mark.parametrize("program,cmdline,reason", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_a_killed_program_comes_back_healthy(box, program, cmdline, reason):
    settings, ep = box["settings"], box["endpoint"]
    before = record(settings)
    # the previous kill's backoff has been reset by a healthy stretch: this is not a crash loop
    wait_for(
        "the backoff reset",
        lambda: record(settings).get("consecutive_failures") == 0 and record(settings).get("healthy_at"),
        90,
    )
    before = record(settings)
    found = pids(settings.name, cmdline)
    assert len(found) == 1, f"{program}: {found}"
    container = subprocess.run(
        ["docker", "inspect", "--format", "{{.Id}}", settings.name], capture_output=True, text=True
    ).stdout.strip()
    killed_at = time.monotonic()
    subprocess.run(["docker", "exec", settings.name, "sh", "-c", f"kill -9 {found[0]}"], check=True, timeout=30)
    rec = wait_for(
        f"a restart after {program} was killed",
        lambda: (r := record(settings)).get("restarts") == before["restarts"] + 1 and r,
        BACK_WITHIN,
        settings.name,
    )
    wait_for(
        f"healthy again after {program} was killed",
        lambda: healthy(settings, ep.token) and pids(settings.name, cmdline) not in ([], found),
        BACK_WITHIN,
        settings.name,
    )
    took = time.monotonic() - killed_at
    print(f"\n{program} killed -> healthy again in {took:.1f}s")
    assert reason in rec["last_exit"]["reason"], rec["last_exit"]
    assert rec["crash_loop"] is False and rec["consecutive_failures"] == 1
    # inside the sandbox, not by the engine: the same container, never restarted by Docker
    info = json.loads(subprocess.run(["docker", "inspect", settings.name], capture_output=True, text=True).stdout)[0]
    assert info["Id"] == container and info["RestartCount"] == 0 and info["State"]["Running"] is True


def test_status_shows_the_restarts_and_the_last_reason(box):
    """What `status` shows is the supervisor's record: at least one restart per kill (a start that
    fails on a loaded machine, opencode slower than the orchestrator's 10 s, is one more)."""
    settings, tmp, env = box["settings"], box["tmp"], box["env"]
    wait_for("healthy, with a record", lambda: healthy(settings, box["endpoint"].token), 90)
    rec = record(settings)
    out = invoke(tmp, "status", "--json", **env)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["healthy"] is True and info["supervisor"]["restarts"] == rec["restarts"] >= len(PROGRAMS)
    assert info["supervisor"]["crash_loop"] is False
    assert info["supervisor"]["last_reason"] == rec["last_exit"]["reason"]
    assert info["supervisor"]["last_reason"].startswith("openwork exited with status ")
    human = invoke(tmp, "status", **env)
    assert human.returncode == 0
    row = next(line for line in human.stderr.splitlines() if line.startswith("restarts "))
    assert row.split(None, 1)[1].startswith(f"{rec['restarts']} (last: openwork exited with status "), row


def test_a_server_that_cannot_start_is_reported_as_a_crash_loop(box):
    """openwork-server moved away: every start of the orchestrator fails (a program that always
    exits); after three in a row the record, and `status` (exit 1), say crash loop. Put back, the
    sandbox recovers by itself."""
    settings, tmp, env, ep = box["settings"], box["tmp"], box["env"], box["endpoint"]
    name = settings.name
    subprocess.run(
        ["docker", "exec", name, "mv", "/usr/local/bin/openwork-server", "/usr/local/bin/openwork-server.off"],
        check=True,
    )
    try:
        subprocess.run(
            ["docker", "exec", name, "sh", "-c", f"kill -9 {pids(name, 'python3 /usr/local/bin/openwork-server')[0]}"],
            check=True,
        )
        rec = wait_for("the crash loop in the record", lambda: (r := record(settings)).get("crash_loop") and r, 120)
        assert rec["consecutive_failures"] >= 3 and rec["backoff_seconds"] >= 4
        out = invoke(tmp, "status", "--json", **env)
        assert out.returncode == 1 and json.loads(out.stdout)["supervisor"]["crash_loop"] is True
        human = invoke(tmp, "status", **env)
        assert human.returncode == 1 and "crash loop" in human.stderr and "CRASH LOOP" in human.stderr, human.stderr
    finally:
        subprocess.run(
            ["docker", "exec", name, "mv", "/usr/local/bin/openwork-server.off", "/usr/local/bin/openwork-server"],
            check=True,
        )
    started = time.monotonic()
    wait_for("healthy again once the server is back", lambda: healthy(settings, ep.token), 120)
    print(f"\nrecovered from the crash loop {time.monotonic() - started:.1f}s after the server was put back")
    wait_for("the crash loop cleared", lambda: record(settings).get("crash_loop") is False, 30)


def test_down_is_prompt_and_final(box):
    settings, tmp, env = box["settings"], box["tmp"], box["env"]
    started = time.monotonic()
    out = invoke(tmp, "down", **env)
    took = time.monotonic() - started
    print(f"\ndown took {took:.1f}s")
    assert out.returncode == 0, out.stderr
    state = json.loads(
        subprocess.run(
            ["docker", "inspect", "--format", "{{json .State}}", settings.name], capture_output=True, text=True
        ).stdout
    )
    assert state["Running"] is False and state["Restarting"] is False
    assert record(settings)["state"] == "stopped" and "SIGTERM" in record(settings)["last_exit"]["reason"]
    time.sleep(3)  # nothing brings it back: neither the supervisor nor the restart policy
    assert (
        json.loads(
            subprocess.run(
                ["docker", "inspect", "--format", "{{json .State}}", settings.name], capture_output=True, text=True
            ).stdout
        )["Running"]
        is False
    )


def test_under_the_server_launch_a_killed_opencode_brings_both_back(stack_image, tmp_path):
    """OPENWORK_LAUNCH=server: openwork-server alone would serve on without its opencode (so does the
    real one); opencode's gate stops it, and the supervisor starts both again, its reason naming
    opencode; a session made afterwards reaches the new opencode."""
    from openwork_sandbox.sandbox.up import up
    from tests.support.openwork_client import make_session

    settings = make_settings(
        tmp_path, **docker_env(stack_image.ref, "sup-srv", health_timeout="300", OPENWORK_LAUNCH="server")
    )
    try:
        ep = up(settings)
        wait_for("the supervisor's record says healthy", lambda: record(settings).get("healthy_at"), 60)
        before = record(settings)["restarts"]
        found = pids(settings.name, "/usr/local/bin/opencode serve")
        assert len(found) == 1, found
        subprocess.run(["docker", "exec", settings.name, "sh", "-c", f"kill -9 {found[0]}"], check=True, timeout=30)
        rec = wait_for(
            "a restart after opencode was killed",
            lambda: (r := record(settings)).get("restarts") == before + 1 and r,
            BACK_WITHIN,
            settings.name,
        )
        assert "opencode-gate: opencode exited (SIGKILL)" in rec["last_exit"]["reason"], rec["last_exit"]
        wait_for(
            "healthy again with a new opencode",
            lambda: (
                healthy(settings, ep.token) and pids(settings.name, "/usr/local/bin/opencode serve") not in ([], found)
            ),
            BACK_WITHIN,
            settings.name,
        )
        assert make_session(ep.url, ep.token, "after the kill")
    finally:
        subprocess.run(["docker", "rm", "-f", settings.name], capture_output=True)
