"""The start watch: waiting for a booted sandbox's server to answer healthy, restarting a stuck start.

:func:`wait_until_ready` waits for ``GET /health`` with :class:`StartWatch` as its ``is_alive``,
restarts a start that stalls or dies early (up to ``START_ATTEMPTS`` starts in all), ends at once
on a CPU without AVX or a server moved off its port, then checks ``/workspaces``.
"""

from __future__ import annotations

import time

from openwork_sandbox.config import Settings
from openwork_sandbox.core import console
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes import LaunchSpec, Runtime
from openwork_sandbox.sandbox.avx import raise_if_no_avx
from openwork_sandbox.state import persist

LEFT_FOR_INSPECTION = "(the sandbox is left as it is for inspection; `invoke reset` removes it)"  # a failed start's end


def _port_taken(settings: Settings, moved_to: int) -> WorkflowError:
    """Another program took the port between `up`'s check and the server's start (host networking)."""
    from openwork_sandbox.net.ports import port_holder

    return WorkflowError(
        f"port {settings.port} was taken by {port_holder(settings.port)} before the server started, so the "
        f"orchestrator moved it to port {moved_to}, where clients do not look: stop that program, or choose "
        f"another port with --port / OPENWORK_MICROSANDBOX_PORT {LEFT_FOR_INSPECTION}"
    )


def _print_log_tail(rt: Runtime, lines: list[str] | None = None, hint: str | None = None) -> None:
    from openwork_sandbox.core import gha

    lines = rt.log_tail(40) if lines is None else lines
    gha.print_group(f"last {len(lines)} lines of the server log", lines or ["(no output)"])
    console.info(f"full log: {hint or rt.log_hint()}")


STALL_SECONDS = 20.0  # no new server output for this long while not healthy: the start is stuck
# (a slow start is not silent: the image's start gates print a line every 5 s in which the program
# they wait for used CPU, see start_gate)
AVX_LOOK_LINES = 40  # lines of the log each look reads: Bun's crash report is about 15 before the restart line
STALL_CHECK_EVERY = 2.0  # seconds between looks at the log's tail (each is a runtime call)
ALIVE_EVERY_MAX = 3.0  # is_alive() backs off from the health wait's 0.5 s to this (each is a runtime call)
# ...and where a runtime call itself is slow (an emulated or crowded host: a `docker` call took about
# 1 s in the emulated host, where a starting opencode got 15% of the one vCPU and Docker's cold `up`
# took 827 s, 213 s once spaced so), each kind of look (is_alive, the log's tail) is spaced so that it
# takes at most this share of the wall time: both together a tenth
LOOK_SHARE = 0.05
# ...and after "opencode server listening" the orchestrator's next line ("[opencode] Healthy") comes
# within milliseconds unless its one health request hangs for good: give up on it sooner
LISTENING_MARK = "opencode server listening"
LISTENING_STALL_SECONDS = 8.0
EARLY_DEATH_SECONDS = 30.0  # a server that exits this soon after (re)start gets another try
# Starts in all: the hang strikes about one start in ten even on a quiet machine (measured with
# plain `docker run`), so two restarts make a failed `up` from it about one in a thousand.
START_ATTEMPTS = 3


class _PortMoved(Exception):
    """The orchestrator found its port taken at start and serves on another one (``port``)."""

    def __init__(self, port: int):
        super().__init__(port)
        self.port = port


class _Stalled(Exception):
    def __init__(self, last_line: str, seconds: float):
        super().__init__(last_line)
        self.last_line, self.seconds = last_line, seconds


