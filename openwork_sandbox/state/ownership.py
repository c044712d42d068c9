"""Who made a sandbox, and whether anything still owns it.

Every sandbox ``up`` makes carries marks (Docker labels ``org.openwork-sandbox.<key>``, microVM
labels ``openwork-sandbox.<key>``): ``state-dir``, the ``.state/<name>/`` folder that owns it; and
for a ``smoke --ephemeral`` one also ``ephemeral=1``, ``owner`` (``host:pid:start``, the smoke
process) and ``expires`` (Unix seconds: now + OPENWORK_EPHEMERAL_MAX_DURATION).

:func:`judge` is the one rule, a pure function over those marks and two facts: a sandbox is
*stale* (``reset --stale`` removes it) when it is ephemeral and its job is gone or its time is up;
it is an *orphan* (``doctor`` lists it) when no state folder owns it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable, Mapping

STATE_DIR, EPHEMERAL, OWNER, EXPIRES = "state-dir", "ephemeral", "owner", "expires"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_process() -> str:
    """``host:pid:start`` of the running process."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '-'}"


def owner_alive(owner: str) -> bool | None:
    """Whether the process named by ``owner`` runs; None when it cannot be told (another host)."""
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    now_start = _start_time(pid)
    return start in ("-", "") or now_start is None or now_start == start


def marks(state_dir: str, *, ephemeral: bool, max_duration: float, now: float | None = None) -> dict[str, str]:
    """The marks of a new sandbox owned by the folder ``state_dir``."""
    out = {STATE_DIR: state_dir}
    if ephemeral:
        out.update(
            {
                EPHEMERAL: "1",
                OWNER: this_process(),
                EXPIRES: str(int((now if now is not None else time.time()) + max_duration)),
            }
        )
    return out


@dataclasses.dataclass(frozen=True)
class Verdict:
    stale: str | None  # why reset --stale removes it, or None
    orphan: bool  # no .state/ folder owns it


def judge(
    found: Mapping[str, str], *, folder_exists: bool, now: float, alive: Callable[[str], bool | None] = owner_alive
) -> Verdict:
    """The rule (see the module doc). ``found`` are the sandbox's marks (keys without prefix)."""
    stale = None
    if found.get(EPHEMERAL) == "1":
        owner = found.get(OWNER, "")
        expires = found.get(EXPIRES, "")
        if owner and alive(owner) is False:
            stale = f"its job ({owner.split(':')[1] if owner.count(':') >= 1 else owner}) is gone"
        elif expires.isdigit() and int(expires) <= now:
            stale = f"its time ran out {int(now - int(expires))}s ago"
        elif not folder_exists:
            stale = "no state folder owns it"
    return Verdict(stale, not folder_exists)
