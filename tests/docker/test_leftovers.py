"""Nothing left behind on the real engines: a killed `smoke --ephemeral` is found by `doctor` and removed by
`reset --stale`; what something still owns is kept; a microVM whose job is gone is found and removed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from openwork_sandbox.state.ownership import (
    EPHEMERAL,
    EXPIRES,
    OWNER,
    STATE_DIR,
    this_process,
)
from tests.support.lifecycle import ROOT, docker_env, invoke, invoke_popen, unique_name


def _docker_labels(name: str) -> dict:
    out = subprocess.run(
        ["docker", "inspect", "--format", "{{json .Config.Labels}}", name], capture_output=True, text=True
    )
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _exists(name: str) -> bool:
    return subprocess.run(["docker", "inspect", name], capture_output=True).returncode == 0


def _left_behind(tmp_path, env) -> dict:
    out = invoke(tmp_path, "doctor", "--json", timeout=120, **env)
    return next(c for c in json.loads(out.stdout)["checks"] if c["name"] == "left behind")


@pytest.mark.docker
def test_a_killed_ephemeral_smoke_is_found_and_removed(stack_image, tmp_path):
    env = docker_env(stack_image.ref, "i17a-eph")
    base = env["OPENWORK_MICROSANDBOX_NAME"]
    env.pop("OPENWORK_MICROSANDBOX_PORT")  # smoke --ephemeral picks a free port
    proc = invoke_popen(tmp_path, "smoke", "--ephemeral", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **env)
    name = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and name is None:
            listed = subprocess.run(
                ["docker", "ps", "--filter", f"name={base}-smoke-", "--format", "{{.Names}}"],
                capture_output=True,
                text=True,
            ).stdout.split()
            name = listed[0] if listed else None
            time.sleep(0.5)
        assert name, "the ephemeral sandbox did not appear"
        labels = _docker_labels(name)
        assert labels["org.openwork-sandbox.ephemeral"] == "1"
        assert labels["org.openwork-sandbox.owner"].split(":")[1] == str(proc.pid)
        assert labels["org.openwork-sandbox.state-dir"] == str(tmp_path / "state" / name)
    finally:
        proc.send_signal(signal.SIGKILL)  # the CI job is killed: no teardown runs
        proc.wait(timeout=30)
    try:
        assert _exists(name) and (tmp_path / "state" / name).is_dir()  # left behind
        row = _left_behind(tmp_path, env)
        assert row["ok"] is False and name in row["detail"] and f"its job ({proc.pid}) is gone" in row["detail"]
        assert "invoke reset --stale" in row["fix"]

        out = invoke(tmp_path, "reset", "--stale", **env)
        assert out.returncode == 0, out.stderr
        assert f"removing the docker ephemeral sandbox {name}" in out.stderr
        assert not _exists(name) and not (tmp_path / "state" / name).exists()
        assert name not in _left_behind(tmp_path, env)["detail"]
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@pytest.mark.docker
def test_reset_stale_keeps_what_is_owned_and_doctor_lists_orphans(stack_image, tmp_path):
    """Three marked containers of this state folder: one whose job runs (kept), one past its time
    (removed), one long-lived sandbox whose folder is gone (an orphan: listed, never removed)."""
    state = tmp_path / "state"
    names = {kind: unique_name(f"i17a-{kind}") for kind in ("alive", "expired", "orphan")}
    for kind in ("alive", "expired"):
        (state / names[kind]).mkdir(parents=True)
    future, past = str(int(time.time()) + 3600), str(int(time.time()) - 10)
    marks = {
        "alive": {EPHEMERAL: "1", OWNER: this_process(), EXPIRES: future},
        "expired": {EPHEMERAL: "1", OWNER: this_process(), EXPIRES: past},
        "orphan": {},
    }
    try:
        for kind, name in names.items():
            labels = {"managed": "1", STATE_DIR: str(state / name), **marks[kind]}
            argv = ["docker", "run", "-d", "--name", name, "--network", "none", "--entrypoint", "sleep"]
            for key, value in labels.items():
                argv += ["--label", f"org.openwork-sandbox.{key}={value}"]
            subprocess.run(argv + [stack_image.ref, "600"], check=True, capture_output=True)
        env = {"OPENWORK_MICROSANDBOX_RUNTIME": "docker"}
        row = _left_behind(tmp_path, env)
        assert f"docker ephemeral sandbox {names['expired']} (running): its time ran out" in row["detail"]
        assert f"docker sandbox {names['orphan']} (running): no state folder owns it" in row["detail"]
        assert names["alive"] not in row["detail"]

        out = invoke(tmp_path, "reset", "--stale", **env)
        assert out.returncode == 0, out.stderr
        assert not _exists(names["expired"]) and not (state / names["expired"]).exists()
        assert _exists(names["alive"]) and (state / names["alive"]).is_dir()
        assert _exists(names["orphan"])
        again = invoke(tmp_path, "reset", "--stale", **env)
        assert again.returncode == 0 and "nothing to remove" in again.stderr
    finally:
        for name in names.values():
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)


MSB_CREATE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tests.support.lifecycle import make_settings
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes.microsandbox.runtime import MicrosandboxRuntime
from tests.support.lifecycle import prepared_spec
s = make_settings(Path(sys.argv[1]), OPENWORK_MICROSANDBOX_NAME=sys.argv[3], OPENWORK_MICROSANDBOX_IMAGE=sys.argv[4],
                  OPENWORK_MICROSANDBOX_RUNTIME="microsandbox").with_overrides(ephemeral=True)
for folder in (s.workspace_dir, s.data_dir):
    folder.mkdir(parents=True, exist_ok=True)
try:
    MicrosandboxRuntime(s.name, s.sandbox_state_dir).create(prepared_spec(s, "microsandbox", "t" * 32, "h" * 32))
except WorkflowError as exc:
    print(exc.message)
"""


def _microsandbox_managed() -> dict:
    """microsandbox's sandboxes this tool made, listed in a child process: the SDK keeps the first
    MSB_HOME it sees for the life of a process, and this test's MSB_HOME is deleted after it."""
    code = (
        "import json; from openwork_sandbox.runtimes.listing import microsandbox_managed as m; "
        "print(json.dumps({n: marks for n, marks, _ in m()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.docker
def test_a_microvm_whose_job_is_gone_is_found_and_removed(stack_image, tmp_path, short_msb_home):
    """The real SDK: a process creates an ephemeral microVM (with max_duration and the marks as
    labels; where microVMs cannot boot, the SDK keeps the sandbox it could not boot) and exits
    without its teardown; doctor lists it from microsandbox's own records, reset --stale removes it."""
    pytest.importorskip("microsandbox")
    name = unique_name("i17a-msb")
    made = subprocess.run(
        [sys.executable, "-c", MSB_CREATE, str(tmp_path), str(ROOT), name, stack_image.ref],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert made.returncode == 0, made.stderr[-2000:]
    listed = _microsandbox_managed()
    assert name in listed, (listed, made.stdout, made.stderr[-2000:])
    assert listed[name][EPHEMERAL] == "1" and listed[name][STATE_DIR] == str(tmp_path / "state" / name)
    env = {"OPENWORK_MICROSANDBOX_RUNTIME": "microsandbox"}
    row = _left_behind(tmp_path, env)
    assert f"microsandbox ephemeral sandbox {name}" in row["detail"] and "is gone" in row["detail"], row
    out = invoke(tmp_path, "reset", "--stale", **env)
    assert out.returncode == 0, out.stderr
    assert name not in _microsandbox_managed() and not (tmp_path / "state" / name).exists()
