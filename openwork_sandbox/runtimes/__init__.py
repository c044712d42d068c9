"""Runtimes that boot the image: microsandbox (a microVM), Docker and Docker Swarm, behind one interface.

``runtime_for(kind, settings)`` builds one; ``choice.decide_runtime`` (over the host facts that
``probe.host_facts`` reads) is the one rule for which one a sandbox gets (``up``, ``doctor``).
"""

from __future__ import annotations

from openwork_sandbox.config import Settings
from openwork_sandbox.runtimes.base import ABSENT, RUNNING, STOPPED, LaunchSpec, Runtime, RuntimeStatus

__all__ = ["ABSENT", "RUNNING", "STOPPED", "LaunchSpec", "Runtime", "RuntimeStatus", "runtime_for"]


def runtime_for(kind: str, settings: Settings) -> Runtime:
    """The runtime ``kind`` (``docker``, ``microsandbox`` or ``swarm``) for the sandbox of ``settings`` (its name
    and state folder); ValueError for another kind. The implementation is imported only here, so
    importing this package loads neither runtime nor its SDK."""
    if kind == "docker":
        from openwork_sandbox.runtimes.docker import DockerRuntime

        return DockerRuntime(settings.name, settings.sandbox_state_dir)
    if kind == "microsandbox":
        from openwork_sandbox.runtimes.microsandbox.runtime import MicrosandboxRuntime

        return MicrosandboxRuntime(settings.name, settings.sandbox_state_dir)
    if kind == "swarm":
        from openwork_sandbox.runtimes.swarm.runtime import SwarmRuntime

        return SwarmRuntime(settings.name, settings.sandbox_state_dir)
    raise ValueError(f"unknown runtime {kind!r}")
