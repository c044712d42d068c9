"""Shared fixtures: the real local services (Docker engine, registry) and settings helpers.

Tests use the real engine and registry started by ``scripts/services start`` (idempotent);
traffic goes to 127.0.0.1 only, containers use host networking.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = "127.0.0.1:5000"
TEST_BASE_IMAGE = "openwork-base:bookworm-slim-python"  # + python3-minimal for the stand-in server
PROD_BASE_IMAGE = "openwork-base:bookworm-slim"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def services():
    """The real Docker engine and registry on loopback (started if not running)."""
    proc = subprocess.run([str(ROOT / "scripts" / "services"), "start"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"scripts/services start failed:\n{proc.stderr}"
    return {"registry": REGISTRY}


@pytest.fixture(scope="session")
def test_base_image(services):
    """A Debian base with python3-minimal (only for the stand-in server), made offline."""
    proc = subprocess.run([str(ROOT / "scripts" / "make-base-image"), TEST_BASE_IMAGE, "--include", "python3-minimal"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return TEST_BASE_IMAGE


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """An environment with no OPENWORK_* settings and an empty project root in tmp_path."""
    import os

    for key in list(os.environ):
        if key.startswith(("OPENWORK", "OPENCODE_VERSION", "NPM_CONFIG_REGISTRY")):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path