class StartWatch:
    """``is_alive`` for the health wait that also notices a start that stopped making progress.

    orchestrator 0.18 can hang for good when its first request to a just-started opencode is
    never answered (it has no timeout); its log then stops at "opencode server listening". A start
    that has printed and whose log has not changed for ``stall_s`` raises :class:`_Stalled` so `up`
    can restart it.
    Every look also reads Bun's "no AVX" crash report, which the image's supervisor would otherwise
    restart for ever (the sandbox never stops, so the wait would last its whole deadline), and the
    orchestrator's ready line: a server it moved to another port (its own was taken when it started)
    and that answers there raises :class:`_PortMoved` (the given port, someone else's, never would).
    """

    def __init__(self, rt: Runtime, stall_s: float | None, orchestrator_version: str, server_port: int):
        self.rt, self.stall_s, self.orchestrator_version = rt, stall_s, orchestrator_version
        self.server_port = server_port
        self.last_tail: list[str] | None = None
        self.changed_at = time.monotonic()
        self.next_check = self.changed_at + 1.0
        # fewer runtime calls the longer a start takes: ten starts at once on a small host would
        # otherwise spend a good part of its CPU on `docker inspect` / `docker logs`
        self.alive_every, self.next_alive = 0.5, self.changed_at

    @staticmethod
    def _next_look(began: float, every: float) -> float:
        """When to look again after a look that began at BEGAN: EVERY seconds on, or later where that
        look took long, so that looks take at most LOOK_SHARE of the time whatever the host's speed."""
        took = time.monotonic() - began
        return began + max(every, took / LOOK_SHARE)

    def __call__(self) -> bool:
        now = time.monotonic()
        if now >= self.next_alive:
            if not self.rt.is_alive():
                return False
            self.alive_every = min(self.alive_every * 1.5, ALIVE_EVERY_MAX)
            self.next_alive = self._next_look(now, self.alive_every)
        now = time.monotonic()
        if now >= self.next_check:
            recent = self.rt.log_tail(AVX_LOOK_LINES)
            self.next_check = self._next_look(now, STALL_CHECK_EVERY)
            # the image's supervisor restarts an orchestrator that dies, so one that a CPU without AVX
            # kills never stops the sandbox: its crash report in the log ends the wait at once
            raise_if_no_avx(self.orchestrator_version, recent, self.rt.log_hint())
            self._raise_if_port_moved(recent)
            tail = recent[-3:]
            if tail != self.last_tail:
                self.last_tail, self.changed_at = tail, now
            elif self.stall_s is not None and tail:
                # a start that has printed nothing yet has not stalled: it has not reached its first
                # program (a nested microVM under emulation took over 20 s to its first line, and
                # a restart there never became healthy); only the deadline ends it
                last = tail[-1].strip()
                limit = min(self.stall_s, LISTENING_STALL_SECONDS) if LISTENING_MARK in last else self.stall_s
                if now - self.changed_at >= limit:
                    raise _Stalled(last, now - self.changed_at)
        return True

    def _raise_if_port_moved(self, recent: list[str]) -> None:
        from openwork_sandbox.net.health import health_once
        from openwork_sandbox.net.ports import moved_server_port

        moved = moved_server_port(recent, self.server_port)
        # it is this start's server only if it answers there: a ready line an earlier run of the same
        # sandbox left in its log does not count (only a host-networked server can be asked from here)
        if moved is not None and health_once(f"http://127.0.0.1:{moved}") is not None:
            raise _PortMoved(moved)


def _fail_with_log(rt: Runtime, exc) -> WorkflowError:
    _print_log_tail(rt, exc.log_lines, exc.log_hint)
    return WorkflowError(f"{exc.message} {LEFT_FOR_INSPECTION}")


def wait_until_ready(settings: Settings, rt: Runtime, token: str, spec: LaunchSpec) -> tuple[dict, str | None]:
    """Wait for health (restarting a stuck or early-dying start, up to START_ATTEMPTS starts in
    all; the last one gets the whole deadline), then check /workspaces."""
    from openwork_sandbox.net.health import HealthTimeout, SandboxDied, check_workspaces, wait_for_health

    first_began = time.monotonic()
    for attempt in range(1, START_ATTEMPTS + 1):
        last_attempt = attempt == START_ATTEMPTS
        watch = StartWatch(rt, None if last_attempt else STALL_SECONDS, settings.orchestrator_version,
                           rt.server_port(spec))
        began = time.monotonic()
        again = f"start {attempt + 1} of {START_ATTEMPTS}"
        try:
            body = wait_for_health(settings.url, settings.health_timeout, is_alive=watch,
                                   timeout_s=min(5.0, settings.request_timeout), describe=rt.describe)
            break
        except _Stalled as exc:
            console.info(f"the server made no progress for {exc.seconds:.0f}s (last line: {exc.last_line}); "
                         f"restarting it, {again} (orchestrator 0.18 can hang on a just-started opencode)")
        except SandboxDied as exc:
            persist.raise_if_data_unwritable(settings, exc.log_lines)
            raise_if_no_avx(settings.orchestrator_version, exc.log_lines, exc.log_hint)
            fault = None if last_attempt else rt.machine_fault()
            if fault:  # not the server's doing, however late in the start: boot the machine again
                console.info(f"{fault} during start-up; starting it again, {again}")
            elif last_attempt or time.monotonic() - began > EARLY_DEATH_SECONDS:
                raise _fail_with_log(rt, exc) from None
            else:
                last = exc.log_lines[-1].strip() if exc.log_lines else "no output"
                console.info(f"the server exited during start-up (last line: {last}); {again}")
        except HealthTimeout as exc:
            raise _fail_with_log(rt, exc) from None
        except _PortMoved as exc:
            raise _port_taken(settings, exc.port) from None
        rt.restart_server(spec)
    _say_start_notes(rt, time.monotonic() - first_began, settings)
    return body, check_workspaces(settings.url, token, timeout_s=settings.request_timeout)


def _say_start_notes(rt: Runtime, seconds: float, settings: Settings) -> None:
    """One line each when the image's start gate held off opencode's start race, and when the start
    was slow (how long, which program; see start_gate)."""
    from openwork_sandbox.sandbox.start_gate import TAIL_LINES, race_note, slow_start_note

    lines = rt.log_tail(TAIL_LINES)
    for note in (race_note(lines), slow_start_note(seconds, lines, cpus=settings.cpus)):
        if note:
            console.info(note)
