"""msb's launch probe: every boot of a microVM (create, start, the boot for a copy) goes through
:func:`booting`.

Before each boot the SDK asks the msb it selected which launch contract it speaks (``msb
__launch-protocol``) and gives it PROBE_TIMEOUT_S. An msb that does not answer in time is taken for
an old one and the boot fails with the SDK's "selected msb runtime does not support ...; upgrade
msb": wrong advice when msb is current and the host only busy or slow. :func:`booting` tries such a
boot again, msb's file read first each time so its start is not paged in from disk;
:func:`probe_failure_message` says in one line what happened when every try missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from openwork_sandbox.core import console

PROBE_MARK = "selected msb runtime does not support"  # the SDK's words for a probe not answered in time
PROBE_TIMEOUT_S = 2  # the SDK's own limit, in seconds (not a setting of the SDK)
PAUSES_S = (2.0, 4.0, 8.0, 16.0)  # seconds between tries, longer each time so that a busy moment passes
TRIES = len(PAUSES_S) + 1

T = TypeVar("T")


def selected_msb() -> str | None:
    """The msb the SDK boots with (its own choice: MSB_PATH, MSB_HOME's, the wheel's), if it says."""
    try:
        from microsandbox._microsandbox import resolved_msb_path  # in the SDK's .pyi, not re-exported

        return resolved_msb_path()
    except Exception:
        return None


def read_through(path: str | None) -> None:
    """Read the file at ``path`` once, so that the page cache holds it when msb starts; nothing when
    ``path`` is None or cannot be read."""
    if not path:
        return
    try:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except OSError:
        pass


def is_probe_failure(error: Exception | str) -> bool:
    """Whether ``error`` (or its text) is the SDK's failure of a launch probe not answered in time."""
    return PROBE_MARK in str(error)


async def booting(boot: Callable[[], Awaitable[T]]) -> T:
    """``await boot()``, tried again (TRIES in all, PAUSES_S apart, a line on the console before each
    new try) while it fails because msb did not answer the SDK's launch probe in time; msb's file is
    read before each try. Returns what ``boot`` returns; raises the last ``UnsupportedError`` when
    every try missed, and anything else ``boot`` raises at once."""
    from microsandbox import UnsupportedError

    for attempt in range(1, TRIES + 1):
        read_through(selected_msb())
        try:
            return await boot()
        except UnsupportedError as exc:
            if not is_probe_failure(exc) or attempt == TRIES:
                raise
            console.info(
                f"msb did not answer microsandbox's launch probe within its {PROBE_TIMEOUT_S} s (a busy or "
                f"slow host); trying again ({attempt + 1} of {TRIES})"
            )
            await asyncio.sleep(PAUSES_S[attempt - 1])
    raise AssertionError("unreachable")  # the loop returns or raises


def probe_failure_message(what: str, error: Any) -> str | None:
    """One line for a boot that failed TRIES times on the probe ("microsandbox could not <what>: ...",
    naming msb and what to check), or None when ``error`` is something else."""
    if not is_probe_failure(error):
        return None
    from importlib import metadata

    msb = selected_msb() or "msb"
    return (
        f"microsandbox could not {what}: {msb} did not answer the SDK's launch probe (`msb __launch-protocol`) "
        f"within its {PROBE_TIMEOUT_S} s, {TRIES} times, so the SDK took it for an older msb; this host is too "
        f"busy or slow right now: try again when it is quieter (time `{msb} __launch-protocol`: it answers in "
        f"milliseconds on an idle host), and check that MSB_PATH and MSB_HOME name no msb older than the "
        f"SDK's {metadata.version('microsandbox')}"
    )
