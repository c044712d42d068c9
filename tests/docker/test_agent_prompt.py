"""A working agent through the proxy: the REAL opencode in the REAL test image (Docker runtime)
answers `smoke --prompt` through a stand-in OpenAI-compatible provider on 127.0.0.1
(tests/standins/standin_openai_provider.py: a real provider cannot be reached from these machines).

The provider's key goes in as a host variable named by OPENWORK_SANDBOX_ENV, the provider through
OPENWORK_OPENCODE_CONFIG (``@ai-sdk/openai-compatible``, ``apiKey: "{env:STANDIN_API_KEY}"``,
``baseURL`` on ``{env:OPENWORK_HOST_ADDRESS}``). The tests prove the reply comes back, the provider
saw the key, and the key is nowhere else: not in any output of the tool, not in ``docker inspect``,
not in the workspace, not in the state folder's other files, not in openwork-server's environment.
Then the refusals (401, 500, nothing listening), a session that survives ``up --replace``, and a
changed key that the next ``up`` applies by recreating the sandbox, saying so.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.standins.standin_openai_provider import REPLY, StandinProvider
from tests.support.lifecycle import docker_env, invoke

pytestmark = [pytest.mark.docker, pytest.mark.slow]
KEY_VAR = "STANDIN_API_KEY"


def config_text(port: int) -> str:
    return f"""{{
  // the stand-in provider on the host's loopback (host networking: OPENWORK_HOST_ADDRESS is 127.0.0.1)
  "$schema": "https://opencode.ai/config.json",
  "provider": {{
    "standin": {{
      "npm": "@ai-sdk/openai-compatible",
      "name": "Stand-in",
      "options": {{"baseURL": "http://{{env:OPENWORK_HOST_ADDRESS}}:{port}/v1", "apiKey": "{{env:{KEY_VAR}}}"}},
      "models": {{"standin-model": {{"name": "Stand-in model"}}}},
    }},
  }},
  "model": "standin/standin-model",
  "small_model": "standin/standin-model",
}}
"""


class Agent:
    """One sandbox (Docker runtime) with the stand-in provider and a key; every tool output kept."""

    def __init__(self, tmp: Path, image: str):
        self.tmp = tmp
        self.provider = StandinProvider().start()
        self.key = "sk-standin-" + secrets.token_hex(20)
        self.config = tmp / "opencode.sandbox.jsonc"
        self.config.write_text(config_text(self.provider.port))
        self.env = docker_env(
            image,
            "agent",
            OPENWORK_SANDBOX_ENV=KEY_VAR,
            OPENWORK_OPENCODE_CONFIG=str(self.config),
            OPENWORK_REQUEST_TIMEOUT="10",
            OPENWORK_PROMPT_TIMEOUT="150",
        )
        self.name = self.env["OPENWORK_MICROSANDBOX_NAME"]
        self.state = tmp / "state" / self.name
        self.outputs: list[str] = []

    def run(self, *args: str, timeout: float = 400, **env: str) -> subprocess.CompletedProcess:
        proc = invoke(self.tmp, *args, timeout=timeout, **{KEY_VAR: self.key, **self.env, **env})
        self.outputs += [proc.stdout, proc.stderr]
        return proc

    def up(self, *args: str) -> subprocess.CompletedProcess:
        """`up`, again when the orchestrator gave up on opencode: its fixed 10 s window for opencode's
        start is too short on a machine loaded far beyond its cores (each `up` already makes three
        starts). The first attempt's output is what a test checks for messages."""
        first = proc = self.run("up", *args)
        for _ in range(2):
            if proc.returncode == 0 or "ERROR Run failed" not in proc.stderr:
                break
            proc = self.run("up")
        return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, first.stderr + proc.stderr)

    def smoke(self, *args: str, **env: str) -> tuple[int, dict, str]:
        proc = self.run("smoke", "--json", *args, **env)
        return proc.returncode, json.loads(proc.stdout), proc.stderr

    def docker_inspect(self) -> str:
        return subprocess.run(["docker", "inspect", self.name], capture_output=True, text=True, timeout=60).stdout

    def exec(self, script: str) -> str:
        proc = subprocess.run(
            ["docker", "exec", self.name, "sh", "-c", script], capture_output=True, text=True, timeout=60
        )
        return proc.stdout + proc.stderr

    def inspect_processes(self, script: str) -> str:
        """``script`` run beside the sandbox's processes, as root with CAP_SYS_PTRACE (which reading
        another uid's ``/proc/<pid>/environ`` needs, and the sandbox itself never has)."""
        image = json.loads(self.docker_inspect())[0]["Config"]["Image"]
        argv = ["docker", "run", "--rm", "--pid", f"container:{self.name}", "--cap-add", "SYS_PTRACE"]
        proc = subprocess.run(
            [*argv, "--network", "none", "--entrypoint", "sh", image, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return proc.stdout + proc.stderr


def check_result(report: dict, name: str = "prompt-answered") -> dict:
    return next(c for c in report["checks"] if c["name"] == name)


@pytest.fixture(scope="module")
def agent(stack_image, tmp_path_factory):
    a = Agent(tmp_path_factory.mktemp("agent"), stack_image.ref)
    try:
        up = a.up()
        assert up.returncode == 0, up.stderr[-3000:]
        yield a
    finally:
        a.run("reset", "--yes", timeout=180)
        a.provider.stop()


def files_holding(folder: Path, needle: bytes, skip: tuple[Path, ...] = ()) -> list[str]:
    found = []
    for root, _, names in os.walk(folder):
        for n in names:
            path = Path(root) / n
            if path in skip or path.is_symlink():
                continue
            try:
                if needle in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


def test_the_reply_comes_back_through_the_proxy_and_the_key_stays_secret(agent, tmp_path):
    junit = tmp_path / "smoke.xml"
    code, report, err = agent.smoke("--prompt", "Say hello to the smoke test", "--junit", str(junit))
    assert code == 0, err
    result = check_result(report)
    assert result["result"] == "passed", result
    metrics = result["metrics"]
    assert REPLY.startswith(metrics["first_words"].rstrip(" …"))
    assert metrics["model"] == "standin/standin-model"
    assert 0 <= metrics["first_token_seconds"] <= metrics["total_seconds"]
    assert "first token" in result["detail"] and "Hello from the stand-in provider" in result["detail"]
    # JUnit carries the figures as properties (--json replaces the table on stderr)
    case = next(c for c in ET.parse(junit).getroot().iter("testcase") if c.get("name") == "prompt-answered")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["model"] == "standin/standin-model" and float(props["total_seconds"]) > 0
    assert props["first_words"].startswith("Hello from the stand-in provider")

    # the provider was given the key, by the real opencode, in its Authorization header
    completions = agent.provider.completions()
    assert completions and all(r["authorization"] == f"Bearer {agent.key}" for r in completions)
    assert any("Say hello to the smoke test" in json.dumps(r["json"]) for r in completions)

    # ...and the key is nowhere else
    needle = agent.key.encode()
    logs = agent.run("logs", "--tail", "400")
    status = agent.run("status", "--json")
    doctor = agent.run("doctor", "--json")
    assert logs.returncode == 0 and status.returncode == 0
    assert json.loads(doctor.stdout)["agent"]["sandbox_env"] == {KEY_VAR: True}
    assert all(agent.key not in out for out in agent.outputs), "the key in an output of the tool"
    assert agent.key not in junit.read_text()
    inspect = agent.docker_inspect()
    assert inspect and agent.key not in inspect
    assert not any(agent.key in item for item in json.loads(inspect)[0]["Config"]["Env"])
    secret_file = agent.state / "sandbox-secrets" / "sandbox.env"
    assert files_holding(agent.state / "workspace", needle) == []
    assert files_holding(agent.state, needle, skip=(secret_file,)) == []
    # on the host it lives in one 0600 file, in a 0700 folder
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret_file.parent.stat().st_mode) == 0o700
    assert agent.key in secret_file.read_text()
    # inside: opencode has it in its environment, openwork-server and the orchestrator do not
    lines = agent.inspect_processes(
        'for p in /proc/[0-9]*; do c=$(tr "\\0" " " < $p/cmdline 2>/dev/null); [ -n "$c" ] || continue; '
        'if grep -q sk-standin- $p/environ 2>/dev/null; then echo "HAS $c"; else echo "NOT $c"; fi; '
        "done"
    ).splitlines()
    has = [ln[4:] for ln in lines if ln.startswith("HAS ")]
    assert has and all(c.startswith("/usr/local/bin/opencode ") for c in has), lines
    assert any(ln.startswith("NOT ") and "openwork-server --host" in ln for ln in lines), lines  # the server: no
    assert any(ln.startswith("NOT openwork serve") for ln in lines), lines  # the orchestrator: no
    # the mounted folder is read-only and outside /workspace and /data
    assert "Read-only file system" in agent.exec("touch /etc/openwork-sandbox/x")


@pytest.mark.parametrize(
    "status, message, expected",
    [
        (401, "Incorrect API key provided", "the provider refused: 401 Incorrect API key provided"),
        (
            500,
            "The server had an error while processing your request",
            "the provider failed and opencode is retrying: The server had an error while processing your request",
        ),
    ],
)
def test_a_provider_that_refuses_fails_the_check_in_one_line(agent, status, message, expected):
    agent.provider.refuse(status, message)
    try:
        code, report, err = agent.smoke("--prompt", "Say hello")
    finally:
        agent.provider.refuse(None)
    assert code == 1, err
    result = check_result(report)
    assert result["result"] == "failed"
    assert result["message"].startswith(expected) and "\n" not in result["message"]
    assert "OPENWORK_SANDBOX_ENV" in result["hint"]
    assert "Traceback" not in err and agent.key not in err and agent.key not in json.dumps(report)
    others = {c["name"]: c["result"] for c in report["checks"] if c["name"] != "prompt-answered"}
    assert "failed" not in others.values()


def test_a_session_with_its_reply_survives_up_replace(agent):
    from openwork_sandbox.net.openwork_api import OpenWorkClient

    code, report, err = agent.smoke("--prompt", "Remember this reply", "--keep-session")
    assert code == 0, err
    sid = check_result(report, "session-create")["detail"]
    replaced = agent.up("--replace")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    token = json.loads((agent.state / "tokens.json").read_text())["token"]
    url = f"http://127.0.0.1:{agent.env['OPENWORK_MICROSANDBOX_PORT']}"
    with OpenWorkClient(url, token=token, timeout=10) as client:
        resp = client.session_messages(report["workspace_id"], sid, limit=10)
    assert resp.status == 200, resp.text[:300]
    texts = [p.get("text", "") for m in resp.json() if m["info"]["role"] == "assistant" for p in m["parts"]]
    assert any(t.startswith("Hello from the stand-in provider") for t in texts), texts


def test_a_changed_key_takes_effect_on_the_next_up_which_says_so(agent):
    old, agent.key = agent.key, "sk-standin-" + secrets.token_hex(20)
    proc = agent.up()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "created with another OPENWORK_SANDBOX_ENV (names or values): recreating it" in proc.stderr
    agent.provider.requests.clear()
    code, report, err = agent.smoke("--prompt", "Say hello again")
    assert code == 0, err
    assert {r["authorization"] for r in agent.provider.completions()} == {f"Bearer {agent.key}"}
    assert all(old not in out and agent.key not in out for out in agent.outputs)
    again = agent.run("up")  # nothing changed now: reused
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr


def test_a_provider_that_is_not_listening_fails_the_check(agent):
    agent.provider.stop()  # the last test of the module: the provider is gone for good
    code, report, err = agent.smoke("--prompt", "Say hello")
    assert code == 1, err
    result = check_result(report)
    assert result["result"] == "failed"
    assert result["message"].startswith("the provider failed and opencode is retrying: Cannot connect to API")
    assert "\n" not in result["message"] and agent.key not in err


def test_the_gate_hands_the_mounted_keys_and_config_to_the_real_opencode(stack_image, tmp_path):
    """Without the orchestrator (whose fixed 10 s window for opencode a loaded machine can miss): the
    image's opencode-gate started by hand with the folder `up` writes, mounted read-only as `up`
    mounts it. The real opencode resolves the config, the provider gets the key, and the reply reads
    back as `smoke --prompt` reads it."""
    import time

    import requests

    from openwork_sandbox.config import load_settings
    from openwork_sandbox.net.ports import free_port
    from openwork_sandbox.smoke.agent_reply import read_reply
    from openwork_sandbox.state.secrets import GUEST_DIR, SandboxSecrets, write

    with StandinProvider() as provider:
        key = "sk-standin-" + secrets.token_hex(20)
        (tmp_path / "empty.env").write_text("")
        settings = load_settings(
            {"state_dir": str(tmp_path / "state"), "name": "gate"},
            environ={},
            env_file=tmp_path / "empty.env",
            root=tmp_path,
        )
        folder = write(settings, SandboxSecrets({KEY_VAR: key}, config_text(provider.port)))
        port = free_port()
        name = f"owtest-gate-{secrets.token_hex(3)}"
        run = subprocess.run(
            [
                "docker",
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "host",
                "-e",
                "OPENCODE_DISABLE_MODELS_FETCH=1",
                "-e",
                "OPENWORK_HOST_ADDRESS=127.0.0.1",
                "--mount",
                f"type=bind,source={folder},target={GUEST_DIR},readonly",
                "--entrypoint",
                "sh",
                stack_image.ref,
                "-c",
                f"HOME=/tmp/home; export HOME; mkdir -p $HOME; cd /workspace; "
                f"exec /usr/local/bin/opencode-gate serve --hostname 127.0.0.1 --port {port}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                try:
                    if requests.get(base + "/global/health", timeout=5).ok:
                        break
                except requests.RequestException:
                    time.sleep(0.5)
            else:
                pytest.fail(
                    "opencode did not answer: "
                    + subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr[-2000:]
                )
            config = requests.get(base + "/config", timeout=30).json()
            assert config["model"] == "standin/standin-model"
            assert config["provider"]["standin"]["options"]["baseURL"] == f"http://127.0.0.1:{provider.port}/v1"
            sid = requests.post(base + "/session", json={"title": "gate"}, timeout=30).json()["id"]
            sent = requests.post(
                base + f"/session/{sid}/prompt_async",
                json={"parts": [{"type": "text", "text": "Say hello"}]},
                timeout=30,
            )
            assert sent.status_code == 204, sent.text
            reply = None
            while time.monotonic() < deadline:
                try:  # opencode busy with its first reply on a loaded machine can answer a poll late
                    reply = read_reply(
                        requests.get(base + f"/session/{sid}/message", timeout=60).json(),
                        requests.get(base + "/session/status", timeout=60).json(),
                        sid,
                    )
                except requests.Timeout:
                    continue
                if reply.done or reply.retrying:
                    break
                time.sleep(0.2)
            assert reply and reply.done and not reply.error and reply.text == REPLY, reply
            assert reply.model == "standin/standin-model" and reply.first_token_s is not None
            assert {r["authorization"] for r in provider.completions()} == {f"Bearer {key}"}
            inspect = subprocess.run(["docker", "inspect", name], capture_output=True, text=True).stdout
            assert inspect and key not in inspect
        finally:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
