"""``up``: create, start or reuse the sandbox and wait until its server is healthy.

:func:`up` picks the runtime (``launch.choose_runtime``: microsandbox where microVMs boot, else
Docker; a network policy it cannot hold stops here, ``launch.check_network``), observes (the
record, the runtime's status, one health probe, the port), decides
(``decision.decide_up``), acts (copy old-layout state out, remove, create or start, wait with
``start_watch``) and reports the URL (https with TLS on: ``state.tls``, and the certificate's
SHA-256 fingerprint), the workspace id and the tokens (masked unless asked), or with ``as_json`` one
JSON object on stdout. ``.state/<name>/`` (:mod:`openwork_sandbox.state.store`)
keeps the tokens, the record of what runs (``sandbox.json``, which `up` writes through
:func:`_save_record` only) and the two bind-mounted folders; it survives ``down``, ``up --replace``
and settings changes, and only ``reset`` deletes it.

Errors are ``WorkflowError`` (exit 1; an ``UnreachableError``, exit 3, when a healthy server's
``/workspaces`` cannot be reached); bad settings exit 2 (``SettingsError``, ``EXIT_BAD_SETTINGS``).
A sandbox that failed to start is left as it is for inspection.
Runtimes are built through ``openwork_sandbox.runtimes.runtime_for``, looked up at call time.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable

from openwork_sandbox import runtimes
from openwork_sandbox.config import Settings
from openwork_sandbox.core import console, interrupts
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes import RUNNING, LaunchSpec, Runtime
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
from openwork_sandbox.sandbox.endpoint import Endpoint
from openwork_sandbox.sandbox.launch import check_exposure, check_network, choose_runtime, launch_spec, placed
from openwork_sandbox.sandbox.start_watch import wait_until_ready
from openwork_sandbox.state import persist
from openwork_sandbox.state.store import SandboxState


def _refuse_busy_port(settings: Settings, decision: UpDecision) -> None:
    """One line naming the port and what holds it (another sandbox of this tool by its name, else the
    program) when ``decision`` needs the port and it is taken."""
    from openwork_sandbox.sandbox.locate import port_taker

    if decision.port_busy:
        raise WorkflowError(
            f"port {settings.port} is already in use by {port_taker(settings, settings.port)}: stop it, or choose "
            "another port with --port / OPENWORK_MICROSANDBOX_PORT"
        )


def _refuse_stranger(settings: Settings, token: str, verify) -> None:
    """One line when the healthy server on the port refuses this sandbox's client token: another
    sandbox's (or program's) server holds the port this one runs on, named."""
    from openwork_sandbox.net.health import accepts_token
    from openwork_sandbox.sandbox.locate import port_taker

    if accepts_token(settings.url, token, timeout_s=min(2.0, settings.request_timeout), verify=verify) is False:
        raise WorkflowError(
            f"{settings.name} runs, but port {settings.port} answers with another server (it refuses "
            f"{settings.name}'s client token): {port_taker(settings, settings.port)} holds it; stop that one and "
            f"run `invoke up` again, or give {settings.name} another port with --port / OPENWORK_MICROSANDBOX_PORT"
        )


def _claim_port(settings: Settings):
    """The host-wide claim on the port while this `up` boots (``start_slots.port_claim``): another
    `up` starting a sandbox there now fails at once, naming it."""
    from openwork_sandbox.sandbox.start_slots import port_claim

    return port_claim(settings.port, settings.name)


def _report(
    ep: Endpoint,
    *,
    action: str,
    seconds: float,
    settings: Settings,
    show_tokens: bool,
    as_json: bool,
    health: dict | None,
    server_cert=None,
    folders_here: bool = True,
) -> None:
    """What `up` did, on stderr (a table), or with ``as_json`` one JSON object on stdout; tokens masked
    unless ``show_tokens``; with TLS the certificate's fingerprint and the CA file clients trust."""
    from openwork_sandbox.state.tls import client_verify

    shown = (lambda s: s) if show_tokens else console.mask
    ca = client_verify(settings) if server_cert is not None else None
    tls = (
        {"sha256": server_cert.fingerprint, "made": server_cert.made, "ca": ca if isinstance(ca, str) else None}
        if server_cert is not None
        else None
    )
    if as_json:
        console.emit_json(
            {
                "name": ep.name,
                "runtime": ep.runtime,
                "action": action,
                "url": ep.url,
                "workspace_id": ep.workspace_id,
                "seconds": round(seconds, 3),
                "image": settings.image,
                "token": shown(ep.token),
                "host_token": shown(ep.host_token),
                "state_dir": str(settings.sandbox_state_dir),
                "workspace_dir": str(settings.workspace_dir) if folders_here else None,  # a swarm node's volumes
                "data_dir": str(settings.data_dir) if folders_here else None,
                "server_version": (health or {}).get("version"),
                "tls": tls,
            }
        )
        return
    cert_rows = []
    if tls is not None:
        whose = f"made for {ep.name}" if tls["made"] else "yours (OPENWORK_TLS_CERT)"
        trust = f"; clients trust {tls['ca']}" if tls["ca"] else ""
        cert_rows = [("TLS certificate", f"SHA-256 {tls['sha256']}"), ("", f"{whose}{trust}")]
    console.info(f"{console.OK} {ep.name} is up ({action}, {ep.runtime}, {seconds:.1f}s)")
    console.print_table(
        [
            ("URL", ep.url),
            *cert_rows,
            ("workspace", ep.workspace_id or "(none)"),
            ("client token", shown(ep.token)),
            ("host token", shown(ep.host_token)),
            *(
                [("workspace dir", settings.workspace_dir), ("data dir", settings.data_dir)]
                if folders_here
                else [("workspace, data", "volumes on the sandbox's node (not on this host): invoke status names it")]
            ),
        ]
    )
    if not show_tokens:
        console.info(
            "tokens are masked: --show-tokens prints them (they are kept in "
            f"{settings.sandbox_state_dir / 'tokens.json'} unless you set them)"
        )


