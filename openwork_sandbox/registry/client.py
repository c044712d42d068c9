"""The registry's HTTP API v2: ping, push access, manifests, blobs, uploads, and the proof that a push is pullable.

Requests go through :class:`~openwork_sandbox.registry.transport.Transport` (scheme, retries, auth);
the login and CAs come from :mod:`openwork_sandbox.registry.access`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from openwork_sandbox.config import ImageRef, Settings
from openwork_sandbox.core.errors import UnreachableError, WorkflowError
from openwork_sandbox.registry import access as registry_access
from openwork_sandbox.registry.transport import RETRIES, Transport, scope_for

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = {MANIFEST_TYPES[0], MANIFEST_TYPES[2]}


class Registry(Transport):
    """The v2 calls on one registry host."""

    @classmethod
    def for_settings(cls, settings: Settings, ref: ImageRef | None = None) -> Registry:
        """The registry of ``ref`` (default: the settings' image) with the login, CAs and scheme rule of
        :mod:`openwork_sandbox.registry.access`; HTTPS first."""
        ref = ref or settings.image_ref
        host = ref.registry_host
        return cls(
            host,
            plain_http=None,
            allow_http=registry_access.http_allowed(settings, ref.registry_is_loopback),
            credentials=registry_access.credentials(settings, host),
            verify=registry_access.ca_bundle(settings, host),
            timeout=settings.request_timeout,
        )

    # --- API ------------------------------------------------------------------------------------
    def ping(self, *, quick: bool = False) -> int:
        """``GET /v2/`` (with the login, as ``docker login`` checks it): 200, or 401 without a login.

        ``quick`` (doctor): one attempt of at most 5 s, no retries."""
        resp = self._send(
            "GET",
            "/v2/",
            "checking the API (GET /v2/)",
            attempts=1 if quick else RETRIES,
            timeout=min(self.timeout, 5.0) if quick else None,
        )
        if resp.status_code not in (200, 401):
            raise self._fail(resp, "GET /v2/ (is this a registry?)")
        return resp.status_code

    def check_push(self, repository: str) -> None:
        """The login may push to ``repository``: start a blob upload (scope ``pull,push``) and cancel it."""
        scope = scope_for(repository, "pull,push")
        resp = self._send(
            "POST", f"/v2/{repository}/blobs/uploads/", f"checking push access to {repository}", scope=scope
        )
        if resp.status_code not in (201, 202):
            raise self._fail(resp, f"starting an upload to {repository}", scope)
        location = resp.headers.get("Location")
        if location:
            path = _location_path(location)
            try:
                self._send("DELETE", path, "cancelling the test upload", scope=scope)
            except WorkflowError:
                pass  # the registry drops unfinished uploads itself

    def manifest(
        self, repository: str, reference: str, accept: tuple[str, ...] = MANIFEST_TYPES
    ) -> tuple[str, str, dict]:
        """``(digest, media type, manifest)`` for a tag or digest."""
        scope = scope_for(repository)
        what = (
            f"manifest {repository}:{reference}"
            if not reference.startswith("sha256:")
            else f"manifest {repository}@{reference}"
        )
        resp = self._send(
            "GET", f"/v2/{repository}/manifests/{reference}", what, headers={"Accept": ", ".join(accept)}, scope=scope
        )
        if resp.status_code != 200:
            raise self._fail(resp, what, scope)
        digest = resp.headers.get("Docker-Content-Digest", "")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            body = resp.json()
        except ValueError:
            raise WorkflowError(f"registry {self.host} sent a manifest for {what} that is not JSON") from None
        return digest, body.get("mediaType") or media_type, body

    def head_manifest(self, repository: str, reference: str) -> str:
        """The ``Docker-Content-Digest`` of a tag (HEAD, with the Accept header every type needs)."""
        what = f"manifest {repository}:{reference}"
        scope = scope_for(repository)
        resp = self._send(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            what,
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
            scope=scope,
        )
        if resp.status_code != 200:
            raise self._fail(resp, what, scope)
        return resp.headers.get("Docker-Content-Digest", "")

    def blob_exists(self, repository: str, digest: str) -> bool:
        """Whether the registry has blob ``digest`` in ``repository`` (HEAD: 200 or 404; else an error)."""
        scope = scope_for(repository)
        resp = self._send("HEAD", f"/v2/{repository}/blobs/{digest}", f"blob {digest[:19]}", scope=scope)
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise self._fail(resp, f"blob {repository}@{digest[:19]}…", scope)

    def blob(self, repository: str, digest: str) -> bytes:
        """A (small) blob's bytes, e.g. an image's config."""
        scope = scope_for(repository)
        resp = self._send("GET", f"/v2/{repository}/blobs/{digest}", f"blob {digest[:19]}", scope=scope)
        if resp.status_code != 200:
            raise self._fail(resp, f"blob {repository}@{digest[:19]}…", scope)
        return resp.content

    def upload_blob(self, repository: str, digest: str, path: Path) -> bool:
        """Send the file at ``path`` as blob ``digest`` unless the registry has it; True when sent."""
        if self.blob_exists(repository, digest):
            return False
        scope = scope_for(repository, "pull,push")
        resp = self._send(
            "POST", f"/v2/{repository}/blobs/uploads/", f"starting an upload to {repository}", scope=scope
        )
        location = resp.headers.get("Location")
        if resp.status_code not in (201, 202) or not location:
            raise self._fail(resp, f"starting an upload to {repository}", scope)
        target = _location_path(location)
        target += ("&" if "?" in target else "?") + f"digest={digest}"
        resp = self._send(
            "PUT",
            target,
            f"uploading blob {digest[:19]}",
            scope=scope,
            body=path,
            headers={"Content-Type": "application/octet-stream"},
            timeout=max(self.timeout, 600),
        )
        if resp.status_code != 201:
            raise self._fail(resp, f"uploading blob {repository}@{digest[:19]}…", scope)
        return True

    def put_manifest(self, repository: str, reference: str, media_type: str, body: bytes) -> str:
        """PUT a manifest or an index under a tag or its digest; returns the digest the registry names."""
        scope = scope_for(repository, "pull,push")
        what = (
            f"manifest {repository}:{reference}"
            if not reference.startswith("sha256:")
            else f"manifest {repository}@{reference}"
        )
        resp = self._send(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            f"pushing {what}",
            scope=scope,
            body=body,
            headers={"Content-Type": media_type},
        )
        if resp.status_code not in (200, 201):
            detail = resp.text.strip().replace("\n", " ")[:200]
            raise (
                WorkflowError(f"registry {self.host} refused {what} (HTTP {resp.status_code}: {detail})")
                if resp.status_code == 400
                else self._fail(resp, f"pushing {what}", scope)
            )
        return resp.headers.get("Docker-Content-Digest", "")

    def verify_pullable(self, ref: ImageRef, expected_digest: str | None = None) -> dict[str, Any]:
        """Prove ``ref`` can be pulled: its manifest (every platform of an index) and every blob."""
        repo = ref.repository
        digest = self.head_manifest(repo, ref.reference)
        if expected_digest and digest and digest != expected_digest:
            raise WorkflowError(
                f"registry {self.host} serves {ref} as {digest}, but the push reported "
                f"{expected_digest}: something else pushed to the tag; push again"
            )
        _, media_type, body = self.manifest(repo, digest or ref.reference)
        manifests = [body]
        if media_type in INDEX_TYPES or "manifests" in body:
            manifests = [self.manifest(repo, m["digest"])[2] for m in body.get("manifests", [])]
        blobs: dict[str, int] = {}
        for m in manifests:
            for desc in [m.get("config", {})] + list(m.get("layers", [])):
                if desc.get("digest"):
                    blobs[desc["digest"]] = int(desc.get("size", 0))
        missing = [d for d in blobs if not self.blob_exists(repo, d)]
        if missing:
            raise WorkflowError(
                f"registry {self.host} serves the manifest of {ref} but not {len(missing)} of its "
                f"{len(blobs)} blobs (first: {missing[0][:19]}…); push again"
            )
        layers = [(d["digest"], int(d.get("size", 0))) for m in manifests for d in m.get("layers", [])]
        return {
            "digest": digest,
            "media_type": media_type,
            "platforms": len(manifests),
            "layers": layers,
            "blobs": len(blobs),
            "bytes": sum(blobs.values()),
        }


def _location_path(location: str) -> str:
    """An upload's ``Location`` (absolute or not) as a path on this registry."""
    return location if location.startswith("/") else "/" + location.split("/", 3)[-1]


def pull_access_for_image(settings: Settings, image: str) -> registry_access.PullAccess:
    """The :class:`~openwork_sandbox.registry.access.PullAccess` for ``up``'s pull of ``image``: the
    scheme the registry speaks (asked once), its login and CAs.

    A registry that does not answer is not an error here: the image may be cached, and the pull
    itself then says what is wrong."""
    ref = ImageRef.parse(image)
    plain = registry_access.http_allowed(settings, ref.registry_is_loopback)
    registry = Registry.for_settings(settings, ref)
    login_required = False
    try:
        login_required = registry.ping() == 401
        plain = registry.plain_http
    except UnreachableError:
        pass
    access = registry_access.pull_access(settings, ref.registry_host, plain, registry.credentials)
    return dataclasses.replace(access, login_required=login_required)


def index_platforms(settings: Settings, image: str) -> dict[str, str]:
    """Each platform's manifest in the image index ``image`` names (tag or digest), as pinned references:
    ``{"linux/amd64": "registry/repository@sha256:…", …}``; ``{}`` when ``image`` names one manifest.

    Why: an engine may hold another platform's image under an index's digest (``docker pull
    --platform``); the platform's own manifest digest names only that platform's image.
    Errors: WorkflowError/UnreachableError when the registry cannot be asked."""
    ref = ImageRef.parse(image)
    registry = Registry.for_settings(settings, ref)
    _, media_type, body = registry.manifest(ref.repository, ref.digest or ref.reference)
    if media_type not in INDEX_TYPES and not isinstance(body.get("manifests"), list):
        return {}
    prefix = f"{ref.registry + '/' if ref.registry else ''}{ref.repository}@"
    found: dict[str, str] = {}
    for entry in (e for e in body.get("manifests") or [] if isinstance(e, dict)):
        plat = entry.get("platform") or {}
        if plat.get("os") and plat.get("architecture") and str(entry.get("digest", "")).startswith("sha256:"):
            found.setdefault(f"{plat['os']}/{plat['architecture']}", prefix + entry["digest"])
    return found


def manifest_platform(settings: Settings, image: str) -> str | None:
    """``os/arch`` of the image when ``image`` (tag or digest) names one manifest, as its config says;
    None when it names an index (each runtime picks the host's entry of an index) or the config
    names no platform.

    Why: a single manifest of another architecture boots nowhere on this host, and a runtime that
    pulls by itself (microsandbox) finds that out only after the pull and the boot.
    Errors: WorkflowError/UnreachableError when the registry cannot be asked."""
    ref = ImageRef.parse(image)
    registry = Registry.for_settings(settings, ref)
    _, media_type, body = registry.manifest(ref.repository, ref.digest or ref.reference)
    if media_type in INDEX_TYPES or isinstance(body.get("manifests"), list):
        return None
    described = body.get("config")
    digest = described.get("digest") if isinstance(described, dict) else None
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        return None
    try:
        config = json.loads(registry.blob(ref.repository, digest))
    except ValueError:
        return None
    os_name, arch = (config.get("os"), config.get("architecture")) if isinstance(config, dict) else (None, None)
    if isinstance(os_name, str) and isinstance(arch, str) and os_name and arch:
        return f"{os_name}/{arch}"
    return None
