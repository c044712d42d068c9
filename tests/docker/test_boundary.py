"""The sandbox as a boundary, tried as an attacker would: a client (collaborator) token drives the
agent's shell through openwork-server (``POST /w/<id>/opencode/session/<sid>/shell``, the real
opencode running the command) and asks for every place a token was once within reach. The real
image, the real orchestrator and opencode, on the Docker engine here (the stand-in openwork-server,
as everywhere in this suite).

The suite runs as root, so the sandbox's folders are root's and the agent runs as uid 61001; the
case of a user's uid (server and agent the same uid, kept apart by a capability) is driven by
handing the folders to uid 1234 and starting the same container again, as a user's `up` would find them.

Each test runs in both launches (OPENWORK_LAUNCH): the orchestrator starting opencode, and
openwork-server starting it itself (``OPENWORK_MANAGE_OPENCODE``, the stand-in keeping the real
server's contract): the agent is kept apart the same way in both."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import requests

from tests.support.lifecycle import docker_env, invoke, make_settings
from tests.support.openwork_client import agent_shell, issue_token, status_with

pytestmark = pytest.mark.docker

PROBES = (
    "env",
    "cat /srv/openwork/store/tokens.json",
    "cat /srv/openwork/secrets/openwork-token /srv/openwork/secrets/openwork-host-token",
    "cat /data/home/.config/openwork/tokens.json",
    "for f in /proc/[0-9]*/environ; do cat $f; echo; done",
    "cat /proc/1/root/srv/openwork/store/tokens.json",
    "ls -la /srv/openwork",
    "grep -r . /etc/openwork-sandbox /data 2>/dev/null | head -c 200000",
)


@pytest.fixture(scope="module", params=["orchestrator", "server"])
def launched(request, stack_image, tmp_path_factory):
    """A sandbox `up` made with OPENWORK_LAUNCH=<param>: its settings, endpoint, a token issued, its
    settings as the environment of `invoke` and the folder to run it in."""
    from openwork_sandbox.sandbox.reset import reset
    from openwork_sandbox.sandbox.up import up

    tmp = tmp_path_factory.mktemp("boundary")
    env = docker_env(stack_image.ref, "bnd", OPENWORK_LAUNCH=request.param)
    settings = make_settings(tmp, **env)
    ep = up(settings)
    issued = issue_token(ep.url, ep.host_token)
    yield settings, ep, issued, env, tmp
    reset(settings, yes=True)


@pytest.fixture
def sandbox(launched):
    return launched[:3]


def answers(ep) -> bool:
    try:
        return status_with(ep.url, ep.token) == 200
    except requests.RequestException:
        return False


def secrets_of(ep, issued: str) -> dict[str, str]:
    return {"client token": ep.token, "host token": ep.host_token, "issued token": issued}


def assert_nothing_leaks(ep, issued: str) -> str:
    """Every probe through the agent's shell; returns what ``id`` printed there."""
    assert "HOME=/data/home" in agent_shell(ep.url, ep.token, "env")  # the shell runs, as the agent
    for command in PROBES:
        out = agent_shell(ep.url, ep.token, command)
        leaked = [what for what, value in secrets_of(ep, issued).items() if value in out]
        assert not leaked, f"`{command}` through the agent showed the {', '.join(leaked)}"
    caps = agent_shell(
        ep.url, ep.token, "grep -E '^Cap(Prm|Eff|Amb)' /proc/self/status; grep NoNewPrivs /proc/self/status"
    )
    assert caps.count("0000000000000000") == 3 and "NoNewPrivs:\t1" in caps, caps
    assert "Operation not permitted" in agent_shell(ep.url, ep.token, "kill -0 1 2>&1")
    return agent_shell(ep.url, ep.token, "id")


def test_a_client_token_cannot_reach_any_token_through_the_agent(sandbox):
    settings, ep, issued = sandbox
    assert status_with(ep.url, issued) == 200
    who = assert_nothing_leaks(ep, issued)
    assert "uid=61001" in who, who  # the folders are root's here: the agent is not root
    # the issued token is in the server's private store, not in the data folder the agent writes
    store = settings.sandbox_state_dir / "server-store" / "tokens.json"
    assert issued in store.read_text()
    assert not list(settings.data_dir.rglob("tokens.json"))


def test_no_token_in_the_containers_configuration(sandbox):
    settings, ep, issued = sandbox
    inspected = subprocess.run(["docker", "inspect", settings.name], capture_output=True, text=True, check=True).stdout
    assert ep.token not in inspected and ep.host_token not in inspected
    config = json.loads(inspected)[0]
    env = config["Config"]["Env"]
    assert "OPENWORK_TOKEN_FILE=/srv/openwork/secrets/openwork-token" in env
    assert config["HostConfig"]["CapDrop"] == ["ALL"] and "no-new-privileges" in config["HostConfig"]["SecurityOpt"]
    env_file = (settings.sandbox_state_dir / "container.env").read_text()
    assert ep.token not in env_file and ep.host_token not in env_file
    for name in ("openwork-token", "openwork-host-token"):
        assert (settings.sandbox_state_dir / "server-secrets" / name).stat().st_mode & 0o777 == 0o600


def agent_processes(name: str) -> list[int]:
    """The host pids of opencode's own process in container ``name`` (``opencode serve``, not its gate)."""
    top = subprocess.run(["docker", "top", name, "-o", "pid,args"], capture_output=True, text=True, check=True)
    return [
        int(line.split()[0])
        for line in top.stdout.splitlines()[1:]
        if "opencode serve " in line and "opencode-gate" not in line
    ]


