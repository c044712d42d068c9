# One module for now (over 400 lines): the five sandbox tasks (up, down, status, logs, reset) share the runtime
# choice, the launch spec, the record and the endpoint; up is most of it. The split it would take: up's
# wait-and-restart loop (_StartWatch, _wait_until_ready) into its own module, reset/down/status/logs into
# another, this one keeping the shared pieces; not now, while other branches change up.
"""`up`, `down`, `status`, `logs`, `reset`: one OpenWork sandbox with persistent state.

``up`` picks the runtime (microsandbox where microVMs boot, else Docker), then creates, starts or
reuses the sandbox named by the settings, waits until ``GET /health`` answers and the client token
works, and prints the URL, the workspace id and the masked tokens. ``.state/<name>/`` (see
:mod:`openwork_sandbox.state.store`) keeps the tokens, the record of what runs and the two bind-mounted
folders; it survives ``down``, ``up --replace`` and settings changes, and only ``reset`` deletes it.

Also used by ``smoke``: :class:`Endpoint`, :func:`endpoint`, :func:`server_log_tail`,
:func:`runtime_exec`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time

from openwork_sandbox.core import console, interrupts
from openwork_sandbox.state import ownership, persist
from openwork_sandbox.sandbox.avx import raise_if_no_avx
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, WorkflowError
from openwork_sandbox.runtimes import ABSENT, RUNNING, LaunchSpec, Runtime, RuntimeStatus, runtime_for
from openwork_sandbox.runtimes.base import GUEST_DATA, GUEST_WORKSPACE
from openwork_sandbox.runtimes.choice import RUNTIMES
from openwork_sandbox.config import GUEST_PORT, Settings, is_loopback, parse_duration
from openwork_sandbox.state.store import (
    MIN_PUBLIC_TOKEN_LEN,
    SandboxState,
    deletion_problem,
    fingerprint,
    safe_remove,
    secret_digest,
)
from openwork_sandbox.sandbox.decision import (
    CREATE,
    QUIET,
    RECREATE,
    RELAUNCH,
    REUSE,
    START,
    Observed,
    UpDecision,
    decide_up,
)


@dataclasses.dataclass
class Endpoint:
    """Where the sandbox's server answers and how to authenticate (tokens in clear: never print)."""

    url: str
    token: str
    host_token: str
    runtime: str
    name: str
    workspace_id: str | None

    def __repr__(self) -> str:
        return (f"Endpoint(url={self.url!r}, token={console.mask(self.token)!r}, "
                f"host_token={console.mask(self.host_token)!r}, runtime={self.runtime!r}, name={self.name!r}, "
                f"workspace_id={self.workspace_id!r})")


# --- which runtime ---------------------------------------------------------------------------------

def choose_runtime(settings: Settings, state: SandboxState | None = None) -> tuple[str, str]:
    """``(runtime, why)`` for ``up`` by the one rule (:mod:`.runtimes.choice`): ``auto`` keeps the
    runtime this sandbox already uses, else microsandbox where microVMs boot, else Docker. A runtime
    this host cannot run (e.g. an explicit ``microsandbox`` without KVM) fails here, before any boot."""
    from openwork_sandbox.runtimes.probe import choose_runtime as choose

    recorded = (state or SandboxState(settings)).record().get("runtime")
    picked = choose(settings.runtime, recorded)
    if picked.kind is None or not picked.usable:
        raise WorkflowError(picked.reason)
    if settings.runtime != "auto":
        return picked.kind, f"{picked.reason} (OPENWORK_MICROSANDBOX_RUNTIME from {settings.origin('runtime')})"
    return picked.kind, picked.reason


