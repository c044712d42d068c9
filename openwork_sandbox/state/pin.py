"""The pushed digest, carried forward: ``push-image`` records ``repo@sha256:…`` per image reference
in ``.state/last-push.json``; ``up`` in the same checkout boots that digest when the tag matches,
so a tag another pipeline moves cannot swap the image under a CI run.

A reference that already names a digest is booted as it is; a tag never pushed from here is
booted as the tag.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path

from openwork_sandbox.config import ImageRef, Settings
from openwork_sandbox.core.files import private_dir, write_atomic

LAST_PUSH = "last-push.json"


def last_push_path(settings: Settings) -> Path:
    """``.state/last-push.json``: the pushes recorded in this checkout."""
    return settings.state_dir / LAST_PUSH


def read_pushes(settings: Settings) -> dict:
    """The recorded pushes by image reference; ``{}`` when there are none or the file does not parse."""
    try:
        data = json.loads(last_push_path(settings).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pinned_ref(ref: ImageRef, digest: str) -> str:
    """``registry/repository@sha256:…`` (no tag) for a pushed ``ref``."""
    return f"{ref.registry + '/' if ref.registry else ''}{ref.repository}@{digest}"


def record_push(settings: Settings, digest: str) -> str:
    """Remember that ``settings.image`` was pushed as ``digest``; returns the pinned reference."""
    pinned = pinned_ref(settings.image_ref, digest)
    data = read_pushes(settings)
    data[settings.image] = {
        "pinned": pinned,
        "digest": digest,
        "pushed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = last_push_path(settings)
    private_dir(path.parent, own=settings.origin("state_dir") == "default", git_ignored=True)
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=0o644)
    return pinned


def pinned_image(settings: Settings) -> str:
    """What ``up`` boots: the digest last pushed from here for ``settings.image``, else the image as set."""
    if settings.image_ref.digest:
        return settings.image
    entry = read_pushes(settings).get(settings.image)
    pinned = entry.get("pinned") if isinstance(entry, dict) else None
    return pinned if isinstance(pinned, str) and "@sha256:" in pinned else settings.image


def push_result(
    settings: Settings,
    image_id: str | None,
    digest: str,
    pinned: str,
    layers: int,
    layers_pushed: int,
    bytes_pushed: int,
    image_bytes: int,
    pulled: bool,
    detail: str,
    started: float,
    **extra,
) -> dict:
    """What push-image returns (and prints with --json), for one image or an index."""
    return {
        "image": settings.image,
        "image_id": image_id,
        "digest": digest,
        "pinned": pinned,
        **extra,
        "layers": layers,
        "layers_pushed": layers_pushed,
        "bytes_pushed": bytes_pushed,
        "image_bytes": image_bytes,
        "manifest_ok": True,
        "blobs_ok": True,
        "msb_pull": pulled,
        "msb_pull_detail": detail,
        "seconds": round(time.monotonic() - started, 2),
    }
