"""One row of ``invoke doctor``: :class:`Check`, shared by ``doctor`` and its swarm rows (``doctor_swarm``)."""

from __future__ import annotations

import dataclasses

from openwork_sandbox.runtimes.choice import DOCKER, MICROSANDBOX

BOTH = frozenset({DOCKER, MICROSANDBOX})


@dataclasses.dataclass
class Check:
    """One row: the check's name, whether it passed, what it found, what to do when it did not, and
    the runtimes that need it to pass (the exit code counts only the chosen runtime's)."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    needed_by: frozenset = BOTH

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "ok": self.ok,
            "detail": self.detail,
            "fix": self.fix,
            "needed_by": sorted(self.needed_by),
        }
