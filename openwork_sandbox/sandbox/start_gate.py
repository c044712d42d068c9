"""What the image's start gates (``image/context/opencode-gate.js``) said in the log, as `up`'s lines.

In the image opencode and openwork-server each sit behind a start gate that listens on the
program's port at once and holds every request until the program answers (why:
docs/design-notes/sandbox.md). Each gate prints lines starting with ``opencode-gate:`` /
``openwork-server-gate:``: "still starting" lines while the program uses CPU, and one "answered
after N ms" line (with ``start race held off`` when opencode dropped requests first). ``up`` turns
them into one line of its own each (:func:`race_note`, :func:`slow_start_note`), and ends a start whose
server gate found its port taken (:func:`port_in_use`); ``logs`` shows the originals. An image without gates gives no lines, and the notes are None.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

GATE_MARK = "opencode-gate:"
SERVER_GATE_MARK = "openwork-server-gate:"
RACE_MARK = "start race held off"
ANSWERED_RE = re.compile(r"(opencode|openwork-server)-gate: .*?\1 answered after (\d+) ms")
TAIL_LINES = 150  # the gates' lines come before ~40 lines of start report, and progress lines before them
SLOW_START_SECONDS = 10.0  # a start this long says so in one line: the orchestrator's own limit for each program


def port_in_use(lines: Iterable[str], port: int) -> bool:
    """Whether ``lines`` (the log's last few) say openwork-server's gate could not listen on ``port``
    because another program holds it (OPENWORK_LAUNCH=server: no orchestrator moves it elsewhere, the
    gate exits and the supervisor tries again for ever)."""
    mark = re.compile(rf"{SERVER_GATE_MARK} cannot listen on \S+:{port}: EADDRINUSE\b")
    return any(mark.search(line) for line in lines)


def race_note(lines: Iterable[str]) -> str | None:
    """One line for `up` when the gate held off the start race, else None (also for old images)."""
    for line in reversed(list(lines)):
        found = ANSWERED_RE.search(line)
        if not found or found.group(1) != "opencode":
            continue
        if RACE_MARK not in line:
            return None
        dropped = re.search(r"dropped (\d+) request", line)
        count = dropped.group(1) if dropped else "a"
        return (
            f"start race held off: opencode dropped {count} early request(s) (the upstream start race); "
            "the image's start gate retried them, so no restart was needed"
        )
    return None


def answer_times(lines: Iterable[str]) -> dict[str, float]:
    """Seconds each gated program took to answer in the latest start (``{"opencode": 39.3, ...}``)."""
    times: dict[str, float] = {}
    for line in lines:
        found = ANSWERED_RE.search(line)
        if found:
            program = found.group(1)
            if program == "opencode":  # a new start: forget an earlier start's server time
                times.pop("openwork-server", None)
            times[program] = int(found.group(2)) / 1000
    return times


def slow_start_note(seconds: float, lines: Iterable[str], *, cpus: float | None = None) -> str | None:
    """One line when a start took ``SLOW_START_SECONDS`` or longer: how long, and which program was
    slow (from the gates' lines; the rest is the runtime's boot and the orchestrator), else None."""
    if seconds < SLOW_START_SECONDS:
        return None
    times = answer_times(lines)
    rest = max(0.0, seconds - sum(times.values()))
    if times:
        slowest = max(times, key=times.get)
        others = [f"{name} {took:.1f}s" for name, took in times.items() if name != slowest]
        which = (
            f"{slowest} was slowest ({times[slowest]:.1f}s to answer; "
            + "; ".join(others + [f"boot and orchestrator {rest:.1f}s"])
            + ")"
        )
    else:
        which = "the image has no start gate to say which program was slow (`invoke logs` shows the start)"
    limit = f", this sandbox has {cpus:g} CPU" if cpus is not None and cpus < 1 else ""
    return f"slow start: healthy after {seconds:.1f}s; {which}; the host is busy or slow{limit}"
