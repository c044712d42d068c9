"""The small interface both runtimes (microsandbox, Docker) implement.

A runtime boots one image under one name with two bind mounts, one published port, an
environment and resource limits (a :class:`LaunchSpec`), and can say what state it is in, show
its logs, run a command inside, stop and remove it. Nothing more: deciding *whether* to create,
start or reuse is ``sandbox.decision``'s and ``sandbox.up``'s job. A runtime that knows
more than the others says it by overriding a method here (``digest``, ``platform``,
``machine_fault``), not by callers testing its kind; what it cannot enforce it says by
``network_support`` (which OPENWORK_MICROSANDBOX_NETWORK policies it holds here).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from openwork_sandbox.core.errors import WorkflowError

if TYPE_CHECKING:
    from openwork_sandbox.registry.access import PullAccess

GUEST_WORKSPACE = "/workspace"
GUEST_DATA = "/data"

RUNNING, STOPPED, ABSENT = "running", "stopped", "absent"
# what the entrypoint needs as root (Docker and swarm grant only these): hand files back (chown), enter the
# user's folders, switch to the server's and the agent's uids, give the server CAP_DAC_READ_SEARCH, stop
# what it started; nothing else
CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "SETUID", "SETGID", "KILL")
# in the sandbox's environment: the address at which the sandbox reaches the host's own services (a
# model server on the host's loopback), for a config's "baseURL": "http://{env:OPENWORK_HOST_ADDRESS}:11434/v1"
HOST_ADDRESS_VAR = "OPENWORK_HOST_ADDRESS"


def parse_engine_time(text: str | None) -> float | None:
    """Epoch seconds of a Docker engine's RFC 3339 time (nanoseconds cut to micro); None for none or Go's zero time."""
    import datetime as _dt

    if not text or text.startswith("0001-"):
        return None
    text = text.rstrip("Z")
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    try:
        return _dt.datetime.fromisoformat(text).replace(tzinfo=_dt.timezone.utc).timestamp()
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
    """What to boot. Host paths are absolute and exist; ``env`` holds the tokens (never print it)."""

    name: str
    image: str
    host_port: int
    bind_address: str  # host address the port is published on (127.0.0.1 unless clients are remote)
    guest_port: int
    mounts: dict[str, Path]  # guest path -> host folder
    env: dict[str, str]
    cpus: int | float  # a fraction limits a Docker sandbox to part of a core
    memory_mib: int
    registry_plain_http: bool
    fingerprint: str
    pull_always: bool = False  # re-pull a tag that may have moved (replace)
    # the registry's scheme, login and CAs for a runtime's own pull, asked only at pull time
    pull_access: Callable[[], PullAccess] | None = None
    network: str = "allow-all"  # what the sandbox may reach: allow-all | public-only | none
    # guest path -> host folder mounted read-only (the provider keys and opencode config: state.secrets)
    readonly_mounts: dict[str, Path] = dataclasses.field(default_factory=dict)
    # who made it (state.ownership.marks: its state folder; an ephemeral one's job and expiry), as labels
    marks: dict[str, str] = dataclasses.field(default_factory=dict)
    max_duration: float | None = None  # an ephemeral sandbox's lifetime (microsandbox stops it then)
    # platform -> pinned manifest reference of the image's index ({} for one manifest), asked only when
    # the image the runtime holds is of another platform than the host's
    index_platforms: Callable[[], dict[str, str]] | None = None
    # ``os/arch`` of the image when it is one manifest (None: an index, or not said), asked before a
    # runtime that pulls by itself boots it
    image_platform: Callable[[], str | None] | None = None

    def __repr__(self) -> str:  # keep tokens out of tracebacks and logs
        return f"LaunchSpec(name={self.name!r}, image={self.image!r}, port={self.bind_address}:{self.host_port})"


@dataclasses.dataclass
class RuntimeStatus:
    """What a runtime knows about the sandbox, without asking the server."""

    state: str  # running | stopped | absent
    image: str | None = None
    digest: str | None = None
    started_at: float | None = None  # epoch seconds
    fingerprint: str | None = None  # what it was created with (label or state record)
    server_running: bool | None = None  # the server process/job inside (None: unknown)
    detail: str = ""  # e.g. "exited (1)", "crashed"
    engine_restarts: int | None = None  # times the engine restarted the whole sandbox (Docker's restart policy)
    where: str = ""  # the host it runs on when that is not this one (swarm: its node, "node2 (10.213.0.12)")

    @property
    def exists(self) -> bool:
        """The runtime holds a sandbox of this name (running or stopped)."""
        return self.state != ABSENT


@dataclasses.dataclass(frozen=True)
class NetworkSupport:
    """Which OPENWORK_MICROSANDBOX_NETWORK policies a runtime holds its sandbox to on this host.

    ``enforced``: the policies it holds; ``limit``: why it cannot hold the others here (a clause for
    the refusal, empty when it holds every one); ``shares_host``: the sandbox runs in the host's
    own network namespace, so it reaches the host's loopback services and the LAN as the host does."""

    enforced: frozenset[str]
    limit: str = ""
    shares_host: bool = False


