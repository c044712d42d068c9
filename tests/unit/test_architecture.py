"""The layout is the architecture: import-linter holds the layers and forbids import circles (its
contracts in ``pyproject.toml``), every package has its row in ``docs/architecture.md``, the
package's docstring names every module, and no module of the package is longer than fits in a head."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import openwork_sandbox
from tests.support.paths import ROOT

PACKAGE = Path(openwork_sandbox.__file__).resolve().parent
MAX_LINES = 500


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    program = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    return subprocess.run([program, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_import_linter_keeps_every_contract():
    proc = _lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "broken" in proc.stdout and " 0 broken" in proc.stdout


def _lint_a_copy_with(tmp_path: Path, module: str, extra: str) -> str:
    """import-linter's verdict on a copy of the checkout's root packages where ``module`` (a path under
    ``openwork_sandbox/``) has ``extra`` appended; its output with import-linter's line wraps undone."""
    for root in ("openwork_sandbox", "harness"):
        shutil.copytree(ROOT / root, tmp_path / root, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "openwork_sandbox" / module
    target.write_text(target.read_text() + extra)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, '.'); "
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            "--no-cache",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0, proc.stdout[-3000:]
    return " ".join(proc.stdout.split())


def test_import_linter_names_an_upward_import(tmp_path):
    """The layers can fail: a copy of the package where ``core`` imports ``sandbox`` breaks them."""
    said = _lint_a_copy_with(
        tmp_path, "core/errors.py", "\n\ndef _upward():\n    from openwork_sandbox.sandbox import doctor\n"
    )
    assert "openwork_sandbox.core.errors -> openwork_sandbox.sandbox.doctor" in said


def test_import_linter_names_a_runtime_importing_the_other(tmp_path):
    """The runtimes' contracts can fail: a copy where the microsandbox runtime imports the Docker one."""
    said = _lint_a_copy_with(
        tmp_path,
        "runtimes/microsandbox/spec.py",
        "\n\ndef _sideways():\n    from openwork_sandbox.runtimes import docker\n",
    )
    assert "never import each other BROKEN" in said
    assert "openwork_sandbox.runtimes.microsandbox.spec -> openwork_sandbox.runtimes.docker" in said


def test_import_linter_names_a_module_that_imports_subprocess(tmp_path):
    """One place runs programs: a copy of the package where ``image.oci`` imports ``subprocess`` breaks it."""
    said = _lint_a_copy_with(tmp_path, "image/oci.py", "\n\ndef _around():\n    import subprocess\n")
    assert "openwork_sandbox.image.oci -> subprocess" in said


def test_every_package_has_its_row_in_the_architecture_page():
    page = (ROOT / "docs" / "architecture.md").read_text()
    rows = set(re.findall(r"^\| `([a-z_./]+)/?` \|", page, re.M))
    packages = {str(p.parent.relative_to(PACKAGE)) for p in PACKAGE.rglob("__init__.py")} - {"."}
    assert packages <= rows, f"packages without a row in docs/architecture.md: {sorted(packages - rows)}"


@pytest.mark.parametrize("root", ["openwork_sandbox", "harness"])
def test_no_module_is_longer_than_fits_in_a_head(root):
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / root).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_package_docstring_names_every_package_and_module_there_is():
    """``openwork_sandbox/__init__.py``'s map: one item per package, naming each of its modules and no other."""
    items = {
        m.group(1): m.group(0) for m in re.finditer(r"^- ``([a-z_]+)``.*(?:\n  .*)*", openwork_sandbox.__doc__, re.M)
    }
    packages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert sorted(items) == packages
    for package in packages:
        folder = PACKAGE / package
        there = {p.stem for p in folder.glob("*.py")} | {p.parent.name for p in folder.glob("*/__init__.py")}
        there |= {p.stem for p in folder.glob("*/*.py")}
        there -= {"__init__"}
        named = set(re.findall(r"``([a-z_]+)``", items[package])) - {package}
        assert there - named == set(), f"{package}: modules the map does not name"
        assert named - there <= set(packages), f"{package}: names the map has but the package has not"


def _ruff(*args: str) -> subprocess.CompletedProcess:
    program = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    return subprocess.run([program, *args, "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_finds_nothing_to_lint():
    proc = _ruff("check")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_ruff_finds_nothing_to_format():
    proc = _ruff("format", "--check")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
