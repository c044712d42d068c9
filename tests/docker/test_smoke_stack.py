"""smoke against the REAL stack in the Docker runtime: the test image (real `openwork` orchestrator,
real `opencode`, the stand-in openwork-server) booted by `up`, then every check; `--ephemeral`
leaves nothing behind, also when a check fails or on Ctrl+C.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from openwork_sandbox.config import load_settings
from openwork_sandbox.net.ports import free_port
from openwork_sandbox.sandbox.up import up
from openwork_sandbox.smoke.modes import attach_log_tail, local_target, run_smoke
from openwork_sandbox.smoke.runner import CHECKS, SmokeRunner
from tests.support.paths import ROOT

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def smoke_settings(state_dir: Path, image: str, **flags):
    """Settings from these values only (no .env, no environment): Docker runtime, a free port."""
    state_dir.mkdir(parents=True, exist_ok=True)
    env_file = state_dir / "empty.env"
    env_file.write_text("")
    values = {
        "runtime": "docker",
        "image": image,
        "state_dir": str(state_dir),
        "port": str(free_port()),
        "request_timeout": "5",
        "health_timeout": "90",
        "offline": "true",
    }  # air-gapped machines: see tests/support/lifecycle.OFFLINE
    values.update(flags)
    return load_settings(values, environ={}, env_file=env_file, root=ROOT)


def leftovers(settings, prefix: str) -> tuple[list[str], list[str]]:
    """Containers and state folders whose name starts with ``prefix``."""
    proc = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, timeout=30)
    containers = [n for n in proc.stdout.split() if n.startswith(prefix)]
    folders = [p.name for p in Path(settings.state_dir).glob(prefix + "*")] if Path(settings.state_dir).exists() else []
    return containers, folders


@pytest.fixture(scope="module")
def sandbox(stack_image, tmp_path_factory):
    """One sandbox booted by `up` (Docker runtime) for the read-only checks of this module."""
    from openwork_sandbox.sandbox.reset import reset

    settings = smoke_settings(
        tmp_path_factory.mktemp("smoke-state"), stack_image.ref, name=f"smoke-stack-{secrets.token_hex(3)}"
    )
    try:
        ep = up(settings, as_json=False)
        yield settings, ep
    finally:
        reset(settings, yes=True)


def test_all_checks_pass_against_the_real_stack(sandbox, tmp_path, capsys):
    settings, _ = sandbox
    junit = tmp_path / "smoke.xml"
    code = run_smoke(settings, persistence=True, junit=str(junit), as_json=True)
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads(out.out)
    assert {c["name"]: c["result"] for c in report["checks"]} == {
        c: "skipped" if c == "prompt-answered" else "passed" for c in CHECKS
    }  # no --prompt here
    assert report["workspace_id"] == "ws_c52ddf65534b"
    assert report["server"]["version"]
    cases = ET.parse(junit).getroot().findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == list(CHECKS)
    assert not any(c.find("failure") is not None or c.find("error") is not None for c in cases)
    _, ep = sandbox
    for secret in (ep.token, ep.host_token):
        assert secret not in out.out and secret not in out.err and secret not in junit.read_text()


def test_url_mode_against_the_real_stack(sandbox, capsys):
    settings, ep = sandbox
    url_settings = load_settings(
        {"token": ep.token, "host_token": ep.host_token, "request_timeout": "5", "health_timeout": "5"},
        environ={},
        env_file=settings.state_dir / "empty.env",
        root=ROOT,
    )
    assert run_smoke(url_settings, url=ep.url + "/") == 0, capsys.readouterr().err


def test_wrong_token_in_settings(sandbox, capsys):
    settings, _ = sandbox
    wrong = settings.with_overrides(token="wrong-token-" + secrets.token_hex(12))
    code = run_smoke(wrong, as_json=True)
    out = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in out.err
    report = json.loads(out.out)
    check = next(c for c in report["checks"] if c["name"] == "auth-accepted")
    assert check["result"] == "failed" and check["message"].startswith("401 with the configured client token")
    assert "OPENWORK_TOKEN" in check["hint"]
    assert report["log"] and report["log"]["path"]  # the server log's tail and where the full log is


def test_server_killed_mid_run(sandbox):
    """Kill openwork-server inside the runtime just before `auth-accepted`: that check fails, the
    later ones are skipped, and the attached log tail shows the death. (It ends the module's
    sandbox: the tests after this one expect it stopped.)"""
    from openwork_sandbox.sandbox.endpoint import runtime_exec

    settings, ep = sandbox

    def kill_server(check: str) -> None:
        if check == "auth-accepted":
            # only the server (its argv is `... /usr/local/bin/openwork-server --host ...`), not
            # the orchestrator, whose argv names the server binary too
            script = (
                'for p in /proc/[0-9]*; do n=${p#/proc/}; [ "$n" = "$$" ] && continue; '
                'case "$(tr "\\0" " " < "$p/cmdline" 2>/dev/null)" in '
                '*"bin/openwork-server --host"*) kill -9 "$n" ;; esac; done; true'
            )
            code, output = runtime_exec(settings, ["sh", "-c", script])
            assert code == 0, output
            time.sleep(0.5)  # let the socket close and the orchestrator log the exit

    runner = SmokeRunner(
        local_target(settings, ep, "sandbox"),
        request_timeout=settings.request_timeout,
        health_timeout=settings.health_timeout,
        on_check=kill_server,
    )
    report = runner.run()
    attach_log_tail(settings, report)
    results = {c.name: c.result for c in report.checks}
    assert results["health"] == results["auth-required"] == "passed"
    assert results["auth-accepted"] == "failed", report.checks[2]
    assert all(results[n] == "skipped" for n in CHECKS[3:])
    assert report.exit_code == 1
    assert report.log_path
    assert any("exited" in line.lower() for line in report.log_tail), report.log_tail  # the death is in the tail


def test_stopped_sandbox_is_unreachable_without_waiting_the_deadline(sandbox, capsys):
    """A stopped sandbox: exit 3, and the hint says to run `up`. The runtime's "not running" ends
    the health wait at once instead of after OPENWORK_HEALTH_TIMEOUT (90 s here)."""
    from openwork_sandbox.sandbox.down import down

    settings, _ = sandbox
    down(settings)  # (already stopped when the kill test ran before)
    code = run_smoke(settings, as_json=True)
    out = capsys.readouterr()
    assert code == 3, out.err
    health = json.loads(out.out)["checks"][0]
    assert health["name"] == "health" and health["result"] == "error"
    assert "invoke up" in health["hint"]


def test_ephemeral_leaves_nothing_behind(stack_image, tmp_path, capsys):
    base = smoke_settings(tmp_path / "state", stack_image.ref, name="eph-ok")
    code = run_smoke(base, ephemeral=True, persistence=True, as_json=True, boot=up)
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads(out.out)
    assert report["name"].startswith("eph-ok-smoke-")
    assert set(report["timings"]) >= {"up", "checks", "teardown", "total"}
    assert leftovers(base, "eph-ok") == ([], [])


def test_ephemeral_leaves_nothing_behind_when_a_check_fails(stack_image, tmp_path, capsys):
    """The server cannot be healthy within 0.2 s: the health check fails (readiness, exit 1), the
    log tail is shown, and the sandbox and its state folder are gone."""
    base = smoke_settings(tmp_path / "state", stack_image.ref, name="eph-bad", health_timeout="0.2")
    code = run_smoke(base, ephemeral=True, as_json=True, boot=up)
    out = capsys.readouterr()
    assert code == 1, out.err
    report = json.loads(out.out)
    results = {c["name"]: c["result"] for c in report["checks"]}
    assert results["health"] == "error" and all(results[n] == "skipped" for n in CHECKS[1:])
    assert "Traceback" not in out.err
    assert leftovers(base, "eph-bad") == ([], [])


def test_ephemeral_ctrl_c_still_tears_down(stack_image, tmp_path):
    """`invoke smoke --ephemeral` gets SIGINT once its container runs: exit 130, nothing left."""
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENWORK")}
    env.update(
        {
            "OPENWORK_STATE_DIR": str(state),
            "OPENWORK_MICROSANDBOX_IMAGE": stack_image.ref,
            "OPENWORK_MICROSANDBOX_RUNTIME": "docker",
            "OPENWORK_ENV_FILE": str(tmp_path / "none.env"),
            "OPENWORK_MICROSANDBOX_NAME": "eph-int",
            "OPENWORK_HEALTH_TIMEOUT": "90",
        }
    )
    (tmp_path / "none.env").write_text("")
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "smoke", "--ephemeral"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            running = subprocess.run(
                ["docker", "ps", "--filter", "name=^eph-int-smoke-", "--format", "{{.Names}}"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.split()
            if running:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "smoke ended before its container was seen running"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    settings = load_settings({"state_dir": str(state)}, environ={}, env_file=tmp_path / "none.env", root=ROOT)
    assert leftovers(settings, "eph-int") == ([], [])
