"""A swarm sandbox's log through the manager (``docker service logs``), followed until the sandbox's
task ends.

``docker service logs --follow`` never ends by itself: it waits for the service's next task, also
after ``down`` scaled it to 0. So :func:`follow` polls instead: every :data:`POLL` seconds it asks for
the lines since the last one it gave (``--timestamps --since``), and it ends once ``running()`` says
the task it began with no longer runs, after the last lines that task wrote.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from openwork_sandbox.core import processes

POLL = 2.0
EMPTY_TRIES = 4
BASE = ["docker", "service", "logs", "--raw", "--no-trunc"]


def lines(name: str, *, tail: int | None = None, since: str | None = None, stamped: bool = False) -> Iterator[str]:
    """The service's log lines as they are now (``since``: seconds ``"90s"`` or an RFC 3339 time)."""
    argv = [*BASE, *(["--timestamps"] if stamped else [])]
    if tail is not None:
        argv += ["--tail", str(tail)]
    if since is not None:
        argv += ["--since", since]
    yield from processes.stream_lines([*argv, name])


def settled(name: str, running: Callable[[], bool], *, tail: int | None, since: str | None) -> list[str]:
    """The log as it is now (:func:`lines`), asked again up to :data:`EMPTY_TRIES` times while it comes
    back empty but the task runs: the manager sometimes answers nothing, exit 0, while it has not yet
    subscribed to the node's log stream (seen on a freshly made swarm, a healthy sandbox's
    ``docker service logs --tail 5`` empty)."""
    for attempt in range(EMPTY_TRIES):
        got = list(lines(name, tail=tail, since=since))
        if got or attempt == EMPTY_TRIES - 1 or not running():
            return got
        time.sleep(1.0)
    return []


def _key(stamp: str) -> str:
    """An RFC 3339 stamp that sorts as a string: the fraction padded to nanoseconds (Docker drops trailing zeros)."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    return f"{head}.{frac.ljust(9, '0')}"


def follow(name: str, running: Callable[[], bool], *, tail: int | None, since_s: float | None) -> Iterator[str]:
    """The log as it grows, until ``running()`` is False (see the module doc); lines without their stamp."""
    since = f"{int(since_s)}s" if since_s is not None else None
    last, last_raw, seen = None, None, set()  # the newest stamp given (sortable, as Docker wrote it), its lines
    first = True
    while True:
        alive = running()
        fresh = []
        asked = since if first else last_raw
        for line in lines(name, tail=tail if first else None, since=asked, stamped=True):
            raw, _, text = line.partition(" ")
            stamp = _key(raw)
            if last is not None and (stamp < last or (stamp == last and line in seen)):
                continue
            if stamp != last:
                last, last_raw, seen = stamp, raw, set()
            seen.add(line)
            fresh.append(text)
        yield from fresh
        first = False
        if not alive:
            return
        time.sleep(POLL)
