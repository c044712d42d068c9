"""`doctor` and leftovers on a real three-node swarm (issue 29), through a real `invoke`: doctor names
each node with its address, proves each node pulls the image and exits 0; an image on this host's
loopback is one failing row (exit 1); a killed `smoke --ephemeral` leaves its service, which doctor
lists and `reset --stale` removes with its secrets and its state folder."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time

import pytest

from tests.support.lifecycle import invoke, invoke_popen

pytestmark = pytest.mark.swarm

LAB_NODES = {"node1": "10.213.0.11", "node2": "10.213.0.12", "node3": "10.213.0.13"}


def _env(lab, image: str, prefix: str) -> dict[str, str]:
    return lab.sandbox_env(image, f"{prefix}-{secrets.token_hex(2)}")


def _docker(lab, *args: str) -> str:
    return lab.checked(*args)


def _rows(out: subprocess.CompletedProcess) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(out.stdout)["checks"]}


def test_doctor_names_each_node_at_its_address_and_proves_each_pulls_the_image(swarm_lab, lab_image, tmp_path):
    env = {**_env(swarm_lab, lab_image, "dr-doc"), "OPENWORK_MICROSANDBOX_PORT": "19473"}
    table = invoke(tmp_path, "doctor", timeout=120, **env)
    assert table.returncode == 0, table.stderr
    for name, address in LAB_NODES.items():
        assert f"swarm node {name}" in table.stderr and f"{address}, ready, active" in table.stderr
    assert "runtime: swarm (set to swarm; swarm of 3 nodes, manager 10.213.0.11)" in table.stderr

    out = invoke(tmp_path, "doctor", "--json", timeout=120, **env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] is True and data["runtime"]["chosen"] == "swarm"
    assert {n["name"]: n["address"] for n in data["swarm"]["nodes"]} == LAB_NODES
    assert data["swarm"]["manager"] == {"ok": True, "detail": "swarm of 3 nodes, manager 10.213.0.11"}
    assert data["swarm"]["auto_would_pick"] in ("docker", "microsandbox")
    rows = _rows(out)
    assert rows["swarm nodes"]["detail"] == "3 of 3 ready and active"
    assert rows["port 19473 on nodes"]["detail"] == "free on every ready node (3)"
    assert "port 19473" not in rows  # this host's port says nothing about the nodes'
    node1 = rows["swarm node node1"]["detail"]
    assert node1.startswith("10.213.0.11, ready, active, manager, linux/amd64, ") and "MiB free" in node1
    assert rows["registry from nodes"]["ok"] is True
    assert rows["registry from nodes"]["detail"] == "node1 pulled it; node2 pulled it; node3 pulled it"
    assert rows["auto would pick"]["detail"].endswith("never swarm by itself")
    # the pull job is gone
    assert "openwork-doctor-pull" not in _docker(swarm_lab, "service", "ls", "--format", "{{.Name}}")


def test_doctor_says_the_nodes_cannot_reach_an_image_on_loopback(swarm_lab, tmp_path):
    env = _env(swarm_lab, "127.0.0.1:5000/openwork-microsandbox-test:stack", "dr-loop")
    out = invoke(tmp_path, "doctor", "--json", timeout=120, **env)
    assert out.returncode == 1, out.stderr
    row = _rows(out)["registry from nodes"]
    assert row["ok"] is False and row["needed_by"] == ["swarm"]
    assert row["detail"] == (
        "127.0.0.1:5000/openwork-microsandbox-test:stack is on this host's loopback (127.0.0.1): "
        "the swarm's nodes cannot reach it"
    )


@pytest.mark.parametrize(
    "socket,says",
    [
        ("node2.sock", "this Docker engine is a swarm worker: point DOCKER_HOST (or DOCKER_CONTEXT) at a manager"),
        (
            "no-such-node.sock",
            "the Docker engine does not answer (DOCKER_HOST / DOCKER_CONTEXT must point at a swarm manager)",
        ),
    ],
)
def test_doctor_fails_when_docker_host_is_no_manager(swarm_lab, tmp_path, socket, says):
    env = _env(swarm_lab, "10.213.0.1:5000/x:y", "dr-nm")
    env["DOCKER_HOST"] = swarm_lab.docker_host.rsplit("/", 1)[0] + "/" + socket
    out = invoke(tmp_path, "doctor", "--json", timeout=120, **env)
    assert out.returncode == 1, out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] is False and data["runtime"]["chosen"] == "swarm"
    row = _rows(out)["swarm manager"]
    assert row["ok"] is False and row["detail"].startswith(says) and row["needed_by"] == ["swarm"]
    assert data["swarm"]["nodes"] == [] and "swarm node node1" not in _rows(out)


def test_a_killed_ephemeral_smoke_on_the_swarm_is_found_and_removed(swarm_lab, lab_image, tmp_path):
    env = _env(swarm_lab, lab_image, "dr-e")
    base = env["OPENWORK_MICROSANDBOX_NAME"]
    smoke_log = (tmp_path / "smoke.log").open("w")
    proc = invoke_popen(tmp_path, "smoke", "--ephemeral", stdout=subprocess.DEVNULL, stderr=smoke_log, **env)
    name = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and name is None and proc.poll() is None:
            listed = _docker(swarm_lab, "service", "ls", "--filter", f"name={base}-smoke-", "--format", "{{.Name}}")
            name = listed.split()[0] if listed else None
            time.sleep(0.3)
        assert name, f"the ephemeral sandbox's service did not appear: {(tmp_path / 'smoke.log').read_text()[-2000:]}"
        labels = json.loads(_docker(swarm_lab, "service", "inspect", "--format", "{{json .Spec.Labels}}", name))
        assert labels["org.openwork-sandbox.ephemeral"] == "1"
        assert labels["org.openwork-sandbox.owner"].split(":")[1] == str(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)  # the CI job is killed: no teardown runs
        proc.wait(timeout=30)
    listing = ["secret", "ls", "-q", "--filter", f"label=org.openwork-sandbox.sandbox={name}"]
    try:
        assert _docker(swarm_lab, *listing)  # its tokens, as swarm secrets, are left behind too
        out = invoke(tmp_path, "doctor", "--json", timeout=120, **env)
        row = _rows(out)["left behind"]
        assert f"swarm ephemeral sandbox {name} (" in row["detail"], row
        assert f"its job ({proc.pid}) is gone" in row["detail"] and "invoke reset --stale" in row["fix"]

        out = invoke(tmp_path, "reset", "--stale", timeout=180, **env)
        assert out.returncode == 0, out.stderr
        assert f"removing the swarm ephemeral sandbox {name}" in out.stderr
        assert name not in _docker(swarm_lab, "service", "ls", "--format", "{{.Name}}").split()
        assert _docker(swarm_lab, *listing) == ""
        networks = ["network", "ls", "-q", "--filter", f"label=org.openwork-sandbox.sandbox={name}"]
        assert _docker(swarm_lab, *networks) == ""  # its own overlay network too
        assert not (tmp_path / "state" / name).exists()
        assert name not in _rows(invoke(tmp_path, "doctor", "--json", timeout=120, **env))["left behind"]["detail"]
    finally:
        lab_env = {**os.environ, **swarm_lab.env()}
        subprocess.run(["docker", "service", "rm", name], capture_output=True, env=lab_env)
        left = subprocess.run(["docker", *listing], capture_output=True, text=True, env=lab_env).stdout.split()
        if left:
            subprocess.run(["docker", "secret", "rm", *left], capture_output=True, env=lab_env)


def test_an_orphan_swarm_service_is_listed_kept_by_reset_stale_and_removed_as_the_fix_says(
    swarm_lab, lab_image, tmp_path
):
    """A service this tool made whose state folder is gone (scaled to 0: no task runs) and its secret."""
    env = _env(swarm_lab, lab_image, "dr-o")
    name = env["OPENWORK_MICROSANDBOX_NAME"]
    label = "org.openwork-sandbox."
    _docker(
        swarm_lab,
        "service",
        "create",
        "-d",
        "-q",
        "--name",
        name,
        "--replicas",
        "0",
        "--label",
        f"{label}managed=1",
        "--label",
        f"{label}state-dir={tmp_path / 'state' / name}",
        lab_image,
    )
    listing = ["secret", "ls", "-q", "--filter", f"label={label}sandbox={name}"]
    try:
        subprocess.run(
            ["docker", "secret", "create", "--label", f"{label}sandbox={name}", f"{name}.token.1", "-"],
            input="x",
            text=True,
            check=True,
            capture_output=True,
            env={**os.environ, **swarm_lab.env()},
        )
        row = _rows(invoke(tmp_path, "doctor", "--json", timeout=120, **env))["left behind"]
        assert f"swarm sandbox {name} (stopped): no state folder owns it" in row["detail"], row
        assert "OPENWORK_MICROSANDBOX_RUNTIME=swarm invoke reset --name NAME --yes" in row["fix"]

        out = invoke(tmp_path, "reset", "--stale", timeout=120, **env)
        assert out.returncode == 0 and name in _docker(swarm_lab, "service", "ls", "--format", "{{.Name}}").split()

        out = invoke(tmp_path, "reset", "--name", name, "--yes", timeout=120, **env)
        assert out.returncode == 0, out.stderr
        assert name not in _docker(swarm_lab, "service", "ls", "--format", "{{.Name}}").split()
        assert _docker(swarm_lab, *listing) == ""
    finally:
        lab_env = {**os.environ, **swarm_lab.env()}
        subprocess.run(["docker", "service", "rm", name], capture_output=True, env=lab_env)
        left = subprocess.run(["docker", *listing], capture_output=True, text=True, env=lab_env).stdout.split()
        if left:
            subprocess.run(["docker", "secret", "rm", *left], capture_output=True, env=lab_env)
