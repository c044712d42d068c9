"""The package's layers: no import circle, no import from a layer above, no big module without a reason.

The layers are written in ONE place, the table under "## Layers" in ``docs/architecture.md``; this
test reads that table and every module's imports (the ``ast``: imports inside functions and under
``TYPE_CHECKING`` count, relative ones are resolved, ``from openwork_sandbox import x`` is an import
of the submodule ``x`` when there is one) and holds the one to the other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "openwork_sandbox"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
ROOT_MODULE = "__init__"  # the package's own __init__.py, as the table names it
BIG = 400  # lines: a module longer than this states at its top why it is one module for now
BIG_REASON = "# One module for now"  # how that statement starts (a comment among the first lines)
MODULE = "(the module)"  # what `import x` / `from . import x` takes: the module itself, not a name in it
PACKAGE_INIT = "(its __init__, run first)"  # what importing runtimes.base from outside runtimes/ also imports


# --- the checker -----------------------------------------------------------------------------------

def read_layers(markdown: str) -> dict[str, tuple[int, str]]:
    """The table under ``## Layers``: module -> (layer number, layer name), from the ground up."""
    section = markdown.split("\n## Layers", 1)[1].split("\n## ", 1)[0]
    layers: dict[str, tuple[int, str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].isdigit():
            continue
        for module in re.findall(r"`([^`]+)`", cells[2]):
            assert module not in layers, f"{module} is in two layers of the table in {ARCHITECTURE.name}"
            layers[module] = (int(cells[0]), cells[1])
    return layers


def module_names(package_dir: Path) -> dict[str, Path]:
    """Every module of the package by its name inside it (``runtimes.docker``; ``runtimes`` is the
    subpackage's ``__init__``; the package's own ``__init__`` is :data:`ROOT_MODULE`)."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: set[str], package: str = PACKAGE) -> dict[str, list[str]]:
    """What module ``name`` imports from its own package: imported module -> the names it takes."""
    is_package = path.name == "__init__.py"
    here = [] if name == ROOT_MODULE else name.split(".")
    here_package = here if is_package else here[:-1]
    found: dict[str, list[str]] = {}

    def internal(dotted: str) -> str | None:  # "openwork_sandbox.x.y" -> "x.y"; None outside the package
        if dotted == package:
            return ROOT_MODULE
        if dotted.startswith(package + "."):
            return dotted[len(package) + 1:]
        return None

    def add(target: str, what: str) -> None:
        if target == name:
            return
        found.setdefault(target, []).append(what)
        parts = target.split(".")
        for n in range(1, len(parts)):  # importing runtimes.base runs runtimes/__init__.py first
            parent = ".".join(parts[:n])
            if parent in modules and name != parent and not name.startswith(parent + "."):
                found.setdefault(parent, []).append(PACKAGE_INIT)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = internal(alias.name)
                if target is not None:
                    add(target, MODULE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here_package[:len(here_package) - (node.level - 1)] if node.level > 1 else here_package
                if node.level - 1 > len(here_package):
                    continue  # above the package: not ours
                base = base + (node.module.split(".") if node.module else [])
                target = ".".join(base) or ROOT_MODULE
            else:
                target = internal(node.module or "")
                if target is None:
                    continue
            for alias in node.names:
                sub = alias.name if target == ROOT_MODULE else f"{target}.{alias.name}"
                if sub in modules:  # `from . import console`: an import of the submodule
                    add(sub, MODULE)
                else:
                    add(target, alias.name)
    return found


def import_graph(package_dir: Path, package: str = PACKAGE) -> dict[str, dict[str, list[str]]]:
    modules = module_names(package_dir)
    return {name: imports_of(name, path, set(modules), package) for name, path in modules.items()}


def what(target: str, names: list[str]) -> str:
    """``ABSENT, RUNNING from runtimes`` / ``the module gha`` / ``the module persist and ABSENT from it``."""
    if set(names) == {PACKAGE_INIT}:
        return f"the package {target} (its __init__ runs before any of its modules)"
    taken = sorted(set(names) - {MODULE, PACKAGE_INIT})
    if not taken:
        return f"the module {target}"
    return f"{', '.join(taken)} from {target}" if MODULE not in names else \
        f"the module {target} and {', '.join(taken)} from it"


def layer_problems(graph: dict[str, dict[str, list[str]]], layers: dict[str, tuple[int, str]]) -> list[str]:
    """Modules the table does not place (or places but do not exist), and every upward import."""
    problems = [f"{m} is in no layer: add it to the table under '## Layers' in docs/architecture.md"
                for m in sorted(set(graph) - set(layers))]
    problems += [f"{m} is in the layers table but there is no such module" for m in sorted(set(layers) - set(graph))]
    for module, targets in sorted(graph.items()):
        for target, names in sorted(targets.items()):
            if module in layers and target in layers and layers[target][0] > layers[module][0]:
                problems.append(f"{module} (layer {layers[module][0]}, {layers[module][1]}) imports "
                                f"{what(target, names)}, a layer above "
                                f"(layer {layers[target][0]}, {layers[target][1]})")
    return problems


def circles(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    """Each import circle once, as ``a imports X from b; b imports Y from a``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for component in components:
        members = set(component)
        edges = [f"{a} imports {what(b, names)}"
                 for a in component for b, names in sorted(graph[a].items()) if b in members]
        out.append("import circle among " + ", ".join(component) + ": " + "; ".join(edges))
    return out


def big_without_reason(package_dir: Path) -> list[str]:
    out = []
    for name, path in module_names(package_dir).items():
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > BIG and not any(line.startswith(BIG_REASON) for line in lines[:5]):
            out.append(f"{name} has {len(lines)} lines: split it, or say at its top why it is one module "
                       f"(a comment starting '{BIG_REASON}' in its first 5 lines)")
    return out


# --- the package -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph():
    return import_graph(ROOT / PACKAGE)


@pytest.fixture(scope="module")
def layers():
    return read_layers(ARCHITECTURE.read_text(encoding="utf-8"))


def test_every_module_is_in_one_layer_and_imports_only_its_own_layer_or_below(graph, layers):
    assert layer_problems(graph, layers) == []


def test_no_import_circle(graph):
    assert circles(graph) == []


def test_a_module_over_400_lines_says_why_at_its_top():
    assert big_without_reason(ROOT / PACKAGE) == []


def test_the_layers_go_from_output_at_the_ground_to_tasks_at_the_top(layers):
    # the order the house rules name (COMMON rules, issue 18): a reordering of the table fails here
    assert [layers[m][0] for m in ("errors", "console", "files", "settings", "state", "http", "registry",
                                   "runtimes.docker", "lifecycle", "smoke", "tasks")] == \
        [1, 1, 1, 2, 3, 3, 3, 4, 5, 5, 6]


# --- the checker on a package made for it ---------------------------------------------------------

def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


SAMPLE_LAYERS = """# x

## Layers

| layer | name | modules |
| --- | --- | --- |
| 1 | ground | `__init__`, `low`, `other` |
| 2 | middle | `mid`, `sub`, `sub.inner` |

## Next
| 3 | not a layer | `ignored` |
"""


def test_the_checker_reads_the_table_and_only_the_table():
    assert read_layers(SAMPLE_LAYERS) == {"__init__": (1, "ground"), "low": (1, "ground"), "other": (1, "ground"),
                                          "mid": (2, "middle"), "sub": (2, "middle"), "sub.inner": (2, "middle")}


def test_the_checker_names_an_upward_import_inside_a_function(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "low.py": "def f():\n    from .mid import helper, other_helper\n",
        "other.py": "",
        "mid.py": "from . import low\nfrom .low import f\ndef helper(): ...\ndef other_helper(): ...\n",
        "sub/__init__.py": "",
        "sub/inner.py": "from ..low import f\n",
    })
    graph = import_graph(root, package="pkg")
    assert graph["low"] == {"mid": ["helper", "other_helper"]}
    assert graph["sub.inner"] == {"low": ["f"]}
    assert graph["mid"] == {"low": [MODULE, "f"]} and what("low", graph["mid"]["low"]) == "the module low and f from it"
    assert layer_problems(graph, read_layers(SAMPLE_LAYERS)) == [
        "low (layer 1, ground) imports helper, other_helper from mid, a layer above (layer 2, middle)"]


