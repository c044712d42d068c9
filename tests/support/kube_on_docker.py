"""Run a rendered Deployment's pod on the Docker engine as a pod, under exactly the constraints it
declares (no Kubernetes control plane runs here). Each of its containers is a Docker container, in the
manifest's order: the first holds the pod's network and IPC namespaces, the others join them
(``--network container:``, ``--ipc container:``: one localhost, as a pod); each has its own PID
namespace (``shareProcessNamespace: false``), exactly its container's user (plus the pod's fsGroup as a
supplementary group), read-only root filesystem, capabilities, no privilege escalation (no_new_privs),
CPU and memory limits, environment and mounts: the Secret's keys as files only where that container
mounts them (a temp folder per secret volume, files root's with group fsGroup and the volume's
defaultMode, bound read-only), each claim a named Docker volume given to the fsGroup as the kubelet does
(group-owned, group-writable, setgid folders), each emptyDir a tmpfs (``sizeLimit``, mode 2777).

The one difference, said where it is made: Docker has no bridge network here, so the pod's network
namespace is the host's: the harness sets ``OPENWORK_PORT``/``OPENWORK_OPENCODE_PORT`` (free ports) in
every container and ``OPENWORK_REMOTE_ACCESS=0`` (loopback only, as the Docker runtime does)."""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import requests
import yaml


def load(folder: Path) -> dict[str, dict]:
    """The objects of ``invoke manifests --output folder`` by kind (the PVCs as a list)."""
    out: dict = {"PersistentVolumeClaim": []}
    for path in sorted(folder.glob("*.yaml")):
        obj = yaml.safe_load(path.read_text())
        if obj["kind"] == "PersistentVolumeClaim":
            out["PersistentVolumeClaim"].append(obj)
        else:
            out[obj["kind"]] = obj
    return out


def _mem_bytes(q: str) -> str:
    assert q.endswith("Mi"), q
    return f"{int(q[:-2])}m"


def _cpus(q: str) -> str:
    return f"{int(q[:-1]) / 1000:g}" if q.endswith("m") else q


def _tmpfs_size(q: str) -> str:
    return {"Mi": f"{int(q[:-2])}m", "Gi": f"{int(q[:-2])}g"}[q[-2:]]


def docker(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kw)


