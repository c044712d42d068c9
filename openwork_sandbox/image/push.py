"""``push-image``: push the built image and prove the registry serves it.

1. The image to push is the one ``build-image`` recorded (``.state/last-build.json``); pushing to
   another reference tags that image first (``--image REF`` builds REF first when the last build
   was for another reference).
2. The registry must answer ``GET /v2/`` with the login (``registry.access``: the settings' login,
   else Docker's own), and the login must be allowed to push to the repository: a one-line error
   otherwise, before anything is tagged or sent.
3. ``docker login --password-stdin`` when OPENWORK_REGISTRY_USERNAME/_PASSWORD are set (the
   password never goes on argv); otherwise Docker uses its own saved login.
4. ``docker push``; a line per layer (on a TTY and in CI logs); the pushed ``repo@sha256:…`` is printed and
   recorded in ``.state/last-push.json`` (``up`` boots it, see ``state.pin``).
5. Proof: the v2 API serves the manifest with that digest and every blob it names, and, where the
   microsandbox runtime is installed, the microsandbox SDK pulls it with the same login and CAs
   (``runtimes.microsandbox.pull``) and gets the same digest. A failed proof says the
   image was pushed all the same.

After a build for several platforms the push is ``image.index_push``'s.
"""

from __future__ import annotations

import contextlib
import re
import time

from openwork_sandbox.config import Settings
from openwork_sandbox.core import console, gha, interrupts, processes
from openwork_sandbox.core.errors import Interrupted, WorkflowError
from openwork_sandbox.image.build import read_last_build
from openwork_sandbox.registry import access as registry_access
from openwork_sandbox.registry.client import Registry
from openwork_sandbox.runtimes.microsandbox import pull as microsandbox_pull
from openwork_sandbox.state.pin import push_result, read_pushes, record_push

PUSH_LINE = re.compile(r"^([0-9a-f]{12}): (Pushed|Layer already exists|Mounted from .*)$")
DIGEST_LINE = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: (\d+)")


def _local_image(settings: Settings) -> str:
    """The image id to push: the last build's (tagged as ``settings.image`` if need be)."""
    last = read_last_build(settings)
    wanted = settings.image
    if last:
        present = processes.docker("image", "inspect", "--format", "{{.Id}}", last["image_id"], check=False)
        if present.returncode == 0:
            if last["image"] != wanted:
                processes.docker("tag", last["image_id"], wanted)
                console.info(f"tagged the last build ({last['image']}) as {wanted}")
            return last["image_id"]
    proc = processes.docker("image", "inspect", "--format", "{{.Id}}", wanted, check=False)
    if proc.returncode != 0:
        raise WorkflowError(
            f"no image {wanted} here to push: run invoke build-image first "
            "(or set OPENWORK_MICROSANDBOX_IMAGE to the image you built)"
        )
    return proc.stdout.strip()


def login(settings: Settings) -> bool:
    """``docker login`` with OPENWORK_REGISTRY_USERNAME/_PASSWORD (password on stdin); False when unset."""
    creds = registry_access.settings_credentials(settings)
    if creds is None:
        return False
    registry_access.docker_login(settings.image_ref.registry_host, creds.username, creds.password)
    return True


def _docker_push(ref: str, show: bool) -> tuple[str, set[str]]:
    """``docker push``; returns the pushed digest and the short diff ids of layers actually sent.
    Ctrl+C or SIGTERM (taken as Ctrl+C by ``push-image``) stops it, then raises ``Interrupted``."""
    sent: set[str] = set()
    digest = ""
    lines: list[str] = []
    try:
        # closed (the push stopped) before an interrupt's line is said
        with contextlib.closing(processes.stream_lines(["docker", "push", ref])) as output:
            for line in output:
                lines.append(line)
                m = PUSH_LINE.match(line.strip())
                if m:
                    if m.group(2) == "Pushed":
                        sent.add(m.group(1))
                    if show:
                        console.info(f"  {m.group(1)}  {m.group(2).lower()}")
                d = DIGEST_LINE.search(line)
                if d:
                    digest = d.group(1)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted: stopped docker push of {ref} (nothing of it is left running); nothing was pinned, "
            "up boots what it booted before: `invoke push-image` pushes again"
        ) from None
    except WorkflowError as exc:
        text = "\n".join(lines[-5:]) + " " + exc.message
        hint = ""
        if "HTTP response to HTTPS client" in text:
            hint = "; the engine needs this registry in its insecure-registries (daemon.json)"
        elif "unauthorized" in text or "authentication required" in text:
            hint = "; set OPENWORK_REGISTRY_USERNAME and OPENWORK_REGISTRY_PASSWORD"
        raise WorkflowError(
            f"docker push {ref} failed: {processes.last_line(lines[-1] if lines else exc.message)}{hint}"
        ) from None
    if not digest:
        raise WorkflowError(
            f"docker push {ref} reported no digest; last line: {processes.last_line(lines[-1] if lines else '')}"
        )
    return digest, sent


