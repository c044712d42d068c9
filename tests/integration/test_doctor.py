"""`invoke doctor` against the real services that scripts/services starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from openwork_sandbox.config import load_settings
from openwork_sandbox.net.ports import free_port
from openwork_sandbox.sandbox import doctor
from tests.support.lifecycle import ramfs
from tests.support.paths import ROOT

HAS_VIRT = (
    any(flag in Path("/proc/cpuinfo").read_text().split() for flag in ("vmx", "svm"))
    if Path("/proc/cpuinfo").exists()
    else False
)


def run_doctor(tmp_path, env_extra=None, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENWORK_", "OPENCODE_VERSION"))}
    env.update({"OPENWORK_STATE_DIR": str(tmp_path / "state"), "OPENWORK_MICROSANDBOX_PORT": str(free_port())})
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "invoke", "doctor", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def second_registry(tmp_path):
    """A second real registry on its own port, so a test can stop it without disturbing others."""
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {tmp_path}/data}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "the second registry did not start"
        time.sleep(0.05)
    yield port, proc
    proc.kill()
    proc.wait()


def by_name(report):
    return {check["name"]: check for check in report["checks"]}


def test_doctor_json_all_green_for_docker_and_registry(services, tmp_path):
    proc = run_doctor(tmp_path, None, "--json")
    report = json.loads(proc.stdout)
    checks = by_name(report)
    assert checks["docker engine"]["ok"], checks["docker engine"]
    assert checks["docker client"]["ok"]
    assert checks["registry 127.0.0.1:5000"]["ok"]
    assert checks["python"]["ok"] and checks["packages"]["ok"]
    assert checks["state folders"]["ok"]
    assert checks["microsandbox"]["ok"], "pip install microsandbox brings msb"
    if HAS_VIRT:
        assert report["runtime"]["chosen"] == "microsandbox"
    else:
        # these machines: a VM without nested virtualization
        virt = checks["virtualization"]
        assert not virt["ok"]
        assert "no vmx/svm CPU flag" in virt["detail"] and "Docker runtime" in virt["fix"]
        assert report["runtime"]["setting"] == "auto" and report["runtime"]["chosen"] == "docker"
        assert report["runtime"]["why"].startswith("auto: microVMs cannot boot here: no vmx/svm CPU flag")
        assert report["runtime"]["why"].endswith("answers")
    assert report["ok"] is True and proc.returncode == 0


def test_doctor_table_has_one_line_per_check(services, tmp_path):
    proc = run_doctor(tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    for name in (
        "python",
        "packages",
        "docker client",
        "docker engine",
        "registry 127.0.0.1:5000",
        "microsandbox",
        "/dev/kvm",
        "virtualization",
        "port ",
        "state folders",
    ):
        rows = [ln for ln in lines if ln[:1] in ("✓", "✗") and ln[1:].strip().startswith(name)]
        assert len(rows) == 1, f"{name}: {rows}"
    assert any(ln.startswith("runtime: auto → ") for ln in lines)


def test_stopped_registry_is_a_cross_and_exit_1(services, tmp_path, second_registry):
    port, proc = second_registry
    image = f"127.0.0.1:{port}/openwork-microsandbox:dev"
    up = run_doctor(tmp_path, {"OPENWORK_MICROSANDBOX_IMAGE": image}, "--json")
    assert by_name(json.loads(up.stdout))[f"registry 127.0.0.1:{port}"]["ok"] and up.returncode == 0
    proc.kill()
    proc.wait()
    down = run_doctor(tmp_path, {"OPENWORK_MICROSANDBOX_IMAGE": image}, "--json")
    check = by_name(json.loads(down.stdout))[f"registry 127.0.0.1:{port}"]
    assert not check["ok"]
    assert "does not answer" in check["detail"] and check["fix"] == "scripts/services start"
    assert down.returncode == 1


def test_port_in_use_is_reported(tmp_path, clean_env):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        settings = load_settings({"port": port}, environ={}, root=tmp_path)
        check = doctor.check_port(settings)
    assert not check.ok and f"127.0.0.1:{port} is in use" in check.detail
    assert "OPENWORK_MICROSANDBOX_PORT" in check.fix
    settings = load_settings({"port": port}, environ={}, root=tmp_path)
    assert doctor.check_port(settings).ok  # released: free again


def test_unwritable_state_folder(tmp_path, clean_env):
    if os.geteuid() == 0:
        # root writes anywhere; a path under a regular file can never be created
        blocker = tmp_path / "file"
        blocker.write_text("")
        settings = load_settings({}, environ={"OPENWORK_STATE_DIR": str(blocker / "state")}, root=tmp_path)
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        settings = load_settings({}, environ={"OPENWORK_STATE_DIR": str(ro / "state")}, root=tmp_path)
    check = doctor.check_state_folders(settings)
    assert not check.ok and "not writable" in check.detail


def test_kvm_and_virtualization_rows_come_from_the_host_facts():
    from openwork_sandbox.runtimes.choice import HostFacts

    x86 = HostFacts("Linux", "x86_64", kvm_present=True, kvm_usable=True, cpu_flag=None, msb="/bin/msb")
    arm = HostFacts("Linux", "aarch64", kvm_present=True, kvm_usable=True, msb="/bin/msb")
    not_mine = HostFacts("Linux", "x86_64", kvm_present=True, kvm_usable=False, cpu_flag="vmx")
    assert doctor.check_kvm(x86).ok and not doctor.check_virtualization(x86).ok
    assert "Docker runtime" in doctor.check_virtualization(x86).fix
    assert doctor.check_kvm(arm).ok and doctor.check_virtualization(arm).ok
    assert not doctor.check_kvm(not_mine).ok and "kvm group" in doctor.check_kvm(not_mine).fix


def test_an_msb_home_without_extended_attributes_is_a_cross_on_the_microsandbox_row(tmp_path, monkeypatch):
    """The folder microsandbox puts root filesystems together in (MSB_HOME) needs xattrs (found in the
    emulated host: a tmpfs /tmp of Linux 6.1); a real ramfs stands for such a filesystem (needs root)."""
    from openwork_sandbox.runtimes.choice import HostFacts

    facts = HostFacts("Linux", "x86_64", kvm_present=True, kvm_usable=True, cpu_flag="svm", msb="/bin/msb")
    monkeypatch.setenv("MSB_HOME", str(tmp_path / "msb"))
    assert doctor.check_microsandbox(facts).ok  # tmp_path: ext4 here
    with ramfs() as mnt:
        monkeypatch.setenv("MSB_HOME", str(mnt / "msb"))
        check = doctor.check_microsandbox(facts)
        assert not check.ok and f"{mnt / 'msb'} (MSB_HOME)" in check.detail and "extended attributes" in check.detail
        assert "set MSB_HOME" in check.fix


def test_package_minimums_match_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    for package, minimum in doctor.PACKAGE_MINIMUMS.items():
        assert f'"{package}>={minimum}"' in text


def test_invoke_list_does_not_import_the_sdk():
    code = (
        "import sys, invoke.program; from invoke import Program; "
        "sys.argv=['invoke','--list']; import tasks; "
        "assert 'microsandbox' not in sys.modules, 'tasks.py imported the SDK'"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    listing = subprocess.run(
        [sys.executable, "-m", "invoke", "--list"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert listing.returncode == 0
    for name in ("build-image", "push-image", "up", "down", "status", "logs", "reset", "smoke", "doctor"):
        assert f"  {name} " in listing.stdout or f"  {name}\n" in listing.stdout


SHARED = (
    "the agent shares the host's network (host networking): it reaches the host's loopback services and the "
    "LAN as any program on the host does"
)


def test_doctor_says_plainly_when_the_agent_shares_the_host_network(services, tmp_path):
    from openwork_sandbox.runtimes.docker import engine_has_bridge

    if engine_has_bridge():
        pytest.skip("the engine has a bridge network: its sandbox does not share the host's network")
    proc = run_doctor(tmp_path, {"OPENWORK_MICROSANDBOX_RUNTIME": "docker"})
    rows = [ln for ln in proc.stderr.splitlines() if ln[:1] in ("✓", "✗") and ln[1:].strip().startswith("network ")]
    assert (
        len(rows) == 1
        and rows[0].startswith("✓")
        and rows[0].endswith(f"allow-all, held by the docker runtime: {SHARED}")
    )
    assert proc.returncode == 0, proc.stderr


def test_doctor_fails_a_network_policy_docker_cannot_hold(services, tmp_path):
    from openwork_sandbox.runtimes.docker import engine_has_bridge

    if engine_has_bridge():
        pytest.skip("the engine has a bridge network: tests/docker/test_network_policy_docker.py covers it")
    proc = run_doctor(
        tmp_path, {"OPENWORK_MICROSANDBOX_RUNTIME": "docker", "OPENWORK_MICROSANDBOX_NETWORK": "none"}, "--json"
    )
    row = by_name(json.loads(proc.stdout))["network"]
    assert not row["ok"] and row["needed_by"] == ["docker"]
    assert row["detail"] == (
        "OPENWORK_MICROSANDBOX_NETWORK=none (from environment) cannot be enforced by the docker runtime: this Docker "
        "engine has no bridge network, so the container shares the host's network (its loopback services, the LAN)"
    )
    assert (
        row["fix"].endswith("; or set OPENWORK_MICROSANDBOX_NETWORK=allow-all") and "microsandbox runtime" in row["fix"]
    )
    assert proc.returncode == 1
