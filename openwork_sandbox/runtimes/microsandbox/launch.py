"""msb's launch probe: what a boot of a microVM (create, start) needs from the msb binary first.

Before each boot the SDK asks the msb it selected which launch contract it speaks (it runs
``msb __launch-protocol``) and gives it 2 s: measured with the SDK 0.7.11, a probe answering in 1.9 s
passes and one in 2.5 s fails. An msb that does not answer in time is taken for an old one, and the
boot fails with "sandbox.start() is not supported by this backend: selected msb runtime does not
support network.http.deny_response; upgrade msb ...": advice that is wrong when msb is current and
the host only busy or slow (seen in an emulated host while its engine loaded an image, after a pull
of 169 s). So a boot is tried again when that happens (:func:`booting`), msb's file read first each
time so that its next start is not paged in from disk, and a boot that still fails says what happened
(:func:`probe_failure_message`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, TypeVar

from openwork_sandbox.core import console

PROBE_MARK = "selected msb runtime does not support"  # the SDK's words for a probe not answered in time
PROBE_TIMEOUT_S = 2  # the SDK's (measured above; not a setting of the SDK)
# Between tries, longer each time: a busy moment passes (measured in the emulated host, one vCPU: the
# probe answers in 0.34-0.53 s idle and in 0.9-1.8 s while an image is read beside it; three quick
# tries all missed there once, during a 5-minute image load)
PAUSES_S = (2.0, 4.0, 8.0, 16.0)
TRIES = len(PAUSES_S) + 1

T = TypeVar("T")


def selected_msb() -> str | None:
    """The msb the SDK boots with (its own choice: MSB_PATH, MSB_HOME's, the wheel's), if it says."""
    try:
        from microsandbox._microsandbox import resolved_msb_path  # in the SDK's .pyi, not re-exported

        return resolved_msb_path()
    except Exception:  # noqa: BLE001 - an SDK without it (or one that cannot resolve): only a hint is lost
        return None


def read_through(path: str | None) -> None:
    """Read the file at PATH once (52 MB for msb 0.7.11: 7-16 ms here), so that the page cache holds
    it when msb starts; nothing when there is no such file."""
    if not path:
        return
    try:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except OSError:
        pass


def is_probe_failure(error: Exception | str) -> bool:
    return PROBE_MARK in str(error)


async def booting(boot: Callable[[], Awaitable[T]]) -> T:
    """``await boot()``, tried again (TRIES in all, PAUSES_S apart) while it fails because msb did not
    answer the SDK's launch probe in time; msb's file is read before each try."""
    from microsandbox import UnsupportedError

    for attempt in range(1, TRIES + 1):
        read_through(selected_msb())
        try:
            return await boot()
        except UnsupportedError as exc:
            if not is_probe_failure(exc) or attempt == TRIES:
                raise
            console.info(f"msb did not answer microsandbox's launch probe within its {PROBE_TIMEOUT_S} s (a busy or "
                         f"slow host); trying again ({attempt + 1} of {TRIES})")
            await asyncio.sleep(PAUSES_S[attempt - 1])
    raise AssertionError("unreachable")  # the loop returns or raises


def probe_failure_message(what: str, error: Any) -> str | None:
    """One line for a boot that failed TRIES times on the probe ("could not WHAT: ..."), or None when
    ``error`` is something else."""
    if not is_probe_failure(error):
        return None
    from importlib import metadata

    msb = selected_msb() or "msb"
    return (f"microsandbox could not {what}: {msb} did not answer the SDK's launch probe (`msb __launch-protocol`) "
            f"within its {PROBE_TIMEOUT_S} s, {TRIES} times, so the SDK took it for an older msb; this host is too "
            f"busy or slow right now: try again when it is quieter (time `{msb} __launch-protocol`: it answers in "
            f"milliseconds on an idle host), and check that MSB_PATH and MSB_HOME name no msb older than the "
            f"SDK's {metadata.version('microsandbox')}")
