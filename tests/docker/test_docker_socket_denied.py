"""A user who may not use the Docker socket (not in its group) is told so, with the way out, by
`invoke doctor` and by `invoke up` (one line, no raw docker error, nothing made).

The test makes the user (``useradd``, in no group but its own) and runs the tool as it, as in
``tests/support/second_user.py``. Needs root and the Docker socket; skips, saying why, elsewhere.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from openwork_sandbox.net.ports import free_port
from tests.support.lifecycle import OFFLINE, unique_name
from tests.support.second_user import SYSTEM_PYTHON, invoke_as, readable_copy, user_folders

pytestmark = pytest.mark.docker
USER = "owtest-nodocker"
SOCKET = Path("/var/run/docker.sock")


@pytest.fixture(scope="module")
def outsider():
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user")
    if not shutil.which("useradd") or not SYSTEM_PYTHON.exists() or not SOCKET.exists():
        pytest.skip(f"needs useradd, {SYSTEM_PYTHON} and {SOCKET}")
    group = grp.getgrgid(SOCKET.stat().st_gid).gr_name
    if SOCKET.stat().st_mode & 0o006:
        pytest.skip(f"{SOCKET} is open to every user")
    subprocess.run(["userdel", USER], capture_output=True)  # one a killed run left
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", USER], check=True, capture_output=True)
    pw = pwd.getpwnam(USER)
    assert USER not in grp.getgrnam(group).gr_mem
    base = Path(tempfile.mkdtemp(prefix="owtest-nodocker-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        project, site = readable_copy(base)
        home, state, env_file = user_folders(base, pw.pw_uid, pw.pw_gid)

        def run(*args: str) -> subprocess.CompletedProcess:
            env = {"HOME": str(home), "OPENWORK_STATE_DIR": str(state), "OPENWORK_MICROSANDBOX_RUNTIME": "docker"}
            env.update(OFFLINE)
            return invoke_as(pw.pw_uid, pw.pw_gid, project, site, *args, "--env-file", str(env_file), env=env)

        yield {"run": run, "state": state, "group": group}
    finally:
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run(["userdel", USER], capture_output=True)


def _says_denied_and_the_way_out(line: str, group: str) -> None:
    assert f"cannot use the Docker socket unix://{SOCKET} (permission denied)" in line, line
    assert f"sudo usermod -aG {group} $USER, then log in again" in line, line
    assert "rootless" in line, line


def test_doctor_says_the_user_cannot_use_the_socket(outsider):
    done = outsider["run"]("doctor", "--json")
    assert done.returncode == 1, done.stderr
    engine = next(c for c in json.loads(done.stdout)["checks"] if c["name"] == "docker engine")
    assert engine["ok"] is False
    _says_denied_and_the_way_out(engine["detail"], outsider["group"])
    assert "scripts/services start" not in engine["detail"] + engine["fix"]

    table = outsider["run"]("doctor")
    assert table.returncode == 1
    rows = [line for line in table.stderr.splitlines() if "docker engine" in line]
    assert len(rows) == 1, table.stderr
    _says_denied_and_the_way_out(rows[0], outsider["group"])


def test_up_says_the_user_cannot_use_the_socket_and_makes_nothing(outsider):
    name = unique_name("nodocker")
    image = f"127.0.0.1:5000/{name}/none:latest"
    done = outsider["run"]("up", "--name", name, "--port", str(free_port()), "--image", image)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    _says_denied_and_the_way_out(lines[0], outsider["group"])
    assert "Traceback" not in done.stderr and "dial unix" not in done.stderr
    assert not (outsider["state"] / name).exists()
    listed = subprocess.run(["docker", "ps", "-aq", "--filter", f"name={name}"], capture_output=True, text=True)
    assert listed.stdout.strip() == ""
