"""TLS beyond loopback, and nothing but the published port beyond loopback, on the real stack (the
real orchestrator and opencode, the stand-in openwork-server) under Docker's host networking.

The connect host is this machine's end of a veth pair into a network namespace the test makes
(tests/support/netns.py): an address beyond loopback that only the test uses and that never leaves
the machine; the namespace's end is a real remote client (its packets come from another address,
through another stack). Under host networking the server's own port is the published one, so this
is the case the issue names: OPENWORK_CONNECT_HOST beyond loopback with no bridge in between.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from openwork_sandbox.sandbox.reset import reset
from openwork_sandbox.sandbox.up import up
from openwork_sandbox.smoke.modes import run_smoke
from tests.support.lifecycle import docker_env, make_settings
from tests.support.netns import remote_peer
from tests.support.openwork_client import agent_shell
from tests.support.paths import ROOT
from tests.support.tls_certs import openssl, user_ca

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def peer():
    with remote_peer() as made:
        yield made


def listeners(container: str) -> list[tuple[str, int]]:
    """``(address, port)`` of every TCP socket the container's processes listen on (``ss -ltnp``)."""
    top = subprocess.run(["docker", "top", container, "-eo", "pid"], capture_output=True, text=True, timeout=30)
    assert top.returncode == 0, top.stderr
    pids = {line.strip() for line in top.stdout.splitlines()[1:] if line.strip()}
    ss = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=30).stdout
    found = []
    for line in ss.splitlines():
        fields = line.split()
        if set(re.findall(r"pid=(\d+)", line)) & pids:
            address, _, port = fields[3].rpartition(":")
            found.append((address.strip("[]"), int(port)))
    return found


