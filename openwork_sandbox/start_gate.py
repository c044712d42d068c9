"""What the image's opencode start gate (``openwork_sandbox/image/opencode-gate.js``) said in the log.

opencode 1.17 listens before it attaches its HTTP handler; a request that connects in between is
read and never answered, and orchestrator 0.18 waits for its first health answer forever. The
gate in the image keeps the orchestrator away from opencode until opencode answers, and prints
one line starting with ``opencode-gate:``; when opencode dropped requests first, that line says
``start race held off``. ``up`` turns it into one line of its own, and ``logs`` shows the original.
"""

from __future__ import annotations

import re
from typing import Iterable

GATE_MARK = "opencode-gate:"
RACE_MARK = "start race held off"
TAIL_LINES = 60  # the gate's line is followed by ~30 lines of the orchestrator's start report


def race_note(lines: Iterable[str]) -> str | None:
    """One line for `up` when the gate held off the start race, else None (also for old images)."""
    for line in reversed(list(lines)):
        if GATE_MARK not in line:
            continue
        if RACE_MARK not in line:
            return None
        found = re.search(r"dropped (\d+) request", line)
        dropped = found.group(1) if found else "a"
        return (f"start race held off: opencode dropped {dropped} early request(s) (the upstream start race); "
                "the image's start gate retried them, so no restart was needed")
    return None
