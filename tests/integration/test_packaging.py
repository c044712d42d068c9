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
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "openwork_sandbox"


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENWORK", "PYTHONPATH", "GITHUB_"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(wheel path, venv folder)``: the wheel built from this checkout, installed into a new venv."""
    work = tmp_path_factory.mktemp("wheel")
    wheels = work / "dist"
    # build from a copy: setuptools leaves build/ and *.egg-info behind, and a stale build/ would
    # put modules into the wheel that the checkout no longer has
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".state", "build", "dist", "*.egg-info",
                                                                 "__pycache__", ".pytest_cache", "reports"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
                          capture_output=True, text=True, timeout=600, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = wheels.glob("openwork_sandbox-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    _see_these_packages(venv)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                           "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, timeout=300)
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
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    Path(own, "zz-outer-site-packages.pth").write_text("".join(f"{f}\n" for f in _site_folders()))


@pytest.fixture(scope="module")
def installed_with_deps(installed, tmp_path_factory):
    """``(wheel path, venv folder)``: the same wheel in a venv that sees no other packages, installed
    by pip *with* its declared dependencies (from the index pip is configured with)."""
    wheel, _ = installed
    venv = tmp_path_factory.mktemp("isolated") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_NO_DEPS", "PIP_NO_INDEX")}
    proc = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = subprocess.run([python, "-m", "pip", "check"], env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    return wheel, venv


def test_the_isolated_venv_got_every_declared_dependency_from_pip(installed_with_deps):
    """Every requirement in the wheel's own metadata is installed in the venv itself (not seen
    through another Python's site-packages), at a version the requirement allows."""
    wheel, venv = installed_with_deps
    metadata = zipfile.ZipFile(wheel).read(next(n for n in zipfile.ZipFile(wheel).namelist()
                                                if n.endswith(".dist-info/METADATA"))).decode()
    declared = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower() for r in declared} >= {
        "invoke", "microsandbox", "requests", "python-dotenv", "packaging"}
    script = ("import json, sys, importlib.metadata as md\n"
              "from packaging.requirements import Requirement\n"
              "out = {}\n"
              "for text in json.loads(sys.argv[1]):\n"
              "    req = Requirement(text)\n"
              "    dist = md.distribution(req.name)\n"
              "    out[req.name] = [dist.version, req.specifier.contains(dist.version, prereleases=True),"
              " str(dist.locate_file(''))]\n"
              "print(json.dumps(out))\n")
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", script, json.dumps(declared)], env=_clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name, (version, allowed, where) in json.loads(proc.stdout).items():
        assert allowed, f"{name} {version} does not satisfy the wheel's requirement"
        assert Path(where).resolve().is_relative_to(venv.resolve()), f"{name} comes from {where}, not the venv"


