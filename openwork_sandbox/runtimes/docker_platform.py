"""Which image the Docker runtime boots: the host platform's, never another architecture's.

An engine keeps one image under a reference: after ``docker pull --platform linux/arm64`` of an
index, its digest names the arm64 image on an amd64 host too, and ``docker run`` would boot it
(exec format error). So before anything runs the image, :func:`host_image` reads the platform of
the image the engine holds; another platform's is replaced by the host platform's manifest of the
index (its own digest names only that image), and refused in one line when there is none.
"""

from __future__ import annotations

from collections.abc import Callable

from openwork_sandbox.core import console, processes
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes import docker_engine


def held_image(ref: str) -> tuple[bool, str | None]:
    """``(whether the engine holds the image ref, its os/arch or None when the engine does not say)``,
    from one question to the engine (its socket, else ``docker image inspect``)."""
    answered, info = docker_engine.image(ref)
    if answered:
        os_arch = f"{info.get('Os') or ''}/{info.get('Architecture') or ''}" if info else ""
        return info is not None, _platform_of(os_arch)
    proc = processes.docker("image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", ref, check=False, timeout=30)
    return proc.returncode == 0, _platform_of(proc.stdout.strip() if proc.returncode == 0 else "")


def _platform_of(text: str) -> str | None:
    """``os/arch`` when both halves are there, else None (the engine did not say)."""
    return text if text and "/" in text and not text.startswith("/") and not text.endswith("/") else None


def image_platform(ref: str) -> str | None:
    """``os/arch`` of the engine's image ``ref``; None when the engine has none or does not say."""
    return held_image(ref)[1]


ASK = object()  # host_image's ``found`` when the caller has not read the platform already


def refusal(image: str, found: str, host: str, index: dict[str, str] | None) -> str:
    """The one line that refuses ``image`` (of platform ``found``) on a ``host`` host; ``index``: the
    platforms its index holds (None: not asked or not an index), to name the way out."""
    if index:
        fix = (
            f"its index holds {', '.join(sorted(index))}, none for {host}: "
            f"build and push one for {host} (invoke push-image --platform {','.join([host, *sorted(index)])})"
        )
    else:
        fix = f"run `docker pull --platform {host} {image}`, or build and push an image for {host}"
    return f"the image {image} is for {found} and this host is {host}, so Docker cannot run it; {fix}"


def host_image(
    image: str,
    host: str,
    index_platforms: Callable[[], dict[str, str]] | None,
    have: Callable[[str], bool],
    pull: Callable[[str], object],
    found: object = ASK,
) -> str:
    """The reference to boot for ``image`` on a ``host`` (``os/arch``) engine that holds ``image``:
    ``image`` when its platform is the host's (or unknown); else the host's manifest of its index
    (``index_platforms``), pulled with ``pull`` unless ``have``; else a one-line WorkflowError
    (:func:`refusal`). ``found``: the platform of ``image`` when the caller read it already
    (:func:`held_image`). Nothing is started here."""
    if found is ASK:
        found = image_platform(image)
    if found is None or found == host:
        return image
    index: dict[str, str] | None = None
    if index_platforms is not None:
        try:
            index = index_platforms()
        except WorkflowError:
            index = None  # the registry cannot say: the refusal names docker pull --platform
    mine = (index or {}).get(host)
    if mine is None:
        raise WorkflowError(refusal(image, found, host, index))
    if not have(mine):
        pull(mine)
    if image_platform(mine) != host:
        raise WorkflowError(refusal(mine, image_platform(mine) or "another platform", host, None))
    console.info(f"the engine holds a {found} image under {image}; booting its index's {host} image {mine}")
    return mine
