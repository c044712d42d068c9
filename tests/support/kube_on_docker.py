"""Run a rendered Deployment's pod on the Docker engine under exactly the constraints it declares (no
Kubernetes control plane runs here): its user, read-only root filesystem, capabilities, no privilege
escalation (no_new_privs), CPU and memory limits, environment; the Secret's keys as files at the
mount paths (a temp folder per secret volume, root's, files with the volume's defaultMode, bound
read-only); each claim a named Docker volume; each emptyDir a tmpfs (``sizeLimit``).

The one difference, said where it is made: Docker has no bridge network here, so the pod's own
network namespace is the host's: the harness adds ``OPENWORK_PORT``/``OPENWORK_OPENCODE_PORT`` (free
ports) and ``OPENWORK_REMOTE_ACCESS=0`` (loopback only, as the Docker runtime does) to the environment."""

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


def _tmpfs_size(q: str) -> str:
    return {"Mi": f"{int(q[:-2])}m", "Gi": f"{int(q[:-2])}g"}[q[-2:]]


@dataclasses.dataclass
class PodOnDocker:
    name: str  # the container's name
    objs: dict
    prefix: str  # the named volumes' prefix
    port: int
    opencode_port: int
    secret_dirs: list[Path] = dataclasses.field(default_factory=list)

    @property
    def container(self) -> dict:
        (c,) = self.objs["Deployment"]["spec"]["template"]["spec"]["containers"]
        return c

    @property
    def url(self) -> str:
        scheme = self.container["readinessProbe"]["httpGet"]["scheme"].lower()
        return f"{scheme}://127.0.0.1:{self.port}"

    def volume_names(self) -> list[str]:
        return [f"{self.prefix}-{c['metadata']['name']}" for c in self.objs["PersistentVolumeClaim"]]

    def _secret_folder(self, volume: dict) -> Path:
        data = self.objs["Secret"]["data"]
        assert volume["secret"]["secretName"] == self.objs["Secret"]["metadata"]["name"]
        folder = Path(tempfile.mkdtemp(prefix="kube-secret-"))
        os.chmod(folder, 0o755)  # a secret volume's folder: anyone may enter, the files' modes decide
        for item in volume["secret"]["items"]:
            path = folder / item["path"]
            path.write_bytes(base64.b64decode(data[item["key"]]))
            os.chown(path, 0, 0)
            os.chmod(path, volume["secret"]["defaultMode"])
        self.secret_dirs.append(folder)
        return folder

    def run_args(self) -> list[str]:
        """``docker run`` arguments for the pod's one container, from the manifest alone (see the module doc)."""
        pod = self.objs["Deployment"]["spec"]["template"]["spec"]
        c, sec = self.container, self.container["securityContext"]
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"  # Docker's default profile
        assert sec["seccompProfile"]["type"] == "RuntimeDefault" and sec["privileged"] is False
        argv = ["run", "-d", "--name", self.name, "--network", "host"]
        argv += ["--user", f"{sec['runAsUser']}:{sec['runAsGroup']}"]
        if sec["readOnlyRootFilesystem"]:
            argv.append("--read-only")
        if sec["allowPrivilegeEscalation"] is False:
            argv += ["--security-opt", "no-new-privileges"]
        argv += [arg for cap in sec["capabilities"]["drop"] for arg in ("--cap-drop", cap)]
        argv += [arg for cap in sec["capabilities"]["add"] for arg in ("--cap-add", cap)]
        limits = c["resources"]["limits"]
        argv += ["--cpus", limits["cpu"], "--memory", _mem_bytes(limits["memory"])]
        env = {e["name"]: e["value"] for e in c["env"]}
        env.update(  # the host's network namespace (module doc)
            OPENWORK_PORT=str(self.port), OPENWORK_OPENCODE_PORT=str(self.opencode_port), OPENWORK_REMOTE_ACCESS="0"
        )
        argv += [arg for k, v in sorted(env.items()) for arg in ("--env", f"{k}={v}")]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for mount in c["volumeMounts"]:
            vol = volumes[mount["name"]]
            if "persistentVolumeClaim" in vol:
                source = f"{self.prefix}-{vol['persistentVolumeClaim']['claimName']}"
                argv += ["--mount", f"type=volume,source={source},target={mount['mountPath']}"]
            elif "emptyDir" in vol:
                size = _tmpfs_size(vol["emptyDir"]["sizeLimit"])
                argv += ["--tmpfs", f"{mount['mountPath']}:size={size}"]
            elif "secret" in vol:
                assert mount.get("readOnly") is True
                folder = self._secret_folder(vol)
                argv += ["--mount", f"type=bind,source={folder},target={mount['mountPath']},readonly"]
            else:
                raise AssertionError(f"a volume the harness does not know: {vol}")
        argv.append(c["image"])
        return argv

    def start(self) -> None:
        proc = subprocess.run(["docker", *self.run_args()], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr

    def wait_ready(self, timeout: float = 180) -> None:
        """Until ``/health`` answers 200 (the readiness probe's request); AssertionError with the log."""
        probe = self.container["readinessProbe"]["httpGet"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}{probe['path']}", timeout=4).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise AssertionError(f"not ready in {timeout:.0f}s:\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        proc = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True, timeout=30)
        return proc.stdout + proc.stderr

    def inspect(self, fmt: str) -> str:
        proc = subprocess.run(["docker", "inspect", "-f", fmt, self.name], capture_output=True, text=True, timeout=30)
        return proc.stdout.strip()

    def remove_container(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, timeout=60)
        for folder in self.secret_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        self.secret_dirs.clear()

    def remove_all(self) -> None:
        self.remove_container()
        subprocess.run(["docker", "volume", "rm", "-f", *self.volume_names()], capture_output=True, timeout=60)