def _existing_runtime(settings: Settings, state: SandboxState, *, strict: bool = True) -> Runtime | None:
    """The runtime that holds this sandbox (recorded by `up`), for down/status/logs/reset; a record
    that does not parse stops the task, unless not ``strict`` (reset: one of the ways out)."""
    recorded = state.record(strict=strict).get("runtime")
    if recorded in RUNTIMES:
        return runtime_for(recorded, settings)
    if settings.runtime in RUNTIMES:
        return runtime_for(settings.runtime, settings)
    # nothing recorded: look for a sandbox of this name in whichever runtime answers
    from openwork_sandbox.runtimes.probe import docker_support

    candidates = []
    if docker_support(timeout=5)[0]:
        candidates.append("docker")
    candidates.append("microsandbox")
    for kind in candidates:
        try:
            rt = runtime_for(kind, settings)
            if rt.status().state != ABSENT:
                return rt
        except (WorkflowError, ImportError):
            continue
    return None


# --- what to boot ----------------------------------------------------------------------------------

def _check_exposure(settings: Settings) -> None:
    """A port published beyond loopback needs tokens of at least 24 characters."""
    if is_loopback(settings.bind_address):
        return
    for env, value in (("OPENWORK_TOKEN", settings.token), ("OPENWORK_HOST_TOKEN", settings.host_token)):
        if value and len(value) < MIN_PUBLIC_TOKEN_LEN:
            raise WorkflowError(
                f"{env} has {len(value)} characters but OPENWORK_CONNECT_HOST={settings.connect_host} publishes the port "
                f"beyond loopback: use at least {MIN_PUBLIC_TOKEN_LEN} characters, or unset it to have one generated",
                exit_code=EXIT_BAD_SETTINGS,
            )


def launch_spec(settings: Settings, kind: str, token: str, host_token: str, secrets=None) -> LaunchSpec:
    """What to boot. ``secrets`` (:class:`.sandbox_secrets.SandboxSecrets`, gathered by ``up``; else what
    the settings would deliver now) go in through a read-only mount, never the environment."""
    # imported here, not at the top: status/down/logs import this module and never need them
    from openwork_sandbox.state import secrets as sandbox_secrets
    from openwork_sandbox.state.pin import pinned_image
    from openwork_sandbox.registry.client import pull_access_for_image

    secrets = sandbox_secrets.current(settings) if secrets is None else secrets

    env = {
        "OPENWORK_TOKEN": token,
        "OPENWORK_HOST_TOKEN": host_token,
        "OPENWORK_APPROVAL_MODE": settings.approval_mode,
        "OPENWORK_CONNECT_HOST": settings.connect_host,
    }
    if settings.offline:
        env["OPENCODE_DISABLE_MODELS_FETCH"] = "1"
    image = pinned_image(settings)  # the digest push-image pushed from here, else the tag
    env.update(persist.guest_env())  # HOME under /data, whatever the image's entrypoint does
    mounts = {GUEST_WORKSPACE: settings.workspace_dir.resolve(), GUEST_DATA: settings.data_dir.resolve()}
    fp = fingerprint({
        "runtime": kind, "image": image, "port": settings.port, "bind": settings.bind_address,
        "connect_host": settings.connect_host, "mounts": {k: str(v) for k, v in mounts.items()},
        "approval": settings.approval_mode, "offline": settings.offline, "cpus": settings.cpus, "memory": settings.memory,
        "token": secret_digest(token), "host_token": secret_digest(host_token), "layout": persist.LAYOUT,
        # only when not the default, so sandboxes made before this setting existed are kept
        **({"network": settings.network} if settings.network != "allow-all" else {}),
        **({"secrets": secrets.digests()} if not secrets.empty else {}),
    })
    readonly = {} if secrets.empty else {sandbox_secrets.GUEST_DIR: sandbox_secrets.host_dir(settings).resolve()}
    return LaunchSpec(
        name=settings.name, image=image, host_port=settings.port, bind_address=settings.bind_address,
        guest_port=GUEST_PORT, mounts=mounts, env=env, cpus=settings.cpus, memory_mib=settings.memory,
        registry_plain_http=settings.registry_plain_http, fingerprint=fp, pull_always=settings.replace,
        pull_access=lambda: pull_access_for_image(settings, image),
        network=settings.network, readonly_mounts=readonly,
        marks=ownership.marks(str(settings.sandbox_state_dir), ephemeral=settings.ephemeral,
                              max_duration=settings.ephemeral_max_duration),
        max_duration=settings.ephemeral_max_duration if settings.ephemeral else None,
    )