def _observe(
    settings: Settings,
    state: SandboxState,
    kind: str,
    rt: Runtime,
    spec_fingerprint: str,
    secret_digests: dict | None = None,
) -> Observed:
    """What `up` decides on: the record, the runtime's status, one health probe, the port, and which
    secret settings differ from what the sandbox was made with."""
    from openwork_sandbox.net.health import health_once
    from openwork_sandbox.state.secrets import changed_parts
    from openwork_sandbox.state.tls import client_verify

    st = rt.status()
    record = state.record()
    return Observed(
        name=settings.name,
        kind=kind,
        recorded=record.get("runtime"),
        status=st,
        fingerprint=spec_fingerprint,
        replace=settings.replace,
        health=health_once(settings.url, timeout_s=1.0, verify=client_verify(settings))
        if st.state == RUNNING
        else None,
        port_free=rt.port_is_free(settings.port, settings.bind_address),
        changed=changed_parts(record.get("secrets"), secret_digests or {}) if secret_digests is not None else (),
    )


def _save_record(state: SandboxState, settings: Settings, rt: Runtime, spec: LaunchSpec, **extra) -> None:
    """The one place `up` writes what runs (so logs/status/reset find it even when a boot fails); for a
    runtime that runs it on another host, ``placed_at`` is that host's address (``locate.at_recorded_address``)."""
    state.save_record(
        runtime=rt.kind,
        image=settings.image,
        launch=settings.launch,  # `status` shows it (a record without it: orchestrator, the only launch before)
        fingerprint=spec.fingerprint,
        port=settings.port,
        url=settings.url,
        placed_at=None if rt.state_on_host else settings.connect_host,
        **extra,
    )


