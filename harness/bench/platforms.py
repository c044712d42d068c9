"""Print the figures of a two-platform build (a benchmark: it prints, it asserts nothing).

    scripts/bench-platforms [--json] [--keep]

Builds the test stack for linux/amd64 and linux/arm64 (real openwork and opencode of each platform
from npm at OPENCODE_VERSION=1.18.18, the stand-in server, on openwork-base:bookworm-slim-python and
its arm64 twin from scripts/make-base-image --platform linux/arm64), then rebuilds it three times
without a change: in this process (build_image's own seconds) and as a user runs it
(`invoke build-image`, wall clock, Python's start included). The download cache is the tests' one
(OPENWORK_TEST_CACHE_DIR, else .state/test-cache), so the first build's figure is a warm-cache
build. Its state and image tags live under .state/bench-platforms-<pid>/ and are removed at the
end unless --keep.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys

from harness.common import ROOT, STANDIN_SERVER, back_to_caller_cwd, empty_env_file, run_task, task_env

BASE = "openwork-base:bookworm-slim-python"


def main() -> int:
    as_json, keep = "--json" in sys.argv, "--keep" in sys.argv
    from openwork_sandbox.config import load_settings
    from openwork_sandbox.core import console
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.image.multiplatform import build_image

    work = ROOT / ".state" / f"bench-platforms-{os.getpid()}"
    work.mkdir(parents=True)
    cache = os.environ.get("OPENWORK_TEST_CACHE_DIR") or str(ROOT / ".state" / "test-cache")
    env = {
        "OPENWORK_PLATFORMS": "linux/amd64,linux/arm64",
        "OPENCODE_VERSION": "1.18.18",
        "OPENWORK_BASE_IMAGE": f"linux/amd64={BASE},linux/arm64={BASE}-arm64",
        "OPENWORK_SERVER_BIN": f"linux/amd64={STANDIN_SERVER},linux/arm64={STANDIN_SERVER}",
        "OPENWORK_CACHE_DIR": cache,
        "OPENWORK_STATE_DIR": str(work / "state"),
        "OPENWORK_MICROSANDBOX_IMAGE": f"openwork-microsandbox-bench-platforms-{os.getpid()}:both",
    }
    empty = empty_env_file(work)
    figures: dict = {}
    built = None
    try:
        for platform in ("linux/arm64",):
            subprocess.run(
                [
                    str(ROOT / "scripts" / "make-base-image"),
                    f"{BASE}-arm64",
                    "--include",
                    "python3-minimal",
                    "--platform",
                    platform,
                ],
                check=True,
                capture_output=True,
                timeout=900,
            )
        settings = load_settings(environ=env, env_file=empty, root=ROOT)
        console.info("== first build of both platforms (warm download cache)")
        built = build_image(settings)
        inproc = []
        for i in range(3):
            console.info(f"== no-op rebuild {i + 1} (in this process)")
            inproc.append(build_image(settings)["seconds"])
        cli = []
        for _ in range(3):  # env sets OPENCODE_VERSION too: the caller's is not used
            proc = run_task("build-image", env={**task_env(env), "PYTHONPATH": str(ROOT)}, env_file=empty)
            cli.append(round(proc.seconds, 2))
            if proc.returncode != 0:
                console.info(proc.stderr)
                return 1
        figures = {
            "first_build_seconds": built["seconds"],
            "first_build_downloaded_bytes": built["downloaded_bytes"],
            "noop_rebuild_seconds_in_process": inproc,
            "noop_rebuild_seconds_cli_wall": cli,
            "noop_rebuild_cli_median": statistics.median(cli),
            "platforms": [p["platform"] for p in built["platforms"]],
            "index": built["index"]["digest"],
            "load_average": os.getloadavg()[0],
        }
    except WorkflowError as exc:
        console.info(f"bench-platforms: {exc.message}")
        return 1
    finally:
        if built:
            for p in built["platforms"]:
                subprocess.run(["docker", "rmi", p["tag"]], capture_output=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    if as_json:
        console.emit_json(figures)
        return 0
    console.info("")
    console.print_table([[k, str(v)] for k, v in figures.items()])
    return 0


if __name__ == "__main__":
    back_to_caller_cwd()
    sys.exit(main())
