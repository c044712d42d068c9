"""A test double of ``runtimes.base.Runtime``: a sandbox held in memory, nothing booted, no engine.

:class:`FakeRuntime` keeps the ``Runtime`` contract (every method, the same signatures, the same
answers for the same situations: ``stop`` is False when it was not running, ``remove`` False when
there was none, ``restart_server`` starts a stopped sandbox first, ...), so the flows (``up``,
``down``, ``status``, ``logs``, ``reset``) run against it unchanged. What a real runtime's server
does on the network, it does for real on the host's loopback: a booted fake serves
:class:`.fake_openwork.FakeOpenWork` on the launch spec's host port, as Docker's host networking does.

It records every call (``calls``; ``actions()`` leaves out the read-only ones) and can be told how
each boot goes (``boots``: one :data:`BOOTS` word per create/start/restart, "healthy" when none is
left) and to fail a method (``fail[method] = exc``).

:class:`FakeEngine` hands out one fake per (runtime kind, sandbox name); ``install`` puts it behind
``openwork_sandbox.runtimes.runtime_for``, the one place the flows build a runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes.base import (
    ABSENT,
    RUNNING,
    STOPPED,
    LaunchSpec,
    NetworkSupport,
    Runtime,
    RuntimeStatus,
)
from tests.support.fake_openwork import WORKSPACE_ID, FakeOpenWork  # noqa: F401 (re-exported for the flow tests)

GUEST_HOME = "/data/home"  # what a sandbox of the current layout was created with (spec.env["HOME"])
READY_LINE = "OpenWork server: http://127.0.0.1:{port}"  # the orchestrator's ready line
LISTENING = "[opencode] opencode server listening"
NO_AVX_REPORT = "CPU lacks AVX support. Please consider upgrading to a newer CPU."
DATA_UNWRITABLE = "openwork-entrypoint: /data is not writable by uid 1000"

# How a boot (create, start, restart_server) goes:
#   healthy        the server answers /health at once
#   starting:N     it answers 503 to the first N /health requests, then 200
#   unhealthy      it answers 503 for ever
#   stall          it prints up to "opencode server listening", then nothing; nothing answers
#   silent         it prints nothing and nothing answers
#   die            the server exits (the sandbox stops with it, as a container does)
#   machine_fault  the sandbox's machine stops under the server (machine_fault() says why)
#   no_avx         Bun's no-AVX crash report, over and over; the sandbox keeps running
#   unwritable     the entrypoint's "/data is not writable" line, then it exits
#   move_port      the server serves on another free port, and its ready line says so
#   oom            the kernel kills opencode for lack of memory (memory_kills counts it), over and over
BOOTS = ("healthy", "starting", "unhealthy", "stall", "silent", "die", "machine_fault", "no_avx", "unwritable")
BOOTS += ("move_port", "oom")
QUERIES = frozenset(
    {
        "status",
        "is_alive",
        "log_tail",
        "log_hint",
        "stream_logs",
        "machine_fault",
        "server_port",
        "created_home",
        "digest",
        "platform",
        "describe",
        "network_support",
        "memory_kills",
        "place",
        "port_is_free",
        "state_elsewhere",
    }
)
# what a fake holds by default: a Docker fake is host-networked (its server listens on the host port), a
# microsandbox fake holds every policy as the microVM does; a test sets ``network`` for another engine
HOST_NETWORKED = NetworkSupport(
    frozenset({"allow-all"}), "the fake engine has no bridge network, so it shares the host's network", shares_host=True
)
EVERY_POLICY = NetworkSupport(frozenset({"allow-all", "public-only", "none"}))


def _client_token(spec) -> str:
    """The client token as the image's entrypoint finds it: the file OPENWORK_TOKEN_FILE names, read
    through the read-only mount that holds it ("" when there is none)."""
    guest = spec.env.get("OPENWORK_TOKEN_FILE", "")
    for mount, host in spec.readonly_mounts.items():
        if guest.startswith(mount + "/"):
            path = Path(host) / guest[len(mount) + 1 :]
            return path.read_text().splitlines()[0] if path.is_file() else ""
    return ""


class FakeRuntime(Runtime):
    """A test double: one sandbox in memory under runtime ``kind``; see the module doc.

    Its state is plain attributes a test may set or read: ``state`` (running | stopped | absent),
    ``image``, ``fingerprint``, ``server_running``, ``spec`` (the last one booted), ``log`` (the
    server's output lines), ``home`` (what it was created with), ``files`` (guest path -> bytes,
    for ``copy_out``), ``fault`` (what ``machine_fault`` says), ``server`` (its FakeOpenWork),
    ``network`` (what ``network_support`` answers)."""

    live_files_on_host = True

    def __init__(self, name: str, state_dir: Path, *, kind: str = "docker"):
        super().__init__(name, state_dir)
        self.kind = kind
        self.calls: list[tuple[str, tuple]] = []
        self.fail: dict[str, BaseException] = {}
        self.boots: list[str] = []
        self.state, self.image, self.fingerprint, self.digest_ref = ABSENT, None, None, None
        self.server_running: bool | None = None
        self.detail = ""
        self.started_at: float | None = None
        self.engine_restarts: int | None = None
        self.spec: LaunchSpec | None = None
        self.log: list[str] = []
        self.system_log: list[str] = ["[fake] machine booted"]
        self.home: str | None = None
        self.placed_at: str | None = None  # a remote engine's node address (place); None: it runs here
        self.files: dict[str, bytes] = {}
        self.fault: str | None = None
        self.oom_kills = 0  # what memory_kills answers
        self.server: FakeOpenWork | None = None
        self.exec_answer: tuple[int, str] = (0, "")
        self.network = EVERY_POLICY if kind == "microsandbox" else HOST_NETWORKED

    # --- what a test reads ---------------------------------------------------------------------
    def actions(self) -> list[str]:
        """The names of the calls that change something, in order (queries left out)."""
        return [name for name, _ in self.calls if name not in QUERIES]

    def _call(self, name: str, *args) -> None:
        self.calls.append((name, args))
        if name in self.fail:
            raise self.fail[name]

    # --- how a boot goes -------------------------------------------------------------------------
    def _boot(self, spec: LaunchSpec) -> None:
        plan = self.boots.pop(0) if self.boots else "healthy"
        word, _, count = plan.partition(":")
        if word not in BOOTS:
            raise ValueError(f"unknown boot {plan!r}: one of {BOOTS}")
        self._close_server()
        self.spec, self.image, self.fingerprint = spec, spec.image, spec.fingerprint
        self.state, self.server_running, self.detail, self.fault = RUNNING, True, "", None
        self.started_at = time.time()
        if word != "silent":
            self.log.append(f"[fake] start ({plan})")
        token = _client_token(spec)
        if word in ("healthy", "starting", "unhealthy"):
            unhealthy = {"healthy": 0, "starting": int(count or 1), "unhealthy": -1}[word]
            self.server = FakeOpenWork(spec.bind_address, spec.host_port, token, unhealthy=unhealthy)
            self.log += [LISTENING, "[opencode] Healthy", READY_LINE.format(port=spec.host_port)]
        elif word == "stall":
            self.log += ["[openwork-orchestrator] Run starting", LISTENING]
        elif word in ("die", "unwritable"):
            self.log.append(DATA_UNWRITABLE if word == "unwritable" else "[openwork-orchestrator] ERROR Run failed")
            self.state, self.server_running, self.detail = STOPPED, False, "exited (1)"
        elif word == "machine_fault":
            self.log.append("[openwork-orchestrator] Run starting")
            self.state, self.server_running, self.detail = STOPPED, False, "crashed"
            self.fault = "the fake machine itself stopped (KVM_EXIT_SHUTDOWN)"
        elif word == "no_avx":
            self.log += [
                "============================================================",
                NO_AVX_REPORT,
                "panic(main thread): Illegal instruction",
                "[supervise] openwork serve exited (132); restart",
            ]
        elif word == "oom":
            self.oom_kills += 1
            self.log += ["[opencode] ERROR Process exited", "openwork exited with status 137 (SIGKILL) after 2s"]
        elif word == "move_port":
            self.server = FakeOpenWork("127.0.0.1", 0, token)  # a port the kernel picks
            self.log += [LISTENING, "[opencode] Healthy", READY_LINE.format(port=self.server.port)]

    def _close_server(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    # --- the Runtime interface -----------------------------------------------------------------------
    def status(self) -> RuntimeStatus:
        self._call("status")
        return RuntimeStatus(
            self.state,
            image=self.image if self.state != ABSENT else None,
            digest=self.digest_ref,
            started_at=self.started_at if self.state == RUNNING else None,
            fingerprint=self.fingerprint if self.state != ABSENT else None,
            server_running=self.server_running if self.state != ABSENT else None,
            detail=self.detail,
            engine_restarts=self.engine_restarts,
        )

    def create(self, spec: LaunchSpec) -> None:
        self._call("create", spec)
        if spec.network not in self.network.enforced:  # as Docker's create: never boots a policy it cannot hold
            raise WorkflowError(f"the fake runtime cannot enforce {spec.network}: {self.network.limit}", exit_code=2)
        self.home = spec.env.get("HOME")
        self._boot(spec)

    def start(self, spec: LaunchSpec) -> None:
        self._call("start", spec)
        if self.state == ABSENT:
            raise WorkflowError(f"no sandbox {self.name} to start")
        self._boot(spec)

    def restart_server(self, spec: LaunchSpec) -> None:
        self._call("restart_server", spec)
        self._boot(spec)

    def machine_fault(self) -> str | None:
        self._call("machine_fault")
        return self.fault

    def memory_kills(self) -> int:
        self._call("memory_kills")
        return self.oom_kills

    def server_port(self, spec: LaunchSpec) -> int:
        """The server listens on the host port itself (host networking)."""
        self._call("server_port", spec)
        return spec.host_port

    def keep_running(self) -> None:
        self._call("keep_running")

    def network_support(self) -> NetworkSupport:
        self._call("network_support")
        return self.network

    def stop(self) -> bool:
        self._call("stop")
        self._close_server()
        if self.state != RUNNING:
            return False
        self.state, self.server_running, self.detail = STOPPED, False, "exited (0)"
        return True

    def remove(self) -> bool:
        self._call("remove")
        self._close_server()
        if self.state == ABSENT:
            return False
        self.state, self.server_running, self.detail, self.fingerprint, self.image = ABSENT, None, "", None, None
        self.log = []
        return True

    def is_alive(self) -> bool:
        self._call("is_alive")
        return self.state == RUNNING and self.server_running is not False

    def log_tail(self, lines: int = 40) -> list[str]:
        self._call("log_tail", lines)
        return list(self.log[-lines:]) if lines else []

    def log_hint(self) -> str:
        self._call("log_hint")
        return f"the fake log of {self.name}"

    def stream_logs(
        self, *, follow: bool = False, tail: int | None = None, since_s: float | None = None, system: bool = False
    ) -> Iterator[str]:
        self._call("stream_logs", follow, tail, since_s, system)
        lines = self.system_log if system else self.log
        yield from (lines[-tail:] if tail else [] if tail == 0 else lines)

    def exec(self, argv: list[str], *, timeout: float = 60) -> tuple[int, str]:
        self._call("exec", list(argv), timeout)
        if self.state != RUNNING:
            raise WorkflowError(f"{self.name} is not running")
        return self.exec_answer

    def created_home(self) -> str | None:
        self._call("created_home")
        return self.home

    def open_for_copy(self, spec: LaunchSpec | None) -> Callable[[], None]:
        self._call("open_for_copy", spec)
        was_running = self.server_running
        self.server_running = False
        self._close_server()

        def put_back() -> None:
            self.calls.append(("put_back", ()))
            self.server_running = was_running

        return put_back

    def copy_out(self, guest_dir: str, stage: Path, unit: str) -> list:
        """Writes the ``files`` under ``guest_dir/unit`` to ``stage/unit`` as ``persist.Copied``."""
        from openwork_sandbox.state.persist import write_staged

        self._call("copy_out", guest_dir, stage, unit)
        prefix = f"{guest_dir.rstrip('/')}/{unit}/"
        copied = []
        for path, data in sorted(self.files.items()):
            if path.startswith(prefix):
                rel = path[len(guest_dir.rstrip("/")) + 1 :]
                copied.append(
                    write_staged(
                        stage,
                        rel,
                        [data],
                        0o600,
                        time.time() - 60,
                        expected_size=len(data),
                        source=f"the fake sandbox {self.name}",
                    )
                )
        return copied

    def digest(self, st: RuntimeStatus) -> str | None:
        self._call("digest", st)
        return st.digest

    def platform(self, st: RuntimeStatus) -> str | None:
        self._call("platform", st)
        return "linux/fake" if st.image else None

    def describe(self) -> tuple[str, list[str], str]:
        self._call("describe")
        return super().describe()

    def place(
        self, image: str, cpus: float, memory_mib: int, port: int, platforms: Callable[[], dict] | None
    ) -> str | None:
        """A local engine's answer: None (it runs here); ``placed_at`` plays a remote one's node."""
        self._call("place", image, cpus, memory_mib, port)
        return self.placed_at

    def port_is_free(self, port: int, bind_address: str) -> bool:
        from openwork_sandbox.net.ports import port_is_free

        self._call("port_is_free", port, bind_address)
        return port_is_free(port, "127.0.0.1" if self.placed_at else bind_address)

    def remove_state(self) -> str | None:
        self._call("remove_state")
        return "emptied the fake's volumes" if self.placed_at else None

    def state_elsewhere(self) -> str | None:
        self._call("state_elsewhere")
        return f"the fake's folders are on {self.placed_at}" if self.placed_at else None

    # --- for a test that sets a sandbox up by hand ----------------------------------------------------
    def server_dies(self) -> None:
        """The server process exits, the sandbox keeps running (a microVM whose job ended)."""
        self._close_server()
        self.server_running, self.detail = False, "running, server job exited"

    def close(self) -> None:
        self._close_server()


class FakeEngine:
    """One :class:`FakeRuntime` per (kind, sandbox name), handed out as ``runtimes.runtime_for`` does."""

    def __init__(self):
        self.fakes: dict[tuple[str, str], FakeRuntime] = {}

    def runtime_for(self, kind: str, settings) -> FakeRuntime:
        if kind not in ("docker", "microsandbox"):
            raise ValueError(f"unknown runtime {kind!r}")
        key = (kind, settings.name)
        if key not in self.fakes:
            self.fakes[key] = FakeRuntime(settings.name, settings.sandbox_state_dir, kind=kind)
        return self.fakes[key]

    def install(self, monkeypatch) -> FakeEngine:
        """Put the fakes behind ``openwork_sandbox.runtimes.runtime_for`` for one test."""
        from openwork_sandbox import runtimes

        monkeypatch.setattr(runtimes, "runtime_for", self.runtime_for)
        return self

    def close(self) -> None:
        for fake in self.fakes.values():
            fake.close()


# --- for the flow tests --------------------------------------------------------------------------------

NAME = "fake-sb"
IMAGE = "127.0.0.1:5000/fake:1"
QUICK = dict(
    stall_s=0.4,
    listening_stall_s=0.4,
    early_death_s=5.0,
    attempts=3,
    first_look_s=0.02,
    look_every_s=0.02,
    alive_first_s=0.02,
    alive_every_max_s=0.05,
    look_share=0.05,
)


def quick_starts(monkeypatch) -> None:
    """The start watch's pacing (``sandbox.start_watch.START_TIMES``) and the health wait's look at
    ``is_alive`` shortened to tens of milliseconds, for one test."""
    from openwork_sandbox.net import health
    from openwork_sandbox.sandbox import start_watch

    monkeypatch.setattr(start_watch, "START_TIMES", start_watch.StartTimes(**QUICK))
    monkeypatch.setattr(health, "ALIVE_CHECK_EVERY", 0.02)


def flow_settings(tmp_path: Path, **env: str):
    """Settings of one sandbox ``NAME`` on the Docker runtime with state under ``tmp_path/state``, a free
    port, no start slots and a 5 s health deadline; ``env`` adds or overrides settings."""
    from openwork_sandbox.config.settings import load_settings
    from openwork_sandbox.net.ports import free_port

    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    environ = {
        "OPENWORK_STATE_DIR": str(tmp_path / "state"),
        "OPENWORK_MICROSANDBOX_NAME": NAME,
        "OPENWORK_MICROSANDBOX_RUNTIME": "docker",
        "OPENWORK_MICROSANDBOX_PORT": str(free_port()),
        "OPENWORK_MICROSANDBOX_IMAGE": IMAGE,
        "OPENWORK_START_SLOTS": "0",
        "OPENWORK_HEALTH_TIMEOUT": "5",
        "OPENWORK_OFFLINE": "true",
        **env,
    }
    return load_settings(environ=environ, env_file=env_file, root=project)


@pytest.fixture
def fake_engine(monkeypatch) -> Iterator[FakeEngine]:
    """The fakes behind ``runtime_for`` for one test, with the start watch's timings shortened; every
    fake server is closed afterwards. (This module is loaded as a pytest plugin.)"""
    quick_starts(monkeypatch)
    fakes = FakeEngine().install(monkeypatch)
    yield fakes
    fakes.close()