@dataclasses.dataclass
class PodOnDocker:
    name: str  # each container is <name>-<container's name>
    objs: dict
    prefix: str  # the named volumes' prefix
    port: int
    opencode_port: int
    secret_dirs: dict[str, Path] = dataclasses.field(default_factory=dict)

    @property
    def pod(self) -> dict:
        return self.objs["Deployment"]["spec"]["template"]["spec"]

    @property
    def containers(self) -> dict[str, dict]:
        return {c["name"]: c for c in self.pod["containers"]}

    def container_name(self, container: str) -> str:
        return f"{self.name}-{container}"

    @property
    def url(self) -> str:
        scheme = self.containers["server"]["readinessProbe"]["httpGet"]["scheme"].lower()
        return f"{scheme}://127.0.0.1:{self.port}"

    def volume_names(self) -> list[str]:
        return [f"{self.prefix}-{c['metadata']['name']}" for c in self.objs["PersistentVolumeClaim"]]

    def _fs_group(self) -> int:
        return self.pod["securityContext"]["fsGroup"]

    def _secret_folder(self, volume: dict) -> Path:
        if volume["name"] in self.secret_dirs:
            return self.secret_dirs[volume["name"]]
        data = self.objs["Secret"]["data"]
        assert volume["secret"]["secretName"] == self.objs["Secret"]["metadata"]["name"]
        folder = Path(tempfile.mkdtemp(prefix="kube-secret-"))
        os.chmod(folder, 0o755)  # a secret volume's folder: anyone may enter, the files' modes decide
        for item in volume["secret"]["items"]:
            path = folder / item["path"]
            path.write_bytes(base64.b64decode(data[item["key"]]))
            os.chown(path, 0, self._fs_group())
            os.chmod(path, volume["secret"]["defaultMode"])
        self.secret_dirs[volume["name"]] = folder
        return folder

    def _own_claims(self, image: str) -> None:
        """Each claim's volume to the pod's fsGroup, as the kubelet does before the containers start."""
        g = self._fs_group()
        for volume in self.volume_names():
            script = f"chgrp -R {g} /v && chmod -R g+rwX /v && find /v -type d -exec chmod g+s {{}} +"
            proc = docker("run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "sh",
                          "-v", f"{volume}:/v", image, "-c", script, timeout=120)  # fmt: skip
            assert proc.returncode == 0, proc.stderr

    def run_args(self, c: dict, first: str | None) -> list[str]:
        """``docker run`` arguments for container ``c``, from the manifest alone (see the module doc);
        ``first``: the Docker name of the container whose namespaces it joins (None: it is the first)."""
        pod, sec = self.pod, c["securityContext"]
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"  # Docker's default profile
        assert sec["seccompProfile"]["type"] == "RuntimeDefault" and sec["privileged"] is False
        assert pod["shareProcessNamespace"] is False  # Docker's default: a PID namespace per container
        argv = ["run", "-d", "--name", self.container_name(c["name"])]
        argv += ["--network", "host", "--ipc", "shareable"] if first is None else [
            "--network", f"container:{first}", "--ipc", f"container:{first}"]  # fmt: skip
        assert sec["runAsNonRoot"] is True and sec["runAsUser"] != 0
        argv += ["--user", f"{sec['runAsUser']}:{sec['runAsGroup']}", "--group-add", str(self._fs_group())]
        if sec["readOnlyRootFilesystem"]:
            argv.append("--read-only")
        if sec["allowPrivilegeEscalation"] is False:
            argv += ["--security-opt", "no-new-privileges"]
        argv += [arg for cap in sec["capabilities"]["drop"] for arg in ("--cap-drop", cap)]
        argv += [arg for cap in sec["capabilities"].get("add", []) for arg in ("--cap-add", cap)]
        limits = c["resources"]["limits"]
        argv += ["--cpus", _cpus(limits["cpu"]), "--memory", _mem_bytes(limits["memory"])]
        env = {e["name"]: e["value"] for e in c["env"]}
        env.update(OPENWORK_PORT=str(self.port), OPENWORK_OPENCODE_PORT=str(self.opencode_port))  # module doc
        if "ports" in c:
            env["OPENWORK_REMOTE_ACCESS"] = "0"
        argv += [arg for k, v in sorted(env.items()) for arg in ("--env", f"{k}={v}")]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for mount in c["volumeMounts"]:
            vol = volumes[mount["name"]]
            if "persistentVolumeClaim" in vol:
                source = f"{self.prefix}-{vol['persistentVolumeClaim']['claimName']}"
                argv += ["--mount", f"type=volume,source={source},target={mount['mountPath']}"]
            elif "emptyDir" in vol:
                size = _tmpfs_size(vol["emptyDir"]["sizeLimit"])
                argv += ["--tmpfs", f"{mount['mountPath']}:size={size},mode=2777"]
            elif "secret" in vol:
                assert mount.get("readOnly") is True
                folder = self._secret_folder(vol)
                argv += ["--mount", f"type=bind,source={folder},target={mount['mountPath']},readonly"]
            else:
                raise AssertionError(f"a volume the harness does not know: {vol}")
        argv.append(c["image"])
        return argv

    def start(self) -> None:
        """Every container, the first (the pod's namespaces) first."""
        first = None
        for c in self.pod["containers"]:
            if first is None:
                for volume in self.volume_names():
                    docker("volume", "create", volume)
                self._own_claims(c["image"])
            proc = docker(*self.run_args(c, first), timeout=300)
            assert proc.returncode == 0, proc.stderr
            first = first or self.container_name(c["name"])

    def wait_ready(self, timeout: float = 180) -> None:
        """Until the pod is ready as the kubelet judges it: every container's readiness probe passes (the
        server's GET /health answers 200, the agent's exec probe exits 0); AssertionError with the logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._ready(c) for c in self.containers):
                return
            time.sleep(1)
        raise AssertionError(f"not ready in {timeout:.0f}s:\n{self.logs()[-4000:]}")

    def _ready(self, container: str) -> bool:
        probe = self.containers[container]["readinessProbe"]
        if "exec" in probe:
            return self.exec_probe(container).returncode == 0
        assert probe["httpGet"]["port"] == "openwork"
        try:
            return requests.get(f"{self.url}{probe['httpGet']['path']}", timeout=4).status_code == 200
        except requests.RequestException:
            return False

    def exec_probe(self, container: str, probe: str = "readinessProbe") -> subprocess.CompletedProcess:
        """The container's exec probe, run in it as the kubelet runs it."""
        return docker("exec", self.container_name(container), *self.containers[container][probe]["exec"]["command"])

    def exec(self, container: str, script: str, stdin: str = "") -> str:
        """``sh -c script`` in the container as its own user (what a command the agent runs can do)."""
        proc = docker("exec", "-i", self.container_name(container), "sh", "-c", script, input=stdin, timeout=300)
        return proc.stdout + proc.stderr

    def logs(self) -> str:
        out = []
        for c in self.containers:
            proc = docker("logs", self.container_name(c), timeout=30)
            out.append(f"--- {c}\n{proc.stdout}{proc.stderr}")
        return "\n".join(out)

    def inspect(self, container: str, fmt: str) -> str:
        return docker("inspect", "-f", fmt, self.container_name(container), timeout=30).stdout.strip()

    def remove_containers(self) -> None:
        for c in reversed(list(self.containers)):
            docker("rm", "-f", self.container_name(c))
        for folder in self.secret_dirs.values():
            shutil.rmtree(folder, ignore_errors=True)
        self.secret_dirs.clear()

    def remove_all(self) -> None:
        self.remove_containers()
        docker("volume", "rm", "-f", *self.volume_names())
