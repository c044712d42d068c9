"""What the image's supervisor (``image/context/openwork-supervise``) says about the server.

The supervisor keeps its record in ``/data/supervisor.json``, which is ``<data dir>/supervisor.json``
on the host on both runtimes (the data folder is a bind mount). ``status`` reads it here: how many
restarts, the last exit and its reason, a crash loop; and :func:`unknown_restarts`, when that record
cannot be what a live sandbox's supervisor would say (missing, unreadable, from an earlier start, or
on a disk too full to take it): the supervisor skips a write it cannot make and runs on.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from openwork_sandbox.core.console import human_bytes

RECORD = "supervisor.json"


@dataclasses.dataclass(frozen=True)
class Supervision:
    """The supervisor's record, as far as it could be read (``problem`` says why not)."""

    restarts: int = 0
    crash_loop: bool = False
    state: str | None = None  # starting | running | backoff | stopping | stopped
    last_reason: str | None = None
    last_exit_at: float | None = None
    consecutive_failures: int = 0
    backoff_seconds: int = 0
    problem: str | None = None
    started_at: float | None = None  # when the supervisor that wrote it started (epoch seconds)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self, now: float | None = None) -> str:
        """One line for ``status``: "2 (last: ... 3m ago)", or the crash loop."""
        if self.problem:
            return self.problem
        text = str(self.restarts)
        if self.last_reason:
            ago = ""
            if self.last_exit_at:
                ago = f", {_ago((now or time.time()) - self.last_exit_at)} ago"
            text += f" (last: {self.last_reason}{ago})"
        if self.crash_loop:
            text = (
                f"CRASH LOOP: {self.consecutive_failures} starts in a row died before they stayed healthy; "
                f"retrying every {self.backoff_seconds}s; " + text
            )
        return text


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def read(data_dir: Path) -> Supervision | None:
    """The record in ``data_dir``; None when there is none (an image without the supervisor, or
    a sandbox that never started)."""
    path = Path(data_dir) / RECORD
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return Supervision(problem=f"{path} could not be read ({exc.__class__.__name__})")
    if not isinstance(raw, dict):
        return Supervision(problem=f"{path} is not a JSON object")
    last = raw.get("last_exit") if isinstance(raw.get("last_exit"), dict) else {}

    def number(value, kind=int):
        return kind(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else kind(0)

    return Supervision(
        restarts=number(raw.get("restarts")),
        crash_loop=raw.get("crash_loop") is True,
        state=raw.get("state") if isinstance(raw.get("state"), str) else None,
        last_reason=last.get("reason") if isinstance(last.get("reason"), str) else None,
        last_exit_at=number(last.get("at"), float) or None,
        consecutive_failures=number(raw.get("consecutive_failures")),
        backoff_seconds=number(raw.get("backoff_seconds")),
        started_at=number(raw.get("started_at"), float) or None,
    )


# the supervisor starts after the entrypoint, a little after the sandbox; `date +%s` truncates
STALE_SLACK_S = 5.0


def unknown_restarts(
    record: Supervision | None,
    *,
    data_dir: Path,
    live: bool,
    sandbox_started_at: float | None,
    free: int | None,
    tiny: int,
) -> str | None:
    """Why the restart count of a ``live`` sandbox (running, or restarted by its engine) is unknown,
    as a clause for ``status`` ("unknown: ..."); None when ``record`` can be taken at its word, and
    always when the sandbox is not live (the record is then its history).

    Unknown when ``record`` is None (nothing written), unreadable (``problem``), older than the
    sandbox's current start (``started_at`` before ``sandbox_started_at`` by more than
    :data:`STALE_SLACK_S`), or when the data folder has less than ``tiny`` bytes ``free`` (the
    supervisor may have failed to write since: "at least N"). Less than ``tiny`` free is named."""
    if not live:
        return None
    full = f" (disk full? {human_bytes(free)} free there)" if free is not None and free < tiny else ""
    if record is None:
        return f"unknown: the supervisor has written no record in {data_dir}{full}"
    if record.problem:
        return f"unknown: {record.problem}{full}"
    if (
        record.started_at is not None
        and sandbox_started_at is not None
        and record.started_at < sandbox_started_at - STALE_SLACK_S
    ):
        return (
            f"unknown: the supervisor could not write its record in {data_dir}; the one there is from an "
            f"earlier start ({record.restarts} then){full}"
        )
    if full:
        return f"unknown (at least {record.restarts}): the supervisor may not be able to write its record in {data_dir}{full}"
    return None
