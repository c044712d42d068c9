"""Build the image the microVM end-to-end run boots, and print its reference (last stdout line).

    scripts/microvm-image [--real] [--ref REF] [--force]

The nested microVM under emulation has no AVX, so the real orchestrator (a Bun executable that
needs it) cannot start there. This image is made by the product's own `build-image` code, with
every override a user has for their own builds:

- base `openwork-base:bookworm-slim-python` (Debian slim + python3-minimal; made with
  scripts/make-base-image when missing);
- `OPENWORK_SERVER_BIN=tests/standins/standin_openwork_server.py` (the real server is not
  downloadable here);
- `OPENWORK_ORCHESTRATOR_BIN_PATH=tests/standins/standin_openwork_orchestrator.py` (the stand-in
  for `openwork serve`);
- the real opencode (the baseline build, from the npm registry, checked against its integrity).

`--real` builds the same but with the real orchestrator (0.18.1 from npm), for the run that shows
how the product reports a CPU without AVX. Tagged `127.0.0.1:5000/openwork-microsandbox-e2e:dev`
(`:real`) in the local engine; `scripts/microvm-host` carries it into the emulated host, whose
`push-image` pushes it to the registry on the guest's loopback.

Cached: when the inputs (the two stand-ins, the image folder, the base image, the pins) are those
of the last build and the tag still names that build's image, nothing is built. npm downloads go
to OPENWORK_TEST_CACHE_DIR (else .state/test-cache), shared with the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.common import (
    LOCAL_REGISTRY,
    ROOT,
    STANDIN_ORCHESTRATOR,
    STANDIN_SERVER,
    back_to_caller_cwd,
    docker_image_id,
    empty_env_file,
    teller,
)

BASE = "openwork-base:bookworm-slim-python"
REPO = f"{LOCAL_REGISTRY}/openwork-microsandbox-e2e"
STATE = ROOT / ".state" / "microvm-image"

say = teller("microvm-image")


def inputs_key(environ: dict[str, str], base_id: str) -> str:
    """What the image is made of: a change to any of these builds it again."""
    from openwork_sandbox.image.build import CONTEXT_FILES, IMAGE_DIR

    digest = hashlib.sha256()
    files = [IMAGE_DIR / name for name in CONTEXT_FILES] + [STANDIN_SERVER]
    if "OPENWORK_ORCHESTRATOR_BIN_PATH" in environ:
        files.append(STANDIN_ORCHESTRATOR)
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    pins = {
        k: v
        for k, v in sorted(os.environ.items())
        if k.endswith("_VERSION") and k.startswith(("OPENWORK_", "OPENCODE_"))
    }
    digest.update(json.dumps([base_id, sorted(environ.items()), pins]).encode())
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(prog="microvm-image", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--real", action="store_true", help="bake the real orchestrator (0.18.1) instead of the stand-in"
    )
    parser.add_argument("--ref", help=f"tag to build (default {REPO}:dev, or :real)")
    parser.add_argument("--force", action="store_true", help="build even when nothing changed")
    args = parser.parse_args()
    ref = args.ref or f"{REPO}:{'real' if args.real else 'dev'}"

    proc = subprocess.run([str(ROOT / "scripts" / "make-base-image"), BASE, "--include", "python3-minimal"])
    if proc.returncode != 0:
        say(f"could not make the base image {BASE}")
        return 1
    base_id = docker_image_id(BASE) or ""
    environ = {
        "OPENWORK_BASE_IMAGE": BASE,
        "OPENWORK_SERVER_BIN": str(STANDIN_SERVER),
        "OPENWORK_CACHE_DIR": os.environ.get("OPENWORK_TEST_CACHE_DIR") or str(ROOT / ".state" / "test-cache"),
        "OPENWORK_STATE_DIR": str(STATE / ("real" if args.real else "dev")),
        "OPENWORK_MICROSANDBOX_IMAGE": ref,
    }
    if not args.real:
        environ["OPENWORK_ORCHESTRATOR_BIN_PATH"] = str(STANDIN_ORCHESTRATOR)
    key = inputs_key(environ, base_id)
    stamp = Path(environ["OPENWORK_STATE_DIR"]) / "microvm-image.json"
    try:
        last = json.loads(stamp.read_text())
    except (OSError, ValueError):
        last = {}
    if not args.force and last.get("key") == key and last.get("image_id") and docker_image_id(ref) == last["image_id"]:
        say(f"{ref} is up to date ({last['image_id'][:19]}): nothing to build")
        print(ref)
        return 0

    from openwork_sandbox.config import load_settings
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.core.files import write_atomic
    from openwork_sandbox.image.build import build_image

    with tempfile.TemporaryDirectory() as tmp:
        env_file = empty_env_file(Path(tmp))
        try:
            settings = load_settings(
                environ={
                    **{k: v for k, v in os.environ.items() if k.endswith("_VERSION") or k == "NPM_CONFIG_REGISTRY"},
                    **environ,
                },
                env_file=env_file,
                root=ROOT,
            )
            built = build_image(settings)
        except WorkflowError as exc:  # SettingsError too
            say(f"build failed: {exc}")
            return 1
    stamp.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(
        stamp, json.dumps({"key": key, "image_id": built["image_id"], "ref": ref}, indent=2) + "\n", mode=0o644
    )
    print(ref)
    return 0


if __name__ == "__main__":
    back_to_caller_cwd()
    sys.exit(main())