LEFT_FOR_INSPECTION = "(the sandbox is left as it is for inspection; `invoke reset` removes it)"  # a failed start's end


def _port_taken(settings: Settings, moved_to: int) -> WorkflowError:
    """Another program took the port between `up`'s check and the server's start (host networking)."""
    from openwork_sandbox.net.ports import port_holder

    return WorkflowError(
        f"port {settings.port} was taken by {port_holder(settings.port)} before the server started, so the "
        f"orchestrator moved it to port {moved_to}, where clients do not look: stop that program, or choose "
        f"another port with --port / OPENWORK_MICROSANDBOX_PORT {LEFT_FOR_INSPECTION}"
    )


def _refuse_busy_port(settings: Settings, decision: UpDecision) -> None:
    from openwork_sandbox.net.ports import port_holder

    if decision.port_busy:
        raise WorkflowError(
            f"port {settings.port} is already in use by {port_holder(settings.port)}: stop it, or choose another port "
            f"with --port / OPENWORK_MICROSANDBOX_PORT"
        )


# --- up --------------------------------------------------------------------------------------------

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


class _StartWatch:
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


def _wait_until_ready(settings: Settings, rt: Runtime, token: str, spec: LaunchSpec) -> tuple[dict, str | None]:
    """Wait for health (restarting a stuck or early-dying start, up to START_ATTEMPTS starts in
    all; the last one gets the whole deadline), then check /workspaces."""
    from openwork_sandbox.net.health import HealthTimeout, SandboxDied, check_workspaces, wait_for_health

    first_began = time.monotonic()
    for attempt in range(1, START_ATTEMPTS + 1):
        last_attempt = attempt == START_ATTEMPTS
        watch = _StartWatch(rt, None if last_attempt else STALL_SECONDS, settings.orchestrator_version,
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


def _report(ep: Endpoint, *, action: str, seconds: float, settings: Settings, show_tokens: bool, as_json: bool,
            health: dict | None) -> None:
    shown = (lambda s: s) if show_tokens else console.mask
    if as_json:
        console.emit_json({
            "name": ep.name, "runtime": ep.runtime, "action": action, "url": ep.url,
            "workspace_id": ep.workspace_id, "seconds": round(seconds, 3), "image": settings.image,
            "token": shown(ep.token), "host_token": shown(ep.host_token),
            "state_dir": str(settings.sandbox_state_dir), "workspace_dir": str(settings.workspace_dir),
            "data_dir": str(settings.data_dir), "server_version": (health or {}).get("version"),
        })
        return
    console.info(f"{console.OK} {ep.name} is up ({action}, {ep.runtime}, {seconds:.1f}s)")
    console.print_table([
        ("URL", ep.url),
        ("workspace", ep.workspace_id or "(none)"),
        ("client token", shown(ep.token)),
        ("host token", shown(ep.host_token)),
        ("workspace dir", settings.workspace_dir),
        ("data dir", settings.data_dir),
    ])
    if not show_tokens:
        console.info("tokens are masked: --show-tokens prints them (they are kept in "
                      f"{settings.sandbox_state_dir / 'tokens.json'} unless you set them)")


def _observe(settings: Settings, state: SandboxState, kind: str, rt: Runtime, spec_fingerprint: str,
             secret_digests: dict | None = None) -> Observed:
    """What `up` decides on: the record, the runtime's status, one health probe, the port, and which
    secret settings differ from what the sandbox was made with."""
    from openwork_sandbox.net.health import health_once
    from openwork_sandbox.net.ports import port_is_free
    from openwork_sandbox.state.secrets import changed_parts

    st = rt.status()
    record = state.record()
    return Observed(
        name=settings.name, kind=kind, recorded=record.get("runtime"), status=st,
        fingerprint=spec_fingerprint, replace=settings.replace,
        health=health_once(settings.url, timeout_s=1.0) if st.state == RUNNING else None,
        port_free=port_is_free(settings.port, settings.bind_address),
        changed=changed_parts(record.get("secrets"), secret_digests or {}) if secret_digests is not None else (),
    )


def _save_record(state: SandboxState, settings: Settings, kind: str, spec: LaunchSpec, **extra) -> None:
    """The one place `up` writes what runs (so logs/status/reset find it even when a boot fails)."""
    state.save_record(runtime=kind, image=settings.image, fingerprint=spec.fingerprint, port=settings.port,
                      url=settings.url, **extra)


def _act(settings: Settings, state: SandboxState, rt: Runtime, seen: Observed, decision: UpDecision,
         spec: LaunchSpec, token: str, secrets=None) -> tuple[dict, str | None]:
    """Carry out ``decision``; returns the health body and the workspace id."""
    from openwork_sandbox.net.health import check_workspaces

    if decision.remove_old:
        old = runtime_for(decision.remove_old, settings)
        persist.migrate_before_replace(settings, old, spec)  # a failed copy puts it back (its server too) and stops here
        try:
            if old.remove():
                console.info(f"removed the {decision.remove_old} sandbox {settings.name} (runtime changed to "
                             f"{rt.kind}; state kept)")
        except WorkflowError as exc:
            console.info(f"note: could not remove the old {decision.remove_old} sandbox: {exc.message}")
    if decision.action not in QUIET:
        console.info(decision.reason)
    if decision.action == REUSE:
        return seen.health or {}, check_workspaces(settings.url, token, timeout_s=settings.request_timeout)
    fresh = decision.action in (CREATE, RECREATE)
    made = {"created_at": time.time(), "workspace_id": None} if fresh else {}
    if secrets is not None:  # the mounted folder, before anything boots (a start mounts it too)
        from openwork_sandbox.state.secrets import write

        write(settings, secrets)
        if fresh:  # the digests of what it is made with: a later `up` names what changed
            made["secrets"] = secrets.digests() or None
    _save_record(state, settings, rt.kind, spec, **made)
    if decision.action == RECREATE:
        persist.migrate_before_replace(settings, rt, spec)  # a failed copy stops here
        rt.remove()
    if fresh:
        rt.create(spec)
    elif decision.action in (START, RELAUNCH):
        rt.start(spec)
    return _wait_until_ready(settings, rt, token, spec)


def up(settings: Settings, *, follow: bool = False, show_tokens: bool = False, as_json: bool = False) -> Endpoint:
    """Create, start or reuse the sandbox and wait until its server is healthy; see the module doc.

    Observe, decide (:func:`up_decision.decide_up`), act, report. For a new sandbox the decision
    is also made before the lock, so a busy port fails before anything is created; the one acted
    on is made under the lock (another `up` may have finished meanwhile)."""
    from openwork_sandbox.state.secrets import gather

    started = time.monotonic()
    state = SandboxState(settings)
    _check_exposure(settings)
    token, host_token = state.tokens(create=False)  # a tokens.json that does not parse stops here, before any change
    secrets = gather(settings)  # an unset OPENWORK_SANDBOX_ENV variable or a bad opencode config: before anything
    kind, why = choose_runtime(settings, state)
    console.info(f"runtime: {kind} ({why})" if len(why) < 60 else f"runtime: {kind}\n  why: {why}")
    rt = runtime_for(kind, settings)

    if not state.exists():  # the lock creates .state/<name>/: a busy port fails before that
        fp = launch_spec(settings, kind, token or "", host_token or "").fingerprint
        _refuse_busy_port(settings, decide_up(_observe(settings, state, kind, rt, fp)))
    with state.lock(action="up"):
        state.ensure()
        persist.check_data_dir(settings)  # before anything is removed or booted
        token, host_token = state.tokens()
        if not token or not host_token:  # tokens() generates what is missing; this is a safety net
            raise WorkflowError(f"no tokens for {settings.name}: delete {state.tokens_path} and run `invoke up` again")
        spec = launch_spec(settings, kind, token, host_token, secrets)
        seen = _observe(settings, state, kind, rt, spec.fingerprint, secrets.digests())
        decision = decide_up(seen)
        _refuse_busy_port(settings, decision)
        with interrupts.sigterm_as_interrupt():
            try:
                with _start_slot(settings, decision):
                    health, workspace_id = _act(settings, state, rt, seen, decision, spec, token, secrets)
                    if not settings.ephemeral:  # healthy: from now on the runtime brings it back (Docker: restart policy)
                        rt.keep_running()
            except KeyboardInterrupt:
                if decision.action != REUSE:
                    _stop_half_started(settings, rt)
                raise
        _save_record(state, settings, kind, spec, workspace_id=workspace_id, healthy_at=time.time())

    ep = Endpoint(settings.url, token, host_token, kind, settings.name, workspace_id)
    _report(ep, action=decision.done, seconds=time.monotonic() - started, settings=settings, show_tokens=show_tokens,
            as_json=as_json, health=health)
    if follow:
        _follow(rt, tail=20, to_stdout=not as_json)
    return ep


def _start_slot(settings: Settings, decision: UpDecision):
    """One of the host's start slots (start_slots) while `up` boots; none to reuse a running sandbox."""
    from openwork_sandbox.sandbox.start_slots import default_slots, start_slot

    if decision.action == REUSE:
        return contextlib.nullcontext()
    slots = settings.start_slots if settings.start_slots is not None else default_slots()
    return start_slot(slots, settings.name)


def _stop_half_started(settings: Settings, rt: Runtime) -> None:
    """`up` was interrupted (Ctrl+C, CI's SIGTERM) while it booted: stop what it started, so no
    half-started sandbox is left running; the state is kept and the next `up` starts it again."""
    with interrupts.no_interrupts():
        try:
            stopped = rt.stop()
        except WorkflowError as exc:
            console.info(f"interrupted: could not stop {settings.name}: {exc.message}; `invoke down` stops it")
            return
    what = "stopped it" if stopped else "it is not running"
    console.info(f"interrupted before {settings.name} was healthy: {what} (state kept in {settings.sandbox_state_dir}); "
                 "`invoke up` starts it again")


def _follow(rt: Runtime, *, tail: int | None, to_stdout: bool = True) -> None:
    out = sys.stdout if to_stdout else sys.stderr
    console.info("following the server log; Ctrl+C stops following (the sandbox keeps running)")
    try:
        for line in rt.stream_logs(follow=True, tail=tail):
            print(line, file=out, flush=True)
    except KeyboardInterrupt:
        console.info("stopped following the log; the sandbox keeps running")


# --- down / status / logs / reset ----------------------------------------------------------------

def down(settings: Settings) -> None:
    """Stop the sandbox and keep its state; nothing to do when it is not running."""
    state = SandboxState(settings)
    rt = _existing_runtime(settings, state)
    if rt is None:
        console.info(f"{settings.name}: no sandbox of that name; nothing to stop")
        return
    with state.lock(action="down"):
        if rt.stop():
            console.info(f"{console.OK} stopped {settings.name} ({rt.kind}); state kept in {settings.sandbox_state_dir}")
        else:
            console.info(f"{settings.name} ({rt.kind}) is not running; nothing to stop")


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    parts = [(seconds // 86400, "d"), (seconds % 86400 // 3600, "h"), (seconds % 3600 // 60, "m"), (seconds % 60, "s")]
    shown = [f"{n}{u}" for n, u in parts if n]
    return "".join(shown[:2]) or "0s"


def status(settings: Settings, *, as_json: bool = False) -> int:
    """Runtime, state, image and digest, URL, health, uptime. Exit 0 when running and healthy, else 1."""
    from openwork_sandbox.net.health import health_once

    state = SandboxState(settings)
    record = state.record()
    rt = _existing_runtime(settings, state)
    st = rt.status() if rt else RuntimeStatus(ABSENT)
    digest = rt.digest(st) if rt is not None else None
    health = health_once(settings.url, timeout_s=min(2.0, settings.request_timeout)) if st.state == RUNNING else None
    uptime = (time.time() - st.started_at) if st.started_at else None
    token, host_token = state.tokens(create=False)
    current = None
    if st.state != ABSENT and rt is not None and token and host_token:
        current = launch_spec(settings, rt.kind, token, host_token).fingerprint == st.fingerprint
    info = {
        "name": settings.name,
        "runtime": rt.kind if rt else record.get("runtime"),
        "state": st.state,
        "detail": st.detail,
        "image": st.image or record.get("image"),
        "digest": digest,
        "platform": rt.platform(st) if rt is not None and st.state != ABSENT else None,
        "url": settings.url,
        "healthy": health is not None,
        "server_version": (health or {}).get("version"),
        "uptime_seconds": round(uptime, 1) if uptime is not None else None,
        "workspace_id": record.get("workspace_id"),
        "settings_current": current,
        "state_dir": str(settings.sandbox_state_dir),
    }
    from openwork_sandbox.state.supervision import read as read_supervision

    supervised = read_supervision(settings.data_dir)
    info["supervisor"] = supervised.as_dict() if supervised else None
    info["engine_restarts"] = st.engine_restarts
    crash_loop = bool(supervised and supervised.crash_loop)
    code = 0 if (st.state == RUNNING and health is not None and not crash_loop) else 1
    if as_json:
        console.emit_json(info)
        return code
    mark = console.OK if code == 0 else console.BAD
    console.info(f"{mark} {settings.name}: {st.state}{(' (' + st.detail + ')') if st.detail and st.state != RUNNING else ''}")
    console.print_table([
        ("runtime", info["runtime"] or "-"),
        ("image", info["image"] or "-"),
        ("digest", digest or "-"),
        ("platform", info["platform"] or "-"),
        ("URL", settings.url),
        ("health", ("ok" + (f" (server {info['server_version']})" if info["server_version"] else "")) if health
         else ("no answer" if st.state == RUNNING else "-")),
        ("uptime", _uptime(uptime)),
        ("workspace", info["workspace_id"] or "-"),
        ("restarts", (supervised.summary() if supervised else "- (no supervisor record)")
         + (f"; the engine restarted the sandbox {st.engine_restarts} times" if st.engine_restarts else "")),
        ("state dir", settings.sandbox_state_dir),
    ])
    if crash_loop:
        console.info(f"{console.BAD} the server is in a crash loop: `invoke logs --tail 100` shows why it keeps dying")
    if current is False:
        console.info("settings changed since this sandbox was created: `invoke up` recreates it (state kept)")
    return code


def parse_since(text: str | None) -> float | None:
    """``--since``: a duration (settings.parse_duration: 30, 30s, 5m, 2h, 1d) -> seconds."""
    if text is None or str(text).strip() == "":
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise WorkflowError(f"--since {text!r}: {exc}", exit_code=EXIT_BAD_SETTINGS) from None


def _parse_tail(tail) -> int | None:
    if tail is None or str(tail).strip() == "":
        return None
    try:
        value = int(str(tail).strip())
    except ValueError:
        value = -1
    if value < 0:
        raise WorkflowError(f"--tail {tail!r}: expected a whole number of lines, e.g. 100", exit_code=EXIT_BAD_SETTINGS)
    return value


def logs(settings: Settings, *, follow: bool = False, tail=None, since=None, system: bool = False) -> None:
    """Print the server's log (or the VM/engine log with ``system``); Ctrl+C ends ``follow`` cleanly."""
    tail_n, since_s = _parse_tail(tail), parse_since(since)
    state = SandboxState(settings)
    rt = _existing_runtime(settings, state)
    if rt is None:
        raise WorkflowError(f"no sandbox named {settings.name}: run `invoke up` first")
    try:
        for line in rt.stream_logs(follow=follow, tail=tail_n, since_s=since_s, system=system):
            print(line, flush=True)
    except KeyboardInterrupt:
        console.info("stopped following the log; the sandbox keeps running")
    except BrokenPipeError:  # `invoke logs | head`
        pass


def _confirm(question: str) -> bool:
    if not sys.stdin or not sys.stdin.isatty():
        return False
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _outside(path, parent) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return False
    except ValueError:
        return True


def reset(settings: Settings, *, yes: bool = False, keep_data: bool = False) -> None:
    """Remove the sandbox and delete ``.state/<name>/`` (asks first unless ``yes``)."""
    state = SandboxState(settings)
    target = settings.sandbox_state_dir
    if not keep_data:
        problem = deletion_problem(target, settings.state_dir, settings.project_root)
        if problem and (target.exists() or target.is_symlink()):
            raise WorkflowError(f"reset refused: {problem}")
    what = f"the sandbox {settings.name}" + ("" if keep_data else f" and delete {target}")
    if not yes:
        if not (sys.stdin and sys.stdin.isatty()):
            raise WorkflowError(f"reset would remove {what}: pass --yes to confirm (there is no terminal to ask on)")
        if not _confirm(f"Remove {what}?"):
            console.info("nothing removed")
            return
    # hold the lock (when there is a folder) so a running `up` for this name is not pulled from under
    guard = state.lock(action="reset") if state.exists() else contextlib.nullcontext()
    with guard:
        rt = _existing_runtime(settings, state, strict=keep_data)  # deleting it all: a broken record does not matter
        if rt is not None:
            if rt.remove():
                console.info(f"{console.OK} removed the {rt.kind} sandbox {settings.name}")
            else:
                console.info(f"{settings.name}: no {rt.kind} sandbox to remove")
        else:
            console.info(f"{settings.name}: no sandbox to remove")
        if keep_data:
            if state.exists():
                state.save_record(fingerprint=None, job_id=None)
            console.info(f"state folders kept (--keep-data): {target}")
            return
        if safe_remove(target, settings.state_dir, settings.project_root):
            console.info(f"{console.OK} deleted {target}")
    for label, path in (("workspace", settings.workspace_dir), ("data", settings.data_dir)):
        if _outside(path, target) and path.exists():
            console.info(f"kept the {label} folder {path}: it is outside the state folder (delete it yourself)")


# --- for smoke and doctor --------------------------------------------------------------------------

def endpoint(settings: Settings) -> Endpoint:
    """URL and tokens of the sandbox from the settings and ``.state/<name>/``, without booting."""
    state = SandboxState(settings)
    token, host_token = state.tokens(create=False)
    if not token or not host_token:
        missing = " and ".join(n for n, v in (("OPENWORK_TOKEN", token), ("OPENWORK_HOST_TOKEN", host_token)) if not v)
        raise WorkflowError(f"no tokens for sandbox {settings.name} (nothing in {state.tokens_path}): run `invoke up` "
                            f"first, or set {missing}")
    record = state.record()
    return Endpoint(settings.url, token, host_token, record.get("runtime") or settings.runtime, settings.name,
                    record.get("workspace_id"))


def server_log_tail(settings: Settings, lines: int = 40) -> tuple[list[str], str]:
    """The server's last ``lines`` log lines and where the full log is (path or command)."""
    state = SandboxState(settings)
    rt = _existing_runtime(settings, state)
    if rt is None:
        return [], f"no sandbox named {settings.name}"
    try:
        return rt.log_tail(lines), rt.log_hint()
    except WorkflowError as exc:
        return [], exc.message


def runtime_exec(settings: Settings, argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` inside the running sandbox; ``(exit code, output)``."""
    state = SandboxState(settings)
    rt = _existing_runtime(settings, state)
    if rt is None or rt.status().state != RUNNING:
        raise WorkflowError(f"sandbox {settings.name} is not running: run `invoke up` first")
    return rt.exec(list(argv))



def sandbox_status(settings: Settings) -> tuple[Runtime | None, RuntimeStatus]:
    """The runtime that holds the sandbox (None when none does) and its status, for backup and restore."""
    rt = _existing_runtime(settings, SandboxState(settings))
    return rt, (rt.status() if rt is not None else RuntimeStatus(ABSENT))