def test_the_checker_names_a_circle_through_absolute_package_and_type_checking_imports(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "low.py": "from pkg import other\n",
        "other.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.low import Thing\n",
        "mid.py": "import pkg.sub.inner\n",
        "sub/__init__.py": "from .inner import x\n",
        "sub/inner.py": "x = 1\n",
    })
    graph = import_graph(root, package="pkg")
    assert graph["mid"] == {"sub.inner": [MODULE], "sub": [PACKAGE_INIT]}
    assert graph["sub"] == {"sub.inner": ["x"]}
    assert circles(graph) == ["import circle among low, other: low imports the module other; "
                              "other imports Thing from low"]


def test_the_checker_counts_a_package_init_that_runs_before_its_module(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "low.py": "from .sub.inner import x\n",  # runs sub/__init__.py, which is a layer above
        "other.py": "",
        "mid.py": "",
        "sub/__init__.py": "from . import inner\n",
        "sub/inner.py": "x = 1\n",
    })
    table = SAMPLE_LAYERS.replace("| 2 | middle | `mid`, `sub`, `sub.inner` |", "| 2 | middle | `mid`, `sub` |") \
        .replace("`__init__`, `low`, `other`", "`__init__`, `low`, `other`, `sub.inner`")
    graph = import_graph(root, package="pkg")
    assert graph["sub"] == {"sub.inner": [MODULE]}  # a package's own modules: no edge back to it
    assert layer_problems(graph, read_layers(table)) == [
        "low (layer 1, ground) imports the package sub (its __init__ runs before any of its modules), "
        "a layer above (layer 2, middle)"]


def test_the_checker_finds_a_big_module_without_a_reason(tmp_path):
    filler = "x = 1\n" * (BIG + 1)
    root = _package(tmp_path, {"__init__.py": "", "big.py": filler,
                               "big_ok.py": f"{BIG_REASON}: it holds one table.\n" + filler})
    assert [p.split(" ")[0] for p in big_without_reason(root)] == ["big"]
