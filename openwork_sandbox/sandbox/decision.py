"""What ``up`` must do, decided before anything is done: a pure function, tested as a table.

``up`` observes (the record, the runtime's status, one health probe, whether the port is free),
calls :func:`decide_up`, then acts on the one named action and reports it:

    create    no sandbox of this name in the chosen runtime
    recreate  --replace, or it was created with another image or settings (state folders kept)
    start     it exists but is stopped
    relaunch  it runs but its server process does not
    reuse     it runs, the server answers /health, same image and settings: nothing to do
    wait      it runs and its server process is up but not healthy yet: wait for it

A sandbox recorded under another runtime is removed first (``remove_old``). An action that boots
something on the port needs the port free, unless a sandbox of ours may be holding it.
"""

from __future__ import annotations

import dataclasses

from openwork_sandbox.runtimes.base import ABSENT, RUNNING, RuntimeStatus

CREATE, RECREATE, START, RELAUNCH, REUSE, WAIT = "create", "recreate", "start", "relaunch", "reuse", "wait"
DONE = {
    CREATE: "created",
    RECREATE: "recreated",
    START: "started",
    RELAUNCH: "relaunched",
    REUSE: "reused",
    WAIT: "waited",
}  # what `up --json` reports as "action"
QUIET = frozenset({CREATE, WAIT})  # actions whose reason `up` does not print


@dataclasses.dataclass(frozen=True)
class Observed:
    """What ``up`` saw before deciding (read again under the sandbox's lock)."""

    name: str
    kind: str  # the runtime chosen for this sandbox
    recorded: str | None  # the runtime in .state/<name>/sandbox.json
    status: RuntimeStatus  # the chosen runtime's view of the sandbox
    fingerprint: str  # what the settings ask for (launch_spec's fingerprint)
    replace: bool
    health: dict | None  # GET /health's body when it answered healthy (only asked while it runs)
    port_free: bool
    changed: tuple[str, ...] = ()  # secret settings (OPENWORK_SANDBOX_ENV, ...) that differ from the sandbox's


@dataclasses.dataclass(frozen=True)
class UpDecision:
    """The one action (CREATE ... WAIT), the line `up` prints for it, and what must happen first."""

    action: str
    reason: str
    remove_old: str | None = None  # runtime whose sandbox of this name goes first
    port_busy: bool = False  # the action needs the port and something else holds it

    @property
    def done(self) -> str:
        """The past tense `up --json` reports as ``action``."""
        return DONE[self.action]


def decide_up(o: Observed) -> UpDecision:
    """The one action for ``o`` (see the module doc)."""
    st = o.status
    remove_old = o.recorded if o.recorded and o.recorded != o.kind else None
    if st.state == ABSENT:
        action, reason = CREATE, f"no sandbox {o.name} in {o.kind}: creating it"
    elif o.replace:
        action, reason = RECREATE, f"replacing {o.name} (--replace); state folders are kept"
    elif st.fingerprint != o.fingerprint:
        what = " and ".join(o.changed) if o.changed else "image or settings"
        action, reason = (
            RECREATE,
            (
                f"{o.name} was created with another {what}: recreating it so the change takes "
                "effect (state folders kept)"
            ),
        )
    elif st.state != RUNNING:
        action, reason = START, f"{o.name} is stopped: starting it"
    elif st.server_running is False:
        action, reason = RELAUNCH, f"{o.name} runs but its server does not ({st.detail}): relaunching the server"
    elif o.health is not None:
        action, reason = REUSE, "already running and healthy with the same image and settings: nothing to do"
    else:
        action, reason = WAIT, f"{o.name} runs and its server is starting: waiting for it"
    # a running sandbox of ours, or one under the old runtime, may be what holds the port
    needs_port = action in (CREATE, RECREATE, START) and st.state != RUNNING and remove_old is None
    return UpDecision(action, reason, remove_old, port_busy=needs_port and not o.port_free)
