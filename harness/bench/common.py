"""What the benchmarks share besides ``harness.common``: the image they measure, removing what they
started."""

from __future__ import annotations

import subprocess

from harness.common import ROOT


def image_or_setting(image: str | None) -> str:
    """IMAGE (a ``--image`` flag) when given, else the image setting as ``invoke`` reads it here
    (environment, this checkout's ``.env``, default). Raises SettingsError on a bad setting."""
    from openwork_sandbox.config import load_settings

    return image or load_settings(root=ROOT).image


def remove_container(name: str) -> None:
    """``docker rm -f NAME``, quietly: the clean-up after a container a benchmark started itself."""
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
