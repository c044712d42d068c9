"""The steps about what a sandbox keeps: a sandbox made the old way (state in the guest's /root) is
replaced by `up` with its state copied out first (migration), and `up` by a user who is not root
leaves every file of .state/<name>/ theirs (non-root). Each takes the Scenario, returns its one-line
detail and raises StepFailed (StepSkipped where it cannot run) when it does not hold."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.common import LEGACY_ENTRYPOINT, LOCAL_REGISTRY, ROOT
from harness.microvm_e2e.outcome import StepFailed, StepSkipped
from harness.microvm_e2e.scenario import RUN_REF, TASK_TIMEOUT, USER, Scenario
from openwork_sandbox.net.ports import free_port

LEGACY_REF = f"{LOCAL_REGISTRY}/openwork-microsandbox-e2e:legacy"


def migration(sc: Scenario) -> str:
    """A sandbox as the version before /data/home made it: HOME unset (the legacy entrypoint's
    /root), an old fingerprint; `up` must copy /root's state out through the runtime, verify it,
    and recreate it."""
    ctx = sc.tmp / "legacy"
    ctx.mkdir()
    shutil.copy(LEGACY_ENTRYPOINT, ctx / "entrypoint.sh")
    (ctx / "Dockerfile").write_text(f"FROM {RUN_REF}\nCOPY entrypoint.sh /usr/local/bin/microsandbox-entrypoint.sh\n")
    sc.local_run_ref()
    sc.docker("build", "-q", "-t", LEGACY_REF, str(ctx))
    sc.docker("push", LEGACY_REF)
    sc.task("reset", "--yes")
    old = subprocess.run(
        [sys.executable, "-m", "harness.microvm_e2e", "--start-old-layout", LEGACY_REF],
        cwd=ROOT,
        env=sc.task_env(),
        capture_output=True,
        text=True,
        timeout=TASK_TIMEOUT,
    )
    (sc.log_dir / "old-layout.log").write_text(old.stdout + old.stderr)
    if old.returncode != 0:
        raise StepFailed(f"could not start a sandbox the old way: {(old.stderr.strip().splitlines() or ['?'])[-1]}")
    tokens = sc.tokens()
    created = sc.opencode("POST", "/session", {"title": "from the old days"})
    issued = sc.api("POST", "/tokens", host_token=tokens["host_token"], body={"scope": "owner", "label": "old"})
    if created.status_code != 200 or issued.status_code not in (200, 201):
        raise StepFailed(f"old sandbox: session {created.status_code}, token {issued.status_code}")
    home = sc.folder() / "data" / "home"
    if (home / ".local/share/opencode/opencode.db").exists():
        raise StepFailed("the old-layout sandbox wrote into /data/home: it is not the old layout")
    sid, token = created.json()["id"], issued.json()["token"]
    result, proc = sc.task_json("up")
    moved = [ln for ln in proc.stderr.splitlines() if "moved the state" in ln]
    if result["action"] != "recreated" or len(moved) != 1:
        raise StepFailed(f"up did {result['action']}; 'moved the state' lines: {moved}")
    again = sc.opencode("GET", f"/session/{sid}")
    still = sc.api("GET", "/workspaces", token=token)
    if again.status_code != 200 or still.status_code != 200 or not (home / ".migrated.json").is_file():
        raise StepFailed(f"after the migration: session {again.status_code}, token {still.status_code}")
    record = json.loads((home / ".migrated.json").read_text())
    return f"recreated in {proc.seconds:.1f}s, {record['files']} files copied out of /root and verified; session and token kept"


def nonroot(sc: Scenario) -> str:
    """`up` and `reset` run by a user who is not root: every file under .state/<name>/ is theirs."""
    try:
        user = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True, capture_output=True)
        user = pwd.getpwnam(USER)
        sc.made_user = True
    for device in ("/var/run/docker.sock", "/dev/kvm"):
        if os.path.exists(device):
            import grp

            group = grp.getgrgid(os.stat(device).st_gid).gr_name
            if group != "root":
                subprocess.run(["usermod", "-aG", group, USER], check=True, capture_output=True)
    probe = subprocess.run(
        [
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--init-groups",
            "--",
            sys.executable,
            "-c",
            "import invoke, openwork_sandbox",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": user.pw_dir},
    )
    if probe.returncode != 0:
        why = (
            f"{USER} cannot run {sys.executable} with this checkout: {(probe.stderr.strip().splitlines() or ['?'])[-1]}"
        )
        if sc.runtime == "docker":  # e.g. a development machine whose Python lives under /root
            raise StepSkipped(why + " (tests/docker/test_nonroot_user.py covers Docker with a readable copy)")
        raise StepFailed(why)
    state = sc.tmp / "user-state"
    state.mkdir()
    os.chown(state, user.pw_uid, user.pw_gid)
    # microsandbox builds the microVM's root filesystem in MSB_HOME, which needs xattrs: not the tmpfs /tmp
    msb_home = Path(tempfile.mkdtemp(prefix="msbu", dir="/var/tmp"))
    os.chown(msb_home, user.pw_uid, user.pw_gid)
    env = {
        "OPENWORK_STATE_DIR": str(state),
        "OPENWORK_MICROSANDBOX_NAME": f"{sc.name}-u",
        "OPENWORK_MICROSANDBOX_PORT": str(free_port()),
        "HOME": user.pw_dir,
        "MSB_HOME": str(msb_home),
    }
    try:
        sc.task("up", env=env, user=user)
        folder = state / env["OPENWORK_MICROSANDBOX_NAME"]
        foreign = [
            str(p)
            for p in [folder, *folder.rglob("*")]
            if p.lstat().st_uid != user.pw_uid or p.lstat().st_gid != user.pw_gid
        ]
        if foreign:
            raise StepFailed(f"{len(foreign)} files under {folder} are not {USER}'s, e.g. {foreign[:3]}")
        count = sum(1 for _ in folder.rglob("*"))
        sc.task("reset", "--yes", env=env, user=user)
        if folder.exists():
            raise StepFailed(f"reset left {folder}")
    finally:
        sc.task("reset", "--yes", env=env, user=user, check=False)
    return f"{count} files under .state/<name>/ all owned by {USER} (uid {user.pw_uid}); reset without sudo"


def start_old_layout(image: str) -> int:
    """(Helper process of the migration step.) Create the sandbox as the version before /data/home
    did: the same runtime call, without HOME in its environment, with an old fingerprint."""
    import dataclasses

    from openwork_sandbox.config import load_settings
    from openwork_sandbox.net.health import wait_for_health
    from openwork_sandbox.runtimes import runtime_for
    from openwork_sandbox.sandbox.launch import launch_spec
    from openwork_sandbox.state import persist
    from openwork_sandbox.state.store import SandboxState

    settings = load_settings(env_file=os.devnull, root=ROOT)
    state = SandboxState(settings)
    state.ensure()
    token, host_token = state.tokens()
    spec = launch_spec(settings, settings.runtime, token, host_token)
    env = {k: v for k, v in spec.env.items() if k not in persist.guest_env()}
    spec = dataclasses.replace(spec, image=image, env=env, fingerprint="before-data-home")
    rt = runtime_for(settings.runtime, settings)
    rt.create(spec)
    state.save_record(
        runtime=settings.runtime, image=image, fingerprint="before-data-home", port=settings.port, url=settings.url
    )
    wait_for_health(settings.url, settings.health_timeout, is_alive=rt.is_alive, describe=rt.describe)
    return 0
