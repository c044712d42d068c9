"""`up`, `down`, `status`, `logs`, `reset`: one OpenWork sandbox with persistent state.

``up`` picks the runtime (microsandbox where microVMs boot, else Docker), then creates, starts or
reuses the sandbox named by the settings, waits until ``GET /health`` answers and the client token
works, and prints the URL, the workspace id and the masked tokens. ``.state/<name>/`` (see
:mod:`openwork_sandbox.state`) keeps the tokens, the record of what runs and the two bind-mounted
folders; it survives ``down``, ``up --replace`` and settings changes, and only ``reset`` deletes it.

Also used by ``smoke``: :class:`Endpoint`, :func:`endpoint`, :func:`server_log_tail`,
:func:`runtime_exec`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
import time

from . import console
from .errors import EXIT_BAD_SETTINGS, WorkflowError
from .runtimes import ABSENT, RUNNING, LaunchSpec, Runtime, RuntimeStatus, runtime_for
from .settings import GUEST_PORT, Settings, is_loopback
from .state import MIN_PUBLIC_TOKEN_LEN, SandboxState, deletion_problem, fingerprint, safe_remove, secret_digest

DOCKER_HINT = "use the Docker runtime: invoke up --runtime docker (or OPENWORK_MICROSANDBOX_RUNTIME=docker)"


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
    """``(runtime, why)`` for ``up``. ``auto``: the runtime this sandbox already uses, else
    microsandbox where microVMs boot, else Docker, else a WorkflowError naming what is missing.
    An explicit ``microsandbox`` on a host that cannot boot microVMs fails here, before any boot."""
    from .runtimes.probe import docker_support, microvm_support

    if settings.runtime == "docker":
        return "docker", f"OPENWORK_MICROSANDBOX_RUNTIME=docker from {settings.origin('runtime')}"
    if settings.runtime == "microsandbox":
        ok, why = microvm_support()
        if not ok:
            raise WorkflowError(f"this host cannot run microVMs: {why}; {DOCKER_HINT}")
        return "microsandbox", f"OPENWORK_MICROSANDBOX_RUNTIME=microsandbox from {settings.origin('runtime')}; {why}"
    recorded = (state or SandboxState(settings)).record().get("runtime")
    if recorded in ("docker", "microsandbox"):
        if recorded == "docker" or microvm_support()[0]:
            return recorded, f"auto: sandbox {settings.name} already uses {recorded}"
    ok, vm_why = microvm_support()
    if ok:
        return "microsandbox", f"auto: microVMs can boot here: {vm_why}"
    docker_ok, docker_why = docker_support()
    if docker_ok:
        return "docker", f"auto: microVMs cannot boot here: {vm_why}; {docker_why}"
    raise WorkflowError(f"no runtime can run the sandbox here: microVMs: {vm_why}; Docker: {docker_why}")


def _existing_runtime(settings: Settings, state: SandboxState) -> Runtime | None:
    """The runtime that holds this sandbox (recorded by `up`), for down/status/logs/reset."""
    recorded = state.record().get("runtime")
    if recorded in ("docker", "microsandbox"):
        return runtime_for(recorded, settings)
    if settings.runtime in ("docker", "microsandbox"):
        return runtime_for(settings.runtime, settings)
    # nothing recorded: look for a sandbox of this name in whichever runtime answers
    from . import commands

    candidates = []
    if commands.docker_engine_answers(timeout=5):
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


def launch_spec(settings: Settings, kind: str, token: str, host_token: str) -> LaunchSpec:
    from .runtimes.base import GUEST_DATA, GUEST_WORKSPACE

    env = {
        "OPENWORK_TOKEN": token,
        "OPENWORK_HOST_TOKEN": host_token,
        "OPENWORK_APPROVAL_MODE": settings.approval_mode,
        "OPENWORK_CONNECT_HOST": settings.connect_host,
    }
    if settings.offline:
        env["OPENCODE_DISABLE_MODELS_FETCH"] = "1"
    mounts = {GUEST_WORKSPACE: settings.workspace_dir.resolve(), GUEST_DATA: settings.data_dir.resolve()}
    fp = fingerprint({
        "runtime": kind, "image": settings.image, "port": settings.port, "bind": settings.bind_address,
        "connect_host": settings.connect_host, "mounts": {k: str(v) for k, v in mounts.items()},
        "approval": settings.approval_mode, "offline": settings.offline, "cpus": settings.cpus, "memory": settings.memory,
        "token": secret_digest(token), "host_token": secret_digest(host_token),
    })
    return LaunchSpec(
        name=settings.name, image=settings.image, host_port=settings.port, bind_address=settings.bind_address,
        guest_port=GUEST_PORT, mounts=mounts, env=env, cpus=settings.cpus, memory_mib=settings.memory,
        registry_plain_http=settings.registry_plain_http, fingerprint=fp, pull_always=settings.replace,
    )


def _ensure_port_free(settings: Settings) -> None:
    from .ports import port_holder, port_is_free

    if port_is_free(settings.port, settings.bind_address):
        return
    raise WorkflowError(
        f"port {settings.port} is already in use by {port_holder(settings.port)}: stop it, or choose another port "
        f"with --port / OPENWORK_MICROSANDBOX_PORT"
    )


# --- up --------------------------------------------------------------------------------------------

def _print_log_tail(rt: Runtime, lines: list[str] | None = None, hint: str | None = None) -> None:
    lines = rt.log_tail(40) if lines is None else lines
    console.group(f"last {len(lines)} lines of the server log", lines or ["(no output)"])
    console.info(f"full log: {hint or rt.log_hint()}")


STALL_SECONDS = 20.0  # no new server output for this long while not healthy: the start is stuck
# ...and after "opencode server listening" the orchestrator's next line ("[opencode] Healthy") comes
# within milliseconds unless its one health request hangs for good: give up on it sooner
LISTENING_MARK = "opencode server listening"
LISTENING_STALL_SECONDS = 8.0
EARLY_DEATH_SECONDS = 30.0  # a server that exits this soon after (re)start gets another try
# Starts in all: the hang strikes about one start in ten even on a quiet machine (measured with
# plain `docker run`), so two restarts make a failed `up` from it about one in a thousand.
START_ATTEMPTS = 3


class _Stalled(Exception):
    def __init__(self, last_line: str, seconds: float):
        super().__init__(last_line)
        self.last_line, self.seconds = last_line, seconds


class _StartWatch:
    """``is_alive`` for the health wait that also notices a start that stopped making progress.

    orchestrator 0.18 can hang for good when its first request to a just-started opencode is
    never answered (it has no timeout); its log then stops at "opencode server listening". A start
    whose log has not changed for ``stall_s`` raises :class:`_Stalled` so `up` can restart it.
    """

    def __init__(self, rt: Runtime, stall_s: float | None):
        self.rt, self.stall_s = rt, stall_s
        self.last_tail: list[str] | None = None
        self.changed_at = time.monotonic()
        self.next_check = self.changed_at + 1.0

    def __call__(self) -> bool:
        if not self.rt.is_alive():
            return False
        now = time.monotonic()
        if self.stall_s is not None and now >= self.next_check:
            self.next_check = now + 1.0
            tail = self.rt.log_tail(3)
            if tail != self.last_tail:
                self.last_tail, self.changed_at = tail, now
            else:
                last = tail[-1].strip() if tail else "(no output)"
                limit = min(self.stall_s, LISTENING_STALL_SECONDS) if LISTENING_MARK in last else self.stall_s
                if now - self.changed_at >= limit:
                    raise _Stalled(last, now - self.changed_at)
        return True


def _fail_with_log(rt: Runtime, exc) -> WorkflowError:
    _print_log_tail(rt, exc.log_lines, exc.log_hint)
    return WorkflowError(f"{exc.message} (the sandbox is left as it is for inspection; `invoke reset` removes it)")


def _wait_until_ready(settings: Settings, rt: Runtime, token: str, spec: LaunchSpec) -> tuple[dict, str | None]:
    """Wait for health (restarting a stuck or early-dying start, up to START_ATTEMPTS starts in
    all; the last one gets the whole deadline), then check /workspaces."""
    from .health import HealthTimeout, SandboxDied, check_workspaces, wait_for_health

    for attempt in range(1, START_ATTEMPTS + 1):
        last_attempt = attempt == START_ATTEMPTS
        watch = _StartWatch(rt, None if last_attempt else STALL_SECONDS)
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
            if last_attempt or time.monotonic() - began > EARLY_DEATH_SECONDS:
                raise _fail_with_log(rt, exc) from None
            last = exc.log_lines[-1].strip() if exc.log_lines else "no output"
            console.info(f"the server exited during start-up (last line: {last}); {again}")
        except HealthTimeout as exc:
            raise _fail_with_log(rt, exc) from None
        rt.restart_server(spec)
    _say_start_race(rt)
    return body, check_workspaces(settings.url, token, timeout_s=settings.request_timeout)


def _say_start_race(rt: Runtime) -> None:
    """One line when the image's start gate held off opencode's start race (see start_gate)."""
    from .start_gate import TAIL_LINES, race_note

    note = race_note(rt.log_tail(TAIL_LINES))
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


def up(settings: Settings, *, follow: bool = False, show_tokens: bool = False, as_json: bool = False) -> Endpoint:
    """Create, start or reuse the sandbox and wait until its server is healthy; see the module doc."""
    from .health import check_workspaces

    started = time.monotonic()
    state = SandboxState(settings)
    _check_exposure(settings)
    kind, why = choose_runtime(settings, state)
    console.info(f"runtime: {kind} ({why})" if len(why) < 60 else f"runtime: {kind}\n  why: {why}")
    recorded = state.record().get("runtime")
    rt = runtime_for(kind, settings)

    st = rt.status()
    if st.state != RUNNING and recorded in (None, kind):
        _ensure_port_free(settings)  # before anything is created

    with state.lock(action="up"):
        if recorded and recorded != kind:
            old = runtime_for(recorded, settings)
            try:
                if old.remove():
                    console.info(f"removed the {recorded} sandbox {settings.name} (runtime changed to {kind}; state kept)")
            except WorkflowError as exc:
                console.info(f"note: could not remove the old {recorded} sandbox: {exc.message}")
        state.ensure()
        token, host_token = state.tokens()
        if not token or not host_token:  # tokens() generates what is missing; this is a safety net
            raise WorkflowError(f"no tokens for {settings.name}: delete {state.tokens_path} and run `invoke up` again")
        spec = launch_spec(settings, kind, token, host_token)
        st = rt.status()

        action, health = _decide(settings, rt, st, spec)
        if action == "reused":
            health = health or {}
            workspace_id = check_workspaces(settings.url, token, timeout_s=settings.request_timeout)
            console.info("already running and healthy with the same image and settings: nothing to do")
        else:
            # record first: if the boot fails, logs/status/reset still find the sandbox
            state.save_record(runtime=kind, image=settings.image, fingerprint=spec.fingerprint, port=settings.port,
                              url=settings.url)
            if action in ("created", "recreated"):
                if action == "recreated":
                    rt.remove()
                _ensure_port_free(settings)
                rt.create(spec)
            elif action == "started":
                _ensure_port_free(settings)
                rt.start(spec)
            elif action == "relaunched":
                rt.start(spec)
            if action in ("created", "recreated"):
                state.save_record(created_at=time.time(), workspace_id=None)
            health, workspace_id = _wait_until_ready(settings, rt, token, spec)
        state.save_record(runtime=kind, image=settings.image, fingerprint=spec.fingerprint, port=settings.port,
                          url=settings.url, workspace_id=workspace_id, healthy_at=time.time())

    ep = Endpoint(settings.url, token, host_token, kind, settings.name, workspace_id)
    _report(ep, action=action, seconds=time.monotonic() - started, settings=settings, show_tokens=show_tokens,
            as_json=as_json, health=health)
    if follow:
        _follow(rt, tail=20, to_stdout=not as_json)
    return ep


def _decide(settings: Settings, rt: Runtime, st: RuntimeStatus, spec: LaunchSpec) -> tuple[str, dict | None]:
    """What `up` must do: created | recreated | started | relaunched | waited | reused."""
    from .health import health_once

    if st.state == ABSENT:
        return "created", None
    if settings.replace:
        console.info(f"replacing {settings.name} (--replace); state folders are kept")
        return "recreated", None
    if st.fingerprint != spec.fingerprint:
        console.info(f"{settings.name} was created with another image or settings: recreating it (state folders kept)")
        return "recreated", None
    if st.state != RUNNING:
        console.info(f"{settings.name} is stopped: starting it")
        return "started", None
    if st.server_running is False:
        console.info(f"{settings.name} runs but its server does not ({st.detail}): relaunching the server")
        return "relaunched", None
    body = health_once(settings.url, timeout_s=1.0)
    if body is not None:
        return "reused", body
    return "waited", None  # running, server process up but not healthy yet: wait for it


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
    from .health import health_once

    state = SandboxState(settings)
    record = state.record()
    rt = _existing_runtime(settings, state)
    st = rt.status() if rt else RuntimeStatus(ABSENT)
    digest = st.digest
    if rt is not None and rt.kind == "docker" and st.image:
        digest = rt.image_digest(st.image) or st.digest  # type: ignore[attr-defined]
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
        "url": settings.url,
        "healthy": health is not None,
        "server_version": (health or {}).get("version"),
        "uptime_seconds": round(uptime, 1) if uptime is not None else None,
        "workspace_id": record.get("workspace_id"),
        "settings_current": current,
        "state_dir": str(settings.sandbox_state_dir),
    }
    code = 0 if (st.state == RUNNING and health is not None) else 1
    if as_json:
        console.emit_json(info)
        return code
    mark = console.OK if code == 0 else console.BAD
    console.info(f"{mark} {settings.name}: {st.state}{(' (' + st.detail + ')') if st.detail and st.state != RUNNING else ''}")
    console.print_table([
        ("runtime", info["runtime"] or "-"),
        ("image", info["image"] or "-"),
        ("digest", digest or "-"),
        ("URL", settings.url),
        ("health", ("ok" + (f" (server {info['server_version']})" if info["server_version"] else "")) if health
         else ("no answer" if st.state == RUNNING else "-")),
        ("uptime", _uptime(uptime)),
        ("workspace", info["workspace_id"] or "-"),
        ("state dir", settings.sandbox_state_dir),
    ])
    if current is False:
        console.info("settings changed since this sandbox was created: `invoke up` recreates it (state kept)")
    return code


SINCE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_since(text: str | None) -> float | None:
    """``--since``: seconds, or 30s, 5m, 2h, 1d -> seconds."""
    if text is None or str(text).strip() == "":
        return None
    m = SINCE_RE.match(str(text))
    if not m:
        raise WorkflowError(f"--since {text!r}: expected seconds, or a number with s, m, h or d, e.g. 5m",
                            exit_code=EXIT_BAD_SETTINGS)
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


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
        rt = _existing_runtime(settings, state)
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

