"""The start watch: waiting until a just-booted sandbox's server is healthy, restarting a stuck start.

:func:`wait_until_ready` is ``up``'s wait after it created or started the sandbox. It polls
``GET /health`` (``net.health.wait_for_health``) with a :class:`StartWatch` as its ``is_alive``, and:

- restarts the server (``Runtime.restart_server``) when the start stalls (its log stops changing)
  or the server dies early, or the runtime reports a machine fault; ``START_TIMES.attempts`` starts
  in all, the last one with the whole deadline and no stall limit;
- ends at once, with one line, on a CPU without AVX (``avx``), a data folder the sandbox cannot
  write (``state.persist``), or a server whose port was taken (moved by the orchestrator, or its
  gate unable to listen under OPENWORK_LAUNCH=server); and, stopping the
  sandbox (its supervisor would restart its programs for ever), on programs the kernel killed for
  lack of memory (``Runtime.memory_kills``: OPENWORK_MICROSANDBOX_MEMORY is too small) or a data
  folder that filled up (``persist.data_full_problem``);
- at the deadline or on a late death prints the log's tail and raises ``WorkflowError`` ending
  with ``LEFT_FOR_INSPECTION`` (the sandbox is not removed);
- once healthy, says so when the start was slow or the start gate held off the start race
  (``start_gate``) and returns the health body and the ``/workspace`` workspace's id.

Its pacing is one table, :data:`START_TIMES` (read at each call: tests put short times in its place).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from openwork_sandbox.config import Settings
from openwork_sandbox.core import console
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes import LaunchSpec, Runtime
from openwork_sandbox.sandbox.avx import raise_if_no_avx
from openwork_sandbox.state import persist

LEFT_FOR_INSPECTION = "(the sandbox is left as it is for inspection; `invoke reset` removes it)"  # a failed start's end


def _port_taken(settings: Settings, moved_to: int | None) -> WorkflowError:
    """Another program took the port between `up`'s check and the server's start (host networking): the
    orchestrator moved the server to ``moved_to``, or (None) openwork-server's gate cannot listen."""
    from openwork_sandbox.sandbox.locate import port_taker

    if moved_to is None:
        what = "so openwork-server cannot listen there"
    else:
        what = f"so the orchestrator moved it to port {moved_to}, where clients do not look"
    return WorkflowError(
        f"port {settings.port} was taken by {port_taker(settings, settings.port)} before the server started, {what}: "
        f"stop that program, or choose another port with --port / OPENWORK_MICROSANDBOX_PORT {LEFT_FOR_INSPECTION}"
    )


def _print_log_tail(rt: Runtime, lines: list[str] | None = None, hint: str | None = None) -> None:
    """The server log's last lines as one group (folded under GitHub Actions), then where the rest is."""
    from openwork_sandbox.core import gha

    lines = rt.log_tail(40) if lines is None else lines
    gha.print_group(f"last {len(lines)} lines of the server log", lines or ["(no output)"])
    console.info(f"full log: {hint or rt.log_hint()}")


@dataclasses.dataclass(frozen=True)
class StartTimes:
    """How the start watch paces itself, in seconds (one table: :data:`START_TIMES`)."""

    # no new server output for this long while not healthy: the start is stuck (a slow start is not
    # silent: the image's start gates print a line at least every 5 s while their program uses CPU)
    stall_s: float = 20.0
    # ...and this long when the last line is LISTENING_MARK, after which the next comes at once or never
    listening_stall_s: float = 8.0
    early_death_s: float = 30.0  # a server that exits this soon after its (re)start gets another try
    attempts: int = 3  # starts in all, the first included
    first_look_s: float = 1.0  # the first look at the log's tail, after the watch begins
    look_every_s: float = 2.0  # then between looks at the log's tail (each is a runtime call)
    alive_first_s: float = 0.5  # is_alive() is asked this often at first, each wait half again as long...
    alive_every_max_s: float = 3.0  # ...to at most this (each is a runtime call)
    # each kind of look (is_alive, the log's tail) is spaced so that it takes at most this share of the
    # wall time, however slow a runtime call is on this host: both together a tenth
    look_share: float = 0.05


