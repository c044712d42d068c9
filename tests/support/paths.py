"""Where the test suite finds things: the checkout, the local registry, the stand-ins, the test
stack's names and caches. Two checkouts on one machine share the engine and the registry:
``OPENWORK_TEST_STACK_REPO`` gives each its own repository, ``OPENWORK_TEST_CACHE_DIR`` lets them
share one download cache."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
STANDINS = TESTS / "standins"  # stand-ins for programs that cannot run here, and test doubles
DATA = TESTS / "data"
REGISTRY = "127.0.0.1:5000"
TEST_BASE_IMAGE = "openwork-base:bookworm-slim-python"  # + python3-minimal for the stand-in server
ARM_BASE = TEST_BASE_IMAGE + "-arm64"  # the same for linux/arm64
PROD_BASE_IMAGE = "openwork-base:bookworm-slim"
STANDIN_SERVER = STANDINS / "standin_openwork_server.py"
STANDIN_ORCHESTRATOR = STANDINS / "standin_openwork_orchestrator.py"

STACK_REPO = os.environ.get("OPENWORK_TEST_STACK_REPO") or "openwork-microsandbox-test"
STACK_TAG = "stack"
STACK_CACHE_DIR = Path(os.environ.get("OPENWORK_TEST_CACHE_DIR") or ROOT / ".state" / "test-cache")  # npm downloads
STACK_STATE_DIR = ROOT / ".state" / "test-stack"  # build context, last-build.json
# An image already in the local engine to use as the stack image, pushed but not built (inside the
# emulated host: scripts/microvm-image's image with the stand-in orchestrator and server)
PREBUILT_STACK = os.environ.get("OPENWORK_TEST_STACK_IMAGE")
