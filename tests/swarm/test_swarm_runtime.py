"""The swarm runtime on a real three-node swarm (scripts/swarm-lab): every task through a real ``invoke``,
the real image (real orchestrator and opencode, the stand-in openwork-server) pulled by each node from
the lab registry, the sandbox reached at its node's address over TLS; faults made by stopping a node's
engine, draining a node and restarting the manager's engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.support.lifecycle import OFFLINE, invoke, invoke_popen, unique_name
from tests.support.openwork_client import issue_token, make_session, read_session, status_with

pytestmark = pytest.mark.swarm
LAB_ADDRESSES = {f"10.213.0.{10 + i}": i for i in (1, 2, 3)}


def _docker(lab, *args: str, node: int | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = lab.docker(*args, node=node)
    assert not check or proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
    return proc


class Swarm:
    """One sandbox's settings on the lab, and ``invoke`` run with them as a user would."""

    def __init__(self, lab, image: str, tmp: Path, port: int, **extra: str):
        self.lab, self.tmp = lab, tmp
        self.name = unique_name("sw")
        self.env = lab.sandbox_env(
            image,
            self.name,
            OPENWORK_STATE_DIR=str(tmp / "state"),
            OPENWORK_MICROSANDBOX_PORT=str(port),
            OPENWORK_HEALTH_TIMEOUT="240",
            **OFFLINE,
            **extra,
        )

    def invoke(self, *args: str, timeout: float = 400, **extra: str) -> subprocess.CompletedProcess:
        return invoke(self.tmp, *args, timeout=timeout, **{**self.env, **extra})

    def popen(self, *args: str) -> subprocess.Popen:
        return invoke_popen(self.tmp, *args, **self.env)

    @property
    def state(self) -> Path:
        return self.tmp / "state" / self.name

    def tokens(self) -> dict:
        return json.loads((self.state / "tokens.json").read_text())

    def status(self) -> tuple[int, dict]:
        proc = self.invoke("status", "--json", timeout=120)
        return proc.returncode, json.loads(proc.stdout)

    def secrets(self) -> list[str]:
        found = _docker(self.lab, "secret", "ls", "--filter", f"label=org.openwork-sandbox.sandbox={self.name}")
        return [line.split()[1] for line in found.stdout.splitlines()[1:]]

    def service(self) -> dict | None:
        proc = _docker(self.lab, "service", "inspect", self.name, check=False)
        return json.loads(proc.stdout)[0] if proc.returncode == 0 else None

    def reset(self) -> None:
        self.invoke("reset", "--yes", timeout=300)


