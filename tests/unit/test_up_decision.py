"""`up`'s decision table (up_decision.decide_up), without Docker: observed state -> one action.

The expected answers are literals; no runtime, server or port is touched.
"""

from __future__ import annotations

import pytest

from openwork_sandbox.runtimes.base import ABSENT, RUNNING, STOPPED, RuntimeStatus
from openwork_sandbox.sandbox.decision import Observed, decide_up

FP = "fp-now"
HEALTH = {"ok": True, "version": "0.18.1"}

ABSENT_ST = RuntimeStatus(ABSENT)
STOPPED_ST = RuntimeStatus(STOPPED, fingerprint=FP, detail="exited, exit code 0")
STOPPED_OLD = RuntimeStatus(STOPPED, fingerprint="fp-then")
RUNNING_ST = RuntimeStatus(RUNNING, fingerprint=FP, server_running=True)
RUNNING_OLD = RuntimeStatus(RUNNING, fingerprint="fp-then", server_running=True)
NO_SERVER = RuntimeStatus(RUNNING, fingerprint=FP, server_running=False, detail="running, server job exited")
UNKNOWN_SERVER = RuntimeStatus(RUNNING, fingerprint=FP, server_running=None)


def seen(status, *, recorded="docker", kind="docker", replace=False, health=None, port_free=True):
    return Observed(
        name="sb",
        kind=kind,
        recorded=recorded,
        status=status,
        fingerprint=FP,
        replace=replace,
        health=health,
        port_free=port_free,
    )


@pytest.mark.parametrize(
    "observed, action, done, reason, remove_old, port_busy",
    [
        (seen(ABSENT_ST, recorded=None), "create", "created", "creating it", None, False),
        (seen(ABSENT_ST, recorded=None, port_free=False), "create", "created", "creating it", None, True),
        (seen(RUNNING_ST, replace=True, health=HEALTH), "recreate", "recreated", "--replace", None, False),
        (seen(STOPPED_ST, replace=True, port_free=False), "recreate", "recreated", "--replace", None, True),
        (
            seen(RUNNING_OLD, health=HEALTH, port_free=False),
            "recreate",
            "recreated",
            "another image or settings",
            None,
            False,
        ),  # the port is held by the old one itself
        (seen(STOPPED_OLD), "recreate", "recreated", "another image or settings", None, False),
        (seen(STOPPED_ST), "start", "started", "is stopped", None, False),
        (seen(STOPPED_ST, port_free=False), "start", "started", "is stopped", None, True),
        (seen(NO_SERVER, port_free=False), "relaunch", "relaunched", "server job exited", None, False),
        (seen(RUNNING_ST, health=HEALTH, port_free=False), "reuse", "reused", "nothing to do", None, False),
        (seen(RUNNING_ST, health=None, port_free=False), "wait", "waited", "waiting", None, False),
        (seen(UNKNOWN_SERVER, health=None, port_free=False), "wait", "waited", "waiting", None, False),
        # the runtime changed: the old runtime's sandbox goes first, and may hold the port
        (
            seen(ABSENT_ST, recorded="docker", kind="microsandbox", port_free=False),
            "create",
            "created",
            "creating it",
            "docker",
            False,
        ),
        (
            seen(RUNNING_ST, recorded="microsandbox", health=HEALTH),
            "reuse",
            "reused",
            "nothing to do",
            "microsandbox",
            False,
        ),
    ],
)
def test_decide_up(observed, action, done, reason, remove_old, port_busy):
    d = decide_up(observed)
    assert (d.action, d.done, d.remove_old, d.port_busy) == (action, done, remove_old, port_busy), d
    assert reason in d.reason, d.reason