def _act(
    settings: Settings,
    state: SandboxState,
    rt: Runtime,
    seen: Observed,
    decision: UpDecision,
    spec: LaunchSpec,
    tokens: tuple[str, str],
    secrets=None,
    server_cert=None,
    then: Callable[[], None] | None = None,
) -> tuple[dict, str | None]:
    """Carry out ``decision`` (see the module doc); returns the health body and the workspace id.
    ``tokens``: the client and host token; ``then``: run once the sandbox is healthy (its workspace
    check overlaps it). The record is written before anything boots, so logs/status/reset find a
    sandbox whose start failed."""
    from openwork_sandbox.net.health import check_workspaces
    from openwork_sandbox.state import tls

    token = tokens[0]
    if decision.remove_old:
        old = runtimes.runtime_for(decision.remove_old, settings)
        persist.migrate_before_replace(
            settings, old, spec
        )  # a failed copy puts it back (its server too) and stops here
        try:
            if old.remove():
                console.info(
                    f"removed the {decision.remove_old} sandbox {settings.name} (runtime changed to "
                    f"{rt.kind}; state kept)"
                )
        except WorkflowError as exc:
            console.info(f"note: could not remove the old {decision.remove_old} sandbox: {exc.message}")
    if decision.action not in QUIET:
        console.info(decision.reason)
    tls.deliver(
        settings, server_cert
    )  # the server's certificate and key in the folder it mounts (a restart reads them)
    if decision.action == REUSE:
        verify = tls.client_verify(settings)
        if then is not None:
            then()
        return seen.health or {}, check_workspaces(
            settings.url, token, timeout_s=settings.request_timeout, verify=verify
        )
    fresh = decision.action in (CREATE, RECREATE)
    made = {"created_at": time.time(), "workspace_id": None} if fresh else {}
    from openwork_sandbox.state.secrets import write, write_server_side

    write_server_side(settings, *tokens)  # the token files and the store, before anything boots
    if secrets is not None:  # the mounted folder, before anything boots (a start mounts it too)
        write(settings, secrets)
        if fresh:  # the digests of what it is made with: a later `up` names what changed
            made["secrets"] = secrets.digests() or None
    _save_record(state, settings, rt, spec, **made)
    if decision.action == RECREATE:
        persist.migrate_before_replace(settings, rt, spec)  # a failed copy stops here
        rt.remove()
    if fresh:
        rt.create(spec)
    elif decision.action in (START, RELAUNCH):
        rt.start(spec)
    return wait_until_ready(settings, rt, token, spec, then)


