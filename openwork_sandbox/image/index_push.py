"""``push-image`` after a build for several platforms: every platform's image and their OCI image index.

Docker 20.10 cannot push an image of another platform (it calls every image its own), so the
images ``image.multiplatform`` exported (``image.oci``: content-addressed blobs in the cache) go
through the registry's v2 API (``registry.client``, with the same login, CAs and Basic/Bearer auth
as the proof of a single-platform push): each blob the registry lacks, each platform's manifest by
its digest, then the index under the tag. The index digest is recorded (``state.pin``): ``up`` boots
it, and each runtime's pull picks its own platform from it.

Proof: the v2 API serves the index with that digest, every platform's manifest and every blob
(``Registry.verify_pullable``), and each platform's config names that platform; the microsandbox
SDK pulls the tag (its pull takes the host's platform from the index). A failed proof says the
index was pushed all the same.
"""

from __future__ import annotations

import json

from openwork_sandbox.config import Settings
from openwork_sandbox.core import console, gha
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.core.platforms import host_platform, parse_platform
from openwork_sandbox.image import oci
from openwork_sandbox.registry import access as registry_access
from openwork_sandbox.registry.client import Registry
from openwork_sandbox.runtimes.microsandbox import pull as microsandbox_pull
from openwork_sandbox.state.pin import push_result, record_push


def _blob(settings: Settings, digest: str) -> bytes:
    return oci.blob_path(settings.cache_dir, digest).read_bytes()


def push_index(settings: Settings, registry: Registry, last: dict, as_json: bool, started: float) -> dict:
    """Push the index build ``last`` (``last-build.json`` with ``platforms``) and prove it; print and
    return what ``push-image`` reports. Blobs gone from the cache, or an index the registry stores
    under another digest, are a WorkflowError before anything is recorded."""
    ref = settings.image_ref
    repo, tag = ref.repository, ref.tag or "latest"
    platforms = last["platforms"]
    missing = [
        d
        for p in platforms
        for d, _ in p["oci"]["blobs"] + [[p["oci"]["digest"], 0]]
        if not oci.blob_path(settings.cache_dir, d).is_file()
    ]
    if missing or not oci.blob_path(settings.cache_dir, last["index"]["digest"]).is_file():
        raise WorkflowError(
            f"the last build's image files are gone from {settings.cache_dir / 'oci'}: run invoke build-image again"
        )
    names = ", ".join(p["platform"] for p in platforms)
    console.info(f"pushing {settings.image} for {names} (an OCI image index)")
    sent = sent_bytes = total = total_bytes = 0
    with gha.group(f"push {settings.image} ({names})"), console.heartbeat(f"pushing {settings.image}"):
        for p in platforms:
            exported = p["oci"]
            for digest, size in exported["blobs"]:
                total += 1
                total_bytes += size
                if registry.upload_blob(repo, digest, oci.blob_path(settings.cache_dir, digest)):
                    sent += 1
                    sent_bytes += size
                    console.info(f"  {p['platform']}  {digest[7:19]}  pushed ({console.human_bytes(size)})")
            registry.put_manifest(repo, exported["digest"], exported["media_type"], _blob(settings, exported["digest"]))
            console.info(f"  {p['platform']}  manifest {exported['digest'][:19]}…")
        index = last["index"]
        digest = (
            registry.put_manifest(repo, tag, index["media_type"], _blob(settings, index["digest"])) or index["digest"]
        )
    if digest != index["digest"]:
        raise WorkflowError(f"registry {registry.host} stored the index as {digest}, not {index['digest']}: push again")
    pinned = record_push(settings, digest)
    console.info(f"{console.OK} pushed {pinned} (up boots this digest; each runtime takes its own platform)")
    try:
        proof = registry.verify_pullable(ref, expected_digest=digest)
        checked = _check_platforms(registry, repo, digest, platforms)
        console.info(
            f"{console.OK} registry {ref.registry_host} serves the index, {proof['platforms']} platform "
            f"manifests ({checked}) and all {proof['blobs']} blobs"
        )
        pulled, detail = _prove_host_pull(settings, registry, platforms)
    except WorkflowError as exc:
        raise WorkflowError(
            f"pushed {pinned}, but the pull check failed: {exc.message}", exit_code=exc.exit_code
        ) from None
    console.info(f"{console.OK if pulled else console.SKIP} microsandbox pull: {detail}")
    result = push_result(
        settings,
        last.get("image_id"),
        digest,
        pinned,
        len(proof["layers"]),
        sent,
        sent_bytes,
        total_bytes,
        pulled,
        detail,
        started,
        media_type=index["media_type"],
        blobs=total,
        platforms=[{"platform": p["platform"], "digest": p["oci"]["digest"]} for p in platforms],
    )
    if as_json:
        console.emit_json(result)
    else:
        console.info(f"  index {digest}")
        for p in result["platforms"]:
            console.info(f"    {p['platform']:12} {p['digest']}")
        console.info(
            f"  sent {sent} of {total} blobs ({console.human_bytes(sent_bytes)} of "
            f"{console.human_bytes(total_bytes)}) in {result['seconds']:.1f}s"
        )
        console.info(f"  pin it: {pinned}")
    return result


def _check_platforms(registry: Registry, repo: str, digest: str, platforms: list[dict]) -> str:
    """The served index names each platform's manifest, and each manifest's config names its platform."""
    _, _, served = registry.manifest(repo, digest)
    entries = {m.get("digest"): m.get("platform", {}) for m in served.get("manifests", [])}
    for p in platforms:
        plat = parse_platform(p["platform"])
        entry = entries.get(p["oci"]["digest"])
        if entry is None or entry.get("architecture") != plat.arch or entry.get("os") != plat.os:
            raise WorkflowError(
                f"registry {registry.host} serves an index without the {plat} manifest "
                f"{p['oci']['digest'][:19]}…; push again"
            )
        _, _, manifest = registry.manifest(repo, p["oci"]["digest"])
        config = json.loads(registry.blob(repo, manifest["config"]["digest"]))
        if (config.get("architecture"), config.get("os"), config.get("variant")) != (plat.arch, plat.os, plat.variant):
            raise WorkflowError(
                f"registry {registry.host}: the {plat} image's config names "
                f"{config.get('os')}/{config.get('architecture')}; build and push again"
            )
    return ", ".join(f"{p['platform']} config checked" for p in platforms)


def _prove_host_pull(settings: Settings, registry: Registry, platforms: list[dict]) -> tuple[bool, str]:
    """(pulled, what was seen): the microsandbox SDK pulls this host's platform from the index;
    skipped when the index has none."""
    host = str(host_platform())
    mine = next((p for p in platforms if p["platform"] == host), None)
    if mine is None:
        return False, f"skipped: the index has no image for this host's platform ({host})"
    ref = settings.image_ref
    access = registry_access.pull_access(settings, ref.registry_host, registry.plain_http, registry.credentials)
    pulled, detail = microsandbox_pull.prove_pull(settings.image, ref.registry_host, access)
    return pulled, f"{detail} ({host} from the index)" if pulled else detail
