"""Helpers shared by the lifecycle tests: isolated settings, a clean environment for `invoke`."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def unique_name(prefix: str = "lc") -> str:
    return f"owtest-{prefix}-{secrets.token_hex(3)}"


def make_settings(tmp_path: Path, **env: str):
    """Settings with only ``env`` set, state under ``tmp_path/state``, project root ``tmp_path/project``."""
    from openwork_sandbox.settings import load_settings

    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    environ = {"OPENWORK_STATE_DIR": str(tmp_path / "state"), **env}
    return load_settings(environ=environ, env_file=env_file, root=project)


def invoke(tmp_path: Path, *args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    """Run ``invoke ARGS`` in a separate process, as a user would, with only ``env`` as settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENWORK", "OPENCODE_VERSION"))}
    clean.update({"OPENWORK_STATE_DIR": str(tmp_path / "state"), **env})
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    return subprocess.run([sys.executable, "-m", "invoke", *args, "--env-file", str(env_file)], cwd=ROOT, env=clean,
                          capture_output=True, text=True, timeout=timeout)