def up(settings: Settings, *, follow: bool = False, show_tokens: bool = False, as_json: bool = False) -> Endpoint:
    """Create, start or reuse the sandbox and wait until its server is healthy; see the module doc.

    Observe, decide (:func:`decision.decide_up`), act, report; returns where the server answers.
    For a new sandbox the decision is also made before the lock, so a busy port fails before
    anything is created; the one acted on is made under the lock (another `up` may have finished
    meanwhile). Holds a host-wide start slot while it boots, and the claim on its port (another
    name's `up` on that port fails at once, naming it; a healthy server on the port that refuses the
    client token is another's, named, not reused); interrupted (Ctrl+C, SIGTERM) before
    the server was healthy, it stops what it started and re-raises KeyboardInterrupt. ``follow``
    streams the server log afterwards (``follow.follow_log``): until Ctrl+C, or one line and
    WorkflowError (exit 1) when the sandbox stops, is removed or is restarted by its engine."""
    from openwork_sandbox.state import tls
    from openwork_sandbox.state.secrets import gather

    started = time.monotonic()
    state = SandboxState(settings)
    check_exposure(settings)
    token, host_token = state.tokens(create=False)  # a tokens.json that does not parse stops here, before any change
    secrets = gather(settings)  # an unset OPENWORK_SANDBOX_ENV variable or a bad opencode config: before anything
    tls.check(settings)  # the user's certificate and key, OPENWORK_TLS_CA: before anything
    kind, why = choose_runtime(settings, state)
    rt = runtimes.runtime_for(kind, settings)
    shared = check_network(settings, rt)  # a network policy this runtime cannot hold stops here, before any change
    console.info(f"runtime: {kind} ({why})" if len(why) < 60 else f"runtime: {kind}\n  why: {why}")
    if shared:
        console.info(f"network: {shared}")
    here = settings
    settings = placed(settings, rt)  # on a swarm: its node's address, which the URL and the certificate name
    if settings is not here:  # now beyond loopback: the same checks again
        check_exposure(settings)
        tls.check(settings)

    with contextlib.ExitStack() as claim:
        claimed = not state.exists()
        if claimed:  # the lock creates .state/<name>/: a claimed or busy port fails before that
            claim.enter_context(_claim_port(settings))
            fp = launch_spec(settings, kind, token or "", host_token or "").fingerprint
            _refuse_busy_port(settings, decide_up(_observe(settings, state, kind, rt, fp)))
        with state.lock(action="up"):
            state.ensure()
            if rt.state_on_host:  # a swarm sandbox's data is a volume on its node
                persist.check_data_dir(settings)  # before anything is removed or booted
            token, host_token = state.tokens()
            if not token or not host_token:  # tokens() generates what is missing; this is a safety net
                raise WorkflowError(
                    f"no tokens for {settings.name}: delete {state.tokens_path} and run `invoke up` again"
                )
            server_cert, made = tls.ensure(settings)
            if made:
                console.info(made)
            _say_clear_text(settings)
            spec = launch_spec(settings, kind, token, host_token, secrets, server_cert)
            seen = _observe(settings, state, kind, rt, spec.fingerprint, secrets.digests())
            decision = decide_up(seen)
            if decision.action != REUSE and not claimed:
                claim.enter_context(_claim_port(settings))  # held until this `up` ends
            _refuse_busy_port(settings, decision)
            if decision.action == REUSE:  # healthy on the port: but is it this sandbox's server?
                _refuse_stranger(settings, token, tls.client_verify(settings))
            with interrupts.sigterm_as_interrupt():
                try:
                    with _start_slot(settings, decision, rt):
                        # healthy: from now on the runtime brings it back (Docker: restart policy)
                        keep = None if settings.ephemeral else rt.keep_running
                        health, workspace_id = _act(
                            settings, state, rt, seen, decision, spec, (token, host_token), secrets, server_cert, keep
                        )
                except KeyboardInterrupt:
                    if decision.action != REUSE:
                        _stop_half_started(settings, rt)
                    raise
            _save_record(state, settings, rt, spec, workspace_id=workspace_id, healthy_at=time.time())

    ep = Endpoint(settings.url, token, host_token, kind, settings.name, workspace_id)
    _report(
        ep,
        action=decision.done,
        seconds=time.monotonic() - started,
        settings=settings,
        show_tokens=show_tokens,
        as_json=as_json,
        health=health,
        server_cert=server_cert,
        folders_here=rt.state_on_host,
    )
    if follow:  # until Ctrl+C; the sandbox's end ends it with one line and exit 1, as `logs --follow`
        from openwork_sandbox.sandbox.follow import follow_log

        console.info("following the server log; Ctrl+C stops following (the sandbox keeps running)")
        follow_log(settings, rt, tail=20, out=sys.stderr if as_json else None)
    return ep


def _say_clear_text(settings: Settings) -> None:
    """One line when the port faces the network without TLS (OPENWORK_TLS=false beyond loopback)."""
    from openwork_sandbox.config import is_loopback

    if not settings.tls_on and not is_loopback(settings.connect_host):
        console.info(
            f"{console.BAD} TLS is off (OPENWORK_TLS=false from {settings.origin('tls')}) and "
            f"OPENWORK_CONNECT_HOST={settings.connect_host} is beyond loopback: the tokens cross the network in clear"
        )


def _start_slot(settings: Settings, decision: UpDecision, rt: Runtime):
    """One of the host's start slots (start_slots) while `up` boots; none to reuse a running sandbox, nor
    for a runtime that boots it on another host (a swarm node: this host only waits)."""
    from openwork_sandbox.sandbox.start_slots import default_slots, start_slot

    if decision.action == REUSE or not rt.state_on_host:
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
    console.info(
        f"interrupted before {settings.name} was healthy: {what} (state kept in {settings.sandbox_state_dir}); "
        "`invoke up` starts it again"
    )
