"""The package as a user gets it: a wheel installed into a fresh venv, run from another folder.

Real parts: pip builds the wheel from this checkout. Two venvs get it:

- ``installed``: the wheel with ``--no-deps`` in a venv that sees the dependencies this Python
  already has, whether the suite runs on the system's Python (root, CI) or inside a venv (a venv
  made from a venv with ``--system-site-packages`` sees the *base* Python's packages, not the first
  venv's: :func:`_see_these_packages` adds this interpreter's site folders by a ``.pth`` file,
  after the venv's own, so the wheel installed there still comes first);
- ``installed_with_deps``: an isolated venv where pip installs the wheel *with* its declared
  dependencies, resolved from the package index pip is configured with, then ``pip check``.

Their ``openwork-sandbox`` program and importable collection run in a temporary folder.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.packaging import isolated_env
from tests.support.paths import ROOT

PACKAGE = ROOT / "openwork_sandbox"


def test_the_isolated_venv_got_every_declared_dependency_from_pip(installed_with_deps):
    """Every requirement in the wheel's own metadata is installed in the venv itself (not seen
    through another Python's site-packages), at a version the requirement allows."""
    wheel, venv = installed_with_deps
    metadata = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA")))
        .decode()
    )
    declared = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower() for r in declared} >= {
        "invoke",
        "microsandbox",
        "requests",
        "python-dotenv",
        "packaging",
    }
    script = (
        "import json, sys, importlib.metadata as md\n"
        "from packaging.requirements import Requirement\n"
        "out = {}\n"
        "for text in json.loads(sys.argv[1]):\n"
        "    req = Requirement(text)\n"
        "    dist = md.distribution(req.name)\n"
        "    out[req.name] = [dist.version, req.specifier.contains(dist.version, prereleases=True),"
        " str(dist.locate_file(''))]\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script, json.dumps(declared)],
        env=isolated_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for name, (version, allowed, where) in json.loads(proc.stdout).items():
        assert allowed, f"{name} {version} does not satisfy the wheel's requirement"
        assert Path(where).resolve().is_relative_to(venv.resolve()), f"{name} comes from {where}, not the venv"


def test_the_wheel_holds_every_module_and_the_image_files(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    expected |= {
        f"openwork_sandbox/image/context/{name}"
        for name in (
            "Dockerfile",
            "microsandbox-entrypoint.sh",
            "opencode-gate",
            "opencode-gate.js",
            "openwork-server-gate",
            "openwork-supervise",
        )
    }
    assert "openwork_sandbox/runtimes/__init__.py" in expected  # the subpackage the old wheel lost
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "openwork-sandbox = openwork_sandbox.cli:main" in entry_points


def test_console_program_lists_versions_and_runs_doctor_from_another_folder(installed_with_deps, tmp_path):
    _, venv = installed_with_deps
    program = str(venv / "bin" / "openwork-sandbox")
    env = isolated_env()
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import openwork_sandbox; print(openwork_sandbox.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.strip().startswith(str(venv)), where.stdout  # the wheel, not this checkout

    listing = subprocess.run([program, "--list"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    for name in (
        "build-image",
        "push-image",
        "up",
        "down",
        "status",
        "logs",
        "reset",
        "smoke",
        "doctor",
        "backup",
        "restore",
    ):
        assert re.search(rf"^\s+{re.escape(name)}\s", listing.stdout, re.M), listing.stdout

    version = subprocess.run([program, "--version"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    written = re.search(r'__version__ = "([^"]+)"', (PACKAGE / "__init__.py").read_text()).group(1)
    assert version.returncode == 0 and written in version.stdout, version.stdout

    doctor = subprocess.run(
        [program, "doctor", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert doctor.returncode in (0, 1), doctor.stderr
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    # settings and .state/ come from the folder it runs in, not from the installed package
    assert str(tmp_path / ".state") in checks["state folders"]["detail"], checks["state folders"]
    assert "Traceback" not in doctor.stderr


def test_console_program_reads_env_file_of_the_current_folder(installed, tmp_path):
    _, venv = installed
    (tmp_path / ".env").write_text("OPENWORK_MICROSANDBOX_PORT=ten\n")
    proc = subprocess.run(
        [str(venv / "bin" / "openwork-sandbox"), "doctor"],
        cwd=tmp_path,
        env=isolated_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert 'OPENWORK_MICROSANDBOX_PORT="ten" (from .env:1)' in proc.stderr


def test_another_repository_adds_the_collection(installed, tmp_path):
    _, venv = installed
    (tmp_path / "tasks.py").write_text(
        "from invoke import Collection, task\n"
        "from openwork_sandbox.tasks import ns as sandbox\n\n"
        "@task\ndef hello(c):\n    'Say hello.'\n    print('hello')\n\n"
        "ns = Collection(hello)\n"
        "ns.add_collection(sandbox, name='sandbox')\n"
    )
    python = str(venv / "bin" / "python")
    listing = subprocess.run(
        [python, "-m", "invoke", "--list"], cwd=tmp_path, env=isolated_env(), capture_output=True, text=True, timeout=60
    )
    assert listing.returncode == 0, listing.stderr
    assert "sandbox.build-image" in listing.stdout and "sandbox.up" in listing.stdout and "hello" in listing.stdout
    doctor = subprocess.run(
        [python, "-m", "invoke", "sandbox.doctor", "--json"],
        cwd=tmp_path,
        env=isolated_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert doctor.returncode in (0, 1), doctor.stderr
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert str(tmp_path / ".state") in checks["state folders"]["detail"]


def test_this_repositorys_tasks_py_keeps_its_folder_as_project_root(tmp_path):
    """`invoke` from a subfolder of the checkout finds tasks.py upwards and uses the checkout's .state/."""
    env = isolated_env(PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "doctor", "--json"],
        cwd=ROOT / "tests",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode in (0, 1), proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert str(ROOT / ".state") in checks["state folders"]["detail"]
    assert str(ROOT / "tests" / ".state") not in checks["state folders"]["detail"]