def raw_get(host: str, port: int) -> bytes:
    """Plain ``GET /health`` from this namespace; all the server sent before it closed."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
        return got


def test_up_beyond_loopback_serves_tls_and_nothing_else_faces_the_network(stack_image, peer, tmp_path, capsys):
    from openwork_sandbox.sandbox.status import status

    settings = make_settings(tmp_path, **docker_env(stack_image.ref, "tls", OPENWORK_CONNECT_HOST=peer.host_address))
    port = settings.port
    try:
        ep = up(settings)
        said = capsys.readouterr().err
        ca = settings.sandbox_state_dir / "tls" / "ca.crt"
        assert ep.url == f"https://{peer.host_address}:{port}"
        assert f"https://{peer.host_address}:{port}" in said and f"clients trust {ca}" in said
        made = openssl("x509", "-in", str(ca.parent / "tls.crt"), "-noout", "-fingerprint", "-sha256", cwd=tmp_path)
        assert f"SHA-256 {made.strip().split('=', 1)[1]}" in said

        # only the published port beyond loopback: the two programs' internal ports, opencode's and
        # the TLS terminator's are on 127.0.0.1
        sockets = listeners(settings.name)
        beyond = [(a, p) for a, p in sockets if a not in ("127.0.0.1", "::1")]
        assert beyond == [("0.0.0.0", port)], sockets
        assert len([s for s in sockets if s[0] == "127.0.0.1"]) >= 3, sockets

        # plain HTTP beyond loopback gets nothing at all; from loopback (the orchestrator's and the
        # HEALTHCHECK's way) it is served; TLS from the remote peer verifies against the made CA
        assert peer.get(port) == b""
        assert raw_get(peer.host_address, port) == b""  # this machine, but by its address beyond loopback
        assert raw_get("127.0.0.1", port).startswith(b"HTTP/1.1 200")
        assert peer.get(port, cafile=str(ca)).startswith(b"HTTP/1.1 200")

        inspect = subprocess.run(["docker", "inspect", settings.name], capture_output=True, text=True, timeout=30)
        config_env = json.loads(inspect.stdout)[0]["Config"]["Env"]
        assert "OPENWORK_TLS=1" in config_env and not any("PRIVATE KEY" in e for e in config_env)

        # the key is the server's: through the agent's shell, a client token cannot read it
        shown = agent_shell(ep.url, ep.token, "id; cat /srv/openwork/secrets/tls.key 2>&1", verify=str(ca))
        assert "uid=" in shown and "Permission denied" in shown and "PRIVATE KEY" not in shown, shown

        assert status(settings) == 0
        assert run_smoke(settings, as_json=True) == 0, capsys.readouterr().err
        capsys.readouterr()
        url_settings = make_settings(
            tmp_path, OPENWORK_TLS_CA=str(ca), OPENWORK_TOKEN=ep.token, OPENWORK_HOST_TOKEN=ep.host_token
        )
        assert run_smoke(url_settings, url=ep.url) == 0, capsys.readouterr().err

        # the image's HEALTHCHECK and openwork-supervise probe plain http://127.0.0.1:$OPENWORK_PORT/health
        deadline = time.monotonic() + 60
        while True:
            health = subprocess.run(
                ["docker", "inspect", "--format", "{{.State.Health.Status}}", settings.name],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
            record = settings.data_dir / "supervisor.json"
            supervised = json.loads(record.read_text()).get("healthy_at") if record.exists() else None
            if health == "healthy" and supervised:
                break
            assert time.monotonic() < deadline, f"Docker says {health!r}, the supervisor's healthy_at {supervised!r}"
            time.sleep(1)
    finally:
        reset(settings, yes=True)


def test_a_users_own_certificate_verifies_with_their_ca_and_not_with_another(stack_image, peer, tmp_path, capsys):
    mine = user_ca(tmp_path / "mine", f"IP:{peer.host_address}", days=60, label="mine")
    stranger = user_ca(tmp_path / "stranger", f"IP:{peer.host_address}", label="stranger")
    settings = make_settings(
        tmp_path,
        **docker_env(
            stack_image.ref,
            "tlsown",
            OPENWORK_CONNECT_HOST=peer.host_address,
            OPENWORK_TLS_CERT=str(mine.cert),
            OPENWORK_TLS_KEY=str(mine.key),
            OPENWORK_TLS_CA=str(mine.ca),
        ),
    )
    try:
        ep = up(settings)
        said = capsys.readouterr().err
        shown = openssl("x509", "-in", str(mine.cert), "-noout", "-fingerprint", "-sha256", cwd=tmp_path)
        assert f"SHA-256 {shown.strip().split('=', 1)[1]}" in said and "yours (OPENWORK_TLS_CERT)" in said
        assert not (settings.sandbox_state_dir / "tls").exists()  # nothing made
        assert peer.get(settings.port, cafile=str(mine.ca)).startswith(b"HTTP/1.1 200")

        tokens = {"OPENWORK_TOKEN": ep.token, "OPENWORK_HOST_TOKEN": ep.host_token}
        passing = make_settings(tmp_path, OPENWORK_TLS_CA=str(mine.ca), **tokens)
        assert run_smoke(passing, url=ep.url, as_json=True) == 0, capsys.readouterr().err
        capsys.readouterr()

        # another CA: `invoke smoke --url` fails, the reason in one line, no traceback
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENWORK", "OPENCODE_"))}
        (tmp_path / "empty.env").write_text("")
        env.update(tokens, OPENWORK_TLS_CA=str(stranger.ca), OPENWORK_ENV_FILE=str(tmp_path / "empty.env"))
        env.update(OPENWORK_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(ROOT))
        proc = subprocess.run(
            [sys.executable, "-m", "invoke", "smoke", "--url", ep.url, "--json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        health = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "health")
        assert health["result"] == "error" and "\n" not in health["message"]
        assert health["message"] == (
            f"the TLS certificate of {ep.url} was rejected (unable to get local issuer certificate; checked "
            f"against the CA bundle {stranger.ca}): set OPENWORK_TLS_CA to the CA bundle that signed it, or "
            "connect by a name the certificate holds"
        )
    finally:
        reset(settings, yes=True)