START_TIMES = StartTimes()
AVX_LOOK_LINES = 40  # lines of the log each look reads: Bun's crash report sits above the supervisor's restart line
LISTENING_MARK = "opencode server listening"  # opencode's line before the orchestrator's one health request


class _PortMoved(Exception):
    """The orchestrator found its port taken at start and serves on another one (``port``), or (None)
    openwork-server's gate found it taken (OPENWORK_LAUNCH=server)."""

    def __init__(self, port: int | None):
        super().__init__(port)
        self.port = port


KILLED_MARKS = ("SIGKILL", "Killed", "status 137")  # a program killed: only then is the runtime asked why


class _Starved(Exception):
    """The start cannot succeed for want of a resource: ``kills`` OOM kills, else a data folder
    that is full (``full``: its one line)."""

    def __init__(self, kills: int = 0, full: str = ""):
        super().__init__(kills, full)
        self.kills, self.full = kills, full


def _raise_if_starved(rt: Runtime, lines: list[str] | None, data_dir: Path | None) -> None:
    """:class:`_Starved` when ``data_dir`` (None: not asked) is nearly full, or when ``lines`` (None:
    not read) show a killed program and the runtime counts OOM kills."""
    if data_dir is not None and (full := persist.data_full_problem(data_dir)):
        raise _Starved(full=full)
    if lines is not None and not any(mark in line for line in lines for mark in KILLED_MARKS):
        return
    kills = rt.memory_kills()
    if kills:
        raise _Starved(kills=kills)


def _starved(settings: Settings, rt: Runtime, exc: _Starved) -> WorkflowError:
    """Stop the sandbox (its supervisor would restart its programs for ever); the line that ends `up`."""
    stopped = f"({'stopped it' if rt.stop() else 'it is not running'}; `invoke reset` removes it)"
    if exc.full:
        return WorkflowError(f"{exc.full}; then run `invoke up` again {stopped}")
    return WorkflowError(
        f"the sandbox ran out of memory while it started: the kernel killed its programs {exc.kills} time(s) at "
        f"OPENWORK_MICROSANDBOX_MEMORY={settings.memory} MiB; raise OPENWORK_MICROSANDBOX_MEMORY (default 2048) "
        f"and run `invoke up` again {stopped}"
    )


class _Stalled(Exception):
    """The start printed, then nothing new for ``seconds`` (its last line: ``last_line``)."""

    def __init__(self, last_line: str, seconds: float):
        super().__init__(last_line)
        self.last_line, self.seconds = last_line, seconds


