"""A sandbox as Kubernetes objects: pure functions from :class:`KubeSandbox` to the dicts ``kubectl apply``
takes, and to one multi-document YAML stream (each document JSON, which is YAML).

- one Secret ``<name>-secrets`` holds every file a sandbox gets read-only (``state.secrets``: the token
  files, the TLS certificate and key, ``sandbox.env``, ``opencode.jsonc``); no other object holds a
  value from it (only :func:`secret_digest` of all of it, which rolls the pod when one changes);
- PVCs ``<name>-workspace``, ``<name>-data``, ``<name>-store`` (the server's store: issued tokens);
- a Deployment (one replica, ``Recreate``: the claims are ReadWriteOnce, never two pods at once), a
  Service, a NetworkPolicy following OPENWORK_MICROSANDBOX_NETWORK;
- or, for :func:`agent_sandbox`, the Secret, agent-sandbox's ``Sandbox`` (agents.x-k8s.io/v1beta1)
  with the same pod and the claims as templates, and the NetworkPolicy.

The pod has two containers of the same image, both non-root (uid :data:`POD_UID`, no capability, no
privilege escalation, read-only root filesystem, separate PID namespaces), so it passes Pod Security
"restricted": ``server`` (openwork-server behind its gate; alone mounts the tokens, the TLS key and the
store) and ``agent`` (opencode behind its gate; the provider keys, opencode's config, ``/data``). The
entrypoint's role is :data:`ROLE_ENV` (docs/design-notes/kubernetes.md).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re

from openwork_sandbox.config import SPEC_BY_FIELD
from openwork_sandbox.runtimes.base import GUEST_DATA, GUEST_WORKSPACE
from openwork_sandbox.state.secrets import GUEST_DIR, SERVER_SECRETS_GUEST, STORE_GUEST

PREFIX = "openwork-sandbox.org/"  # labels and annotations: + sandbox, and ownership's marks
SANDBOX_LABEL = f"{PREFIX}sandbox"
CLAIM_SIZES = {"workspace": "10Gi", "data": "5Gi", "store": "1Gi"}  # edit the PVCs for other sizes
CLAIM_PATHS = {"workspace": GUEST_WORKSPACE, "data": GUEST_DATA, "store": STORE_GUEST}
# which container mounts which claim: /data (opencode's database under HOME=/data/home) is the agent's,
# the store (issued tokens) the server's
CLAIM_USERS = {"workspace": ("server", "agent"), "data": ("agent",), "store": ("server",)}
TMP_SIZE = "1Gi"  # each container's own /tmp
SERVER_DATA_SIZE = "1Gi"  # the server container's own /data (its HOME, the supervisor's record): the pod's life
POD_UID = 61001  # the uid the image gives the sandbox when /data is root's; also the group and fsGroup
ROLE_ENV = "OPENWORK_POD_ROLE"  # the entrypoint's role: server | agent (microsandbox-entrypoint.sh)
OPENCODE_PORT = 4096  # opencode on the pod's 127.0.0.1, the server's upstream
OPENCODE_PASSWORD = "opencode-password"  # the Secret's key: opencode's basic-auth password, in both containers
SECRET_MODE = 0o440  # root's, group fsGroup: what the kubelet makes of a secret volume for a non-root pod
SERVER_SHARE = 4  # the server container gets 1/SERVER_SHARE of the CPU and memory, the agent the rest
START_PERIODS = 60  # startupProbe: 60 x 5 s, as the swarm runtime's 300 s start period
# public-only: what the agent may not reach (private, loopback, link-local, shared address space)
PRIVATE_V4 = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
              "192.168.0.0/16"]  # fmt: skip
PRIVATE_V6 = ["::1/128", "fc00::/7", "fe80::/10"]
DNS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
       "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}  # fmt: skip
NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,51}[a-z0-9])?")  # a DNS-1035 label; 53 leaves room for -workspace
LABEL_VALUE_RE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


@dataclasses.dataclass(frozen=True)
class KubeSandbox:
    """What the objects are made of. ``server_files``: name -> content mounted in the server container at
    /srv/openwork/secrets (tokens, TLS); ``agent_files``: in the agent container at /etc/openwork-sandbox
    (may be empty); ``shared_files``: in both (opencode's password). Values in clear: never print."""

    name: str
    image: str
    port: int
    env: dict[str, str]  # split between the containers by :func:`agent_env` / :func:`server_env`
    cpus: float
    memory_mib: int
    network: str  # allow-all | public-only | none
    tls: bool
    marks: dict[str, str]
    server_files: dict[str, bytes] = dataclasses.field(repr=False)
    agent_files: dict[str, bytes] = dataclasses.field(default_factory=dict, repr=False)
    shared_files: dict[str, bytes] = dataclasses.field(default_factory=dict, repr=False)

    def files(self) -> dict[str, bytes]:
        return {**self.server_files, **self.agent_files, **self.shared_files}


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name the objects (a DNS-1035 label of at most 53 characters), or None."""
    if NAME_RE.fullmatch(name):
        return None
    return (
        f"OPENWORK_MICROSANDBOX_NAME={name} cannot name Kubernetes objects: use at most 53 lowercase letters, "
        "digits and '-', starting with a letter and ending with a letter or digit"
    )


def secret_digest(k: KubeSandbox) -> str:
    """SHA-256 over every file of the Secret, names and contents (for the pod's annotation)."""
    h = hashlib.sha256()
    for name, data in sorted(k.files().items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def labels(k: KubeSandbox) -> dict[str, str]:
    """The labels every object carries: the app's, the sandbox's, and each mark whose value is a valid
    label value (else the first 16 hex digits of its SHA-256; the value itself is in :func:`annotations`)."""
    out = {
        "app.kubernetes.io/name": "openwork-sandbox",
        "app.kubernetes.io/instance": k.name,
        "app.kubernetes.io/managed-by": "openwork-sandbox",
        SANDBOX_LABEL: k.name,
    }
    for key, value in sorted(k.marks.items()):
        ok = LABEL_VALUE_RE.fullmatch(value) and len(value) <= 63
        out[PREFIX + key] = value if ok else hashlib.sha256(value.encode()).hexdigest()[:16]
    return out


def annotations(k: KubeSandbox) -> dict[str, str]:
    """Every mark whose value a label cannot hold (a state folder's path), as it is."""
    return {PREFIX + key: v for key, v in sorted(k.marks.items()) if labels(k)[PREFIX + key] != v}


def _meta(k: KubeSandbox, name: str) -> dict:
    meta = {"name": name, "labels": labels(k)}
    if annotations(k):
        meta["annotations"] = annotations(k)
    return meta


def secret_name(k: KubeSandbox) -> str:
    return f"{k.name}-secrets"


def secret(k: KubeSandbox) -> dict:
    """The one object that holds secret values (base64, as ``data``)."""
    files = k.files()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(k, secret_name(k)),
        "type": "Opaque",
        "data": {n: base64.b64encode(files[n]).decode() for n in sorted(files)},
    }


def claim_spec(claim: str) -> dict:
    return {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": CLAIM_SIZES[claim]}}}


def claims(k: KubeSandbox) -> list[dict]:
    """``<name>-workspace``, ``<name>-data``, ``<name>-store``: ReadWriteOnce, the cluster's default class."""
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": _meta(k, f"{k.name}-{claim}"),
            "spec": claim_spec(claim),
        }
        for claim in CLAIM_PATHS
    ]


def _probe(k: KubeSandbox, period: int, failures: int) -> dict:
    scheme = "HTTPS" if k.tls else "HTTP"
    return {
        "httpGet": {"path": "/health", "port": "openwork", "scheme": scheme},
        "periodSeconds": period,
        "timeoutSeconds": 4,
        "failureThreshold": failures,
    }


# opencode answers at all (any status: its health needs the password, which no probe may carry); held
# by opencode-gate until opencode can answer
OPENCODE_ANSWERS = (
    'exec 3<>"/dev/tcp/127.0.0.1/${OPENWORK_OPENCODE_PORT}" && '
    "printf 'GET /global/health HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q '^HTTP/1'"
)


def _agent_probe(period: int, failures: int) -> dict:
    return {
        "exec": {"command": ["bash", "-c", OPENCODE_ANSWERS]},
        "periodSeconds": period,
        "timeoutSeconds": 4,
        "failureThreshold": failures,
    }


def container_security() -> dict:
    """Non-root, no capability, no privilege escalation, read-only root: Pod Security "restricted"."""
    return {
        "runAsNonRoot": True,
        "runAsUser": POD_UID,
        "runAsGroup": POD_UID,
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def agent_env(env: dict[str, str]) -> dict[str, str]:
    """What of the sandbox's environment opencode's container gets: HOME, XDG_*, OPENCODE_*, and the
    size opencode's heap is made for (OPENWORK_OPENCODE_HEAP_MIB, read by opencode-gate)."""
    heap = SPEC_BY_FIELD["opencode_heap"].env
    return {n: v for n, v in env.items() if n in ("HOME", heap) or n.startswith(("XDG_", "OPENCODE_"))}


def server_env(env: dict[str, str]) -> dict[str, str]:
    """The rest (token and TLS file paths, approval, connect host), and HOME (its own /data)."""
    return {n: v for n, v in env.items() if n not in agent_env(env) or n == "HOME"}


def resources(k: KubeSandbox) -> dict[str, dict]:
    """Container -> requests = limits: the settings' CPU and memory are the pod's, as one container's on the
    other runtimes; the server gets 1/:data:`SERVER_SHARE`, the agent (opencode and its commands) the rest."""
    cpu_m, mem = round(k.cpus * 1000), k.memory_mib
    server = {"cpu": f"{cpu_m // SERVER_SHARE}m", "memory": f"{mem // SERVER_SHARE}Mi"}
    agent = {"cpu": f"{cpu_m - cpu_m // SERVER_SHARE}m", "memory": f"{mem - mem // SERVER_SHARE}Mi"}
    return {"server": server, "agent": agent}


def _container(k: KubeSandbox, role: str, env: dict[str, str], mounts: list[dict]) -> dict:
    size = resources(k)[role]
    env = {**env, ROLE_ENV: role, "OPENWORK_PORT": str(k.port), "OPENWORK_OPENCODE_PORT": str(OPENCODE_PORT)}
    return {
        "name": role,
        "image": k.image,
        "imagePullPolicy": "IfNotPresent",
        "env": [{"name": n, "value": v} for n, v in sorted(env.items())],
        "resources": {"requests": dict(size), "limits": dict(size)},
        "securityContext": container_security(),
        "volumeMounts": mounts,
    }


def containers(k: KubeSandbox) -> list[dict]:
    """``server`` then ``agent`` (see the module doc)."""
    claims_of = {role: [c for c, users in CLAIM_USERS.items() if role in users] for role in ("server", "agent")}
    server_mounts = [{"name": c, "mountPath": CLAIM_PATHS[c]} for c in claims_of["server"]]
    server_mounts += [
        {"name": "server-data", "mountPath": GUEST_DATA},
        {"name": "server-tmp", "mountPath": "/tmp"},
        {"name": "server-secrets", "mountPath": SERVER_SECRETS_GUEST, "readOnly": True},
    ]
    env = {
        **server_env(k.env),
        "OPENCODE_SERVER_PASSWORD_FILE": f"{SERVER_SECRETS_GUEST}/{OPENCODE_PASSWORD}",
    }
    server = _container(k, "server", env, server_mounts)
    server["ports"] = [{"name": "openwork", "containerPort": k.port, "protocol": "TCP"}]
    server["startupProbe"] = _probe(k, 5, START_PERIODS)
    server["readinessProbe"] = _probe(k, 5, 3)
    server["livenessProbe"] = _probe(k, 10, 3)
    agent_mounts = [{"name": c, "mountPath": CLAIM_PATHS[c]} for c in claims_of["agent"]]
    agent_mounts += [
        {"name": "agent-tmp", "mountPath": "/tmp"},
        {"name": "agent-secrets", "mountPath": GUEST_DIR, "readOnly": True},
    ]
    env = {**agent_env(k.env), "OPENCODE_SERVER_PASSWORD_FILE": f"{GUEST_DIR}/{OPENCODE_PASSWORD}"}
    agent = _container(k, "agent", env, agent_mounts)
    agent["startupProbe"] = _agent_probe(5, START_PERIODS)
    agent["readinessProbe"] = _agent_probe(5, 3)
    agent["livenessProbe"] = _agent_probe(10, 3)
    return [server, agent]


def pod_spec(k: KubeSandbox, claim_volumes: bool = True) -> dict:
    """The sandbox's pod. ``claim_volumes`` False leaves the claims' volumes out (agent-sandbox adds
    them from its volumeClaimTemplates, named as the templates)."""
    volumes = [{"name": c, "persistentVolumeClaim": {"claimName": f"{k.name}-{c}"}} for c in CLAIM_PATHS]
    volumes = volumes if claim_volumes else []
    volumes += [
        {"name": "server-data", "emptyDir": {"sizeLimit": SERVER_DATA_SIZE}},
        {"name": "server-tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
        {"name": "agent-tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
        _secret_volume(k, "server-secrets", {**k.server_files, **k.shared_files}),
        _secret_volume(k, "agent-secrets", {**k.agent_files, **k.shared_files}),
    ]
    return {
        "automountServiceAccountToken": False,  # the agent gets no credential for the cluster's API
        "enableServiceLinks": False,
        "shareProcessNamespace": False,  # each container its own PID namespace: the agent sees no server /proc
        "terminationGracePeriodSeconds": 15,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": POD_UID,
            "runAsGroup": POD_UID,
            "fsGroup": POD_UID,  # the claims and secret files: group-writable / -readable for the sandbox
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers(k),
        "volumes": volumes,
    }


def _secret_volume(k: KubeSandbox, volume: str, files: dict[str, bytes]) -> dict:
    items = [{"key": n, "path": n} for n in sorted(files)]
    # optional: false is the default, said: podman 4.3's kube play dereferences it unset and crashes
    source = {"secretName": secret_name(k), "defaultMode": SECRET_MODE, "items": items, "optional": False}
    return {"name": volume, "secret": source}


def pod_template(k: KubeSandbox, claim_volumes: bool = True) -> dict:
    meta = _meta(k, k.name)
    del meta["name"]
    meta["annotations"] = {**meta.get("annotations", {}), f"{PREFIX}secret-digest": secret_digest(k)}
    return {"metadata": meta, "spec": pod_spec(k, claim_volumes)}


def deployment(k: KubeSandbox) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(k, k.name),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {SANDBOX_LABEL: k.name}},
            "template": pod_template(k),
        },
    }


def service(k: KubeSandbox) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(k, k.name),
        "spec": {
            "type": "ClusterIP",
            "selector": {SANDBOX_LABEL: k.name},
            "ports": [
                {
                    "name": "openwork",
                    "port": k.port,
                    "targetPort": "openwork",
                    "protocol": "TCP",
                    "appProtocol": "https" if k.tls else "http",
                }
            ],
        },
    }


