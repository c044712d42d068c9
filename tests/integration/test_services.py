"""scripts/services: idempotent start of the real Docker engine and registry."""

from __future__ import annotations

import subprocess

import requests

from tests.support.paths import ROOT


def pids(pattern: str) -> set[str]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return set(out.split())


def test_second_start_changes_nothing(services):
    before = (pids("^dockerd"), pids("^docker-registry serve"))
    assert before[0] and before[1], "services fixture should have both running"
    proc = subprocess.run([str(ROOT / "scripts" / "services"), "start"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "left as it is" in proc.stderr
    assert (pids("^dockerd"), pids("^docker-registry serve")) == before
    assert requests.get("http://127.0.0.1:5000/v2/", timeout=5).status_code == 200
    assert subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def test_status_reports_both(services):
    proc = subprocess.run([str(ROOT / "scripts" / "services"), "status"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "✓ Docker engine answers" in proc.stderr and "✓ registry at 127.0.0.1:5000 answers" in proc.stderr


def test_status_fails_for_a_registry_address_where_none_listens(services):
    from openwork_sandbox.net.ports import free_port

    env = {"PATH": __import__("os").environ["PATH"], "OPENWORK_LOCAL_REGISTRY_ADDR": f"127.0.0.1:{free_port()}"}
    proc = subprocess.run(
        [str(ROOT / "scripts" / "services"), "status"], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 1 and "does not answer" in proc.stderr
