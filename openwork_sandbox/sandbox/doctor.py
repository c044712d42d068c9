"""`invoke doctor`: what this machine can and cannot run, one line per check, and what to do.

Each check is a small function returning a :class:`Check`. The host facts are read once
(``probe.host_facts``); the runtime is chosen from them by the same rule ``up`` uses
(``runtimes.choice``). The exit code is 0 when the chosen runtime can work, 1 otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import re
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from openwork_sandbox.config import Settings
from openwork_sandbox.core import console, processes
from openwork_sandbox.core.versions import at_least
from openwork_sandbox.net import ports
from openwork_sandbox.net.health import health_once
from openwork_sandbox.runtimes import choice, probe
from openwork_sandbox.runtimes.choice import DOCKER, MICROSANDBOX, HostFacts
from openwork_sandbox.sandbox.doctor_check import Check
from openwork_sandbox.state.store import SandboxState

# lower bounds known to work (kept in step with pyproject.toml by a test)
PACKAGE_MINIMUMS = {
    "invoke": "2.2",
    "microsandbox": "0.7.11",
    "requests": "2.31",
    "python-dotenv": "1.0.1",
    "packaging": "21.0",
}
PYTHON_MINIMUM = (3, 10)


def check_python() -> Check:
    """This Python is at least ``PYTHON_MINIMUM``."""
    version = platform.python_version()
    ok = sys.version_info[:2] >= PYTHON_MINIMUM
    return Check(
        "python", ok, f"Python {version}", "" if ok else f"use Python {'.'.join(map(str, PYTHON_MINIMUM))} or newer"
    )


def check_packages() -> Check:
    """Every package of ``PACKAGE_MINIMUMS`` is installed, at least at its minimum."""
    found, problems = [], []
    for package, minimum in PACKAGE_MINIMUMS.items():
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            problems.append(f"{package} missing")
            continue
        found.append(f"{package} {version}")
        if not at_least(version, minimum):
            problems.append(f"{package} {version} < {minimum}")
    ok = not problems
    return Check(
        "packages",
        ok,
        ", ".join(found) if ok else "; ".join(problems),
        "" if ok else "pip install -e '.[test]' (see README)",
    )


def check_docker_client() -> Check:
    """The docker program is on PATH (Docker runtime only)."""
    if processes.which("docker") is None:
        return Check(
            "docker client",
            False,
            "docker not on PATH",
            "scripts/services start (Debian) or install Docker",
            frozenset({DOCKER}),
        )
    proc = processes.run(["docker", "version", "--format", "{{.Client.Version}}"], check=False, timeout=15)
    version = proc.stdout.strip() or "unknown version"
    return Check("docker client", True, f"docker {version}", needed_by=frozenset({DOCKER}))


def check_docker_engine(facts: HostFacts) -> Check:
    """The Docker engine answers (Docker runtime only)."""
    ok, detail = facts.docker or (False, "not asked")
    # no answer: start it; otherwise (not installed, a socket this user may not use) the detail says the way out
    fix = "scripts/services start (or start Docker Desktop)" if probe.DOCKER_START in detail else "see the result"
    return Check("docker engine", ok, detail, "" if ok else fix, frozenset({DOCKER}))


def check_registry(settings: Settings) -> Check:
    """The one registry ping (``Registry.ping``, quick: one try, no retries) as push-image asks it
    (HTTPS first, Docker's login and CAs), so doctor stays fast."""
    from openwork_sandbox.core.errors import UnreachableError, WorkflowError
    from openwork_sandbox.registry.client import Registry

    ref = settings.image_ref
    host = ref.registry_host
    name = f"registry {host}"
    fix = (
        "scripts/services start"
        if ref.registry_is_loopback
        else "check OPENWORK_MICROSANDBOX_IMAGE's registry, or OPENWORK_REGISTRY_INSECURE for plain HTTP"
    )
    try:
        registry = Registry.for_settings(settings)
        code = registry.ping(quick=True)
    except UnreachableError as exc:
        return Check(name, False, exc.message, fix)
    except WorkflowError as exc:  # a wrong login, a CA that is not trusted, not a registry
        return Check(name, False, exc.message, "see the detail")
    auth = f" (needs login: docker login {host}, or OPENWORK_REGISTRY_USERNAME/PASSWORD)" if code == 401 else ""
    return Check(name, True, f"{registry.base}/v2/ answers {code}{auth}")


def check_microsandbox(facts: HostFacts) -> Check:
    """The SDK and its msb runtime are installed, and MSB_HOME can hold a microVM's root filesystem."""
    needed = frozenset({MICROSANDBOX})
    try:
        version = metadata.version("microsandbox")
    except metadata.PackageNotFoundError:
        return Check("microsandbox", False, "SDK not installed", "pip install microsandbox", needed)
    if facts.msb is None:
        return Check(
            "microsandbox",
            False,
            f"SDK {version}, but no msb runtime",
            "pip install --force-reinstall microsandbox",
            needed,
        )
    from openwork_sandbox.runtimes.microsandbox.sdk import msb_home  # the SDK itself is imported lazily there
    from openwork_sandbox.runtimes.microsandbox.spec import takes_no_xattrs

    if takes_no_xattrs(msb_home()):
        return Check(
            "microsandbox",
            False,
            f"SDK {version}, but its folder {msb_home()} (MSB_HOME) is on a filesystem "
            "without extended attributes, where no microVM's root filesystem can be put together",
            "set MSB_HOME to a folder on ext4, xfs or btrfs",
            needed,
        )
    return Check("microsandbox", True, f"SDK {version}, runtime {facts.msb}", needed_by=needed)


def check_kvm(facts: HostFacts) -> Check:
    """/dev/kvm is there and usable by this user (microsandbox only)."""
    ok, detail = choice.kvm_verdict(facts)
    fix = (
        ""
        if ok
        else (
            "add yourself to the kvm group (sudo usermod -aG kvm $USER) and log in again"
            if facts.kvm_present
            else "enable KVM (load kvm_intel/kvm_amd) or use the Docker runtime"
        )
    )
    return Check("/dev/kvm", ok, detail, fix, frozenset({MICROSANDBOX}))


def check_virtualization(facts: HostFacts) -> Check:
    """The CPU offers hardware virtualization to this host (microsandbox only)."""
    ok, detail = choice.virtualization_verdict(facts)
    fix = "" if ok else "use the Docker runtime (OPENWORK_MICROSANDBOX_RUNTIME=docker), or a host with KVM"
    return Check("virtualization", ok, detail, fix, frozenset({MICROSANDBOX}))


def check_avx(settings: Settings, facts: HostFacts) -> Check:
    """openwork-orchestrator (a Bun executable) needs AVX; a user's own build may not."""
    from openwork_sandbox.sandbox.avx import FIX, no_avx_message

    if facts.avx is None:
        return Check("cpu avx", True, f"not checked on {facts.system} {facts.machine}")
    if facts.avx:
        return Check("cpu avx", True, "the CPU has AVX (openwork-orchestrator needs it)")
    own = settings.orchestrator_bin
    detail = no_avx_message(settings.orchestrator_version).split(";")[0]
    if own:
        return Check(
            "cpu avx", True, f"{detail}; OPENWORK_ORCHESTRATOR_BIN_PATH={own} is baked instead (it must not need AVX)"
        )
    return Check("cpu avx", False, detail, FIX)


def check_port(settings: Settings) -> Check:
    """The sandbox's port is free, or held by a running OpenWork server that is this sandbox's (it
    takes its client token, or nothing says it is another's). Otherwise not ok, naming what holds it
    as `up` does (``locate.port_taker``: another sandbox of this tool by its name, else the program)."""
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.net.health import accepts_token
    from openwork_sandbox.sandbox.locate import port_taker, sandbox_on_port
    from openwork_sandbox.state.tls import client_verify

    address, port = settings.bind_address, settings.port
    if ports.port_is_free(port, address):
        return Check(f"port {port}", True, f"{address}:{port} is free")
    verify = client_verify(settings)
    if (health_once(settings.url, timeout_s=2, verify=verify) or {}).get("ok") is True:
        try:
            token = SandboxState(settings).tokens(create=False)[0]
        except WorkflowError:  # a tokens.json that does not parse: its own row says so
            token = None
        own = accepts_token(settings.url, token, timeout_s=2, verify=verify) if token else None
        if own is True:
            return Check(
                f"port {port}", True, f"{address}:{port} is held by {settings.name}'s running server (invoke status)"
            )
        if own is None and sandbox_on_port(settings, port) is None:
            return Check(f"port {port}", True, f"{address}:{port} is held by a running OpenWork server (invoke status)")
    return Check(
        f"port {port}",
        False,
        f"{address}:{port} is in use by {port_taker(settings, port)}",
        "stop it, or set OPENWORK_MICROSANDBOX_PORT to a free port",
    )


def _writable(path: Path) -> tuple[str | None, Path]:
    """Why ``path`` (or its nearest existing parent, where it would be made) takes no file, or None:
    a small file is written there, synced and deleted, so a full or read-only disk fails too."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return "a file", probe
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".openwork-write-probe.")  # backup leaves these out
    except OSError as exc:
        return exc.strerror or str(exc), probe
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"openwork-sandbox doctor write probe\n" * 128)  # a few kB: a nearly full disk fails too
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return exc.strerror or str(exc), probe
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return None, probe


def check_state_folders(settings: Settings) -> Check:
    """The state, workspace and data folders can be made and written (the nearest existing parent)."""
    bad = []
    for label, path in (
        ("state", settings.sandbox_state_dir),
        ("workspace", settings.workspace_dir),
        ("data", settings.data_dir),
    ):
        why, probe = _writable(path)
        if why:
            bad.append(f"{label} {path} (at {probe}: {why})")
    if bad:
        return Check(
            "state folders",
            False,
            "not writable: " + "; ".join(bad),
            "free space or fix permissions, or set OPENWORK_STATE_DIR / OPENWORK_MICROSANDBOX_WORKSPACE_DIR / _DATA_DIR",
        )
    return Check("state folders", True, f"writable under {settings.sandbox_state_dir}")


def check_sandbox_env(settings: Settings) -> Check:
    """OPENWORK_SANDBOX_ENV: which of the named variables are set (names only, never a value)."""
    from openwork_sandbox.state.secrets import missing_problem

    if not settings.sandbox_env:
        return Check("sandbox env", True, "OPENWORK_SANDBOX_ENV names no variables (no provider keys passed in)")
    shown = ", ".join(f"{n} {'set' if settings.sandbox_env_values.get(n) else 'UNSET'}" for n in settings.sandbox_env)
    problem = missing_problem(settings)
    return Check(
        "sandbox env",
        problem is None,
        shown,
        ""
        if problem is None
        else "export the unset ones (or add them to .env), or drop them from OPENWORK_SANDBOX_ENV",
    )


def check_opencode_config(settings: Settings, runtime: str | None = None) -> Check:
    """OPENWORK_OPENCODE_CONFIG: the providers and the default model the sandbox will have (names only),
    and a provider on the host's loopback that the chosen runtime cannot reach as written."""
    from openwork_sandbox.config.opencode import load
    from openwork_sandbox.core.errors import SettingsError

    if settings.opencode_config is None:
        return Check(
            "opencode config",
            True,
            "OPENWORK_OPENCODE_CONFIG unset: opencode's defaults and whatever "
            "the sandbox's /data/home/.config/opencode holds",
        )
    try:
        config = load(settings.opencode_config, settings.origin("opencode_config"))
    except SettingsError as exc:
        return Check("opencode config", False, exc.message, "fix the file (see the detail)")
    parts = [
        f"{config.path.name}: providers {', '.join(config.providers) or '(none configured)'}",
        f"default model {config.model or '(opencode picks)'}",
    ]
    refs = config.env_refs
    if refs:
        parts.append("keys from " + ", ".join(refs))
    notes = [
        f"{{env:{n}}} is not in OPENWORK_SANDBOX_ENV (opencode reads it as empty)"
        for n in refs
        if n not in settings.sandbox_env and n != "OPENWORK_HOST_ADDRESS"
    ]
    if config.literal_keys():
        notes.append(
            f'a literal apiKey for {", ".join(config.literal_keys())}: prefer "{{env:NAME}}" with OPENWORK_SANDBOX_ENV'
        )
    if runtime == MICROSANDBOX:
        for name, url in config.base_urls().items():
            if re.search(r"//(127\.|localhost|\[::1\])", url):
                notes.append(
                    f"{name}'s baseURL {url} is the microVM itself: the host is host.microsandbox.internal "
                    "(or use {env:OPENWORK_HOST_ADDRESS})"
                )
        if settings.network != "allow-all" and config.base_urls():
            notes.append(
                f"OPENWORK_MICROSANDBOX_NETWORK={settings.network} keeps the microVM from the host and the LAN"
            )
    return Check("opencode config", True, "; ".join(parts + notes))


def check_network(settings: Settings, facts: HostFacts, picked: choice.RuntimeChoice) -> Check:
    """Whether the runtime ``up`` would choose holds OPENWORK_MICROSANDBOX_NETWORK here (the same rule as
    ``up``: ``launch.network_refusal``), and plainly when the agent would share the host's network."""
    from openwork_sandbox import runtimes
    from openwork_sandbox.sandbox.launch import POLICY_REACH, SHARED_NETWORK, network_refusal

    policy, kind = settings.network, picked.kind
    if kind is None or not picked.usable or (kind == DOCKER and not (facts.docker or (False, ""))[0]):
        return Check("network", True, f"{policy}: not asked (the runtime cannot work here)", needed_by=frozenset())
    support = runtimes.runtime_for(kind, settings).network_support()
    refused = network_refusal(settings, kind, support, choice.microvm_verdict(facts))
    if refused is not None:
        return Check("network", False, refused[0], refused[1], frozenset({kind}))
    reach = SHARED_NETWORK if support.shares_host else f"the sandbox reaches {POLICY_REACH[policy]}"
    return Check("network", True, f"{policy}, held by the {kind} runtime: {reach}", needed_by=frozenset({kind}))


def agent_summary(settings: Settings) -> dict:
    """For ``doctor --json``: the providers and default model the sandbox will have, and which
    OPENWORK_SANDBOX_ENV variables are set (names and booleans only)."""
    from openwork_sandbox.config.opencode import load
    from openwork_sandbox.core.errors import SettingsError

    out: dict = {
        "sandbox_env": {n: bool(settings.sandbox_env_values.get(n)) for n in settings.sandbox_env},
        "opencode_config": str(settings.opencode_config) if settings.opencode_config else None,
        "providers": [],
        "model": None,
    }
    if settings.opencode_config is not None:
        try:
            config = load(settings.opencode_config)
            out.update(providers=list(config.providers), model=config.model, small_model=config.small_model)
        except SettingsError as exc:
            out["problem"] = exc.message
    return out


def check_leftovers(settings: Settings) -> Check:
    """Sandboxes this tool made that nothing owns any more (``leftovers``); never decides the exit code."""
    from openwork_sandbox.sandbox.leftovers import find

    found = find(settings)
    if not found:
        return Check("left behind", True, "no stale or orphaned sandboxes", needed_by=frozenset())
    stale = [left for left in found if left.stale]
    fix = []
    if stale:
        fix.append(f"invoke reset --stale removes {len(stale)}")
    orphans = [left for left in found if not left.stale]
    if orphans:
        fix.append(
            "remove an orphan with `docker rm -f NAME` (Docker), `OPENWORK_MICROSANDBOX_RUNTIME=swarm invoke "
            "reset --name NAME --yes` (swarm: its service and secrets) or `msb rm NAME` (microsandbox) if you do "
            "not need it, or point OPENWORK_STATE_DIR at its folder"
        )
    return Check(
        "left behind", False, "; ".join(left.describe() for left in found), "; ".join(fix), needed_by=frozenset()
    )


def collect_checks(settings: Settings, facts: HostFacts, picked: choice.RuntimeChoice | None = None) -> list[Check]:
    """Every check, in the order the table shows them; ``picked``: the runtime ``up`` would choose."""
    picked = picked or choice.decide_runtime(facts, settings.runtime, None)
    return [
        check_python(),
        check_packages(),
        check_docker_client(),
        check_docker_engine(facts),
        check_registry(settings),
        check_microsandbox(facts),
        check_kvm(facts),
        check_virtualization(facts),
        check_avx(settings, facts),
        *([] if picked.kind == choice.SWARM else [check_port(settings)]),  # swarm: its port is on the nodes
        check_state_folders(settings),
        check_sandbox_env(settings),
        check_opencode_config(settings, picked.kind),
        check_network(settings, facts, picked),
        check_leftovers(settings),
    ]


def run_doctor(settings: Settings, *, as_json: bool = False) -> int:
    """Print the checks (a table on stderr, or with ``as_json`` one JSON object on stdout) and the
    runtime ``up`` would choose; 0 when it can work here, else 1. Boots nothing."""
    from openwork_sandbox.sandbox import doctor_swarm

    facts = probe.host_facts()
    recorded = SandboxState(settings).record().get("runtime")
    swarm = doctor_swarm.applies(settings.runtime, recorded)
    if swarm:
        facts = dataclasses.replace(facts, swarm=probe.swarm_support())
    picked = choice.decide_runtime(facts, settings.runtime, recorded)
    checks = collect_checks(settings, facts, picked)
    swarm_facts = None
    if swarm:  # before "left behind", which stays last
        rows, swarm_facts = doctor_swarm.survey(settings, facts)
        checks[-1:-1] = rows
    chosen, why = picked.kind, picked.reason
    ok = chosen is not None and picked.usable and all(c.ok for c in checks if chosen in c.needed_by)
    if as_json:
        console.emit_json(
            {
                "ok": ok,
                "runtime": {"setting": settings.runtime, "chosen": chosen, "why": why},
                "checks": [c.as_dict() for c in checks],
                "agent": agent_summary(settings),
                **({"swarm": swarm_facts} if swarm_facts is not None else {}),
            }
        )
    else:
        rows = [(console.OK if c.ok else console.BAD, c.name, c.detail, "" if c.ok else c.fix) for c in checks]
        console.print_table(rows, headers=("", "check", "result", "what to do"))
        console.info()
        label = "auto → " if settings.runtime == "auto" else ""
        console.info(f"runtime: {label}{chosen or 'none'} ({why})")
        console.info(
            f"{console.OK} {chosen} can work here" if ok else f"{console.BAD} the chosen runtime cannot work here"
        )
    return 0 if ok else 1
