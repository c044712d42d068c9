"""How a step of the scenario ends besides returning its one-line detail, and how the scenario speaks:
its step lines on stdout, its notes on stderr (``microvm-e2e: ...``)."""

from __future__ import annotations

from harness.common import teller


class StepFailed(Exception):
    """The step did not hold; the message says what was seen instead."""


class StepSkipped(Exception):
    """A step this host cannot run (said why); only where the runtime under test is Docker."""


def say(line: str) -> None:
    """A line of the scenario's result (stdout): a step's line, the figures line."""
    print(line, flush=True)


note = teller("microvm-e2e")
