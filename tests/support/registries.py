"""Fixtures of private registries, loaded as a pytest plugin: ``scripts/services`` starts a TLS registry
with an htpasswd login (its CA made here and trusted through ``/etc/docker/certs.d``) and a registry
behind a token issuer (the double in ``tests/standins/token_issuer_double.py``)."""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from openwork_sandbox.net.ports import free_port
from tests.standins.token_issuer_double import TokenIssuerDouble
from tests.support.paths import ROOT, STACK_REPO

SERVICES = ROOT / "scripts" / "services"
CERTS_D = Path("/etc/docker/certs.d")


@dataclasses.dataclass
class PrivateRegistry:
    host: str  # localhost:PORT, as Docker and the certificate name it
    port: int
    ca: Path
    user: str
    password: str
    issuer: TokenIssuerDouble | None = None

    def ref(self, tag: str = "ci") -> str:
        return f"{self.host}/{STACK_REPO}/private:{tag}"


def _services(folder: Path, command: str, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(SERVICES), command],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OPENWORK_SERVICES_DIR": str(folder), **env},
    )
    assert proc.returncode == 0, f"scripts/services {command} failed:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="session")
def private_services(services, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("trusting a CA for Docker needs root (/etc/docker/certs.d)")
    return tmp_path_factory.mktemp("private-registries")


@pytest.fixture(scope="session")
def tls_registry(private_services):
    """TLS (a CA made by scripts/services) + htpasswd, on a free port, trusted through certs.d."""
    port, password = free_port(), secrets.token_urlsafe(16)
    env = {
        "OPENWORK_TLS_REGISTRY_ADDR": f"127.0.0.1:{port}",
        "OPENWORK_TLS_REGISTRY_USER": "ci-user",
        "OPENWORK_TLS_REGISTRY_PASSWORD": password,
    }
    _services(private_services, "start-tls", **env)
    reg = PrivateRegistry(f"localhost:{port}", port, private_services / "registry-ca" / "ca.crt", "ci-user", password)
    assert (CERTS_D / reg.host / "ca.crt").read_bytes() == reg.ca.read_bytes()
    yield reg
    _services(private_services, "stop-tls", **env)
    assert not (CERTS_D / reg.host).exists()


@pytest.fixture(scope="session")
def token_registry(private_services):
    """TLS + token auth (auth.token); tokens from the issuer double, whose certificate the registry trusts."""
    issuer = TokenIssuerDouble(private_services / "token-issuer").start()
    password = secrets.token_urlsafe(16)
    issuer.users = {"ci-user": (password, {"pull", "push"}), "reader": ("reader-pass", {"pull"})}
    port = free_port()
    env = {
        "OPENWORK_TOKEN_REGISTRY_ADDR": f"127.0.0.1:{port}",
        "OPENWORK_TOKEN_REGISTRY_REALM": issuer.realm,
        "OPENWORK_TOKEN_REGISTRY_ROOTCERT": str(issuer.cert_path),
        "OPENWORK_TOKEN_REGISTRY_ISSUER": issuer.issuer,
        "OPENWORK_TOKEN_REGISTRY_SERVICE": issuer.service,
    }
    _services(private_services, "start-token", **env)
    yield PrivateRegistry(
        f"localhost:{port}", port, private_services / "registry-ca" / "ca.crt", "ci-user", password, issuer
    )
    _services(private_services, "stop-token", **env)
    issuer.stop()