def test_the_wheel_holds_every_module_and_the_image_files(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    expected |= {f"openwork_sandbox/image/context/{name}" for name in
                 ("Dockerfile", "microsandbox-entrypoint.sh", "opencode-gate", "opencode-gate.js",
                  "openwork-server-gate", "openwork-supervise")}
    assert "openwork_sandbox/runtimes/__init__.py" in expected  # the subpackage the old wheel lost
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "openwork-sandbox = openwork_sandbox.cli:main" in entry_points


def test_console_program_lists_versions_and_runs_doctor_from_another_folder(installed_with_deps, tmp_path):
    _, venv = installed_with_deps
    program = str(venv / "bin" / "openwork-sandbox")
    env = _clean_env()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import openwork_sandbox; print(openwork_sandbox.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip().startswith(str(venv)), where.stdout  # the wheel, not this checkout

    listing = subprocess.run([program, "--list"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    for name in ("build-image", "push-image", "up", "down", "status", "logs", "reset", "smoke", "doctor", "backup",
                 "restore"):
        assert re.search(rf"^\s+{re.escape(name)}\s", listing.stdout, re.M), listing.stdout

    version = subprocess.run([program, "--version"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    written = re.search(r'__version__ = "([^"]+)"', (PACKAGE / "__init__.py").read_text()).group(1)
    assert version.returncode == 0 and written in version.stdout, version.stdout

    doctor = subprocess.run([program, "doctor", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert doctor.returncode in (0, 1), doctor.stderr
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    # settings and .state/ come from the folder it runs in, not from the installed package
    assert str(tmp_path / ".state") in checks["state folders"]["detail"], checks["state folders"]
    assert "Traceback" not in doctor.stderr


def test_console_program_reads_env_file_of_the_current_folder(installed, tmp_path):
    _, venv = installed
    (tmp_path / ".env").write_text("OPENWORK_MICROSANDBOX_PORT=ten\n")
    proc = subprocess.run([str(venv / "bin" / "openwork-sandbox"), "doctor"], cwd=tmp_path, env=_clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert 'OPENWORK_MICROSANDBOX_PORT="ten" (from .env:1)' in proc.stderr


def test_another_repository_adds_the_collection(installed, tmp_path):
    _, venv = installed
    (tmp_path / "tasks.py").write_text(
        "from invoke import Collection, task\n"
        "from openwork_sandbox.tasks import ns as sandbox\n\n"
        "@task\ndef hello(c):\n    'Say hello.'\n    print('hello')\n\n"
        "ns = Collection(hello)\n"
        "ns.add_collection(sandbox, name='sandbox')\n")
    python = str(venv / "bin" / "python")
    listing = subprocess.run([python, "-m", "invoke", "--list"], cwd=tmp_path, env=_clean_env(), capture_output=True,
                             text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert "sandbox.build-image" in listing.stdout and "sandbox.up" in listing.stdout and "hello" in listing.stdout
    doctor = subprocess.run([python, "-m", "invoke", "sandbox.doctor", "--json"], cwd=tmp_path, env=_clean_env(),
                            capture_output=True, text=True, timeout=120)
    assert doctor.returncode in (0, 1), doctor.stderr
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert str(tmp_path / ".state") in checks["state folders"]["detail"]


def test_this_repositorys_tasks_py_keeps_its_folder_as_project_root(tmp_path):
    """`invoke` from a subfolder of the checkout finds tasks.py upwards and uses the checkout's .state/."""
    env = _clean_env(PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "invoke", "doctor", "--json"], cwd=ROOT / "tests", env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert str(ROOT / ".state") in checks["state folders"]["detail"]
    assert str(ROOT / "tests" / ".state") not in checks["state folders"]["detail"]


@pytest.mark.docker
def test_the_installed_program_builds_the_image_from_its_package_data(installed, test_base_image, tmp_path):
    """build-image from the wheel: the Dockerfile and entrypoint come from site-packages, the git
    labels from the folder it runs in (no git here: revision "unknown")."""
    from conftest import REGISTRY, STACK_CACHE_DIR, STACK_REPO, STANDIN_SERVER

    _, venv = installed
    image = f"{REGISTRY}/{STACK_REPO}:wheel"
    env = _clean_env(OPENWORK_BASE_IMAGE=test_base_image, OPENWORK_SERVER_BIN=str(STANDIN_SERVER),
                     OPENWORK_CACHE_DIR=str(STACK_CACHE_DIR), OPENWORK_MICROSANDBOX_IMAGE=image,
                     SOURCE_DATE_EPOCH="1700000000")
    proc = subprocess.run([str(venv / "bin" / "openwork-sandbox"), "build-image", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout)
        assert result["revision"] == "unknown" and result["created"] == "2023-11-14T22:13:20Z"
        assert (tmp_path / ".state" / "image-context" / "Dockerfile").read_bytes() == \
            (PACKAGE / "image" / "Dockerfile").read_bytes()
        entrypoint = subprocess.run(["docker", "run", "--rm", "--entrypoint", "cat", result["image_id"],
                                     "/usr/local/bin/microsandbox-entrypoint.sh"], capture_output=True, timeout=120)
        assert entrypoint.stdout == (PACKAGE / "image" / "microsandbox-entrypoint.sh").read_bytes()
    finally:
        subprocess.run(["docker", "rmi", image], capture_output=True)