class StartWatch:
    """``is_alive`` for the health wait that also notices a start that stopped making progress.

    Called: False when the runtime says the sandbox or its server stopped, else True; between
    calls it looks at the log's last lines now and then (``times``), and raises

    - :class:`_Stalled` when the start has printed and its last lines have not changed for
      ``stall_s`` (``times.listening_stall_s`` after LISTENING_MARK; None: never), so `up` restarts it;
    - ``WorkflowError`` (``avx.raise_if_no_avx``) on Bun's "no AVX" crash report: the image's
      supervisor restarts such a server for ever, so the sandbox itself never stops;
    - :class:`_PortMoved` when the orchestrator's ready line names another port than ``server_port``
      and a server answers there (its own port was taken when it started), or when openwork-server's
      gate says that port is taken (``start_gate.port_in_use``).
    - :class:`_Starved` when ``data_dir`` (None: not read) is nearly full, or the log shows a killed
      program and the runtime counts OOM kills (``Runtime.memory_kills``).
    """

    def __init__(
        self,
        rt: Runtime,
        stall_s: float | None,
        orchestrator_version: str,
        server_port: int,
        times: StartTimes | None = None,
        data_dir: Path | None = None,
    ):
        self.rt, self.stall_s, self.orchestrator_version = rt, stall_s, orchestrator_version
        self.server_port = server_port
        self.times = times or START_TIMES
        self.data_dir = data_dir  # the host folder mounted at /data, whose free space each look reads
        self.last_tail: list[str] | None = None
        self.changed_at = time.monotonic()
        self.next_check = self.changed_at + self.times.first_look_s
        # fewer runtime calls the longer a start takes (each is a `docker inspect` or an SDK call)
        self.alive_every, self.next_alive = self.times.alive_first_s, self.changed_at

    def _next_look(self, began: float, every: float) -> float:
        """When to look again after a look that began at BEGAN: EVERY seconds on, or later where that
        look took long, so that looks take at most ``look_share`` of the time whatever the host's speed."""
        took = time.monotonic() - began
        return began + max(every, took / self.times.look_share)

    def __call__(self) -> bool:
        now = time.monotonic()
        if now >= self.next_alive:
            if not self.rt.is_alive():
                return False
            self.alive_every = min(self.alive_every * 1.5, self.times.alive_every_max_s)
            self.next_alive = self._next_look(now, self.alive_every)
        now = time.monotonic()
        if now >= self.next_check:
            recent = self.rt.log_tail(AVX_LOOK_LINES)
            self.next_check = self._next_look(now, self.times.look_every_s)
            # the image's supervisor restarts an orchestrator that dies, so one that a CPU without AVX
            # kills never stops the sandbox: its crash report in the log ends the wait at once
            raise_if_no_avx(self.orchestrator_version, recent, self.rt.log_hint())
            self._raise_if_port_moved(recent)
            _raise_if_starved(self.rt, recent, self.data_dir)
            tail = recent[-3:]
            if tail != self.last_tail:
                self.last_tail, self.changed_at = tail, now
            elif self.stall_s is not None and tail:
                # a start that has printed nothing yet has not stalled: it has not reached its first
                # program, and only the deadline ends it
                last = tail[-1].strip()
                limit = min(self.stall_s, self.times.listening_stall_s) if LISTENING_MARK in last else self.stall_s
                if now - self.changed_at >= limit:
                    raise _Stalled(last, now - self.changed_at)
        return True

    def _raise_if_port_moved(self, recent: list[str]) -> None:
        from openwork_sandbox.net.health import health_once
        from openwork_sandbox.net.ports import moved_server_port
        from openwork_sandbox.sandbox.start_gate import port_in_use

        # the gate's line, or the supervisor's restart line quoting it, among the last: this start's
        if port_in_use(recent[-3:], self.server_port):
            raise _PortMoved(None)

        moved = moved_server_port(recent, self.server_port)
        # it is this start's server only if it answers there: a ready line an earlier run of the same
        # sandbox left in its log does not count (only a host-networked server can be asked from here)
        if moved is not None and health_once(f"http://127.0.0.1:{moved}") is not None:
            raise _PortMoved(moved)


def _fail_with_log(rt: Runtime, exc) -> WorkflowError:
    """Print the log tail ``exc`` (a HealthTimeout or SandboxDied) carries; the error that ends `up`."""
    _print_log_tail(rt, exc.log_lines, exc.log_hint)
    return WorkflowError(f"{exc.message} {LEFT_FOR_INSPECTION}")


