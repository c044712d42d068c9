"""What the swarm tests share: the real test image in the lab registry."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def lab_image(swarm_lab, stack_image) -> str:
    """The real test image (real orchestrator and opencode, the stand-in server), copied into the lab
    registry; its reference by digest."""
    return swarm_lab.seed(stack_image.ref)