def _until(what: str, probe, timeout: float = 120.0, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(every)


def _up(sb: Swarm) -> dict:
    proc = sb.invoke("up", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_a_sandbox_lives_on_its_node_from_up_to_reset(swarm_lab, lab_image, tmp_path, monkeypatch):
    provider_key = "sk-swarm-" + os.urandom(12).hex()
    sb = Swarm(
        swarm_lab, lab_image, tmp_path, 18901, OPENWORK_SANDBOX_ENV="FAKE_PROVIDER_KEY", FAKE_PROVIDER_KEY=provider_key
    )
    try:
        made = _up(sb)
        assert made["workspace_dir"] is None and made["data_dir"] is None  # volumes on the node, not folders here
        host = made["url"].split("//", 1)[1].rsplit(":", 1)[0]
        assert made["url"].startswith("https://") and host in LAB_ADDRESSES and made["url"].endswith(":18901")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", made["tls"]["ca"])
        tokens = sb.tokens()
        token, host_token = tokens["token"], tokens["host_token"]

        # no token in the service's definition; each is a secret of its own
        inspected = json.dumps(sb.service())
        assert token not in inspected and host_token not in inspected
        assert any(".openwork-token." in s for s in sb.secrets()) and any(
            ".openwork-host-token." in s for s in sb.secrets()
        )

        code, st = sb.status()
        assert code == 0 and st["healthy"] and st["node"].endswith(f"({host})"), st
        sid = make_session(made["url"], token, "kept across down, up and up --replace")
        issued = issue_token(made["url"], host_token)

        logs = sb.invoke("logs", "--tail", "5", timeout=60)
        assert logs.returncode == 0 and "[openwork-server]" in logs.stdout, logs.stderr

        following = sb.popen("logs", "--follow", "--tail", "1")
        time.sleep(3)
        assert following.poll() is None  # it follows while the sandbox runs
        assert sb.invoke("down", timeout=120).returncode == 0
        _, err = following.communicate(timeout=60)  # and ends once it stopped, in one line
        assert following.returncode == 1 and f"{sb.name} stopped" in err.strip().splitlines()[-1], err
        code, st = sb.status()
        assert code == 1 and st["state"] == "stopped" and "scaled to 0" in st["detail"], st

        again = _up(sb)
        assert again["url"] == made["url"]  # the same node: its volumes are there
        assert read_session(made["url"], token, sid)[1] == ["kept across down, up and up --replace"]

        replaced = sb.invoke("up", "--replace", "--json")
        assert replaced.returncode == 0, replaced.stderr[-3000:]
        assert json.loads(replaced.stdout)["action"] == "recreated"
        assert read_session(made["url"], token, sid)[1] == ["kept across down, up and up --replace"]
        assert status_with(made["url"], issued) == 200  # the issued token is in the store volume

        backup = sb.invoke("backup", timeout=60)
        assert backup.returncode == 1 and len(backup.stderr.strip().splitlines()) == 1, backup.stderr
        assert "volumes" in backup.stderr and "docker run" in backup.stderr

        node = LAB_ADDRESSES[host]
        mount = _docker(swarm_lab, "volume", "inspect", "-f", "{{.Mountpoint}}", f"{sb.name}-data", node=node)
        data = Path(mount.stdout.strip())
        assert any(data.iterdir())

        reset = sb.invoke("reset", "--yes", timeout=300)
        assert reset.returncode == 0, reset.stderr
        assert sb.service() is None and sb.secrets() == []
        assert _docker(swarm_lab, "network", "inspect", f"{sb.name}-net", check=False).returncode != 0
        assert list(data.iterdir()) == [], "reset left files in the data volume"
    finally:
        sb.reset()


def test_a_name_longer_than_swarm_takes_is_refused_naming_the_setting(swarm_lab, lab_image, tmp_path):
    sb = Swarm(swarm_lab, lab_image, tmp_path, 18907)
    sb.env["OPENWORK_MICROSANDBOX_NAME"] = sb.name = "n" * 58
    proc = sb.invoke("up", timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        f"OPENWORK_MICROSANDBOX_NAME={'n' * 58} has 58 characters; a swarm sandbox's name may have 57"
    ), proc.stderr
    assert sb.service() is None


def test_a_sandbox_that_fits_on_no_node_is_refused_in_one_line_and_nothing_is_made(swarm_lab, lab_image, tmp_path):
    sb = Swarm(swarm_lab, lab_image, tmp_path, 18902, OPENWORK_MICROSANDBOX_CPUS="64")
    proc = sb.invoke("up", timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("no swarm node has 64 CPUs and 768 MiB free"), proc.stderr
    for address in LAB_ADDRESSES:
        assert address in last  # each node's shortfall named
    assert "Traceback" not in proc.stderr and sb.service() is None and sb.secrets() == []


def test_an_image_on_loopback_is_refused_before_anything_is_made(swarm_lab, stack_image, tmp_path):
    sb = Swarm(swarm_lab, stack_image.ref, tmp_path, 18903)
    proc = sb.invoke("up", timeout=120)
    assert proc.returncode == 2 and "nodes cannot reach" in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert sb.service() is None and not (sb.state / "sandbox.json").exists()


def test_smoke_ephemeral_on_the_swarm_passes_and_leaves_nothing(swarm_lab, lab_image, tmp_path):
    sb = Swarm(swarm_lab, lab_image, tmp_path, 18904)
    proc = sb.invoke("smoke", "--ephemeral", "--json", timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    left = _docker(swarm_lab, "service", "ls", "--format", "{{.Name}}").stdout.split()
    assert not [s for s in left if s.startswith(f"{sb.name}-smoke-")]
    assert not [s for s in _docker(swarm_lab, "secret", "ls", "--format", "{{.Name}}").stdout.split() if sb.name in s]


def _node_id(lab, index: int) -> str:
    return next(node_id for i, _, node_id in lab.nodes if i == index)


def test_faults_a_node_down_drained_and_back_and_a_restarted_manager(swarm_lab, lab_image, tmp_path, monkeypatch):
    manager = _node_id(swarm_lab, 1)
    sb = Swarm(swarm_lab, lab_image, tmp_path, 18905)
    _docker(swarm_lab, "node", "update", "--availability", "pause", manager)  # so it goes to a worker
    try:
        made = _up(sb)
    finally:
        _docker(swarm_lab, "node", "update", "--availability", "active", manager)
    try:
        url = made["url"]
        node = LAB_ADDRESSES[url.split("//", 1)[1].rsplit(":", 1)[0]]
        assert node != 1
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", made["tls"]["ca"])
        token = sb.tokens()["token"]
        sid = make_session(url, token, "kept through the faults")

        # the manager's engine restarts: the sandbox on the worker keeps running and answering
        swarm_lab.stop_node(1)
        assert requests.get(f"{url}/health", timeout=10).status_code == 200
        swarm_lab.start_node(1)
        _until("status healthy once the manager is back", lambda: sb.status()[0] == 0, timeout=60)

        # its node's engine stops: status says so, exit 1; back: healthy, with its session
        swarm_lab.stop_node(node)
        down = _until(
            "status names the node down",
            lambda: (lambda r: r if r[0] == 1 and "is down" in r[1]["detail"] else None)(sb.status()),
        )
        assert f"10.213.0.{10 + node}" in down[1]["detail"] and "start that node's Docker engine" in down[1]["detail"]
        swarm_lab.start_node(node)
        _until("healthy again after its node returned", lambda: sb.status()[0] == 0, timeout=180)
        assert read_session(url, token, sid)[1] == ["kept through the faults"]

        # its node drained: said so; active again: healthy again
        node_id = _node_id(swarm_lab, node)
        _docker(swarm_lab, "node", "update", "--availability", "drain", node_id)
        try:
            drained = _until(
                "status names the drain",
                lambda: (lambda r: r if r[0] == 1 and "drain" in r[1]["detail"] else None)(sb.status()),
            )
            assert "docker node update --availability active" in drained[1]["detail"]
        finally:
            _docker(swarm_lab, "node", "update", "--availability", "active", node_id)
        _until("healthy again after the drain", lambda: sb.status()[0] == 0, timeout=180)
        assert read_session(url, token, sid)[1] == ["kept through the faults"]
    finally:
        sb.reset()


def test_an_interrupted_up_leaves_no_secret_without_its_service(swarm_lab, lab_image, tmp_path):
    sb = Swarm(swarm_lab, lab_image, tmp_path, 18906)
    try:
        proc = sb.popen("up")
        _until(
            "the service exists", lambda: sb.service() is not None or proc.poll() is not None, timeout=120, every=0.2
        )
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        svc = sb.service()
        if svc is None:  # interrupted while it was made: nothing of it is left
            assert sb.secrets() == []
        else:  # made whole, then stopped: every secret it names exists
            named = {s["SecretName"] for s in svc["Spec"]["TaskTemplate"]["ContainerSpec"].get("Secrets") or []}
            assert named and named <= set(sb.secrets())
            assert svc["Spec"]["Mode"]["Replicated"]["Replicas"] == 0
        again = sb.invoke("up")
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        sb.reset()


def test_sandboxes_started_at_once_go_to_different_nodes(swarm_lab, lab_image, tmp_path):
    for i in range(3):
        (tmp_path / f"b{i}").mkdir()
    boxes = [Swarm(swarm_lab, lab_image, tmp_path / f"b{i}", 18910 + i) for i in range(3)]
    try:
        procs = [sb.popen("up", "--json") for sb in boxes]
        outs = [p.communicate(timeout=400) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
        hosts = {json.loads(out)["url"].split("//", 1)[1].rsplit(":", 1)[0] for out, _ in outs}
        assert hosts == set(LAB_ADDRESSES), hosts  # one each: not all on the node that looked freest at first
    finally:
        for sb in boxes:
            sb.reset()