def test_the_launch_runs_as_set_passes_smoke_and_opencode_holds_no_token(launched):
    """`status --json` names the launch; `smoke` passes; opencode, read from the host's /proc, runs as the
    agent's uid with no capability and no token in its environment (the server hands it the client
    token as OPENWORK_SERVER_TOKEN: opencode-gate drops it); what it reads as OPENCODE_CONFIG it can read."""
    settings, ep, issued, env, tmp = launched
    shown = invoke(tmp, "status", "--json", **env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["launch"] == env["OPENWORK_LAUNCH"]
    smoke = invoke(tmp, "smoke", **env)
    assert smoke.returncode == 0, smoke.stderr[-2000:]
    pids = agent_processes(settings.name)
    assert len(pids) == 1, pids
    status = open(f"/proc/{pids[0]}/status").read()
    assert "Uid:\t61001\t61001\t61001\t61001" in status and "CapEff:\t0000000000000000" in status, status
    environ = open(f"/proc/{pids[0]}/environ", "rb").read().decode().split("\0")
    names = {entry.split("=", 1)[0] for entry in environ}
    leaked = [what for what, value in secrets_of(ep, issued).items() if any(value in entry for entry in environ)]
    assert not leaked and not names & {"OPENWORK_TOKEN", "OPENWORK_HOST_TOKEN", "OPENWORK_SERVER_TOKEN"}, names
    if env["OPENWORK_LAUNCH"] == "server":  # the server's runtime config, read by opencode as the agent
        assert "OPENCODE_CONFIG" in names
        assert '"agent"' in agent_shell(ep.url, ep.token, 'cat "$OPENCODE_CONFIG"')


def test_server_and_agent_as_the_users_uid_are_kept_apart_by_a_capability(sandbox):
    """The folders of a user (uid 1234): the server runs as 1234 with CAP_DAC_READ_SEARCH, the agent as
    1234 without; every file stays the user's."""
    settings, ep, issued = sandbox
    state = settings.sandbox_state_dir
    subprocess.run(["docker", "stop", "-t", "20", settings.name], check=True, capture_output=True)
    folders = [state / "server-store", state / "server-secrets", settings.data_dir, settings.workspace_dir]
    subprocess.run(["chown", "-R", "1234:1234", *map(str, folders)], check=True)
    subprocess.run(["docker", "start", settings.name], check=True, capture_output=True)
    deadline = time.monotonic() + 120
    while not answers(ep):
        assert time.monotonic() < deadline, "the sandbox did not come back as uid 1234"
        time.sleep(1)
    who = assert_nothing_leaks(ep, issued)
    assert "uid=1234" in who, who
    assert status_with(ep.url, issued) == 200  # the store came along
    made = []
    for folder in folders:
        made += [p for p in folder.rglob("*") if p.lstat().st_uid != 1234]
    assert not made, f"not the user's: {made[:5]}"


def program_environ(name: str) -> dict[str, dict[str, str]]:
    """{"opencode" | "opencode-gate" | "openwork-server-gate": its environment} of container ``name``'s
    processes, read from the host's /proc."""
    top = subprocess.run(["docker", "top", name, "-o", "pid,args"], capture_output=True, text=True, check=True)
    found: dict[str, dict[str, str]] = {}
    for line in top.stdout.splitlines()[1:]:
        pid, args = line.split(None, 1)
        if "opencode-gate.js" in args:
            label = "opencode-gate" if " serve" in args else "openwork-server-gate"
        elif "opencode serve " in args:
            label = "opencode"
        else:
            continue
        raw = open(f"/proc/{pid}/environ", "rb").read().decode().split("\0")
        found[label] = dict(entry.split("=", 1) for entry in raw if "=" in entry)
    return found


def test_the_gates_run_without_a_jit_and_opencode_with_its_own(launched):
    """The start gates run without a JIT (5 MiB each less), and that never reaches opencode, which keeps
    a JIT without the DFG tier and with a late one (docs/design-notes/cost.md): an interpreted opencode
    answers 4-6 times slower."""
    settings = launched[0]
    seen = program_environ(settings.name)
    assert set(seen) == {"opencode", "opencode-gate", "openwork-server-gate"}, seen.keys()
    for gate in ("opencode-gate", "openwork-server-gate"):
        assert seen[gate].get("BUN_JSC_useJIT") == "0", gate
    assert "BUN_JSC_useJIT" not in seen["opencode"]
    assert seen["opencode"].get("BUN_JSC_useDFGJIT") == "0"
    assert seen["opencode"].get("BUN_JSC_thresholdForJITAfterWarmUp") == "50000"


def test_opencode_gate_sizes_opencodes_heap_by_the_setting(stack_image):
    """OPENWORK_OPENCODE_HEAP_MIB reaches opencode as the engine's RAM size in bytes, and 0 or unset
    leaves it alone (``/usr/bin/env`` in opencode's place prints what opencode would get)."""

    def opencode_env(*extra: str) -> str:
        argv = ["docker", "run", "--rm", "--entrypoint", "/usr/local/bin/opencode-gate"]
        argv += ["-e", "OPENWORK_OPENCODE_REAL=/usr/bin/env", *(x for e in extra for x in ("-e", e))]
        proc = subprocess.run([*argv, stack_image.ref], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "BUN_JSC_forceRAMSize=268435456\n" in opencode_env("OPENWORK_OPENCODE_HEAP_MIB=256")
    assert "BUN_JSC_forceRAMSize" not in opencode_env("OPENWORK_OPENCODE_HEAP_MIB=0")
    assert "BUN_JSC_forceRAMSize" not in opencode_env()
    assert "BUN_JSC_forceRAMSize=1000\n" in opencode_env("OPENWORK_OPENCODE_HEAP_MIB=256", "BUN_JSC_forceRAMSize=1000")
