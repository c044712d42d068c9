"""``push-image``: push the built image and prove the registry serves it.

1. The image to push is the one ``build-image`` recorded (``.state/last-build.json``); pushing to
   another reference tags that image first.
2. The registry must answer ``GET /v2/`` (a one-line error otherwise, before Docker's own retries).
3. ``docker login --password-stdin`` when credentials are set (the password never goes on argv).
4. ``docker push``; layer events are shown on a TTY; the pushed digest is printed.
5. Proof: the v2 API serves the manifest with that digest and every blob it names, and, where the
   microsandbox runtime is installed, ``msb pull`` pulls it (``--insecure`` for plain HTTP).
"""

from __future__ import annotations

import re
import time

from . import commands, console, gha
from .errors import WorkflowError
from .image_build import read_last_build
from .registry import Registry
from .settings import Settings

PUSH_LINE = re.compile(r"^([0-9a-f]{12}): (Pushed|Layer already exists|Mounted from .*)$")
DIGEST_LINE = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: (\d+)")


def _local_image(settings: Settings) -> str:
    """The image id to push: the last build's (tagged as ``settings.image`` if need be)."""
    last = read_last_build(settings)
    wanted = settings.image
    if last:
        present = commands.docker("image", "inspect", "--format", "{{.Id}}", last["image_id"], check=False)
        if present.returncode == 0:
            if last["image"] != wanted:
                commands.docker("tag", last["image_id"], wanted)
                console.info(f"tagged the last build ({last['image']}) as {wanted}")
            return last["image_id"]
    proc = commands.docker("image", "inspect", "--format", "{{.Id}}", wanted, check=False)
    if proc.returncode != 0:
        raise WorkflowError(f"no image {wanted} here to push: run invoke build-image first "
                            "(or set OPENWORK_MICROSANDBOX_IMAGE to the image you built)")
    return proc.stdout.strip()


def login(settings: Settings) -> bool:
    if not (settings.registry_username and settings.registry_password):
        if settings.registry_username or settings.registry_password:
            missing = "OPENWORK_REGISTRY_PASSWORD" if settings.registry_username else "OPENWORK_REGISTRY_USERNAME"
            raise WorkflowError(f"{missing} is not set: registry login needs both OPENWORK_REGISTRY_USERNAME and "
                                "OPENWORK_REGISTRY_PASSWORD")
        return False
    host = settings.image_ref.registry_host
    proc = commands.docker("login", "--username", settings.registry_username, "--password-stdin", host,
                           input=settings.registry_password, check=False, timeout=120)
    if proc.returncode != 0:
        raise WorkflowError(f"docker login to {host} as {settings.registry_username} failed: "
                            f"{commands.last_line(proc.stderr)}; check OPENWORK_REGISTRY_USERNAME/PASSWORD")
    console.info(f"{console.OK} logged in to {host} as {settings.registry_username}")
    return True


def _docker_push(ref: str, show: bool) -> tuple[str, set[str]]:
    """``docker push``; returns the pushed digest and the short diff ids of layers actually sent."""
    sent: set[str] = set()
    digest = ""
    lines: list[str] = []
    try:
        for line in commands.stream_lines(["docker", "push", ref]):
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
    except WorkflowError as exc:
        text = "\n".join(lines[-5:]) + " " + exc.message
        hint = ""
        if "HTTP response to HTTPS client" in text:
            hint = "; the engine needs this registry in its insecure-registries (daemon.json)"
        elif "unauthorized" in text or "authentication required" in text:
            hint = "; set OPENWORK_REGISTRY_USERNAME and OPENWORK_REGISTRY_PASSWORD"
        raise WorkflowError(f"docker push {ref} failed: {commands.last_line(lines[-1] if lines else exc.message)}"
                            f"{hint}") from None
    if not digest:
        raise WorkflowError(f"docker push {ref} reported no digest; last line: {commands.last_line(lines[-1] if lines else '')}")
    return digest, sent


def msb_pull(settings: Settings, ref: str) -> tuple[bool, str]:
    """``msb pull REF`` where the microsandbox runtime is installed: ``(pulled, detail)``."""
    from .runtimes.probe import msb_path

    msb = msb_path()
    if not msb:
        return False, "skipped: microsandbox (msb) is not installed"
    argv = [msb, "pull", "--quiet", "--force", ref]
    if settings.registry_plain_http:
        argv.insert(2, "--insecure")
    started = time.monotonic()
    with console.heartbeat(f"msb pull {ref}"):
        proc = commands.run(argv, check=False, timeout=900)
    if proc.returncode != 0:
        raise WorkflowError(f"msb pull {ref} failed (exit {proc.returncode}): "
                            f"{commands.last_line(proc.stderr or proc.stdout)}")
    return True, f"pulled in {time.monotonic() - started:.1f}s"


def push_image(settings: Settings, as_json: bool = False) -> dict:
    """Push ``settings.image`` and prove it is pullable; print and return the digest and checks."""
    started = time.monotonic()
    ref = settings.image_ref
    registry = Registry.for_settings(settings)
    registry.ping()  # before anything else: a registry that is not there is one line, no side effects
    image_id = _local_image(settings)
    login(settings)
    console.info(f"pushing {settings.image}")
    with gha.group(f"docker push {settings.image}"), console.heartbeat(f"pushing {settings.image}"):
        digest, sent = _docker_push(settings.image, True)  # a line per layer, on a TTY and in CI logs
    console.info(f"{console.OK} pushed {settings.image}@{digest}")

    proof = registry.verify_pullable(ref, expected_digest=digest)
    diff_ids = commands.docker("image", "inspect", "--format", "{{range .RootFS.Layers}}{{println .}}{{end}}",
                               image_id).stdout.split()
    layers = proof["layers"]
    pushed_bytes = sum(size for (_, size), diff in zip(layers, diff_ids) if diff.split(":")[-1][:12] in sent)
    console.info(f"{console.OK} registry {ref.registry_host} serves the manifest and all {proof['blobs']} blobs")
    pulled, detail = msb_pull(settings, settings.image)
    console.info(f"{console.OK if pulled else console.SKIP} msb pull: {detail}")
    result = {
        "image": settings.image,
        "image_id": image_id,
        "digest": digest,
        "pinned": f"{ref.registry + '/' if ref.registry else ''}{ref.repository}@{digest}",
        "layers": len(layers),
        "layers_pushed": len(sent),
        "bytes_pushed": pushed_bytes,
        "image_bytes": proof["bytes"],
        "manifest_ok": True,
        "blobs_ok": True,
        "msb_pull": pulled,
        "msb_pull_detail": detail,
        "seconds": round(time.monotonic() - started, 2),
    }
    if as_json:
        console.emit_json(result)
    else:
        console.info(f"  digest {digest}")
        console.info(f"  sent {len(sent)} of {len(layers)} layers ({console.human_bytes(pushed_bytes)} of "
                     f"{console.human_bytes(proof['bytes'])}) in {result['seconds']:.1f}s")
        console.info(f"  pin it: {result['pinned']}")
    return result