class Runtime(abc.ABC):
    """One sandbox under one runtime. Implementations raise WorkflowError for expected failures."""

    kind: str = "?"
    # The spec's read-write mounts are this host's folders (the sandbox runs here). False for a runtime that
    # keeps them where the sandbox runs (swarm: volumes on its node): no check or copy of them here.
    state_on_host: bool = True
    # The host reads the bind-mounted folders as the sandbox writes them, with the same file locks
    # (one kernel): SQLite on the host can take an online backup of a database in use (`backup`).
    live_files_on_host: bool = False

    def __init__(self, name: str, state_dir: Path):
        self.name = name
        self.state_dir = state_dir

    @abc.abstractmethod
    def status(self) -> RuntimeStatus:
        """Current state; cheap (this is what `up` asks first and what `status` shows)."""

    @abc.abstractmethod
    def create(self, spec: LaunchSpec) -> None:
        """Pull if needed, create and boot the sandbox, and start the server (replacing any old one)."""

    @abc.abstractmethod
    def start(self, spec: LaunchSpec) -> None:
        """Start a stopped sandbox (or one whose server died) and relaunch the server."""

    @abc.abstractmethod
    def restart_server(self, spec: LaunchSpec) -> None:
        """Stop the server and start it again, with nothing it started left running (Docker and
        microsandbox restart the whole container or microVM; its state folders stay); a sandbox
        that stopped under its server is started again first."""

    def machine_fault(self) -> str | None:
        """A phrase saying the sandbox's own machine stopped under its server and why ("the microVM
        itself stopped (KVM_EXIT_SHUTDOWN ...)"), or None: it runs, or it stopped because its server
        did (a container ends with its server). Asked when the server stopped during start-up: a
        machine fault is not the server's doing."""
        return None

    def memory_kills(self) -> int:
        """Times the kernel killed a program of the sandbox for lack of memory since it was made (its
        supervisor restarts them, so the sandbox runs on); 0 when none or the runtime cannot tell."""
        return 0

    def server_port(self, spec: LaunchSpec) -> int:
        """The port openwork-server is asked to listen on inside the sandbox (its OPENWORK_PORT): the
        guest port, which the runtime publishes on the host port."""
        return spec.guest_port

    def place(
        self, image: str, cpus: float, memory_mib: int, port: int, platforms: Callable[[], dict] | None
    ) -> str | None:
        """The address clients reach the sandbox at when this runtime runs it on another host: the
        node it runs on, or for a new one the node chosen now for ``cpus``/``memory_mib``/``port`` among
        those of ``image``'s ``platforms`` (asked only then; kept for :meth:`create`); WorkflowError
        when none fits or the nodes cannot pull ``image``.
        None (the default): it runs here, at the connect host as set."""
        return None

    def port_is_free(self, port: int, bind_address: str) -> bool:
        """Nothing holds ``port`` where this runtime publishes it (here: ``bind_address`` on this host)."""
        from openwork_sandbox.net.ports import port_is_free

        return port_is_free(port, bind_address)

    def remove_state(self) -> str | None:
        """Delete the state this runtime keeps away from this host (swarm: the volumes on the node), for
        ``reset``; what was done, in one line, or None when it keeps none (the state folder is all)."""
        return None

    def state_elsewhere(self) -> str | None:
        """Where the sandbox's folders are when not on this host, and how to copy them there, as a
        clause for ``backup``/``restore``'s refusal; None (the default): they are this host's folders."""
        return None

    def keep_running(self) -> None:  # noqa: B027  (an optional hook: a runtime without a restart policy does nothing)
        """Ask the runtime to bring the healthy sandbox back after it (or the engine) stops on its
        own (Docker: the restart policy); ``stop`` still stops it for good. Inside the sandbox the
        image's supervisor restarts the server."""

    @abc.abstractmethod
    def network_support(self) -> NetworkSupport:
        """Which network policies this runtime holds its sandbox to on this host (it may ask its
        engine, once). ``up`` refuses any other before anything is created; ``doctor`` shows it."""

    @abc.abstractmethod
    def stop(self) -> bool:
        """Stop it and keep everything; False when it was not running."""

    @abc.abstractmethod
    def remove(self) -> bool:
        """Stop and delete the sandbox (not the state folders); False when there was none."""

    @abc.abstractmethod
    def is_alive(self) -> bool:
        """The sandbox and its server process are running (asked while waiting for health)."""

    @abc.abstractmethod
    def log_tail(self, lines: int = 40) -> list[str]:
        """The server's last output lines (empty when there is none)."""

    @abc.abstractmethod
    def log_hint(self) -> str:
        """Where the full server log is: a path or a command."""

    @abc.abstractmethod
    def stream_logs(
        self, *, follow: bool = False, tail: int | None = None, since_s: float | None = None, system: bool = False
    ) -> Iterator[str]:
        """The server's (or with ``system``, the VM/engine's) log lines; ``follow`` keeps going."""

    @abc.abstractmethod
    def exec(self, argv: list[str], *, timeout: float = 60) -> tuple[int, str]:
        """Run a command inside; returns (exit code, stdout+stderr)."""

    # --- state an older layout left in the sandbox's home (state.persist.migrate_before_replace) -------
    def created_home(self) -> str | None:
        """The HOME the sandbox was created with (None: none was set, so the image user's home)."""
        return None

    def open_for_copy(self, spec: LaunchSpec | None) -> Callable[[], None]:
        """Make the sandbox's files consistent and readable for :meth:`copy_out` (its server stopped);
        returns what puts it back as it was, for when the copy fails."""
        raise WorkflowError(f"the {self.kind} runtime cannot copy files out of {self.name}")

    def copy_out(self, guest_dir: str, stage: Path, unit: str) -> list:
        """Copy the guest folder ``guest_dir/unit`` to ``stage/unit`` (a ``persist.Copied`` per
        file, size checked on arrival); [] when the sandbox has no such folder."""
        raise WorkflowError(f"the {self.kind} runtime cannot copy files out of {self.name}")

    def digest(self, st: RuntimeStatus) -> str | None:
        """The image digest to show for ``st`` (``repo@sha256:…`` where the runtime knows it)."""
        return st.digest

    def platform(self, st: RuntimeStatus) -> str | None:
        """The platform of the image ``st`` runs: the host's (a runtime boots its own platform,
        from an image index too); a runtime that can ask its image says what it is."""
        from openwork_sandbox.core.platforms import host_platform

        return str(host_platform()) if st.image else None

    def describe(self) -> tuple[str, list[str], str]:
        """(state, last log lines, log hint) for error messages."""
        st = self.status()
        return (st.state + (f", {st.detail}" if st.detail else "")), self.log_tail(40), self.log_hint()
