"""The suite's root: the shared fixtures come from the plugins in ``tests/support``, and each test
gets the marker of the folder it is in (``unit``, ``integration``, ``docker``, ``microvm``, ``swarm``), so
``pytest -m unit`` runs the unit tests alone and ``-m "not docker"`` leaves out the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.support.plugin",
    "tests.support.packaging",
    "tests.support.registries",
    "tests.support.fake_runtime",
    "tests.support.swarm_lab",
]

TESTS = Path(__file__).resolve().parent
KINDS = ("unit", "integration", "docker", "microvm", "swarm")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.resolve().relative_to(TESTS).parts
        if parts and parts[0] in KINDS:
            item.add_marker(getattr(pytest.mark, parts[0]))
