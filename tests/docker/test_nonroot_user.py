"""`invoke up` and `invoke reset --yes` run by a user who is not root (on the real Docker runtime):
every file under ``.state/<name>/`` belongs to that user, files an older version left as root are
handed back, and `reset` removes the folder without sudo.

The test makes the user (``useradd``) and gives it the Docker socket through the socket's group;
it runs the tool as in ``tests/support/second_user.py``. Needs root (to create the user); skips,
saying why, elsewhere.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests

from openwork_sandbox.net.ports import free_port
from tests.support.lifecycle import OFFLINE, unique_name
from tests.support.second_user import SYSTEM_PYTHON, invoke_as, readable_copy, user_folders

pytestmark = pytest.mark.docker
USER = "owtest-runner"
SOCKET = Path("/var/run/docker.sock")


@pytest.fixture(scope="module")
def runner(stack_image):
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user")
    if not shutil.which("useradd") or not SYSTEM_PYTHON.exists() or not SOCKET.exists():
        pytest.skip(f"needs useradd, {SYSTEM_PYTHON} and {SOCKET}")
    created = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", USER], check=True, capture_output=True)
        created = True
    group = grp.getgrgid(SOCKET.stat().st_gid).gr_name
    subprocess.run(["usermod", "-aG", group, USER], check=True, capture_output=True)
    pw = pwd.getpwnam(USER)
    base = Path(tempfile.mkdtemp(prefix="owtest-nonroot-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        project, site = readable_copy(base)
        home, state, env_file = user_folders(base, pw.pw_uid, pw.pw_gid)

        def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
            env = {"HOME": str(home), "OPENWORK_STATE_DIR": str(state), **OFFLINE}
            return invoke_as(
                pw.pw_uid,
                pw.pw_gid,
                project,
                site,
                *args,
                "--env-file",
                str(env_file),
                env=env,
                timeout=timeout,
            )

        yield {"uid": pw.pw_uid, "gid": pw.pw_gid, "state": state, "run": run, "image": stack_image.ref}
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if created:
            subprocess.run(["userdel", USER], capture_output=True)


def test_a_non_root_user_owns_every_file_and_resets_without_sudo(runner):
    uid, gid, run = runner["uid"], runner["gid"], runner["run"]
    name, port = unique_name("user"), free_port()
    folder = runner["state"] / name
    # what an older version left: the user's folders, with files the root container made in them
    for d in (folder, folder / "data", folder / "workspace"):
        d.mkdir()
        os.chown(d, uid, gid)
    (folder / "data" / "openwork-orchestrator").mkdir()
    (folder / "data" / "openwork-orchestrator" / "left-by-root.json").write_text("{}")
    (folder / "workspace" / "opencode.jsonc").write_text("{}")
    assert (folder / "workspace" / "opencode.jsonc").stat().st_uid == 0
    try:
        up = run("up", "--name", name, "--runtime", "docker", "--image", runner["image"], "--port", str(port))
        assert up.returncode == 0, up.stderr
        assert "handed the files" in up.stderr
        # started as root (to keep the agent from the server's tokens), it runs both as this user
        top = subprocess.run(["docker", "top", name, "-eo", "pid,uid,args"], capture_output=True, text=True).stdout
        programs = [line.split(None, 2) for line in top.splitlines()[1:] if "serve" in line]
        assert programs and {owner for _, owner, _ in programs} == {str(uid)}, top
        import json

        tokens = json.loads((folder / "tokens.json").read_text())
        created = requests.post(
            f"http://127.0.0.1:{port}/w/ws_c52ddf65534b/opencode/session",
            json={"title": "mine"},
            headers={"Authorization": f"Bearer {tokens['token']}"},
            timeout=20,
        )
        assert created.status_code == 200, created.text  # opencode writes its database, as this user
        assert (folder / "data/home/.local/share/opencode/opencode.db").exists()
        foreign = [str(p) for p in [folder, *folder.rglob("*")] if p.lstat().st_uid != uid or p.lstat().st_gid != gid]
        assert foreign == []

        reset = run("reset", "--yes", "--name", name)
        assert reset.returncode == 0, reset.stderr
        assert "sudo" not in reset.stderr and not folder.exists()
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
