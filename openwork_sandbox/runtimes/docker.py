"""The Docker runtime: ``docker run -d`` of the same image, for hosts without microVMs. Every docker
command goes through ``core.processes`` (its timeouts and one-line errors); the questions asked while
a sandbox boots (a container, an image, the bridge, the log's tail) go to the engine's socket first
(``docker_engine``: no CLI start each time), and to the CLI where that socket cannot be used.

Networking and the loopback rule:

- When the engine has a bridge network, the port is published with
  ``-p <bind address>:<port>:8787`` (loopback unless OPENWORK_CONNECT_HOST is remote), exactly as
  the microVM publishes it.
- When it has none (an engine started with ``--bridge=none``, as ``scripts/services`` starts it),
  publishing is impossible and the container uses ``--network host``: the server then listens
  directly on the host port (``OPENWORK_PORT``) and opencode on a free port
  (``OPENWORK_OPENCODE_PORT``). So that this does not expose the server on every interface, the
  entrypoint gets ``OPENWORK_REMOTE_ACCESS=0`` when the connect host is loopback: the orchestrator
  then binds openwork-server to 127.0.0.1 (it binds 0.0.0.0 only with ``--remote-access``). With a
  remote connect host it gets ``OPENWORK_REMOTE_ACCESS=1`` and the token-length rule of ``up`` applies.
- OPENWORK_MICROSANDBOX_NETWORK: Docker holds only ``allow-all`` (``network_support``). It has no
  outbound filter of its own (an ``--internal`` network still reaches the host's addresses and
  publishes no port), and under host networking the container is on the host's network; ``up``
  refuses the other policies before anything is made, and ``create`` never boots one.

The container's environment (``--env-file``, a 0600 file in ``.state/<name>/``) holds settings and
the paths of the token files, never a token: the tokens are files in read-only mounts
(:mod:`openwork_sandbox.state.secrets`), so ``docker inspect`` shows none.

The container starts as root with only the capabilities its entrypoint needs to set up the
boundary (:data:`CAPABILITIES`) and ``no-new-privileges``; the entrypoint runs the server as the
owner of the data folder (the invoking user, so every file it writes into ``.state/<name>/``
belongs to the user and ``reset`` needs no sudo) and the agent without any capability. Files there
that belong to someone else (a container of an older version that ran as root) are handed back
first, by a one-off root container of the same image (``chown``). ``exec`` runs as the invoking user.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from openwork_sandbox.core import console, processes
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, WorkflowError
from openwork_sandbox.core.files import private_dir
from openwork_sandbox.runtimes import docker_engine
from openwork_sandbox.runtimes.base import (
    ABSENT,
    CAPABILITIES,
    HOST_ADDRESS_VAR,
    RUNNING,
    STOPPED,
    LaunchSpec,
    NetworkSupport,
    Runtime,
    RuntimeStatus,
    parse_engine_time,
)
from openwork_sandbox.runtimes.docker_engine import engine_has_bridge, engine_is_rootless
from openwork_sandbox.state.store import write_private_file

if TYPE_CHECKING:
    from openwork_sandbox.registry.access import PullAccess

LABEL_FP = "org.openwork-sandbox.fingerprint"
LABEL_MANAGED = "org.openwork-sandbox.managed"
MARK_PREFIX = "org.openwork-sandbox."  # + ownership's keys: state-dir, ephemeral, owner, expires
ENV_FILE = "container.env"
RESTART_POLICY = "unless-stopped"
# why the Docker runtime holds no network policy but allow-all, on an engine with a bridge and without one
BRIDGE_LIMIT = (
    "Docker cannot filter what a container sends: on its bridge it reaches the host's own addresses and the LAN "
    "(an --internal network reaches the host too, and publishes no port)"
)
HOST_LIMIT = "this Docker engine has no bridge network, so the container shares the host's network (its loopback services, the LAN)"


def network_support_of(bridge: bool) -> NetworkSupport:
    """What the Docker runtime holds on an engine with (``bridge``) or without a bridge network: ``allow-all`` only."""
    return NetworkSupport(frozenset({"allow-all"}), BRIDGE_LIMIT if bridge else HOST_LIMIT, shares_host=not bridge)


def run_as_user() -> str | None:
    """``uid:gid`` to run the container as: the invoking user on Linux, else None (root, rootless, macOS)."""
    if not sys.platform.startswith("linux") or os.getuid() == 0 or engine_is_rootless():
        return None
    return f"{os.getuid()}:{os.getgid()}"


def foreign_owned(folders, uid: int) -> str | None:
    """The first path under ``folders`` not owned by ``uid`` (files an older root container made), or None."""
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                try:
                    if os.lstat(name).st_uid != uid:
                        return name
                except OSError:
                    continue
    return None


class DockerRuntime(Runtime):
    kind = "docker"
    live_files_on_host = True  # a bind mount on the host's own kernel

    # --- inspection ---------------------------------------------------------------------------
    def _inspect(self) -> dict | None:
        answered, info = docker_engine.container(self.name)
        if answered:
            return info
        proc = processes.docker("container", "inspect", self.name, check=False, timeout=30)
        if proc.returncode != 0:
            if "No such" in proc.stderr or "no such" in proc.stderr:
                return None
            processes.docker("container", "inspect", self.name, timeout=30)  # raises the right error
        data = json.loads(proc.stdout or "[]")
        return data[0] if data else None

    def status(self) -> RuntimeStatus:
        info = self._inspect()
        if info is None:
            return RuntimeStatus(ABSENT)
        state = info.get("State") or {}
        labels = (info.get("Config") or {}).get("Labels") or {}
        # during the restart policy's delay Docker says Running and Restarting: the server is not up
        running = bool(state.get("Running")) and not state.get("Restarting")
        detail = "" if running else f"{state.get('Status', 'stopped')}, exit code {state.get('ExitCode')}"
        if state.get("OOMKilled"):
            detail += ", killed for lack of memory (raise OPENWORK_MICROSANDBOX_MEMORY)"
        return RuntimeStatus(
            RUNNING if running else STOPPED,
            image=(info.get("Config") or {}).get("Image"),
            digest=info.get("Image"),
            started_at=parse_engine_time(state.get("StartedAt")) if running else None,
            fingerprint=labels.get(LABEL_FP),
            server_running=running,
            detail=detail,
            engine_restarts=info.get("RestartCount"),
        )

    def image_digest(self, ref: str) -> str | None:
        """The registry digest (``repo@sha256:…``) of the local image ``ref``; None when Docker knows none."""
        proc = processes.docker("image", "inspect", "--format", "{{json .RepoDigests}}", ref, check=False, timeout=30)
        if proc.returncode != 0:
            return None
        digests = json.loads(proc.stdout or "[]") or []
        return digests[0] if digests else None

    def digest(self, st: RuntimeStatus) -> str | None:
        if st.image and "@sha256:" in st.image:  # repo@sha256:… (state.pin) is its own digest
            return st.image
        return (self.image_digest(st.image) if st.image else None) or st.digest

    def platform(self, st: RuntimeStatus) -> str | None:
        """``os/arch`` of the container's image, as Docker records it; None without a container."""
        proc = processes.docker("container", "inspect", "--format", "{{.Image}}", self.name, check=False, timeout=15)
        if proc.returncode != 0 or not proc.stdout.strip():
            return None
        img = processes.docker(
            "image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", proc.stdout.strip(), check=False, timeout=15
        )
        return img.stdout.strip() if img.returncode == 0 and img.stdout.strip() else None

    def memory_kills(self) -> int:
        from openwork_sandbox.runtimes.docker_faults import memory_kills

        return memory_kills(self.name)

    def is_alive(self) -> bool:
        answered, info = docker_engine.container(self.name)
        if answered:
            state = (info or {}).get("State") or {}
            return state.get("Running") is True and state.get("Restarting") is False
        proc = processes.docker(
            "container",
            "inspect",
            "--format",
            "{{.State.Running}} {{.State.Restarting}}",
            self.name,
            check=False,
            timeout=15,
        )
        return proc.returncode == 0 and proc.stdout.strip() == "true false"

    # --- create / start / stop / remove -------------------------------------------------------
    def _have_image(self, ref: str) -> bool:
        return processes.docker("image", "inspect", "--format", "{{.Id}}", ref, check=False, timeout=30).returncode == 0

    def pull(self, ref: str, access: Callable[[], PullAccess] | None = None) -> float:
        """``docker pull`` (a moved tag is fetched again); returns the seconds it took.

        Docker pulls with its own saved login. When that pull fails and ``access`` has the settings'
        login (OPENWORK_REGISTRY_USERNAME/_PASSWORD), the login is handed to Docker (``docker login``,
        as push-image does) and the pull tried once more. A pull that still fails is a one-line
        WorkflowError with the way out: log in, push first, or check the image and the registry.
        Docker's own words do not always say that a login was missing (a loopback registry's answer
        can be a reset connection after Docker's plain-HTTP retry), so the registry's 401 to no
        login, asked by ``access``, says it too."""
        from openwork_sandbox.config import ImageRef
        from openwork_sandbox.registry.access import LOGIN_HINT, docker_login, login_refused

        host = ImageRef.parse(ref).registry_host
        console.info(f"pulling {ref} ...")
        start = time.monotonic()
        given = None
        with console.heartbeat(f"pulling {ref}"):
            proc = processes.docker("pull", ref, check=False, timeout=1800)
            if proc.returncode != 0 and access is not None:
                given = access()
                if given.settings_login and given.username and given.password:
                    docker_login(host, given.username, given.password)
                    proc = processes.docker("pull", ref, check=False, timeout=1800)
        if proc.returncode != 0:
            err = processes.last_line(proc.stderr)
            if login_refused(err) or (given is not None and given.username is None and given.login_required):
                hint = LOGIN_HINT.format(host=host)
            elif "not found" in err or "manifest unknown" in err:
                hint = "push it first (invoke push-image)"
            else:
                hint = "check OPENWORK_MICROSANDBOX_IMAGE and that the registry answers (invoke doctor)"
            raise WorkflowError(f"docker pull {ref} failed: {err}; {hint}")
        took = time.monotonic() - start
        console.info(f"pulled {ref} in {took:.1f}s")
        return took

    def server_port(self, spec: LaunchSpec) -> int:
        """Under host networking the server listens on the host port itself."""
        return spec.guest_port if engine_has_bridge() else spec.host_port

    def _network_args(self, spec: LaunchSpec) -> tuple[list[str], dict[str, str]]:
        """Publishing on a bridge (the host is ``host.docker.internal``, as on Docker Desktop), else host
        networking (the host is the container's own 127.0.0.1); either way OPENWORK_HOST_ADDRESS says it."""
        if engine_has_bridge():
            return [
                "-p",
                f"{spec.bind_address}:{spec.host_port}:{spec.guest_port}",
                "--add-host",
                "host.docker.internal:host-gateway",
            ], {HOST_ADDRESS_VAR: "host.docker.internal"}
        from openwork_sandbox.config import is_loopback
        from openwork_sandbox.net.ports import free_port

        env = {
            "OPENWORK_PORT": str(self.server_port(spec)),
            "OPENWORK_OPENCODE_PORT": str(free_port()),
            "OPENWORK_REMOTE_ACCESS": "0" if is_loopback(spec.bind_address) else "1",
            HOST_ADDRESS_VAR: "127.0.0.1",
        }
        return ["--network", "host"], env

    def network_support(self) -> NetworkSupport:
        return network_support_of(engine_has_bridge())

    def create(self, spec: LaunchSpec) -> None:
        held = self.network_support()
        if spec.network not in held.enforced:  # `up` refuses it first; this keeps any other caller from booting it
            raise WorkflowError(
                f"the Docker runtime cannot enforce OPENWORK_MICROSANDBOX_NETWORK={spec.network}: {held.limit}",
                exit_code=EXIT_BAD_SETTINGS,
            )
        from openwork_sandbox.core.platforms import host_platform
        from openwork_sandbox.runtimes.docker_platform import ASK, held_image, host_image

        held, found = held_image(spec.image)
        if spec.pull_always or not held:
            self.pull(spec.image, spec.pull_access)
            found = ASK
        # another platform's image under this reference is replaced or refused before anything runs it
        image = host_image(
            spec.image,
            str(host_platform()),
            spec.index_platforms,
            self._have_image,
            lambda ref: self.pull(ref, spec.pull_access),
            found=found,
        )
        spec = dataclasses.replace(spec, image=image)
        net_args, net_env = self._network_args(spec)
        env = {**spec.env, **net_env}
        env_file = self.state_dir / ENV_FILE
        private_dir(self.state_dir, own=True, git_ignored=True)
        write_private_file(env_file, "".join(f"{k}={v}\n" for k, v in env.items()))
        cpus = spec.cpus
        host_cpus = os.cpu_count() or cpus
        if cpus > host_cpus:
            console.info(
                f"note: OPENWORK_MICROSANDBOX_CPUS={cpus} but this host has {host_cpus}; Docker gets {host_cpus}"
            )
            cpus = host_cpus
        user = run_as_user()
        if user:
            self._hand_back(spec, user)
        argv = [
            # --init: Docker's tini as PID 1 forwards SIGTERM to the entrypoint, so `down` stops it at once,
            # also while the orchestrator still verifies its server (else: docker stop's -t seconds, then SIGKILL)
            "run",
            "-d",
            "--init",
            "--name",
            self.name,
            "--label",
            f"{LABEL_MANAGED}=1",
            "--label",
            f"{LABEL_FP}={spec.fingerprint}",
            *[arg for key, value in spec.marks.items() for arg in ("--label", f"{MARK_PREFIX}{key}={value}")],
            "--env-file",
            str(env_file),
            "--cpus",
            str(cpus),
            "--memory",
            f"{spec.memory_mib}m",
            *net_args,
            "--cap-drop",
            "ALL",
            *[arg for cap in CAPABILITIES for arg in ("--cap-add", cap)],
            "--security-opt",
            "no-new-privileges",
        ]
        for guest, host in spec.mounts.items():
            argv += ["--mount", f"type=bind,source={host},target={guest}"]
        for guest, host in spec.readonly_mounts.items():
            argv += ["--mount", f"type=bind,source={host},target={guest},readonly"]
        argv.append(spec.image)
        proc = processes.docker(*argv, check=False, timeout=300)
        if proc.returncode != 0 and "is already in use" in proc.stderr:
            # `up` creates only a sandbox it found absent (or removed): an old container of the name
            # (one a failed run left) goes now, only once the image is known to run here
            self._clear()
            proc = processes.docker(*argv, check=False, timeout=300)
        if proc.returncode != 0:
            raise WorkflowError(f"docker run {spec.image} failed: {processes.last_line(proc.stderr)}")

    def _hand_back(self, spec: LaunchSpec, user: str) -> None:
        """Files under the mounts that belong to someone else (a container that ran as root) are
        chowned to ``user`` by a one-off root container of the image, so the sandbox can write them
        and ``reset`` can delete them without sudo. When that fails: a one-line WorkflowError naming
        the ``sudo chown`` to run once."""
        found = foreign_owned(spec.mounts.values(), int(user.split(":")[0]))
        if found is None:
            return
        argv = ["run", "--rm", "--network", "none", "--user", "0:0", "--entrypoint", "chown"]
        targets = []
        for i, host in enumerate(spec.mounts.values()):
            argv += ["--mount", f"type=bind,source={host},target=/handback/{i}"]
            targets.append(f"/handback/{i}")
        proc = processes.docker(*argv, spec.image, "-R", user, *targets, check=False, timeout=600)
        if proc.returncode != 0:
            raise WorkflowError(
                f"{found} belongs to another user and could not be handed back to you "
                f"({processes.last_line(proc.stderr)}): run `sudo chown -R {user} "
                f"{self.state_dir}` once"
            )
        console.info(f"handed the files an earlier root container left in {self.state_dir} back to you ({user})")

    # --- state an older layout left in the container's home ------------------------------------
    def created_home(self) -> str | None:
        env = ((self._inspect() or {}).get("Config") or {}).get("Env") or []
        return next((item.split("=", 1)[1] for item in env if item.startswith("HOME=")), None)

    def open_for_copy(self, spec: LaunchSpec | None) -> Callable[[], None]:
        """``docker cp`` works on a stopped container: stop a running one (its database is then
        consistent); putting it back starts it again."""
        if self.stop():
            return lambda: self.start(spec)
        return lambda: None

    def copy_out(self, guest_dir: str, stage: Path, unit: str) -> list:
        from openwork_sandbox.runtimes.docker_copy import copy_out

        return copy_out(self.name, guest_dir, stage, unit)

    def start(self, spec: LaunchSpec) -> None:
        # the server is the container's own entrypoint: starting the container relaunches it
        proc = processes.docker("start", self.name, check=False, timeout=120)
        if proc.returncode != 0:
            raise WorkflowError(f"docker start {self.name} failed: {processes.last_line(proc.stderr)}")

    def restart_server(self, spec: LaunchSpec) -> None:
        proc = processes.docker("restart", "-t", "5", self.name, check=False, timeout=120)
        if proc.returncode != 0:
            raise WorkflowError(f"docker restart {self.name} failed: {processes.last_line(proc.stderr)}")

    def keep_running(self) -> None:
        """``--restart unless-stopped``, set once the sandbox is healthy (so a start that fails is not
        restarted over and over): the engine starts it again after it exits on its own or after an
        engine restart (a host reboot), but not after ``docker stop`` (``down``). Asked first, so a
        running sandbox's ``up`` changes nothing."""
        policy = ((self._inspect() or {}).get("HostConfig") or {}).get("RestartPolicy") or {}
        if policy.get("Name") == RESTART_POLICY:
            return
        proc = processes.docker("update", "--restart", RESTART_POLICY, self.name, check=False, timeout=30)
        if proc.returncode != 0:
            console.info(
                f"note: could not set the restart policy of {self.name} "
                f"({processes.last_line(proc.stderr)}); it will not come back after an engine restart"
            )

    def stop(self) -> bool:
        """``docker stop``: also for a container the restart policy is about to start again (a stop
        marks it stopped by hand, so neither the policy nor an engine restart brings it back)."""
        state = (self._inspect() or {}).get("State") or {}
        if not (state.get("Running") or state.get("Restarting")):
            return False
        processes.docker("stop", "-t", "10", self.name, timeout=120)
        return True

    def remove(self) -> bool:
        if self._inspect() is None:
            return False
        processes.docker("rm", "-f", self.name, timeout=120)
        return True

    def _clear(self) -> None:
        """The container gone, whether there was one or not: one ``docker rm -f`` (no inspect first:
        a create's time is a start's)."""
        proc = processes.docker("rm", "-f", self.name, check=False, timeout=120)
        if proc.returncode != 0 and "no such container" not in proc.stderr.lower():
            processes.docker("rm", "-f", self.name, timeout=120)  # raises the engine's own words

    # --- logs / exec --------------------------------------------------------------------------
    def log_hint(self) -> str:
        return f"docker logs {self.name} (or: invoke logs)"

    def log_tail(self, lines: int = 40) -> list[str]:
        info = self._inspect()
        if info is None:
            return []
        found = docker_engine.log_lines(self.name, lines, tty=bool((info.get("Config") or {}).get("Tty")))
        if found is not None:
            return found[-lines:]
        try:
            return list(processes.stream_lines(["docker", "logs", "--tail", str(lines), self.name]))[-lines:]
        except WorkflowError:
            return []

    def stream_logs(
        self, *, follow: bool = False, tail: int | None = None, since_s: float | None = None, system: bool = False
    ) -> Iterator[str]:
        info = self._inspect()
        if info is None:
            raise WorkflowError(f"no container named {self.name}: run `invoke up` first")
        if system:
            yield from self._system_log(info, follow=follow, since_s=since_s)
            return
        argv = ["docker", "logs"]
        if follow:
            argv.append("--follow")
        if tail is not None:
            argv += ["--tail", str(tail)]
        if since_s is not None:
            argv += ["--since", f"{int(time.time() - since_s)}"]
        yield from processes.stream_lines([*argv, self.name])

    def _system_log(self, info: dict, *, follow: bool, since_s: float | None) -> Iterator[str]:
        """The engine's view: the container's state, then its events (create, start, die, oom...)."""
        state = info.get("State") or {}
        yield (
            f"container {self.name}: {state.get('Status')} (exit code {state.get('ExitCode')}, "
            f"OOM killed: {state.get('OOMKilled')}, started {state.get('StartedAt')}, "
            f"finished {state.get('FinishedAt')}){(' error: ' + state['Error']) if state.get('Error') else ''}"
        )
        created = parse_engine_time(info.get("Created")) or time.time() - 86400
        since = str(int(time.time() - since_s if since_s is not None else created))
        argv = [
            "docker",
            "events",
            "--filter",
            f"container={self.name}",
            "--since",
            since,
            "--format",
            "{{.TimeNano}} {{.Type}} {{.Action}}",
        ]
        if not follow:
            argv += ["--until", str(int(time.time()) + 1)]
        for line in processes.stream_lines(argv):
            stamp, _, rest = line.partition(" ")
            try:
                when = _dt.datetime.fromtimestamp(int(stamp) / 1e9, _dt.timezone.utc).isoformat(timespec="milliseconds")
            except ValueError:
                when = stamp
            yield f"{when} {rest}"

    def exec(self, argv: list[str], *, timeout: float = 60) -> tuple[int, str]:
        user = run_as_user()
        proc = processes.docker(
            "exec", *(["--user", user] if user else []), self.name, *argv, check=False, timeout=timeout
        )
        return proc.returncode, (proc.stdout or "") + (proc.stderr or "")
