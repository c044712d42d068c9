"""OPENWORK_LAUNCH: the setting, what `up` hands the sandbox and records, and what `status` shows,
against the in-memory runtime (tests/support/fake_runtime.py). The image's two launches themselves
run in tests/docker (test_boundary.py, test_persist_docker.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from openwork_sandbox.config import load_settings
from openwork_sandbox.core.errors import SettingsError
from openwork_sandbox.sandbox.status import status
from openwork_sandbox.sandbox.up import up
from tests.support.fake_runtime import flow_settings
from tests.support.lifecycle import up_json
from tests.support.paths import ROOT


def record(settings) -> dict:
    return json.loads((settings.sandbox_state_dir / "sandbox.json").read_text())


def status_json(settings, capsys) -> dict:
    capsys.readouterr()
    status(settings, as_json=True)
    return json.loads(capsys.readouterr().out)


def test_the_default_is_the_orchestrator_and_a_value_is_taken_in_any_case(tmp_path):
    (tmp_path / "empty.env").write_text("")
    loaded = lambda env: load_settings(environ=env, env_file=tmp_path / "empty.env", root=tmp_path)  # noqa: E731
    assert loaded({}).launch == "orchestrator"
    assert loaded({"OPENWORK_LAUNCH": "Server"}).launch == "server"
    assert load_settings({"launch": "server"}, environ={}, env_file=tmp_path / "empty.env", root=tmp_path).launch == (
        "server"
    )


def test_a_bad_launch_is_one_line_naming_the_setting(tmp_path):
    (tmp_path / "empty.env").write_text("")
    with pytest.raises(SettingsError) as info:
        load_settings(environ={"OPENWORK_LAUNCH": "servre"}, env_file=tmp_path / "empty.env", root=tmp_path)
    assert info.value.exit_code == 2
    assert info.value.problems == ['OPENWORK_LAUNCH="servre" (from environment): expected one of orchestrator|server']


def test_up_with_a_bad_launch_flag_exits_2_in_one_line_and_makes_nothing(tmp_path):
    (tmp_path / "empty.env").write_text("")
    env = {"PATH": "/usr/bin:/bin", "OPENWORK_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "up", "--launch", "both", "--env-file", str(tmp_path / "empty.env")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "OPENWORK_LAUNCH" in proc.stderr and "orchestrator|server" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2, proc.stderr
    assert not (tmp_path / "state").exists()


def test_up_hands_the_launch_to_the_sandbox_records_it_and_status_shows_it(fake_engine, tmp_path, capsys):
    settings = flow_settings(tmp_path, OPENWORK_LAUNCH="server")
    up(settings)
    fake = fake_engine.runtime_for("docker", settings)
    assert fake.spec.env["OPENWORK_LAUNCH"] == "server"
    assert record(settings)["launch"] == "server"
    assert status_json(settings, capsys)["launch"] == "server"
    status(settings)
    assert "launch     server\n" in capsys.readouterr().err


def test_switching_the_launch_recreates_the_sandbox_and_keeps_its_tokens(fake_engine, tmp_path, capsys):
    first = flow_settings(tmp_path)
    up(first)
    kept = (first.sandbox_state_dir / "tokens.json").read_text()
    port = str(first.port)
    for launch in ("server", "orchestrator"):
        done = up_json(flow_settings(tmp_path, OPENWORK_MICROSANDBOX_PORT=port, OPENWORK_LAUNCH=launch), capsys)
        assert done["action"] == "recreated", done["stderr"]
        assert fake_engine.runtime_for("docker", first).spec.env["OPENWORK_LAUNCH"] == launch
        assert record(first)["launch"] == launch
    assert (first.sandbox_state_dir / "tokens.json").read_text() == kept


def test_a_sandbox_made_before_the_setting_is_an_orchestrator_one_and_is_kept(fake_engine, tmp_path, capsys):
    """No "launch" in its record (the record an older `up` wrote): status says orchestrator, and `up`
    with the default launch reuses it (its fingerprint has no launch in it either)."""
    settings = flow_settings(tmp_path)
    up(settings)
    path = settings.sandbox_state_dir / "sandbox.json"
    old = {k: v for k, v in json.loads(path.read_text()).items() if k != "launch"}
    path.write_text(json.dumps(old))
    assert status_json(settings, capsys)["launch"] == "orchestrator"
    assert up_json(settings, capsys)["action"] == "reused"


@pytest.mark.parametrize("launch", ["orchestrator", "server"])
def test_manifests_pass_the_launch_into_the_pod(tmp_path, capsys, launch):
    """Into the server's container (the pod's roles decide what runs there: the entrypoint's pod
    branch comes before the launch; the value is carried as the sandbox's)."""
    from openwork_sandbox.sandbox.manifests import manifests
    from tests.support.kube import kube_settings

    objs = manifests(kube_settings(tmp_path, OPENWORK_LAUNCH=launch))
    (deploy,) = [o for o in objs if o["kind"] == "Deployment"]
    envs = {
        {e["name"]: e.get("value") for e in c["env"]}["OPENWORK_POD_ROLE"]: c["env"]
        for c in deploy["spec"]["template"]["spec"]["containers"]
    }
    assert {"name": "OPENWORK_LAUNCH", "value": launch} in envs["server"]
    assert all(e["name"] != "OPENWORK_LAUNCH" for e in envs["agent"])


def test_a_server_gate_that_cannot_listen_on_the_port_is_read_from_its_line():
    from openwork_sandbox.sandbox.start_gate import port_in_use

    line = "openwork-server-gate: cannot listen on 127.0.0.1:19101: EADDRINUSE: Failed to listen at 127.0.0.1"
    restart = (
        f"openwork-supervise: /usr/local/bin/openwork-server-gate exited with status 1 after 0s; last error: {line}"
    )
    assert port_in_use(["x", line], 19101) and port_in_use([restart], 19101)
    assert not port_in_use([line], 1910) and not port_in_use([line.replace("EADDRINUSE", "EACCES")], 19101)
    assert not port_in_use(["opencode-gate: cannot listen on 127.0.0.1:19101: EADDRINUSE: x"], 19101)
