"""Fixtures of the packaging tests: the wheel built from this checkout, installed into new venvs
(``installed``: beside this Python's packages; ``installed_with_deps``: isolated, with its declared
dependencies from pip's package index)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT


def isolated_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENWORK", "PYTHONPATH", "GITHUB_"))}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """``(wheel path, venv folder)``: the wheel built from this checkout, installed into a new venv."""
    work = tmp_path_factory.mktemp("wheel")
    wheels = work / "dist"
    # build from a copy: setuptools leaves build/ and *.egg-info behind, and a stale build/ would
    # put modules into the wheel that the checkout no longer has
    source = work / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".state", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "reports"
        ),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = wheels.glob("openwork_sandbox-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    _see_these_packages(venv)
    proc = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--disable-pip-version-check",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return wheel, venv


def _site_folders() -> list[str]:
    """The folders this interpreter's installed packages are in (a venv's own, and the base's when it
    sees them), without the checkout: what the test venv needs to import the dependencies."""
    import site

    folders = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        folders.append(site.getusersitepackages())
    return [f for f in dict.fromkeys(folders) if os.path.isdir(f) and Path(f).resolve() != ROOT]


def _see_these_packages(venv: Path) -> None:
    """Put this interpreter's site folders on the venv's path, after its own site-packages. Lines of
    a ``.pth`` file only add folders: the ``.pth`` files inside them (an editable install of this
    checkout, for one) are not run, so the venv imports the package only from the wheel."""
    python = str(venv / "bin" / "python")
    own = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    Path(own, "zz-outer-site-packages.pth").write_text("".join(f"{f}\n" for f in _site_folders()))


@pytest.fixture(scope="session")
def installed_with_deps(installed, tmp_path_factory):
    """``(wheel path, venv folder)``: the same wheel in a venv that sees no other packages, installed
    by pip *with* its declared dependencies (from the index pip is configured with)."""
    wheel, _ = installed
    venv = tmp_path_factory.mktemp("isolated") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_NO_DEPS", "PIP_NO_INDEX")}
    proc = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = subprocess.run([python, "-m", "pip", "check"], env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    return wheel, venv
