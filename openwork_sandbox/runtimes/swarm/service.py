"""The pieces of a sandbox's swarm service: its volumes, its secrets and the ``docker service
create`` arguments. Pure functions over a ``LaunchSpec``; the runtime (``runtime.py``) runs them.

- ``/workspace``, ``/data`` and the server's store are volumes ``<name>-workspace``, ``<name>-data``,
  ``<name>-store`` on the node that first runs the sandbox; a placement constraint on that node's id
  keeps it there (swarm has no volume that follows a task to another node).
- Every file of the spec's read-only folders (the token files, the TLS key, the provider keys and
  opencode's config: ``state.secrets``) is a swarm secret ``<name>.<file>.<sha>``, mounted at the
  same path the other runtimes mount the file (``/srv/openwork/secrets/openwork-token``), root's,
  0400: the entrypoint and the server side read them, the agent cannot. Secrets are kept encrypted in
  the managers' raft log and mounted in memory; none is in the service's environment or labels.
- The port is published in host mode on the node (``mode=host``). Each sandbox has an overlay network
  of its own (:func:`network_name`): its own loopback, and no route to another sandbox's container.
  (A swarm-scoped bridge network would need no VXLAN, but after a node's engine restarts every task
  on it is rejected, "network ... exists", for good: measured with Docker 20.10.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from openwork_sandbox.runtimes.base import CAPABILITIES, LaunchSpec

LABEL = "org.openwork-sandbox."  # + managed, fingerprint, node, sandbox, and ownership's marks
SECRET_MODE = "0400"
# a slow node takes longer than the image's 60 s start period; past it, swarm would replace the task
HEALTH_START_PERIOD = "300s"


def network_name(sandbox: str) -> str:
    """The sandbox's own overlay network."""
    return f"{sandbox}-net"


def volume_name(sandbox: str, guest: str) -> str:
    """``<sandbox>-<last part of the guest path>``: ``/data`` -> ``NAME-data``, ``/srv/openwork/store`` -> ``NAME-store``."""
    return f"{sandbox}-{PurePosixPath(guest).name}"


def volumes(spec: LaunchSpec) -> dict[str, str]:
    """Guest path -> volume name, one per read-write mount of ``spec``."""
    return {guest: volume_name(spec.name, guest) for guest in spec.mounts}


def secret_files(spec: LaunchSpec) -> list[tuple[str, Path]]:
    """``(guest path, host file)`` for every file of the spec's read-only folders, sorted."""
    out = []
    for guest, folder in spec.readonly_mounts.items():
        if folder.is_dir():
            out += [(f"{guest}/{f.name}", f) for f in sorted(folder.iterdir()) if f.is_file()]
    return out


SECRET_NAME_MAX = 64  # swarm refuses a longer secret name


def secret_name(sandbox: str, guest: str, content: bytes) -> str:
    """``<sandbox>.<file>.<sha256[:12]>``: a new value is a new secret (swarm's are immutable). Longer
    than swarm takes (64 characters: a sandbox of ``smoke --ephemeral`` with the default name is
    already 67), ``<sandbox[:24]>.<file[:20]>.<sha12>``, the hash then over the sandbox, the path
    and the value, so two sandboxes sharing a prefix never share a secret."""
    file, digest = PurePosixPath(guest).name, hashlib.sha256(content).hexdigest()[:12]
    name = f"{sandbox}.{file}.{digest}"
    if len(name) <= SECRET_NAME_MAX:
        return name
    digest = hashlib.sha256(f"{sandbox}\0{guest}\0".encode() + content).hexdigest()[:12]
    return f"{sandbox[:24]}.{file[:20]}.{digest}"


def create_args(
    spec: LaunchSpec, node_id: str, secrets: dict[str, str], env_file: Path, node_label: str = ""
) -> list[str]:
    """``docker service create`` arguments for ``spec`` on ``node_id``; ``secrets``: guest path -> secret name."""
    argv = [
        "service",
        "create",
        "--detach",
        "--with-registry-auth",  # the nodes pull with this user's `docker login`
        "--name",
        spec.name,
        "--label",
        f"{LABEL}managed=1",
        "--label",
        f"{LABEL}fingerprint={spec.fingerprint}",
        "--label",
        f"{LABEL}node={node_id}",
        *[arg for key, value in spec.marks.items() for arg in ("--label", f"{LABEL}{key}={value}")],
        "--constraint",
        f"node.id=={node_id}",
        "--init",  # as the Docker runtime: SIGTERM reaches the entrypoint at once
        "--replicas",
        "1",
        "--restart-condition",
        "any",
        "--restart-delay",
        "3s",
        "--update-order",
        "stop-first",  # the volumes and the port are the node's: never two tasks at once
        "--stop-grace-period",
        "15s",
        "--health-start-period",
        HEALTH_START_PERIOD,
        "--reserve-cpu",
        f"{spec.cpus:g}",
        "--limit-cpu",
        f"{spec.cpus:g}",
        "--reserve-memory",
        f"{spec.memory_mib}M",
        "--limit-memory",
        f"{spec.memory_mib}M",
        "--network",
        network_name(spec.name),
        "--publish",
        f"mode=host,published={spec.host_port},target={spec.guest_port},protocol=tcp",
        "--env-file",
        str(env_file),
        "--cap-drop",
        "ALL",
        *[arg for cap in CAPABILITIES for arg in ("--cap-add", cap)],
    ]
    if node_label:
        argv += ["--label", f"{LABEL}node-name={node_label}"]
    for guest, vol in volumes(spec).items():
        argv += ["--mount", f"type=volume,source={vol},target={guest}"]
    for guest, secret in secrets.items():
        argv += ["--secret", f"source={secret},target={guest},uid=0,gid=0,mode={SECRET_MODE}"]
    argv.append(spec.image)
    return argv
