"""Ctrl+C and CI's SIGTERM: one rule for tasks that must clean up after themselves.

``sigterm_as_interrupt`` makes SIGTERM (what CI sends to cancel a job) raise KeyboardInterrupt, as
Ctrl+C does, so the same ``except KeyboardInterrupt`` cleanup runs for both; ``no_interrupts`` holds
both signals off while that cleanup runs; ``stopped_in_one_line`` ends a block either signal
interrupted with one line instead (an ``Interrupted`` error, exit 130). They only act in the main
thread (signal handlers can be set nowhere else) and restore the previous handlers.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable

from openwork_sandbox.core.errors import Interrupted


@contextlib.contextmanager
def sigterm_as_interrupt():
    """CI cancels with SIGTERM: treat it like Ctrl+C so the teardown runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def no_interrupts():
    """Let a teardown finish: SIGINT/SIGTERM are held off while it runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def stopped_in_one_line(said: Callable[[], str]):
    """SIGTERM as Ctrl+C for the block (:func:`sigterm_as_interrupt`); either ends it as an
    ``Interrupted`` error whose one line is ``said()`` (called then: what was stopped, what is left as
    it was). The programs the block ran are stopped on the way out (``core.processes``); an
    ``Interrupted`` raised inside the block (a step that words its own line) goes on as it is."""
    with sigterm_as_interrupt():
        try:
            yield
        except KeyboardInterrupt:
            raise Interrupted(said()) from None
