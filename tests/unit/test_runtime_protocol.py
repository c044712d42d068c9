"""Every runtime keeps the one interface: each public method of ``runtimes.base.Runtime`` is there in
``DockerRuntime``, ``MicrosandboxRuntime`` and the test double ``FakeRuntime``, with the same
signature; the fake implements every one of them itself. No engine, no SDK call."""

from __future__ import annotations

import inspect

import pytest

from openwork_sandbox.runtimes.base import Runtime
from openwork_sandbox.runtimes.docker import DockerRuntime
from openwork_sandbox.runtimes.microsandbox.runtime import MicrosandboxRuntime
from openwork_sandbox.runtimes.swarm.runtime import SwarmRuntime
from tests.support.fake_runtime import FakeRuntime

# the interface as base.py declares it: a new method there must be added here, and to every runtime
INTERFACE = {
    "status",
    "create",
    "start",
    "restart_server",
    "machine_fault",
    "memory_kills",
    "server_port",
    "keep_running",
    "network_support",
    "stop",
    "remove",
    "is_alive",
    "log_tail",
    "log_hint",
    "stream_logs",
    "exec",
    "created_home",
    "open_for_copy",
    "copy_out",
    "digest",
    "platform",
    "describe",
    "place",
    "port_is_free",
    "remove_state",
    "state_elsewhere",
}


def public_methods(cls) -> dict:
    return {name: fn for name, fn in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


def interface_problems(impl) -> list[str]:
    """What ``impl`` lacks or declares otherwise than ``Runtime`` (empty when it keeps the interface)."""
    problems = []
    for name, declared in public_methods(Runtime).items():
        method = getattr(impl, name, None)
        if method is None:
            problems.append(f"{name}: missing")
            continue
        if getattr(method, "__isabstractmethod__", False):
            problems.append(f"{name}: not implemented")
        if inspect.signature(method) != inspect.signature(declared):
            problems.append(f"{name}{inspect.signature(method)} is not {name}{inspect.signature(declared)}")
    return problems


def test_the_interface_is_what_base_declares():
    assert set(public_methods(Runtime)) == INTERFACE


@pytest.mark.parametrize("impl", [DockerRuntime, MicrosandboxRuntime, SwarmRuntime, FakeRuntime])
def test_a_runtime_keeps_every_method_of_the_interface_with_its_signature(impl):
    assert interface_problems(impl) == []
    assert not inspect.isabstract(impl)


def test_the_fake_implements_the_whole_interface_itself():
    inherited = sorted(name for name in INTERFACE if getattr(FakeRuntime, name) is getattr(Runtime, name))
    assert inherited == []


def test_a_runtime_with_another_signature_or_a_missing_method_is_named():
    class Drifted(FakeRuntime):
        def stop(self, force: bool = False) -> bool:  # one parameter more than the interface
            return super().stop()

    class Partial(Runtime):
        kind = "partial"

        def status(self):
            raise NotImplementedError

    assert interface_problems(Drifted) == ["stop(self, force: 'bool' = False) -> 'bool' is not stop(self) -> 'bool'"]
    partial = interface_problems(Partial)
    assert "create: not implemented" in partial and "status(self) is not status(self) -> 'RuntimeStatus'" in partial