def push_image(settings: Settings, as_json: bool = False, *, build_first: bool = False) -> dict:
    """Push ``settings.image`` and prove it is pullable; print and return the digest and checks.

    ``build_first`` (``push-image --image REF`` / ``--platform P``): build REF first unless the last build
    was for it (and those platforms). Ctrl+C or SIGTERM stops the programs it runs and ends it in one
    line (``Interrupted``, exit 130) saying whether the push was pinned: the pin is written whole or not."""
    before = read_pushes(settings).get(settings.image)  # an interrupt's line says whether this changed

    def said() -> str:
        now = read_pushes(settings).get(settings.image)
        if now != before and isinstance(now, dict):
            return (
                f"interrupted after {now.get('pinned')} was pushed and pinned, before the pull check ended: "
                "`invoke push-image` checks it again"
            )
        return (
            f"interrupted: stopped push-image of {settings.image} before anything was pinned (nothing it ran is "
            "left running); up boots what it booted before: `invoke push-image` pushes again"
        )

    with interrupts.stopped_in_one_line(said):
        return _push(settings, as_json, build_first)


def _push(settings: Settings, as_json: bool, build_first: bool) -> dict:
    started = time.monotonic()
    ref = settings.image_ref
    registry = Registry.for_settings(settings)
    # before anything else: a registry that is not there, a wrong login or no push access is one
    # line, with nothing tagged or sent
    registry.ping()
    registry.check_push(ref.repository)
    from openwork_sandbox.image.multiplatform import built_for, wanted

    last_build = read_last_build(settings) or {}
    if build_first and (last_build.get("image") != settings.image or built_for(last_build) != wanted(settings)):
        from openwork_sandbox.image.multiplatform import build_image

        console.info(
            f"the last build was not for {settings.image}"
            f"{' (' + settings.platform + ')' if settings.platform else ''}: building it"
        )
        build_image(settings)
    last = read_last_build(settings) or {}
    if last.get("platforms"):  # built for several platforms: their images and an image index
        from openwork_sandbox.image.index_push import push_index

        return push_index(settings, registry, last, as_json, started)
    image_id = _local_image(settings)
    login(settings)
    console.info(f"pushing {settings.image}")
    with gha.group(f"docker push {settings.image}"), console.heartbeat(f"pushing {settings.image}"):
        digest, sent = _docker_push(settings.image, True)  # a line per layer, on a TTY and in CI logs
    pinned = record_push(settings, digest)
    console.info(f"{console.OK} pushed {pinned} (up boots this digest)")
    try:
        proof = registry.verify_pullable(ref, expected_digest=digest)
        console.info(f"{console.OK} registry {ref.registry_host} serves the manifest and all {proof['blobs']} blobs")
        access = registry_access.pull_access(settings, ref.registry_host, registry.plain_http, registry.credentials)
        pulled, detail = microsandbox_pull.prove_pull(settings.image, ref.registry_host, access, expected_digest=digest)
    except WorkflowError as exc:
        raise WorkflowError(
            f"pushed {pinned}, but the pull check failed: {exc.message}", exit_code=exc.exit_code
        ) from None
    console.info(f"{console.OK if pulled else console.SKIP} microsandbox pull: {detail}")
    diff_ids = processes.docker(
        "image", "inspect", "--format", "{{range .RootFS.Layers}}{{println .}}{{end}}", image_id
    ).stdout.split()
    layers = proof["layers"]
    pushed_bytes = sum(
        size for (_, size), diff in zip(layers, diff_ids, strict=False) if diff.split(":")[-1][:12] in sent
    )
    result = push_result(
        settings,
        image_id,
        digest,
        pinned,
        len(layers),
        len(sent),
        pushed_bytes,
        proof["bytes"],
        pulled,
        detail,
        started,
    )
    if as_json:
        console.emit_json(result)
    else:
        console.info(f"  digest {digest}")
        console.info(
            f"  sent {len(sent)} of {len(layers)} layers ({console.human_bytes(pushed_bytes)} of "
            f"{console.human_bytes(proof['bytes'])}) in {result['seconds']:.1f}s"
        )
        console.info(f"  pin it: {result['pinned']}")
    return result
