"""One built image as an OCI image of a given platform: blobs, config and manifest, content-addressed.

Docker 20.10 without buildx marks every image it builds with its own architecture, whatever the
base's files are. An image's architecture is what its config says, so the image of another
platform is written here: ``docker save`` gives the layers and the config that ``docker build``
made (the ``Dockerfile`` has no ``RUN``: the base's layer plus ``COPY`` layers, the same bytes on any
engine); the config gets the platform's ``architecture``/``os``/``variant``; the layers are gzipped
(the compressed blob of a layer is kept by its diff id, so a layer is compressed once), and an OCI
manifest names them. Everything lands in ``<cache>/oci/blobs/sha256/<hex>``, and the result is kept
per image id and platform (``<cache>/oci/images/``), so a no-op rebuild exports nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import tarfile
import tempfile
from pathlib import Path

from openwork_sandbox.core import console, processes
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.core.files import write_atomic
from openwork_sandbox.core.platforms import Platform

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CHUNK = 1 << 20


def blob_dir(cache_dir: Path) -> Path:
    return cache_dir / "oci" / "blobs" / "sha256"


def blob_path(cache_dir: Path, digest: str) -> Path:
    return blob_dir(cache_dir) / digest.split(":", 1)[1]


def _put_blob(cache_dir: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blob_path(cache_dir, digest)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, mode=0o644)
    return digest, len(data)


def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def export(cache_dir: Path, image_id: str, plat: Platform) -> dict:
    """The OCI manifest of ``image_id`` as ``plat``: ``{"digest", "size", "media_type", "config", "blobs"}``
    (blobs: ``[(digest, size)]``, config first). Kept per image id: a second call reads one file.
    A ``docker save`` that fails or cannot be read is a one-line WorkflowError."""
    record = cache_dir / "oci" / "images" / f"{image_id.split(':')[-1]}-{plat.slug}.json"
    try:
        saved = json.loads(record.read_text())
        if (
            all(blob_path(cache_dir, d).is_file() for d, _ in saved["blobs"])
            and blob_path(cache_dir, saved["digest"]).is_file()
        ):
            return saved
    except (OSError, ValueError, KeyError, TypeError):
        pass
    with console.heartbeat(f"exporting {image_id[:19]} as a {plat} image"):
        config_raw, diff_ids, layers = _save(cache_dir, image_id)
    config = json.loads(config_raw)
    config.update(plat.oci())
    if not plat.variant:
        config.pop("variant", None)
    config_digest, config_size = _put_blob(cache_dir, _canonical(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": LAYER_TYPE, "digest": layers[d][0], "size": layers[d][1]} for d in diff_ids],
    }
    digest, size = _put_blob(cache_dir, _canonical(manifest))
    result = {
        "digest": digest,
        "size": size,
        "media_type": MANIFEST_TYPE,
        "platform": str(plat),
        "config": config_digest,
        "blobs": [[config_digest, config_size]] + [list(layers[d]) for d in diff_ids],
    }
    record.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(record, json.dumps(result, indent=1).encode(), mode=0o644)
    return result


def _save(cache_dir: Path, image_id: str) -> tuple[bytes, list[str], dict[str, tuple[str, int]]]:
    """``docker save``, read as it comes: (the config's bytes, diff ids in order, diff id → gzipped blob).
    A save that fails, or an archive without the config and layers its manifest names, is a one-line
    WorkflowError."""
    blobs = blob_dir(cache_dir)
    blobs.mkdir(parents=True, exist_ok=True)
    known = cache_dir / "oci" / "layers"
    known.mkdir(parents=True, exist_ok=True)
    broken = None
    try:
        with (
            processes.stream_bytes(["docker", "save", image_id], finish_timeout=600, check=False) as save,
            tarfile.open(fileobj=save.stdout, mode="r|") as tar,
        ):
            files, member_diff, links, layers = _read_archive(cache_dir, known, tar)
    except tarfile.TarError as exc:  # no archive at all when docker save failed: its own words say why
        broken = exc
    if save.returncode not in (0, -signal.SIGKILL):  # SIGKILL: stopped here, as the archive broke
        raise WorkflowError(
            f"docker save {image_id[:19]} failed: {save.stderr.decode(errors='replace').strip()[-300:]}"
        )
    if broken is not None:
        raise WorkflowError(f"docker save {image_id[:19]} gave an archive this tool cannot read ({broken})")
    try:
        entry = json.loads(files["manifest.json"])[0]
        config_raw = files[entry["Config"]]
        order = [member_diff.get(name) or member_diff[links[name]] for name in entry["Layers"]]
    except (KeyError, IndexError, ValueError) as exc:
        raise WorkflowError(f"docker save {image_id[:19]} gave an archive this tool cannot read ({exc})") from None
    return config_raw, order, layers


def _read_archive(cache_dir: Path, known: Path, tar: tarfile.TarFile):
    """One pass over ``docker save``'s archive: (its JSON files by name, layer.tar member → diff id, a
    layer.tar that links to another → that one, diff id → gzipped blob)."""
    member_diff: dict[str, str] = {}
    links: dict[str, str] = {}
    files: dict[str, bytes] = {}
    layers: dict[str, tuple[str, int]] = {}
    for member in tar:
        if member.name.endswith("layer.tar") and (member.issym() or member.islnk()):
            links[member.name] = (
                os.path.normpath(os.path.join(os.path.dirname(member.name), member.linkname))
                if member.issym()
                else member.linkname
            )
        elif member.name.endswith("layer.tar") and member.isfile():
            src = tar.extractfile(member)
            assert src is not None
            diff, blob = _layer(cache_dir, known, src)
            member_diff[member.name] = diff
            layers[diff] = blob
        elif member.isfile() and (member.name == "manifest.json" or member.name.endswith(".json")):
            src = tar.extractfile(member)
            assert src is not None
            files[member.name] = src.read()
    return files, member_diff, links, layers


def _layer(cache_dir: Path, known: Path, src) -> tuple[str, tuple[str, int]]:
    """Copy one layer tar aside (hashing it), then its gzipped blob: compressed once per diff id."""
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=blob_dir(cache_dir), prefix=".layer-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                h.update(chunk)
                out.write(chunk)
        diff = "sha256:" + h.hexdigest()
        note = known / f"{h.hexdigest()}.json"
        try:
            digest, size = json.loads(note.read_text())
            if blob_path(cache_dir, digest).is_file():
                return diff, (digest, size)
        except (OSError, ValueError, TypeError):
            pass
        gz = hashlib.sha256()
        fd2, tmp2 = tempfile.mkstemp(dir=blob_dir(cache_dir), prefix=".gzip-")
        try:
            with open(tmp, "rb") as raw, os.fdopen(fd2, "wb") as out:
                hashing = _HashingWriter(out, gz)
                with gzip.GzipFile(fileobj=hashing, mode="wb", mtime=0, compresslevel=6) as z:  # mtime 0: same bytes
                    shutil.copyfileobj(raw, z, CHUNK)
            digest = "sha256:" + gz.hexdigest()
            size = os.path.getsize(tmp2)
            os.replace(tmp2, blob_path(cache_dir, digest))
        finally:
            if os.path.exists(tmp2):
                os.unlink(tmp2)
        write_atomic(note, json.dumps([digest, size]).encode(), mode=0o644)
        return diff, (digest, size)
    finally:
        os.unlink(tmp)


class _HashingWriter:
    def __init__(self, out, h):
        self.out, self.h = out, h

    def write(self, data) -> int:
        self.h.update(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def index(cache_dir: Path, manifests: list[dict]) -> dict:
    """An OCI image index naming each platform's manifest (from :func:`export`), stored as a blob."""
    body = {
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [
            {
                "mediaType": m["media_type"],
                "digest": m["digest"],
                "size": m["size"],
                "platform": _platform_of(m["platform"]),
            }
            for m in manifests
        ],
    }
    digest, size = _put_blob(cache_dir, _canonical(body))
    return {"digest": digest, "size": size, "media_type": INDEX_TYPE}


def _platform_of(name: str) -> dict:
    from openwork_sandbox.core.platforms import parse_platform

    return parse_platform(name).oci()
