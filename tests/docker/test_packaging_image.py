"""The installed program builds the image from its package data on the real engine."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.packaging import isolated_env
from tests.support.paths import ROOT

PACKAGE = ROOT / "openwork_sandbox"


@pytest.mark.docker
def test_the_installed_program_builds_the_image_from_its_package_data(installed, test_base_image, tmp_path):
    """build-image from the wheel: the Dockerfile and entrypoint come from site-packages, the git
    labels from the folder it runs in (no git here: revision "unknown")."""
    from tests.support.paths import REGISTRY, STACK_CACHE_DIR, STACK_REPO, STANDIN_SERVER

    _, venv = installed
    image = f"{REGISTRY}/{STACK_REPO}:wheel"
    env = isolated_env(
        OPENWORK_BASE_IMAGE=test_base_image,
        OPENWORK_SERVER_BIN=str(STANDIN_SERVER),
        OPENWORK_CACHE_DIR=str(STACK_CACHE_DIR),
        OPENWORK_MICROSANDBOX_IMAGE=image,
        SOURCE_DATE_EPOCH="1700000000",
    )
    proc = subprocess.run(
        [str(venv / "bin" / "openwork-sandbox"), "build-image", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout)
        assert result["revision"] == "unknown" and result["created"] == "2023-11-14T22:13:20Z"
        assert (tmp_path / ".state" / "image-context" / "Dockerfile").read_bytes() == (
            PACKAGE / "image" / "context" / "Dockerfile"
        ).read_bytes()
        entrypoint = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--entrypoint",
                "cat",
                result["image_id"],
                "/usr/local/bin/microsandbox-entrypoint.sh",
            ],
            capture_output=True,
            timeout=120,
        )
        assert entrypoint.stdout == (PACKAGE / "image" / "context" / "microsandbox-entrypoint.sh").read_bytes()
    finally:
        subprocess.run(["docker", "rmi", image], capture_output=True)
