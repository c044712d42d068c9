"""The server job: the image's own command, run in the microVM as a detached SDK job.

Booting a microVM does not run the image's ENTRYPOINT+CMD, and jobs do not survive a stop, so every
boot launches it (:func:`launch_server`). Its id is recorded as a shortcut; :func:`server_job`
finds it again without the record. :func:`stop_job` stops it as ``docker stop`` stops a container.
All are coroutines over the SDK's handles; the SDK is imported inside them.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes.base import LaunchSpec
from openwork_sandbox.runtimes.microsandbox.spec import guest_env

LIVE_JOB = ("starting", "running")  # the SDK's job states of a server that runs
JOB_STOP_GRACE = 15.0  # seconds between SIGTERM and SIGKILL for the server job


def image_of(handle) -> str | None:
    """The image reference a sandbox was created from (its config's OCI reference), or None."""
    config = handle.config() or {}
    return ((config.get("image") or {}).get("Oci") or {}).get("reference")


async def server_argv(image: str) -> tuple[list[str], str | None]:
    """(ENTRYPOINT + CMD, WORKDIR or None) of ``image`` as microsandbox's cache has it. Raises
    WorkflowError when the image has no command; the SDK's errors pass unchanged."""
    from microsandbox import Image

    detail = await Image.inspect(image)
    config = detail.config
    argv = list((config.entrypoint or []) if config else []) + list((config.cmd or []) if config else [])
    if not argv:
        raise WorkflowError(
            f"{image} has no ENTRYPOINT or CMD to start the server with: rebuild it (invoke build-image)"
        )
    return argv, (config.working_dir or None) if config else None


async def launch_server(sb, spec: LaunchSpec) -> str:
    """Start ``spec.image``'s command as a detached job in the running ``sb`` (a ``Sandbox``, before
    its ``detach()``, which consumes it), with the microVM's environment; returns the job's id."""
    argv, workdir = await server_argv(spec.image)
    job = await sb.exec_detached(argv[0], argv[1:], env=guest_env(spec), cwd=workdir)
    return job.id


async def server_job(handle, recorded_id: str | None):
    """The server's ``Job`` in the sandbox of ``handle``: the one with ``recorded_id`` if the SDK still
    has it, else the newest (live first) job the SDK lists that runs the image's command, so a lost or
    stale record does not lose the server. None when there is none or the SDK cannot say."""
    from microsandbox import MicrosandboxError

    if recorded_id:
        try:
            return await handle.get_job(recorded_id)
        except MicrosandboxError:
            pass  # gone with its sandbox, or the record is stale: ask the SDK
    image = image_of(handle)
    if not image:
        return None
    try:
        argv, _ = await server_argv(image)
        page = await handle.list_jobs(all=True, limit=100)
    except (MicrosandboxError, WorkflowError):
        return None
    ours = [j for j in page.items if list(j.command[:1]) == argv[:1]]
    if not ours:
        return None
    newest = max(ours, key=lambda j: (j.state in LIVE_JOB, j.created_at))
    return await handle.get_job(newest.id)


async def job_info(handle, recorded_id: str | None) -> Any:
    """The SDK's inspection of :func:`server_job` (state, exit code, start time), or None when there
    is no such job or the SDK cannot say."""
    from microsandbox import MicrosandboxError

    try:
        job = await server_job(handle, recorded_id)
        return await job.inspect() if job is not None else None
    except MicrosandboxError:
        return None


async def stop_job(job, grace: float = JOB_STOP_GRACE) -> None:
    """Stop ``job`` as ``docker stop`` stops a container: SIGTERM, then SIGKILL if it still runs after
    ``grace`` seconds. SIGTERM first lets the orchestrator stop opencode and openwork-server, which a
    SIGKILL of the job alone leaves running. None, or a job already ended or gone: nothing. Never
    raises the SDK's errors."""
    from microsandbox import MicrosandboxError

    if job is None:
        return
    try:
        if (await job.inspect()).state not in LIVE_JOB:
            return
        await job.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            if (await job.inspect()).state not in LIVE_JOB:
                return
        await job.kill()
    except MicrosandboxError:
        pass  # already gone