def wait_until_ready(
    settings: Settings, rt: Runtime, token: str, spec: LaunchSpec, then: Callable[[], None] | None = None
) -> tuple[dict, str | None]:
    """Wait until the server of the sandbox ``rt`` booted from ``spec`` is healthy (see the module
    doc), then check ``/workspaces`` with ``token``; ``(health body, workspace id or None)``.
    ``then`` (optional: `up`'s ``Runtime.keep_running``) runs once it is healthy, beside that check
    and the read of the log for the start notes: each is a call to the engine, and `up` ends when
    the last of them does, so they overlap rather than queue. Raises WorkflowError when it never
    gets there (an UnreachableError when ``/workspaces`` cannot be reached), or what ``then`` raised."""
    from concurrent.futures import ThreadPoolExecutor

    from openwork_sandbox.net.health import check_workspaces
    from openwork_sandbox.sandbox.start_gate import TAIL_LINES
    from openwork_sandbox.state.tls import client_verify

    verify = client_verify(settings)
    first_began = time.monotonic()
    try:
        body = _healthy(settings, rt, spec, verify)
    except _Starved as exc:
        raise _starved(settings, rt, exc) from None
    seconds = time.monotonic() - first_began
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="openwork-up") as pool:  # leaving waits for both
        tail = pool.submit(rt.log_tail, TAIL_LINES)
        after = pool.submit(then) if then is not None else None
        workspace_id = check_workspaces(settings.url, token, timeout_s=settings.request_timeout, verify=verify)
        _say_start_notes(tail.result(), seconds, settings)
    if after is not None:
        after.result()
    return body, workspace_id


def _healthy(settings: Settings, rt: Runtime, spec: LaunchSpec, verify) -> dict:
    """The starts of :func:`wait_until_ready` until one is healthy: its health body. Raises
    WorkflowError, or :class:`_Starved` for the caller to stop the sandbox."""
    from openwork_sandbox.net.health import HealthTimeout, SandboxDied, wait_for_health

    times = START_TIMES
    for attempt in range(1, times.attempts + 1):
        last_attempt = attempt == times.attempts
        stall = None if last_attempt else times.stall_s
        port = rt.server_port(spec)
        watch = StartWatch(rt, stall, settings.orchestrator_version, port, times, Path(settings.data_dir))
        began = time.monotonic()
        again = f"start {attempt + 1} of {times.attempts}"
        try:
            body = wait_for_health(
                settings.url,
                settings.health_timeout,
                is_alive=watch,
                timeout_s=min(5.0, settings.request_timeout),
                describe=rt.describe,
                verify=verify,
            )
            return body
        except _Stalled as exc:
            console.info(
                f"the server made no progress for {exc.seconds:.0f}s (last line: {exc.last_line}); "
                f"restarting it, {again} (orchestrator 0.18 can hang on a just-started opencode)"
            )
        except SandboxDied as exc:
            persist.raise_if_data_unwritable(settings, exc.log_lines)
            _raise_if_starved(rt, None, Path(settings.data_dir))
            raise_if_no_avx(settings.orchestrator_version, exc.log_lines, exc.log_hint)
            fault = None if last_attempt else rt.machine_fault()
            if fault:  # not the server's doing, however late in the start: boot the machine again
                console.info(f"{fault} during start-up; starting it again, {again}")
            elif last_attempt or time.monotonic() - began > times.early_death_s:
                raise _fail_with_log(rt, exc) from None
            else:
                last = exc.log_lines[-1].strip() if exc.log_lines else "no output"
                console.info(f"the server exited during start-up (last line: {last}); {again}")
        except HealthTimeout as exc:
            _raise_if_starved(rt, None, Path(settings.data_dir))
            raise _fail_with_log(rt, exc) from None
        except _PortMoved as exc:
            raise _port_taken(settings, exc.port) from None
        rt.restart_server(spec)
    raise AssertionError("unreachable: the last start returns or raises")


def _say_start_notes(lines: list[str], seconds: float, settings: Settings) -> None:
    """One line each when the image's start gate held off opencode's start race, and when the start
    took ``seconds`` long enough to be slow (how long, which program; see start_gate); ``lines``: the
    tail of the sandbox's log once healthy."""
    from openwork_sandbox.sandbox.start_gate import race_note, slow_start_note

    for note in (race_note(lines), slow_start_note(seconds, lines, cpus=settings.cpus)):
        if note:
            console.info(note)
