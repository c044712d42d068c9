"""Helpers of the tests that use the real microsandbox SDK and msb: whether microVMs boot here (and
the skip markers that follow), a sandbox's existence and best-effort removal, the deadlines and
vCPUs of a test that boots a microVM."""

from __future__ import annotations

import asyncio
import os

import pytest

from openwork_sandbox.runtimes.probe import microvm_support

VM_OK, VM_WHY = microvm_support()
needs_no_microvm = pytest.mark.skipif(VM_OK, reason="microVMs boot on this host, so there is no boot failure to report")
needs_microvm = pytest.mark.skipif(not VM_OK, reason=f"microVMs cannot boot on this host: {VM_WHY}")


def sandbox_exists(name: str) -> bool:
    from microsandbox import Sandbox, SandboxNotFoundError

    async def go() -> bool:
        try:
            await Sandbox.get(name)
            return True
        except SandboxNotFoundError:
            return False

    return asyncio.run(go())


def remove_sandbox(name: str) -> None:
    from openwork_sandbox.runtimes.microsandbox.runtime import MicrosandboxRuntime

    try:
        MicrosandboxRuntime(name, __import__("pathlib").Path("/nonexistent")).remove()
    except Exception:
        pass


def runtime_log_lines(settings):
    from openwork_sandbox.sandbox.endpoint import server_log_tail

    return server_log_tail(settings, 5)[0]


def slow_host_settings() -> dict:
    """The deadlines and vCPUs of the tests that boot a microVM: 300 s, the default request timeout
    and 2 vCPUs, unless the environment says otherwise (in the emulated host, scripts/microvm-host
    gives a 900 s deadline, a 300 s request timeout and one vCPU; scripts/microvm-e2e its own deadline)."""
    settings = {
        "OPENWORK_HEALTH_TIMEOUT": os.environ.get("OPENWORK_HEALTH_TIMEOUT", "300"),
        "OPENWORK_MICROSANDBOX_CPUS": os.environ.get("OPENWORK_MICROSANDBOX_CPUS", "2"),
    }
    if os.environ.get("OPENWORK_REQUEST_TIMEOUT"):
        settings["OPENWORK_REQUEST_TIMEOUT"] = os.environ["OPENWORK_REQUEST_TIMEOUT"]
    return settings
