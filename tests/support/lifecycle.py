"""Helpers shared by the lifecycle tests: isolated settings, a clean environment for `invoke`."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.paths import ROOT

# These machines are air-gapped: opencode's models.dev fetch would hang one start in ten (README).
OFFLINE = {"OPENWORK_OFFLINE": "true"}


def unique_name(prefix: str = "lc") -> str:
    return f"owtest-{prefix}-{secrets.token_hex(3)}"


def docker_env(image: str, prefix: str, health_timeout: str = "90", **extra: str) -> dict[str, str]:
    """Settings of a sandbox of ``image`` on the Docker runtime: a unique name, a free port."""
    from openwork_sandbox.net.ports import free_port

    return dict(
        OPENWORK_MICROSANDBOX_NAME=unique_name(prefix),
        OPENWORK_MICROSANDBOX_PORT=str(free_port()),
        OPENWORK_MICROSANDBOX_IMAGE=image,
        OPENWORK_MICROSANDBOX_RUNTIME="docker",
        OPENWORK_HEALTH_TIMEOUT=health_timeout,
        **extra,
    )


def user_ports(count: int) -> list[str]:
    """``count`` free ports as a user running several sandboxes picks them: a row of fixed ports below
    the kernel's ephemeral range (ip_local_port_range), so that no port the kernel hands out in the
    meantime (opencode's under host networking, the orchestrator's control port) can take one of them
    before its sandbox starts. ``free_port()`` picks from that range: fine for one sandbox at a time."""
    import random

    from openwork_sandbox.net.ports import port_is_free

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    while True:
        first = random.randrange(10000, low - count)
        ports = [str(p) for p in range(first, first + count)]
        if all(port_is_free(int(p)) for p in ports):
            return ports


def make_settings(tmp_path: Path, **env: str):
    """Settings with only ``env`` set, state under ``tmp_path/state``, project root ``tmp_path/project``."""
    from openwork_sandbox.config import load_settings

    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    environ = {"OPENWORK_STATE_DIR": str(tmp_path / "state"), **OFFLINE, **env}
    return load_settings(environ=environ, env_file=env_file, root=project)


def _as_a_user(tmp_path: Path, *args: str, **env: str) -> tuple[list[str], dict[str, str]]:
    """The command line of ``invoke ARGS`` and an environment with only ``env`` (and the state folder
    under ``tmp_path``) as settings, an empty settings file beside it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENWORK", "OPENCODE_VERSION"))}
    clean.update({"OPENWORK_STATE_DIR": str(tmp_path / "state"), **OFFLINE, **env})
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    return [sys.executable, "-m", "invoke", *args, "--env-file", str(env_file)], clean


def invoke(tmp_path: Path, *args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    """Run ``invoke ARGS`` in a separate process, as a user would, with only ``env`` as settings."""
    argv, environ = _as_a_user(tmp_path, *args, **env)
    return subprocess.run(argv, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=timeout)


def invoke_popen(tmp_path: Path, *args: str, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **env: str):
    """``invoke ARGS`` started as :func:`invoke` runs it, not waited for (a test signals it or reads it)."""
    argv, environ = _as_a_user(tmp_path, *args, **env)
    return subprocess.Popen(argv, cwd=ROOT, env=environ, stdout=stdout, stderr=stderr, text=True)


def build_and_push(context: Path, dockerfile: str, ref: str) -> str:
    """Build a small test image from ``dockerfile`` text and push it to the local registry."""
    (context / "Dockerfile").write_text(dockerfile)
    build = subprocess.run(
        ["docker", "build", "-q", "-t", ref, str(context)], capture_output=True, text=True, timeout=300
    )
    assert build.returncode == 0, build.stderr
    push = subprocess.run(["docker", "push", ref], capture_output=True, text=True, timeout=300)
    assert push.returncode == 0, push.stderr
    return ref


def container_id(name: str) -> str | None:
    """The Docker container's id, or None when there is no container of that name."""
    proc = subprocess.run(["docker", "inspect", "--format", "{{.Id}}", name], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def up_json(settings, capsys, **kw) -> dict:
    """`up --json` in this process: its JSON object, plus what it said on stderr under "stderr"."""
    import json

    from openwork_sandbox.sandbox.up import up

    capsys.readouterr()
    up(settings, as_json=True, **kw)
    out = capsys.readouterr()
    return {**json.loads(out.out), "stderr": out.err}


@contextlib.contextmanager
def ramfs():
    """A real ramfs, mounted on a short new folder under /tmp (the SDK's socket paths live in an
    MSB_HOME there): a filesystem without extended attributes, as tmpfs before Linux 6.6 is. Skips
    the test where it cannot be mounted (not root)."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a ramfs")
    mnt = Path(tempfile.mkdtemp(prefix="rfs", dir="/tmp"))
    if subprocess.run(["mount", "-t", "ramfs", "none", str(mnt)], capture_output=True).returncode != 0:
        mnt.rmdir()
        pytest.skip("cannot mount a ramfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], capture_output=True)
        shutil.rmtree(mnt, ignore_errors=True)


def prepared_spec(settings, kind: str, token: str, host_token: str):
    """``launch_spec`` with the folders ``up`` writes before it boots (the token files, the server's
    store), for tests that drive a runtime's ``create`` themselves."""
    from openwork_sandbox.sandbox.launch import launch_spec
    from openwork_sandbox.state.secrets import write_server_side

    write_server_side(settings, token, host_token)
    return launch_spec(settings, kind, token, host_token)
