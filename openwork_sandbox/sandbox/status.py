"""``status``: what the sandbox is now (runtime, launch, state, image, URL, health, uptime, restarts)."""

from __future__ import annotations

import time

from openwork_sandbox.config import Settings
from openwork_sandbox.core import console
from openwork_sandbox.runtimes import ABSENT, RUNNING, RuntimeStatus
from openwork_sandbox.sandbox.launch import launch_spec
from openwork_sandbox.sandbox.locate import existing_runtime
from openwork_sandbox.state.store import SandboxState


def _uptime(seconds: float | None) -> str:
    """``seconds`` as its two largest units (``2h5m``, ``40s``); ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    parts = [(seconds // 86400, "d"), (seconds % 86400 // 3600, "h"), (seconds % 3600 // 60, "m"), (seconds % 60, "s")]
    shown = [f"{n}{u}" for n, u in parts if n]
    return "".join(shown[:2]) or "0s"


def _stranger(settings: Settings, token: str | None, verify) -> str | None:
    """What holds the port when the server answering there refuses this sandbox's client token (a
    sandbox of this tool by its name, else the program); None when it is this sandbox's own server
    (or that cannot be told: no token, no clear answer)."""
    from openwork_sandbox.net.health import accepts_token

    timeout = min(2.0, settings.request_timeout)
    if not token or accepts_token(settings.url, token, timeout_s=timeout, verify=verify) is not False:
        return None
    from openwork_sandbox.sandbox.locate import port_taker

    return port_taker(settings, settings.port)


def _unknown_restarts(settings: Settings, supervised, st: RuntimeStatus, live: bool) -> tuple[str | None, str | None]:
    """Why the supervisor's restart count cannot be believed (``supervision.unknown_restarts``), and
    the data folder's nearly-full line (``persist.data_full_problem``) when the sandbox is ``live``."""
    import shutil

    from openwork_sandbox.state.persist import MIN_START_BYTES, data_full_problem
    from openwork_sandbox.state.supervision import unknown_restarts

    try:
        free = shutil.disk_usage(settings.data_dir).free
    except OSError:
        free = None
    unknown = unknown_restarts(
        supervised,
        data_dir=settings.data_dir,
        live=live,
        sandbox_started_at=st.started_at,
        free=free,
        tiny=MIN_START_BYTES,
    )
    return unknown, (data_full_problem(settings.data_dir) if live else None)


def status(settings: Settings, *, as_json: bool = False) -> int:
    """Runtime, state, image and digest, URL, health, uptime, restarts: a table on stderr, or with
    ``as_json`` one JSON object on stdout. Returns 0 when running, healthy (its own server: one that
    refuses its client token is another's, named) and not in a crash loop, else 1. Reads only:
    nothing is started, written or created."""
    from openwork_sandbox.net.health import health_once

    state = SandboxState(settings)
    record = state.record()
    rt = existing_runtime(settings, state)
    st = rt.status() if rt else RuntimeStatus(ABSENT)
    digest = rt.digest(st) if rt is not None else None
    from openwork_sandbox.state.tls import client_verify

    verify = client_verify(settings)
    health = (
        health_once(settings.url, timeout_s=min(2.0, settings.request_timeout), verify=verify)
        if st.state == RUNNING
        else None
    )
    uptime = (time.time() - st.started_at) if st.started_at else None
    token, host_token = state.tokens(create=False)
    stranger = _stranger(settings, token, verify) if health is not None else None
    if stranger:  # the port answers healthy, but with another sandbox's (or program's) server
        health = None
    current = None
    if st.state != ABSENT and rt is not None and token and host_token:
        current = launch_spec(settings, rt.kind, token, host_token).fingerprint == st.fingerprint
    info = {
        "name": settings.name,
        "runtime": rt.kind if rt else record.get("runtime"),
        # what the image started, as `up` recorded it; a sandbox made before the setting: orchestrator
        "launch": record.get("launch") or ("orchestrator" if record or st.state != ABSENT else None),
        "state": st.state,
        "detail": st.detail,
        "image": st.image or record.get("image"),
        "digest": digest,
        "platform": rt.platform(st) if rt is not None and st.state != ABSENT else None,
        "url": settings.url,
        "node": st.where or None,
        "healthy": health is not None,
        "port_held_by": stranger,
        "server_version": (health or {}).get("version"),
        "uptime_seconds": round(uptime, 1) if uptime is not None else None,
        "workspace_id": record.get("workspace_id"),
        "settings_current": current,
        "state_dir": str(settings.sandbox_state_dir),
    }
    from openwork_sandbox.state.supervision import read as read_supervision

    # a swarm sandbox's /data is a volume on its node: its supervisor's record cannot be read here
    supervised = read_supervision(settings.data_dir) if rt is None or rt.state_on_host else None
    info["supervisor"] = supervised.as_dict() if supervised else None
    # running, or between the starts of Docker's restart policy; only where its record is on this host
    live = bool(rt and rt.state_on_host) and (st.state == RUNNING or st.detail.startswith("restarting"))
    unknown, full = _unknown_restarts(settings, supervised, st, live)
    info["restarts_unknown"] = unknown
    info["engine_restarts"] = st.engine_restarts
    crash_loop = bool(supervised and supervised.crash_loop)
    code = 0 if (st.state == RUNNING and health is not None and not crash_loop) else 1
    if as_json:
        console.emit_json(info)
        return code
    mark = console.OK if code == 0 else console.BAD
    console.info(
        f"{mark} {settings.name}: {st.state}{(' (' + st.detail + ')') if st.detail and st.state != RUNNING else ''}"
    )
    console.print_table(
        [
            ("runtime", info["runtime"] or "-"),
            ("launch", info["launch"] or "-"),
            ("image", info["image"] or "-"),
            ("digest", digest or "-"),
            ("platform", info["platform"] or "-"),
            ("URL", settings.url),
            *([("node", st.where)] if st.where else []),
            (
                "health",
                ("ok" + (f" (server {info['server_version']})" if info["server_version"] else ""))
                if health
                else ("no answer" if st.state == RUNNING else "-"),
            ),
            ("uptime", _uptime(uptime)),
            ("workspace", info["workspace_id"] or "-"),
            (
                "restarts",
                (unknown or (supervised.summary() if supervised else "- (no supervisor record)"))
                + (f"; the engine restarted the sandbox {st.engine_restarts} times" if st.engine_restarts else ""),
            ),
            ("state dir", settings.sandbox_state_dir),
        ]
    )
    if stranger:
        console.info(
            f"{console.BAD} port {settings.port} answers, but not with {settings.name}'s server (it refuses "
            f"{settings.name}'s client token): {stranger} holds it"
        )
    if full:
        console.info(f"{console.BAD} {full}")
    if crash_loop:
        console.info(f"{console.BAD} the server is in a crash loop: `invoke logs --tail 100` shows why it keeps dying")
    if current is False:
        console.info("settings changed since this sandbox was created: `invoke up` recreates it (state kept)")
    return code
