"""The swarm runtime: one Docker Swarm service per sandbox, on the cluster whose manager
``DOCKER_HOST`` / ``DOCKER_CONTEXT`` points at. Every docker command goes through ``core.processes``.

- ``place`` picks a node (``placement.place``: ready, active, the image's platform, the most free
  memory after every running task's reservation) and the sandbox stays on it: its volumes
  (``service.volumes``) are there. The URL is that node's address, on the sandbox's own port,
  published in host mode; beyond loopback TLS is on (``state.tls``), as for any remote address.
- Tokens, the TLS key, provider keys and opencode's config are swarm secrets (``service``), never in
  the service's environment or labels. The environment file holds settings and file paths only.
- ``down`` scales the service to zero (its volumes, secrets and node stay), ``up`` scales it back;
  ``reset`` removes the service and its secrets (``remove``) and empties its volumes on the node
  with a one-off job (``remove_state``: swarm cannot delete a volume on another node; the empty
  volume names stay there).
- ``exec`` reaches only a task on the manager's own node: Docker's API has no exec into a task
  elsewhere; for another node it says the ``docker exec`` to run there.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from openwork_sandbox.core import console, processes
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, WorkflowError
from openwork_sandbox.core.files import private_dir
from openwork_sandbox.runtimes.base import (
    ABSENT,
    RUNNING,
    STOPPED,
    LaunchSpec,
    NetworkSupport,
    Runtime,
    RuntimeStatus,
    parse_engine_time,
)
from openwork_sandbox.runtimes.swarm import cluster, jobs, lock, logs, service
from openwork_sandbox.runtimes.swarm.placement import Node, node_trouble, place
from openwork_sandbox.state.store import write_private_file

ENV_FILE = "service.env"
MAX_NAME = 57  # swarm takes names of up to 63 characters; the reset job is "<name>-reset"
LIMIT = (
    "the swarm runtime has no outbound filter: the sandbox reaches its node's network, the LAN and the "
    "internet (not another sandbox: each has an overlay network of its own)"
)
FAILED = ("failed", "rejected", "orphaned")


class SwarmRuntime(Runtime):
    kind = "swarm"
    state_on_host = False  # the volumes are on the sandbox's node

    def __init__(self, name: str, state_dir: Path):
        super().__init__(name, state_dir)
        self._placed: Node | None = None
        self._published: set[int] = set()  # the host-mode ports the placed node's tasks publish (place)
        self._lock: int | None = None  # held from a new sandbox's placement until its service exists

    # --- where it runs ------------------------------------------------------------------------
    def _service(self) -> dict | None:
        return cluster.service(self.name)

    def _labels(self, svc: dict | None) -> dict[str, str]:
        return ((svc or {}).get("Spec") or {}).get("Labels") or {}

    def _node_of(self, svc: dict | None) -> tuple[str | None, Node | None]:
        """The node id the service is kept on and that node now (None when it left the swarm)."""
        node_id = self._labels(svc).get(service.LABEL + "node")
        if not node_id:
            return None, None
        found, _ = cluster.nodes(with_tasks=False)
        return node_id, next((n for n in found if n.id == node_id), None)

    def place(
        self, image: str, cpus: float, memory_mib: int, port: int, platforms: Callable[[], dict] | None
    ) -> str | None:
        from openwork_sandbox.config import ImageRef

        if len(self.name) > MAX_NAME:
            raise WorkflowError(
                f"OPENWORK_MICROSANDBOX_NAME={self.name} has {len(self.name)} characters; a swarm sandbox's name may "
                f"have {MAX_NAME} (swarm names its service, network and jobs after it, up to 63): choose a shorter one",
                exit_code=EXIT_BAD_SETTINGS,
            )
        if ImageRef.parse(image).registry_is_loopback:
            raise WorkflowError(
                f"OPENWORK_MICROSANDBOX_IMAGE={image} is in a registry on this host's loopback, which the swarm's "
                "nodes cannot reach: push it to a registry every node pulls from (set OPENWORK_MICROSANDBOX_IMAGE "
                "to it, then invoke push-image)",
                exit_code=EXIT_BAD_SETTINGS,
            )
        svc = self._service()
        if svc is not None:
            node_id, node = self._node_of(svc)
            if node is not None:
                self._placed = node
                return node.address
        if self._lock is None:
            self._lock = lock.hold()  # another up from here places only once this one's service exists
        found, ports = cluster.nodes()
        free = [n for n in found if port not in ports.get(n.id, set())]
        if found and not free:
            raise WorkflowError(
                f"port {port} is already published on every swarm node: choose another with --port / "
                "OPENWORK_MICROSANDBOX_PORT"
            )
        try:
            offered = platforms() if platforms is not None else {}
        except WorkflowError as exc:  # the registry cannot be asked from here: every node may try
            console.info(f"note: could not read the image's platforms ({exc.message}); any node may be chosen")
            offered = {}
        self._placed = place(free, float(cpus), int(memory_mib), frozenset(offered) or None)
        self._published = ports.get(self._placed.id, set())  # what port_is_free asks next, read once
        return self._placed.address

    def port_is_free(self, port: int, bind_address: str) -> bool:
        """For a sandbox not made yet: no task publishes ``port`` on its node and nothing answers there
        (its own service, once made, holds it: then True)."""
        node = self._placed
        if node is None or self._service() is not None:
            return True
        if port in self._published:
            return False
        with contextlib.closing(socket.socket()) as sock:
            sock.settimeout(1.0)
            return sock.connect_ex((node.address, port)) != 0

    def network_support(self) -> NetworkSupport:
        return NetworkSupport(frozenset({"allow-all"}), LIMIT)

    # --- status -------------------------------------------------------------------------------
    def status(self) -> RuntimeStatus:
        svc = self._service()
        if svc is None:
            return RuntimeStatus(ABSENT)
        spec = svc.get("Spec") or {}
        image = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image")
        replicas = cluster.replicas(svc)
        history = cluster.tasks(self.name)
        restarts = sum(1 for t in history if (t.get("Status") or {}).get("State") in FAILED)
        _, node = self._node_of(svc)
        where = node.shown if node is not None else ""
        base = dict(
            image=image,
            digest=image,
            fingerprint=self._labels(svc).get(service.LABEL + "fingerprint"),
            engine_restarts=restarts,
            where=where,
        )
        if replicas == 0:
            return RuntimeStatus(STOPPED, server_running=False, detail="scaled to 0 (invoke up starts it)", **base)
        trouble = node_trouble(node)
        current = next((t for t in history if t.get("DesiredState") == "running"), None)
        state = ((current or {}).get("Status") or {}).get("State")
        if state in ("running", "starting") and trouble is None:  # starting: its container runs, health pending
            started = parse_engine_time((current.get("Status") or {}).get("Timestamp"))
            return RuntimeStatus(RUNNING, started_at=started, server_running=True, **base)
        if trouble is not None:
            detail = trouble
        elif current is None:
            detail = "no task (swarm is replacing it)"
        else:
            status = current.get("Status") or {}
            detail = f"task {state}: {status.get('Err') or status.get('Message') or ''}".rstrip(": ")
        return RuntimeStatus(STOPPED, server_running=False, detail=detail, **base)

    def is_alive(self) -> bool:
        """The service wants one task and its newest task runs or is on its way (pulled, started) on a
        node that can run it; False once it failed, ended or was scaled to 0."""
        svc = self._service()
        return node_trouble(self._node_of(svc)[1]) is None and self._current_task_id(svc) is not None

    def platform(self, st: RuntimeStatus) -> str | None:
        _, node = self._node_of(self._service())
        return node.platform if node is not None else None

    # --- create / start / stop / remove -------------------------------------------------------
    def _ensure_network(self) -> None:
        """The sandbox's own overlay network (``service.network_name``), made when missing."""
        net = service.network_name(self.name)
        if processes.docker("network", "inspect", net, check=False, timeout=30).returncode == 0:
            return
        proc = processes.docker(
            "network",
            "create",
            "--driver",
            "overlay",
            "--label",
            f"{service.LABEL}sandbox={self.name}",
            net,
            check=False,
            timeout=60,
        )
        if proc.returncode != 0 and "already exists" not in (proc.stderr or ""):
            raise WorkflowError(f"docker network create {net} failed: {processes.last_line(proc.stderr)}")

    def _drop_network(self) -> None:
        """Remove the sandbox's network; its endpoints go a moment after its task ended, so tried for a while."""
        net = service.network_name(self.name)
        deadline = time.monotonic() + 30
        while True:
            proc = processes.docker("network", "rm", net, check=False, timeout=30)
            err = (proc.stderr or "").lower()  # "no such network", or (engine 20.10) "network NAME not found"
            gone = proc.returncode == 0 or "no such network" in err or f"network {net.lower()} not found" in err
            if gone or time.monotonic() > deadline:
                return
            time.sleep(1)

    def _secrets(self, spec: LaunchSpec, made: list[str]) -> dict[str, str]:
        """Create the secrets ``spec`` needs that do not exist yet (``made`` collects them); guest path -> name."""
        proc = processes.docker("secret", "ls", "--format", "{{.Name}}", timeout=30)
        have = set(proc.stdout.split())
        out = {}
        for guest, host_file in service.secret_files(spec):
            content = host_file.read_bytes()
            name = service.secret_name(spec.name, guest, content)
            if name not in have:
                proc = processes.docker(
                    "secret",
                    "create",
                    "--label",
                    f"{service.LABEL}sandbox={spec.name}",
                    name,
                    "-",
                    input=content.decode(),
                    check=False,
                    timeout=60,
                )
                if proc.returncode != 0:
                    raise WorkflowError(f"docker secret create {name} failed: {processes.last_line(proc.stderr)}")
                made.append(name)
            out[guest] = name
        return out

    def _drop_secrets(self) -> None:
        """Remove every secret made for this sandbox (label ``sandbox=NAME``)."""
        proc = processes.docker(
            "secret",
            "ls",
            "-q",
            "--filter",
            f"label={service.LABEL}sandbox={self.name}",
            "--format",
            "{{.Name}}",
            check=False,
            timeout=30,
        )
        names = proc.stdout.split() if proc.returncode == 0 else []
        if names:
            processes.docker("secret", "rm", *names, check=False, timeout=60)

    def create(self, spec: LaunchSpec) -> None:
        if spec.network != "allow-all":  # `up` refuses it first; this keeps any other caller from booting it
            raise WorkflowError(
                f"the swarm runtime cannot enforce OPENWORK_MICROSANDBOX_NETWORK={spec.network}: {LIMIT}",
                exit_code=EXIT_BAD_SETTINGS,
            )
        if self._placed is None:
            self.place(spec.image, spec.cpus, spec.memory_mib, spec.host_port, spec.index_platforms)
        node = self._placed
        env_file = self.state_dir / ENV_FILE
        private_dir(self.state_dir, own=True, git_ignored=True)
        write_private_file(env_file, "".join(f"{k}={v}\n" for k, v in spec.env.items()))
        self.remove()  # a recreate: the old service goes first (its volumes stay for the new one)
        self._ensure_network()
        made: list[str] = []
        try:
            secrets = self._secrets(spec, made)
            argv = service.create_args(spec, node.id, secrets, env_file, node.label)
            with console.heartbeat(f"creating the swarm service {spec.name} on {node.shown}"):
                proc = processes.docker(*argv, check=False, timeout=300)
            if proc.returncode != 0:
                raise WorkflowError(f"docker service create {spec.name} failed: {processes.last_line(proc.stderr)}")
            deadline = time.monotonic() + 10  # the next placement sees this one's reservation once it is assigned
            while not cluster.assigned(spec.name) and time.monotonic() < deadline:
                time.sleep(0.2)
        except BaseException:  # interrupted or refused: no half-made service or secret is left
            with contextlib.suppress(WorkflowError):
                processes.docker("service", "rm", spec.name, check=False, timeout=60)
                if made:
                    processes.docker("secret", "rm", *made, check=False, timeout=60)
                self._drop_network()
            raise
        finally:
            lock.release(self._lock)
            self._lock = None
        jobs.remember(self.state_dir, node.id, node.shown, spec.image, service.volumes(spec))
        console.info(f"swarm service {spec.name} on node {node.shown}")
        self._refuse_unschedulable(f"{spec.name} cannot start on node {node.shown}", remove=True)

    def _refuse_unschedulable(self, what: str, *, remove: bool, wait: float = 10.0) -> None:
        """One line (WorkflowError) when swarm still cannot schedule the task ``wait`` seconds on (its
        scheduler's words and the way out); with ``remove`` the new service goes first, so nothing is
        left pending without a word."""
        deadline = time.monotonic() + wait
        why = cluster.unschedulable(self.name)
        while why and time.monotonic() < deadline:
            time.sleep(1)
            why = cluster.unschedulable(self.name)
        if not why:
            return
        if remove:
            self.remove()
        raise WorkflowError(
            f"{what}: swarm says {why}; free that node (invoke down another sandbox there), or lower "
            "OPENWORK_MICROSANDBOX_CPUS / OPENWORK_MICROSANDBOX_MEMORY"
            + ("" if remove else " (invoke down stops trying)")
        )

    def _scale(self, replicas: int) -> None:
        proc = processes.docker("service", "scale", "--detach", f"{self.name}={replicas}", check=False, timeout=60)
        if proc.returncode != 0:
            raise WorkflowError(
                f"docker service scale {self.name}={replicas} failed: {processes.last_line(proc.stderr)}"
            )

    def start(self, spec: LaunchSpec) -> None:
        svc = self._service()
        if svc is None:
            raise WorkflowError(f"no swarm service named {self.name}: run `invoke up` to create it")
        _, node = self._node_of(svc)
        trouble = node_trouble(node)
        if trouble:
            raise WorkflowError(f"{self.name} cannot start: {trouble}")
        self._scale(1)
        self._refuse_unschedulable(f"{self.name} cannot start on node {node.shown}", remove=False)

    def restart_server(self, spec: LaunchSpec) -> None:
        proc = processes.docker("service", "update", "--detach", "--force", self.name, check=False, timeout=120)
        if proc.returncode != 0:
            raise WorkflowError(f"docker service update --force {self.name} failed: {processes.last_line(proc.stderr)}")

    def _wait_no_task(self, timeout: float = 60) -> None:
        """Until no task of the service runs (its volumes are free again)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [t for t in cluster.tasks(self.name) if (t.get("Status") or {}).get("State") in cluster.RUNNING_TASK]
            if not live:
                return
            time.sleep(1)

    def stop(self) -> bool:
        st = self.status()
        if not cluster.replicas(self._service()):
            return False
        self._scale(0)
        self._wait_no_task()
        return st.state == RUNNING

    def remove(self) -> bool:
        """Scale to 0 and wait until the node reports the task ended (its container, port and volumes are
        free then; a removed service's container lingers a while otherwise), then remove the service and
        its secrets. The volumes stay (``remove_state``)."""
        svc = self._service()
        if svc is not None:
            if node_trouble(self._node_of(svc)[1]) is None:
                self._scale(0)
                self._wait_no_task()
            processes.docker("service", "rm", self.name, timeout=60)
        self._drop_secrets()
        self._drop_network()
        return svc is not None

    def remove_state(self) -> str | None:
        return jobs.empty_volumes(self.name, self.state_dir)

    def created_home(self) -> str | None:
        env = (
            (((self._service() or {}).get("Spec") or {}).get("TaskTemplate") or {}).get("ContainerSpec", {}).get("Env")
        )
        return next((item.split("=", 1)[1] for item in env or [] if item.startswith("HOME=")), None)

    def state_elsewhere(self) -> str | None:
        where = jobs.remembered(self.state_dir) or {}
        vols = list((where.get("volumes") or {}).values()) or [
            f"{self.name}-{v}" for v in ("workspace", "data", "store")
        ]
        mounts = " ".join(f"-v {v}:/v/{v}:ro" for v in vols)
        return (
            f"{self.name}'s folders are the volumes {', '.join(vols)} on its swarm node "
            f"{where.get('node_shown') or '(unknown)'}: after `invoke down`, on that node run "
            f'`docker run --rm {mounts} -v "$PWD":/out --entrypoint tar IMAGE -C /v -czf /out/{self.name}.tar.gz .`'
        )

    # --- logs / exec --------------------------------------------------------------------------
    def log_hint(self) -> str:
        return f"docker service logs {self.name} (or: invoke logs)"

    def log_tail(self, lines: int = 40) -> list[str]:
        try:
            return list(self.stream_logs(tail=lines))[-lines:]
        except WorkflowError:
            return []

    def stream_logs(
        self, *, follow: bool = False, tail: int | None = None, since_s: float | None = None, system: bool = False
    ) -> Iterator[str]:
        if self._service() is None:
            raise WorkflowError(f"no swarm service named {self.name}: run `invoke up` first")
        if system:
            yield from self._system_log()
            return
        if not follow:
            since = f"{int(since_s)}s" if since_s is not None else None
            yield from logs.settled(self.name, lambda: self._current_task_id() is not None, tail=tail, since=since)
            return
        began = self._current_task_id()

        def runs() -> bool:  # the task it began with still runs (a stopping one too: its last lines come)
            task = next((t for t in cluster.tasks(self.name) if t.get("ID") == began), None) if began else None
            return task is not None and (task.get("Status") or {}).get("State") in cluster.RUNNING_TASK

        yield from logs.follow(self.name, runs, tail=tail, since_s=since_s)

    def _current_task_id(self, svc: dict | None = None) -> str | None:
        """The task that runs the sandbox now (running or on its way), or None; ``svc``: the service as
        just read (else read now)."""
        if not cluster.replicas(svc if svc is not None else self._service()):
            return None
        current = next((t for t in cluster.tasks(self.name) if t.get("DesiredState") == "running"), None)
        if current is None or (current.get("Status") or {}).get("State") not in cluster.RUNNING_TASK:
            return None
        return current.get("ID")

    def _system_log(self) -> Iterator[str]:
        """The swarm's view: each task of the service, newest first (node, state, error)."""
        found, _ = cluster.nodes(with_tasks=False)
        by_id = {n.id: n for n in found}
        for task in cluster.tasks(self.name):
            status = task.get("Status") or {}
            node = by_id.get(task.get("NodeID"))
            yield (
                f"{status.get('Timestamp', '')} task {task.get('ID', '')[:12]} on "
                f"{node.shown if node else task.get('NodeID', '?')}: {status.get('State')} "
                f"(desired {task.get('DesiredState')}) {status.get('Err') or status.get('Message') or ''}"
            ).rstrip()

    def exec(self, argv: list[str], *, timeout: float = 60) -> tuple[int, str]:
        current = next((t for t in cluster.tasks(self.name) if (t.get("Status") or {}).get("State") == "running"), None)
        if current is None:
            raise WorkflowError(f"{self.name} has no running task: run `invoke up` first")
        container = ((current.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID", "")
        if current.get("NodeID") != cluster.manager_node_id():
            _, node = self._node_of(self._service())
            where = node.shown if node else current.get("NodeID")
            raise WorkflowError(
                f"{self.name} runs on node {where}, and Docker runs commands only in containers of the engine it "
                f"talks to: on that node run `docker exec {container[:12]} ...`"
            )
        proc = processes.docker("exec", container, *argv, check=False, timeout=timeout)
        return proc.returncode, (proc.stdout or "") + (proc.stderr or "")
