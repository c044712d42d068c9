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

The container starts as root with exactly ``runtimes.base.CAPABILITIES`` (the entrypoint splits the
server's and the agent's privileges, which needs root at start: docs/design-notes/kubernetes.md).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re

from openwork_sandbox.runtimes.base import CAPABILITIES, GUEST_DATA, GUEST_WORKSPACE
from openwork_sandbox.state.secrets import GUEST_DIR, PRIVATE_GUEST, SERVER_SECRETS_GUEST, STORE_GUEST

PREFIX = "openwork-sandbox.org/"  # labels and annotations: + sandbox, and ownership's marks
SANDBOX_LABEL = f"{PREFIX}sandbox"
CLAIM_SIZES = {"workspace": "10Gi", "data": "5Gi", "store": "1Gi"}  # edit the PVCs for other sizes
CLAIM_PATHS = {"workspace": GUEST_WORKSPACE, "data": GUEST_DATA, "store": STORE_GUEST}
PRIVATE_SIZE = "16Mi"  # the in-memory /srv/openwork the entrypoint makes root's 0700
TMP_SIZE = "1Gi"
SERVER_MODE = 0o400  # the token files and the TLS key: root's; the server side enters with CAP_DAC_READ_SEARCH
AGENT_MODE = 0o444  # sandbox.env, opencode.jsonc: the agent's own (opencode-gate reads them as its uid)
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
    """What the objects are made of. ``server_files``: name -> content mounted at /srv/openwork/secrets
    (tokens, TLS); ``agent_files``: at /etc/openwork-sandbox (may be empty). Values in clear: never print."""

    name: str
    image: str
    port: int
    env: dict[str, str]
    cpus: float
    memory_mib: int
    network: str  # allow-all | public-only | none
    tls: bool
    marks: dict[str, str]
    server_files: dict[str, bytes] = dataclasses.field(repr=False)
    agent_files: dict[str, bytes] = dataclasses.field(default_factory=dict, repr=False)


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
    for name, data in sorted({**k.server_files, **k.agent_files}.items()):
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
    files = {**k.server_files, **k.agent_files}
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


def container_security() -> dict:
    """Root at start (the entrypoint drops to the data owner itself), nothing more than it needs."""
    return {
        "runAsUser": 0,
        "runAsGroup": 0,
        "runAsNonRoot": False,
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": list(CAPABILITIES)},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_spec(k: KubeSandbox, claim_volumes: bool = True) -> dict:
    """The sandbox's pod. ``claim_volumes`` False leaves the claims' volumes out (agent-sandbox adds
    them from its volumeClaimTemplates, named as the templates)."""
    mounts = [{"name": claim, "mountPath": path} for claim, path in CLAIM_PATHS.items()]
    mounts += [
        {"name": "private", "mountPath": PRIVATE_GUEST},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "server-secrets", "mountPath": SERVER_SECRETS_GUEST, "readOnly": True},
    ]
    volumes = [{"name": c, "persistentVolumeClaim": {"claimName": f"{k.name}-{c}"}} for c in CLAIM_PATHS]
    volumes = volumes if claim_volumes else []
    volumes += [
        {"name": "private", "emptyDir": {"medium": "Memory", "sizeLimit": PRIVATE_SIZE}},
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
        _secret_volume(k, "server-secrets", k.server_files, SERVER_MODE),
    ]
    if k.agent_files:
        mounts.append({"name": "sandbox-secrets", "mountPath": GUEST_DIR, "readOnly": True})
        volumes.append(_secret_volume(k, "sandbox-secrets", k.agent_files, AGENT_MODE))
    size = {"cpu": f"{k.cpus:g}", "memory": f"{k.memory_mib}Mi"}
    container = {
        "name": "openwork",
        "image": k.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "openwork", "containerPort": k.port, "protocol": "TCP"}],
        "env": [{"name": n, "value": v} for n, v in sorted(k.env.items())],
        "resources": {"requests": dict(size), "limits": dict(size)},
        "startupProbe": _probe(k, 5, START_PERIODS),
        "readinessProbe": _probe(k, 5, 3),
        "livenessProbe": _probe(k, 10, 3),
        "securityContext": container_security(),
        "volumeMounts": mounts,
    }
    return {
        "automountServiceAccountToken": False,  # the agent gets no credential for the cluster's API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 15,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }


def _secret_volume(k: KubeSandbox, volume: str, files: dict[str, bytes], mode: int) -> dict:
    items = [{"key": n, "path": n} for n in sorted(files)]
    # optional: false is the default, said: podman 4.3's kube play dereferences it unset and crashes
    source = {"secretName": secret_name(k), "defaultMode": mode, "items": items, "optional": False}
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