def egress(network: str) -> list[dict]:
    """allow-all: anything; public-only: the internet (no private, loopback or link-local range) and
    the cluster's DNS; none: nothing, DNS neither (a name lookup carries data out too)."""
    if network == "allow-all":
        return [{}]
    if network == "public-only":
        return [
            {
                "to": [
                    {"ipBlock": {"cidr": "0.0.0.0/0", "except": PRIVATE_V4}},
                    {"ipBlock": {"cidr": "::/0", "except": PRIVATE_V6}},
                ]
            },
            {"to": [DNS], "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        ]
    if network == "none":
        return []
    raise ValueError(f"unknown network policy {network!r}")


def network_policy(k: KubeSandbox) -> dict:
    """Ingress to the server's port only, from anywhere in or out of the cluster; egress :func:`egress`."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(k, k.name),
        "spec": {
            "podSelector": {"matchLabels": {SANDBOX_LABEL: k.name}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": k.port}]}],
            "egress": egress(k.network),
        },
    }


def objects(k: KubeSandbox) -> list[dict]:
    """The sandbox for ``kubectl apply``, in the order it is applied."""
    return [secret(k), *claims(k), deployment(k), service(k), network_policy(k)]


def agent_sandbox(k: KubeSandbox) -> list[dict]:
    """The Secret, agent-sandbox's Sandbox (its controller makes the pod, the claims
    ``<template>-<name>`` and a headless Service) and the NetworkPolicy."""
    sandbox = {
        "apiVersion": "agents.x-k8s.io/v1beta1",
        "kind": "Sandbox",
        "metadata": _meta(k, k.name),
        "spec": {
            "operatingMode": "Running",
            "service": True,
            "podTemplate": pod_template(k, claim_volumes=False),
            "volumeClaimTemplates": [{"metadata": {"name": c}, "spec": claim_spec(c)} for c in CLAIM_PATHS],
        },
    }
    return [secret(k), sandbox, network_policy(k)]


def file_name(index: int, obj: dict) -> str:
    """``NN-kind-name.yaml`` for ``--output``: applied in this order by ``kubectl apply -f DIR``."""
    return f"{index:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def document(obj: dict) -> str:
    """One YAML document (JSON, a subset of YAML), newline-terminated."""
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def stream(objs: list[dict]) -> str:
    """Every object as one multi-document YAML stream: each document after a ``---`` line (so that
    kubectl, which reads a stream starting with ``{`` as a single JSON object, reads it as YAML)."""
    return "".join(f"---\n{document(o)}" for o in objs)
