"""Which images the microsandbox runtime boots: never a single manifest of another architecture.

microsandbox picks the host's entry of an image index itself; a single manifest it pulls and boots
as it is, so one of another architecture would fail only after the pull, in the guest. So before a
microVM is created, :func:`check` reads the platform of the one manifest the image names
(``LaunchSpec.image_platform``) and refuses another in one line (:func:`refusal`).
"""

from __future__ import annotations

from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes.base import LaunchSpec


def refusal(image: str, found: str | None, host: str) -> str | None:
    """The one line that refuses ``image``, one manifest of platform ``found`` (None: an index, or
    not said), on a ``host`` (``os/arch``) machine; None when it may boot."""
    if found is None or found == host:
        return None
    return (
        f"OPENWORK_MICROSANDBOX_IMAGE={image} is one image for {found} and this host is {host}, so a microVM "
        f"cannot run it; push an index of both (OPENWORK_PLATFORMS=linux/amd64,linux/arm64 invoke push-image), "
        f"or build and push the image for {host}"
    )


def check(spec: LaunchSpec, host: str) -> None:
    """WorkflowError (:func:`refusal`) when ``spec``'s image is one manifest of another platform than
    ``host``'s. A registry that cannot be asked is no refusal: the pull then says what is wrong."""
    if spec.image_platform is None:
        return
    try:
        found = spec.image_platform()
    except WorkflowError:
        return
    line = refusal(spec.image, found, host)
    if line:
        raise WorkflowError(line)
