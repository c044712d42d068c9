"""Creating a microVM: the SDK's pull-and-boot with its progress shown, and its failures as one line.

:func:`pull_and_boot` is one try of ``Sandbox.create_with_progress`` (``runtime.create`` wraps it in
``launch.booting`` and may boot once more); :func:`create_failure` and :func:`start_failure` turn
what the SDK raised into the line a user sees, with the way out.
"""

from __future__ import annotations

import time

from openwork_sandbox.core import console
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, WorkflowError
from openwork_sandbox.runtimes.base import LaunchSpec
from openwork_sandbox.runtimes.microsandbox.launch import probe_failure_message
from openwork_sandbox.runtimes.microsandbox.logs import boot_failure_message
from openwork_sandbox.runtimes.microsandbox.spec import (
    XATTR_MARK,
    create_kwargs,
    folders_without_xattrs,
    no_xattr_message,
)


async def pull_and_boot(name: str, spec: LaunchSpec):
    """Create the sandbox ``name`` for ``spec`` (replacing one of that name): the pull's progress as a
    bar (a line now and then off a TTY), one line with its size and time, then the boot. Returns the
    running ``Sandbox`` (not detached); the SDK's errors pass unchanged."""
    from microsandbox import PullEventType, Sandbox

    session = Sandbox.create_with_progress(name, **create_kwargs(spec))
    layers: dict[int, int] = {}
    complete = False
    start = time.monotonic()
    with console.Progress(f"pulling {spec.image.rsplit('/', 1)[-1]}") as bar:
        async for ev in session.progress:
            if ev.event_type == PullEventType.RESOLVED and ev.total_download_bytes:
                bar.update(0, ev.total_download_bytes)
            elif ev.event_type == PullEventType.LAYER_DOWNLOAD_PROGRESS and ev.layer_index is not None:
                layers[ev.layer_index] = ev.downloaded_bytes or 0
                bar.update(sum(layers.values()))
            elif ev.event_type == PullEventType.COMPLETE:
                complete = True
                break
    if layers:
        console.info(
            f"pulled {spec.image} ({console.human_bytes(sum(layers.values()))}) in {time.monotonic() - start:.1f}s"
        )
    if complete:
        console.info(f"booting microVM {name} ...")
    return await session.result()


def create_failure(name: str, spec: LaunchSpec, exc: Exception) -> WorkflowError:
    """The one-line WorkflowError for an SDK error ``exc`` of creating ``name``: a pull failure with
    its way out (a missing image, the registry's CA or login); a folder without extended attributes
    (exit 2); msb missing the launch probe; a microVM that could not boot (with its log and the
    Docker runtime); else the SDK's words."""
    from microsandbox import ImageNotFoundError, ImagePullFailedError

    text = str(exc)
    if isinstance(exc, (ImagePullFailedError, ImageNotFoundError)):
        return WorkflowError(
            f"microsandbox could not pull {spec.image}: {exc}; push it first (invoke push-image) "
            f"and check the registry answers (invoke doctor)"
        )
    if text.startswith(("image error", "registry error")):
        from openwork_sandbox.config import ImageRef
        from openwork_sandbox.runtimes.microsandbox.pull import pull_failure_hint

        return WorkflowError(
            f"microsandbox could not pull {spec.image}: {text}; "
            f"{pull_failure_hint(ImageRef.parse(spec.image).registry_host, text)}"
        )
    if XATTR_MARK in text:  # checked before the boot; a folder may have changed since
        binds, home = folders_without_xattrs(spec)
        if binds or home:
            return WorkflowError(no_xattr_message(binds, home), exit_code=EXIT_BAD_SETTINGS)
    return WorkflowError(
        probe_failure_message(f"create {name}", text)
        or boot_failure_message(name, text)
        or f"microsandbox could not create {name}: {text}"
    )


def start_failure(name: str, exc: Exception) -> WorkflowError:
    """The one-line WorkflowError for an SDK error ``exc`` of booting the existing sandbox ``name``:
    msb missing the launch probe, a microVM that could not boot, else the SDK's words."""
    return WorkflowError(
        probe_failure_message(f"start {name}", exc)
        or boot_failure_message(name, str(exc))
        or f"microsandbox could not start {name}: {exc}"
    )
