"""The harness package (``harness/``: the emulated host, the microVM scenario, the benchmarks) outside
the wheel: every module imports, each fits in a head, none edits the module path, the wheel leaves it
out, and every ``scripts/`` entry point finds it from any folder, back in that folder."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pkgutil
import subprocess
from pathlib import Path

import pytest

import harness
from harness.common import CALLER_CWD_VAR, back_to_caller_cwd
from tests.support.paths import ROOT

HARNESS = ROOT / "harness"
MODULES = sorted(m.name for m in pkgutil.walk_packages(harness.__path__, "harness."))
# each scripts/ entry point of the harness and the first line its --help prints
HELP_FIRST_LINES = {
    "microvm-host": "An emulated host where real microVMs boot: for laptops and runners without nested virtualization.",
    "microvm-e2e": "usage: microvm-e2e [-h] [--avx] [--only STEP,STEP]",
    "microvm-image": "usage: microvm-image [-h] [--real] [--ref REF] [--force]",
    "bench-concurrent": "usage: bench-concurrent [-h] [--image IMAGE] [--counts COUNTS]",
    "bench-lifecycle": "usage: bench-lifecycle [-h] [--image IMAGE] [--runtime {docker,microsandbox}]",
    "bench-microvm": "usage: bench-microvm [-h] [--rounds ROUNDS] [--runtimes RUNTIMES] [--inside]",
    "bench-snapshot": "usage: bench-snapshot [-h] [--rounds ROUNDS] [--image IMAGE] [--full]",
    "bench-smoke": "usage: bench-smoke [-h] [--image IMAGE] [--runtime RUNTIME] [--rounds ROUNDS]",
    "bench-start": "usage: bench-start [-h] [--image IMAGE] [--pairs PAIRS]",
    "bench-supervise": "usage: bench-supervise [-h] --image IMAGE [--rounds ROUNDS]",
    "bench-swarm": "usage: bench-swarm [-h] [--nodes NODES] [--per-node PER_NODE] [--cpus CPUS]",
}
ENTRY_POINTS = sorted([*HELP_FIRST_LINES, "bench-image", "bench-platforms"])  # these two have no --help: they run


@pytest.mark.parametrize("module", MODULES)
def test_every_module_of_the_harness_imports(module):
    importlib.import_module(module)


def test_every_import_inside_a_function_of_the_harness_resolves():
    """The harness imports much of the package inside functions (only when a step runs): each such
    ``from openwork_sandbox... import NAME`` names a module or attribute that exists today."""
    missing = []
    for path in sorted(HARNESS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                "openwork_sandbox",
                "harness",
            ):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if (
                        not hasattr(module, alias.name)
                        and importlib.util.find_spec(f"{node.module}.{alias.name}") is None
                    ):
                        missing.append(f"{path.relative_to(ROOT)}: from {node.module} import {alias.name}")
    assert not missing


def test_neither_the_harness_nor_its_entry_points_edit_the_module_path():
    files = [*HARNESS.rglob("*.py"), *(ROOT / "scripts" / name for name in ENTRY_POINTS)]
    edits = [
        str(p.relative_to(ROOT))
        for p in files
        if any(word in p.read_text() for word in ("sys.path", "SourceFileLoader"))
    ]
    assert not edits


def test_the_wheel_leaves_the_harness_out():
    import tomllib
    from setuptools import find_packages

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(where=str(ROOT), include=include)
    assert "openwork_sandbox" in packages
    assert not [p for p in packages if p.split(".")[0] == "harness"]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_each_entry_point_stays_a_thin_executable_python_script(name):
    path = ROOT / "scripts" / name
    text = path.read_text()
    assert os.access(path, os.X_OK)
    assert text.startswith("#!/usr/bin/env python3\n")
    module = text.split('"-m", "', 1)[1].split('"', 1)[0]
    assert module in MODULES or f"{module}.__main__" in MODULES
    assert len(text.splitlines()) <= 12


@pytest.mark.parametrize("name", sorted(HELP_FIRST_LINES))
def test_each_entry_point_answers_help_from_another_folder(name, tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "COLUMNS": "80"}  # argparse wraps at it
    proc = subprocess.run(
        [str(ROOT / "scripts" / name), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == HELP_FIRST_LINES[name]


def test_an_entry_point_runs_in_the_callers_folder(tmp_path):
    """A relative OPENWORK_ENV_FILE is read from the folder the entry point was called from: its bad
    port is the one problem bench-smoke reports (exit 2, before anything is booted)."""
    (tmp_path / "mine.env").write_text("OPENWORK_MICROSANDBOX_PORT=notaport\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENWORK", "PYTHONPATH"))}
    proc = subprocess.run(
        [str(ROOT / "scripts" / "bench-smoke")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**env, "OPENWORK_ENV_FILE": "mine.env"},
        timeout=120,
    )
    assert proc.returncode == 2
    assert 'OPENWORK_MICROSANDBOX_PORT="notaport" (from mine.env:1)' in proc.stderr


def test_back_to_caller_cwd_changes_back_and_tells_no_child(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv(CALLER_CWD_VAR, str(tmp_path))
    back_to_caller_cwd()
    assert Path.cwd() == tmp_path
    assert CALLER_CWD_VAR not in os.environ
    back_to_caller_cwd()  # without an entry point: stays
    assert Path.cwd() == tmp_path
