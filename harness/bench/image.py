"""Print build and push figures for the image (a benchmark: it prints, it asserts nothing).

    scripts/bench-image [--json] [--keep]

Figures: cold build time and bytes downloaded (empty download cache, docker build --no-cache),
no-op rebuild time and bytes downloaded, image size and its overhead over the three programs,
bytes pushed on a first push (to a fresh registry) and after only the server binary changed.

It builds the test stack (real openwork and opencode from npm, the stand-in server
tests/standins/standin_openwork_server.py as openwork-server on openwork-base:bookworm-slim-python;
the stand-in needs python3, so the version check cannot run it on the production base) and also
prints the overhead the production base (openwork-base:bookworm-slim) would give. Needs
scripts/services start. Everything it makes (download cache, state, a registry on a free loopback
port, image tags) lives under .state/bench-<pid>/ and is removed at the end unless --keep.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.common import ROOT, STANDIN_SERVER, back_to_caller_cwd, empty_env_file, scratch_registry

TEST_BASE = "openwork-base:bookworm-slim-python"
PROD_BASE = "openwork-base:bookworm-slim"


def image_size(ref: str) -> int:
    """The local engine's size of image REF in bytes; 0 when it has no such image."""
    proc = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", ref], capture_output=True, text=True)
    return int(proc.stdout.strip() or 0)


def settings_for(work: Path, **env: str):
    from openwork_sandbox.config import load_settings

    environ = {
        "OPENWORK_BASE_IMAGE": TEST_BASE,
        "OPENWORK_CACHE_DIR": str(work / "cache"),
        "OPENWORK_STATE_DIR": str(work / "state"),
        **env,
    }
    return load_settings(environ=environ, env_file=empty_env_file(work), root=ROOT)


def main() -> int:
    as_json, keep = "--json" in sys.argv, "--keep" in sys.argv
    from openwork_sandbox.core import console
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.image.build import build_image
    from openwork_sandbox.image.push import push_image

    work = ROOT / ".state" / f"bench-{os.getpid()}"
    work.mkdir(parents=True)
    os.environ["MSB_HOME"] = tempfile.mkdtemp(prefix="msb", dir="/tmp")  # short: Unix socket limit
    registry = contextlib.ExitStack()  # the fresh, empty registry: a first push really sends every layer
    try:
        addr = registry.enter_context(scratch_registry(work / "registry"))
    except RuntimeError as exc:
        raise SystemExit(f"bench-image: {exc}") from None
    tags: list[str] = []
    figures: dict = {}
    try:
        server = work / "openwork-server"
        shutil.copy2(STANDIN_SERVER, server)
        ref = f"{addr}/openwork-microsandbox-bench:first"
        settings = settings_for(work, OPENWORK_SERVER_BIN=str(server), OPENWORK_MICROSANDBOX_IMAGE=ref)
        tags.append(ref)

        console.info("== cold build (empty download cache, docker build --no-cache)")
        cold = build_image(settings, no_cache=True)
        console.info("== no-op rebuild")
        noop = build_image(settings)
        console.info("== first push (empty registry)")
        first = push_image(settings)

        console.info("== server-only change")
        server.write_bytes(STANDIN_SERVER.read_bytes() + b"\n# bench: changed server\n")
        ref2 = f"{addr}/openwork-microsandbox-bench:server-change"
        changed_settings = settings_for(work, OPENWORK_SERVER_BIN=str(server), OPENWORK_MICROSANDBOX_IMAGE=ref2)
        tags.append(ref2)
        changed = build_image(changed_settings)
        second = push_image(changed_settings)

        prod_base, test_base = image_size(PROD_BASE), image_size(TEST_BASE)
        figures = {
            "cold_build_seconds": cold["seconds"],
            "cold_build_downloaded_bytes": cold["downloaded_bytes"],
            "noop_rebuild_seconds": noop["seconds"],
            "noop_rebuild_downloaded_bytes": noop["downloaded_bytes"],
            "noop_rebuild_cache": f"{noop['cache_hits']}/{noop['build_steps']}",
            "noop_same_image_id": noop["image_id"] == cold["image_id"],
            "image_size_bytes": cold["size"],
            "programs_bytes": cold["binaries_size"],
            "overhead_bytes": cold["overhead"],
            "overhead_on_production_base_bytes": cold["overhead"] - test_base + prod_base if prod_base else None,
            "first_push_bytes": first["bytes_pushed"],
            "first_push_layers": f"{first['layers_pushed']}/{first['layers']}",
            "first_push_seconds": first["seconds"],
            "server_change_build_seconds": changed["seconds"],
            "server_change_push_bytes": second["bytes_pushed"],
            "server_change_push_layers": f"{second['layers_pushed']}/{second['layers']}",
            "server_binary_bytes": server.stat().st_size,
        }
    except WorkflowError as exc:
        console.info(f"bench-image: {exc.message}")
        return 1
    finally:
        registry.close()
        for tag in tags:
            subprocess.run(["docker", "rmi", tag], capture_output=True)
        shutil.rmtree(os.environ["MSB_HOME"], ignore_errors=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)

    hb = console.human_bytes
    f = figures
    if as_json:
        console.emit_json(f)
        return 0
    console.info("")
    console.print_table(
        [
            ["cold build", f"{f['cold_build_seconds']:.1f} s", f"downloaded {hb(f['cold_build_downloaded_bytes'])}"],
            [
                "no-op rebuild",
                f"{f['noop_rebuild_seconds']:.1f} s",
                f"downloaded {hb(f['noop_rebuild_downloaded_bytes'])}, docker cache {f['noop_rebuild_cache']}, "
                f"same image id: {f['noop_same_image_id']}",
            ],
            [
                "image size",
                hb(f["image_size_bytes"]),
                f"programs {hb(f['programs_bytes'])}, overhead {hb(f['overhead_bytes'])} (test base with python3); "
                f"on the production base {hb(f['overhead_on_production_base_bytes'])}",
            ],
            [
                "first push",
                hb(f["first_push_bytes"]),
                f"{f['first_push_layers']} layers in {f['first_push_seconds']:.1f} s",
            ],
            [
                "server-only change",
                hb(f["server_change_push_bytes"]),
                f"{f['server_change_push_layers']} layers pushed; server binary {hb(f['server_binary_bytes'])}; "
                f"rebuild {f['server_change_build_seconds']:.1f} s",
            ],
        ],
        headers=["figure", "value", "detail"],
    )
    return 0


if __name__ == "__main__":
    back_to_caller_cwd()
    sys.exit(main())
