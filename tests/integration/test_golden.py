"""What a user sees stays the same across a refactoring: the task list, every task's help, the
launch fingerprint of fixed settings (an upgrade must not recreate running sandboxes), the image's
build context bytes (image ids stay) and the wheel's public entry points.

The expected values are files under ``tests/golden/``, written by hand-checked runs of the code as it
was; ``OPENWORK_GOLDEN_UPDATE=1`` rewrites them (review the diff: a change there is a change users see).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT

GOLDEN = Path(__file__).resolve().parent / "golden"
TASKS = [
    "backup",
    "build-image",
    "doctor",
    "down",
    "logs",
    "manifests",
    "push-image",
    "reset",
    "restore",
    "smoke",
    "status",
    "up",
]
UPDATE = os.environ.get("OPENWORK_GOLDEN_UPDATE") == "1"


def _matches(name: str, actual: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(actual)
    assert path.exists(), f"{path} is missing: run once with OPENWORK_GOLDEN_UPDATE=1 and review it"
    assert actual == path.read_text(), f"{name} changed; if intended, OPENWORK_GOLDEN_UPDATE=1 and review the diff"


def _invoke(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENWORK")}
    env["COLUMNS"] = "100"
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_task_list_is_unchanged():
    _matches("invoke-list.txt", _invoke("--list"))


@pytest.mark.parametrize("task", TASKS)
def test_each_tasks_help_is_unchanged(task):
    _matches(f"help-{task}.txt", _invoke("--help", task))


def test_the_program_and_the_module_show_the_same_tasks():
    proc = subprocess.run(
        [sys.executable, "-m", "openwork_sandbox", "--list"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert re.findall(r"^  (\S+)", proc.stdout, re.M) == TASKS


def _fixed_settings(tmp_path: Path):
    from openwork_sandbox.tasks import ns  # noqa: F401  (the collection imports every layer)

    loader = _settings_loader()
    env_file = tmp_path / "golden.env"
    env_file.write_text("")
    environ = {
        "OPENWORK_MICROSANDBOX_IMAGE": "127.0.0.1:5000/golden:1",
        "OPENWORK_MICROSANDBOX_NAME": "golden",
        "OPENWORK_MICROSANDBOX_PORT": "8787",
        "OPENWORK_MICROSANDBOX_WORKSPACE_DIR": "/golden/workspace",
        "OPENWORK_MICROSANDBOX_DATA_DIR": "/golden/data",
        "OPENWORK_STATE_DIR": str(tmp_path / "state"),
    }
    return loader(environ=environ, env_file=env_file, root=tmp_path)


def _settings_loader():
    from openwork_sandbox.config import load_settings

    return load_settings


def _launch_spec():
    from openwork_sandbox.sandbox.launch import launch_spec

    return launch_spec


@pytest.mark.parametrize("kind", ["docker", "microsandbox"])
def test_the_launch_fingerprint_of_fixed_settings_is_unchanged(tmp_path, monkeypatch, kind):
    for key in list(os.environ):
        if key.startswith(("OPENWORK", "OPENCODE")):
            monkeypatch.delenv(key)
    settings = _fixed_settings(tmp_path)
    spec = _launch_spec()(settings, kind, "t" * 32, "h" * 32)
    _matches(f"fingerprint-{kind}.txt", spec.fingerprint + "\n")


def _context_dir() -> Path:
    import openwork_sandbox

    pkg = Path(openwork_sandbox.__file__).parent
    return pkg / "image" / "context"


def test_the_build_context_bytes_are_unchanged():
    context = _context_dir()
    lines = []
    for path in sorted(p for p in context.iterdir() if p.is_file() and not p.name.endswith((".py", ".pyc"))):
        mode = "x" if os.access(path, os.X_OK) else "-"
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()} {mode} {path.name}")
    _matches("build-context.txt", "\n".join(lines) + "\n")


def test_the_wheel_keeps_its_entry_points_and_package_data(tmp_path):
    import shutil

    source = tmp_path / "src"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    import zipfile

    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    data = sorted(n.rsplit("/", 1)[-1] for n in names if n.startswith("openwork_sandbox/") and not n.endswith(".py"))
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    public = sorted(
        n
        for n in names
        if n
        in (
            "openwork_sandbox/__init__.py",
            "openwork_sandbox/__main__.py",
            "openwork_sandbox/cli.py",
            "openwork_sandbox/tasks.py",
        )
    )
    text = (
        "package data: "
        + " ".join(data)
        + "\npublic modules: "
        + " ".join(public)
        + "\n"
        + zipfile.ZipFile(wheel).read(entry).decode()
    )
    _matches("wheel.txt", text)
