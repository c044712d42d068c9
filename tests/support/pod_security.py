"""Pod Security Standards, "restricted" (which includes "baseline"), as a checker of a pod spec, offline.

The rules of https://kubernetes.io/docs/concepts/security/pod-security-standards/ (the page as of
Kubernetes 1.3x; each rule below is one of its controls, named as there). "Containers" means
containers, initContainers and ephemeralContainers, as there. :func:`violations` returns one line per
broken rule; an empty list means the pod admission controller at ``enforce: restricted`` admits it.
"""

from __future__ import annotations

# baseline, "Capabilities": what may be added
BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                 "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}  # fmt: skip
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}  # fmt: skip
# restricted, "Volume Types"
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}  # fmt: skip


def _containers(spec: dict) -> list[dict]:
    return [c for key in ("initContainers", "containers", "ephemeralContainers") for c in spec.get(key, [])]


def _baseline(spec: dict, annotations: dict) -> list[str]:
    out = []
    pod_sc = spec.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"Host Namespaces: {field}")
    for v in spec.get("volumes", []):
        if "hostPath" in v:
            out.append(f"HostPath Volumes: {v['name']}")
    for name in (s["name"] for s in pod_sc.get("sysctls", [])):
        if name not in SAFE_SYSCTLS:
            out.append(f"Sysctls: {name}")
    for key, value in annotations.items():
        apparmor = key.startswith("container.apparmor.security.beta.kubernetes.io/")
        if apparmor and value != "runtime/default" and not value.startswith("localhost/"):
            out.append(f"AppArmor: {key}={value}")
    for where, sc in [("pod", pod_sc)] + [(c["name"], c.get("securityContext", {})) for c in _containers(spec)]:
        if sc.get("windowsOptions", {}).get("hostProcess"):
            out.append(f"HostProcess: {where}")
        if sc.get("appArmorProfile", {}).get("type", "RuntimeDefault") not in ("RuntimeDefault", "Localhost"):
            out.append(f"AppArmor: {where}")
        se = sc.get("seLinuxOptions", {})
        if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            out.append(f"SELinux: {where}")
        if sc.get("seccompProfile", {}).get("type") == "Unconfined":
            out.append(f"Seccomp: {where} Unconfined")
    for c in _containers(spec):
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            out.append(f"Privileged Containers: {c['name']}")
        extra = set(sc.get("capabilities", {}).get("add", [])) - BASELINE_CAPS
        if extra:
            out.append(f"Capabilities (baseline): {c['name']} adds {sorted(extra)}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"Host Ports: {c['name']}")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"/proc Mount Type: {c['name']}")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            for kind in ("httpGet", "tcpSocket"):
                if c.get(probe, {}).get(kind, {}).get("host"):
                    out.append(f"Probes / Lifecycle Hooks: {c['name']} {probe} sets host")
    return out


def _restricted(spec: dict) -> list[str]:
    out = []
    pod_sc = spec.get("securityContext", {})
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"Volume Types: {v['name']} is {sorted(kinds)}")
    if pod_sc.get("runAsUser") == 0:
        out.append("Running as Non-root user: pod runAsUser 0")
    for c in _containers(spec):
        sc, name = c.get("securityContext", {}), c["name"]
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"Privilege Escalation: {name} does not set allowPrivilegeEscalation: false")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            out.append(f"Running as Non-root: {name}")
        if sc.get("runAsUser") == 0:
            out.append(f"Running as Non-root user: {name} runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"Seccomp: {name} has no RuntimeDefault or Localhost profile")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"Capabilities: {name} does not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"Capabilities: {name} adds {sorted(set(caps['add']) - {'NET_BIND_SERVICE'})}")
    return out


def violations(template: dict) -> list[str]:
    """Every rule of "restricted" the pod template (``metadata`` and ``spec``) breaks, one line each."""
    spec, annotations = template["spec"], template.get("metadata", {}).get("annotations", {})
    return _baseline(spec, annotations) + _restricted(spec)
