"""Helpers shared by the lifecycle tests: isolated settings, a clean environment for `invoke`."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# These machines are air-gapped: opencode's models.dev fetch would hang one start in ten (README).
OFFLINE = {"OPENWORK_OFFLINE": "true"}


def unique_name(prefix: str = "lc") -> str:
    return f"owtest-{prefix}-{secrets.token_hex(3)}"


def make_settings(tmp_path: Path, **env: str):
    """Settings with only ``env`` set, state under ``tmp_path/state``, project root ``tmp_path/project``."""
    from openwork_sandbox.settings import load_settings

    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    environ = {"OPENWORK_STATE_DIR": str(tmp_path / "state"), **OFFLINE, **env}
    return load_settings(environ=environ, env_file=env_file, root=project)


def invoke(tmp_path: Path, *args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    """Run ``invoke ARGS`` in a separate process, as a user would, with only ``env`` as settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENWORK", "OPENCODE_VERSION"))}
    clean.update({"OPENWORK_STATE_DIR": str(tmp_path / "state"), **OFFLINE, **env})
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    return subprocess.run([sys.executable, "-m", "invoke", *args, "--env-file", str(env_file)], cwd=ROOT, env=clean,
                          capture_output=True, text=True, timeout=timeout)


def build_and_push(context: Path, dockerfile: str, ref: str) -> str:
    """Build a small test image from ``dockerfile`` text and push it to the local registry."""
    (context / "Dockerfile").write_text(dockerfile)
    build = subprocess.run(["docker", "build", "-q", "-t", ref, str(context)], capture_output=True, text=True,
                           timeout=300)
    assert build.returncode == 0, build.stderr
    push = subprocess.run(["docker", "push", ref], capture_output=True, text=True, timeout=300)
    assert push.returncode == 0, push.stderr
    return ref
