"""Two sandboxes of different names on one port (the Docker runtime, real `invoke`): two `up`s at
once make one sandbox, and the other fails before making anything, in one line naming the sandbox
that holds the port; an `up` on the port of a running sandbox names it (not "opencode (pid N)");
`doctor`'s port row names it too; and `status` and `up` take a server for the sandbox's own only when it is (another sandbox's server
on its port, after both came back, is named, exit 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.lifecycle import OFFLINE, invoke, unique_name, user_ports
from tests.support.paths import ROOT

pytestmark = pytest.mark.docker


def _env(stack_image, port: str, **extra: str) -> dict[str, str]:
    return dict(
        OPENWORK_MICROSANDBOX_PORT=port,
        OPENWORK_MICROSANDBOX_IMAGE=stack_image.ref,
        OPENWORK_MICROSANDBOX_RUNTIME="docker",
        OPENWORK_HEALTH_TIMEOUT="120",
        **extra,
    )


def _containers(*names: str) -> list[str]:
    listed = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True)
    return [n for n in listed.stdout.split() if n in names]


def _error_lines(stderr: str) -> list[str]:
    """What `up` printed besides its progress (the runtime and network lines)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("runtime:", "  why:", "network:"))]


def test_two_ups_of_two_names_on_one_port_at_once_make_one_sandbox(stack_image, tmp_path):
    names = [unique_name("porta"), unique_name("portb")]
    port = user_ports(1)[0]
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENWORK")}
    clean.update({"OPENWORK_STATE_DIR": str(tmp_path / "state"), **OFFLINE, **_env(stack_image, port)})
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "invoke", "up", "--name", name, "--json", "--env-file", str(env_file)],
                env=clean,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in names
        ]
        results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
        codes = [code for _, _, code in results]
        assert sorted(codes) == [0, 1], results
        winner, loser = (names[0], names[1]) if codes[0] == 0 else (names[1], names[0])
        _, err, _ = results[names.index(loser)]
        lines = _error_lines(err)
        assert len(lines) == 1, err
        assert f"port {port} is" in lines[0] and f"the sandbox {winner}" in lines[0], lines[0]
        assert "another token" not in err and "Traceback" not in err
        assert json.loads(results[names.index(winner)][0])["action"] == "created"
        assert _containers(*names) == [winner]  # nothing of the loser's: no container, no state folder
        assert not (tmp_path / "state" / loser).exists()
        status = invoke(tmp_path, "status", "--name", winner, "--json", **_env(stack_image, port))
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["port_held_by"] is None
    finally:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True)


def test_the_port_of_a_running_sandbox_and_status_name_that_sandbox(stack_image, tmp_path):
    a, b = unique_name("holda"), unique_name("holdb")
    port = user_ports(1)[0]
    env = _env(stack_image, port)
    try:
        assert invoke(tmp_path, "up", "--name", a, **env).returncode == 0
        taken = invoke(tmp_path, "up", "--name", b, **env)
        assert taken.returncode == 1, taken.stderr
        assert _error_lines(taken.stderr) == [
            f"port {port} is already in use by the sandbox {a} (docker, state in {tmp_path / 'state' / a}): "
            "stop it, or choose another port with --port / OPENWORK_MICROSANDBOX_PORT"
        ]
        assert _containers(a, b) == [a] and not (tmp_path / "state" / b).exists()
        # doctor's port row names the holder as `up` does; a's own server on a's port is fine
        rows = {}
        for name in (a, b):
            doctor = invoke(tmp_path, "doctor", "--json", **env, OPENWORK_MICROSANDBOX_NAME=name)
            assert "Traceback" not in doctor.stderr, doctor.stderr
            rows[name] = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == f"port {port}")
        assert rows[b]["ok"] is False
        assert rows[b]["detail"] == (
            f"127.0.0.1:{port} is in use by the sandbox {a} (docker, state in {tmp_path / 'state' / a})"
        )
        assert (rows[a]["ok"], rows[a]["detail"]) == (
            True,
            f"127.0.0.1:{port} is held by {a}'s running server (invoke status)",
        )
        assert not (tmp_path / "state" / b).exists()  # doctor made nothing of b's

        # b gets the port while a is down; then a has it, and b's container comes back (as after an
        # engine restart): b's server cannot have the port, a's answers there
        assert invoke(tmp_path, "down", "--name", a, **env).returncode == 0
        made = invoke(tmp_path, "up", "--name", b, **env)
        assert made.returncode == 0, made.stderr
        assert invoke(tmp_path, "down", "--name", b, **env).returncode == 0
        assert invoke(tmp_path, "up", "--name", a, **env).returncode == 0
        subprocess.run(["docker", "start", b], check=True, capture_output=True)

        other = invoke(tmp_path, "status", "--name", b, "--json", **env)
        assert other.returncode == 1, other.stdout
        info = json.loads(other.stdout)
        assert info["state"] == "running" and info["healthy"] is False
        assert info["port_held_by"] == f"the sandbox {a} (docker, state in {tmp_path / 'state' / a})"
        table = invoke(tmp_path, "status", "--name", b, **env)
        assert table.returncode == 1
        assert f"port {port} answers, but not with {b}'s server" in table.stderr
        assert f"the sandbox {a} (docker" in table.stderr

        again = invoke(tmp_path, "up", "--name", b, **env)  # not "started with another token"
        assert again.returncode == 1, again.stderr
        assert _error_lines(again.stderr) == [
            f"{b} runs, but port {port} answers with another server (it refuses {b}'s client token): the sandbox "
            f"{a} (docker, state in {tmp_path / 'state' / a}) holds it; stop that one and run `invoke up` again, or "
            f"give {b} another port with --port / OPENWORK_MICROSANDBOX_PORT"
        ]

        own = invoke(tmp_path, "status", "--name", a, "--json", **env)
        assert own.returncode == 0, own.stdout
        assert json.loads(own.stdout)["healthy"] is True
    finally:
        subprocess.run(["docker", "rm", "-f", a, b], capture_output=True)
