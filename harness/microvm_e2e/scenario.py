"""The scenario's sandbox and how it runs tasks: a temporary folder (state, logs, the env file) and a
fresh sandbox name and port; every task an ``invoke`` in its own process with only the scenario's
settings; the sandbox's API, the guest's docker, the figures, and the clean-up."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.common import LOCAL_REGISTRY, STANDIN_ORCHESTRATOR, STANDIN_SERVER, TaskRun, empty_env_file, run_task
from harness.common import task_env as clean_env
from harness.microvm_e2e.guest import harness_share, wait_for_the_engines_copy
from harness.microvm_e2e.outcome import StepFailed, note
from openwork_sandbox.net.ports import free_port

RUN_REF = f"{LOCAL_REGISTRY}/openwork-microsandbox-e2e:run"  # the image under the run's tag
BASE_REF = "openwork-e2e-base:from-image"  # build-image's base, taken out of the loaded image
WORKSPACE_ID = "ws_c52ddf65534b"  # ws_ + sha256("/workspace")[:12]
USER = "owe2e"  # the user who is not root (the non-root step)
TASK_TIMEOUT = 2400.0


class Scenario:
    """One run of the scenario; each step (harness.microvm_e2e.steps_*) takes it and returns its line."""

    def __init__(self, runtime: str, image: str, keep: bool):
        """A scenario against RUNTIME booting IMAGE (the loaded e2e image), in a temporary folder kept
        afterwards when KEEP: a fresh sandbox name and port, its own state folder and settings."""
        self.runtime, self.loaded_image = runtime, image
        # on the disk, not /tmp: a tmpfs of Linux < 6.6 (the emulated host's) keeps no xattrs, which microVM binds need
        self.tmp = Path(tempfile.mkdtemp(prefix="owe2e-", dir="/var/tmp"))
        os.chmod(self.tmp, 0o755)
        self.keep = keep
        self.log_dir = self.tmp / "logs"
        self.log_dir.mkdir()
        self.name = f"e2e-{secrets.token_hex(3)}"
        self.port = free_port()
        self.figures: dict[str, float] = {}
        self.env_file = empty_env_file(self.tmp)
        self.settings_env = {
            "OPENWORK_STATE_DIR": str(self.tmp / "state"),
            "OPENWORK_MICROSANDBOX_NAME": self.name,
            "OPENWORK_MICROSANDBOX_PORT": str(self.port),
            "OPENWORK_MICROSANDBOX_RUNTIME": runtime,
            "OPENWORK_MICROSANDBOX_IMAGE": RUN_REF,
            # in the emulated host these three come from the harness (harness.microvm_host.share's
            # EMULATED_HOST_SETTINGS: 900 s, 300 s, one vCPU); elsewhere a slow host's deadline, a
            # request timeout for opencode's first request after a start (it makes its instance for the
            # workspace), and the product's vCPUs
            "OPENWORK_HEALTH_TIMEOUT": os.environ.get("OPENWORK_HEALTH_TIMEOUT") or "900",
            "OPENWORK_REQUEST_TIMEOUT": os.environ.get("OPENWORK_REQUEST_TIMEOUT") or "120",
            "OPENWORK_MICROSANDBOX_CPUS": os.environ.get("OPENWORK_MICROSANDBOX_CPUS") or "2",
            "OPENWORK_OFFLINE": "true",
            "OPENWORK_BASE_IMAGE": BASE_REF,
            "OPENWORK_SERVER_BIN": str(STANDIN_SERVER),
            "OPENWORK_ORCHESTRATOR_BIN_PATH": str(STANDIN_ORCHESTRATOR),
            "OPENWORK_OPENCODE_BIN": str(self.tmp / "opencode"),
            "OPENWORK_CACHE_DIR": str(self.tmp / "cache"),
        }
        self.calls = 0
        self.made_user = False

    def task_env(self, extra: dict | None = None) -> dict:
        """This process's environment without any OPENWORK* variable of its own, then the scenario's
        settings, then EXTRA: what every task and helper process of the scenario runs with."""
        return clean_env(self.settings_env, extra or {})

    def task(
        self,
        *args: str,
        env: dict | None = None,
        check: bool = True,
        timeout: float = TASK_TIMEOUT,
        user: pwd.struct_passwd | None = None,
    ) -> TaskRun:
        """``invoke ARGS`` in its own process with only the scenario's settings (+ ENV), as USER when
        given; its output goes to the log folder. Raises StepFailed when it fails and CHECK."""
        self.calls += 1
        prefix = []
        if user is not None:
            prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
        proc = run_task(*args, env=self.task_env(env), env_file=self.env_file, timeout=timeout, prefix=prefix)
        log = self.log_dir / f"{self.calls:02d}-{'-'.join(a.strip('-') for a in args)[:60]}.log"
        log.write_text(
            f"$ invoke {' '.join(args)}\nexit {proc.returncode} in {proc.seconds:.1f}s\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
        if check and proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
            print(f"--- invoke {' '.join(args)} (exit {proc.returncode}), last lines:\n{tail}", file=sys.stderr)
            last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
            raise StepFailed(f"invoke {' '.join(args)} exited {proc.returncode}: {last}")
        return proc

    def task_json(self, *args: str, **kw) -> tuple[dict, TaskRun]:
        """``invoke ARGS --json`` (as ``task``): what it printed, parsed, and the run."""
        proc = self.task(*args, "--json", **kw)
        try:
            return json.loads(proc.stdout), proc
        except ValueError:
            raise StepFailed(f"invoke {' '.join(args)} --json printed no JSON: {proc.stdout[:200]!r}") from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def folder(self) -> Path:
        """The sandbox's state folder (.state/<name>/ under the scenario's state folder)."""
        return self.tmp / "state" / self.name

    def tokens(self) -> dict:
        return json.loads((self.folder() / "tokens.json").read_text())

    def api(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        host_token: str | None = None,
        body: dict | None = None,
    ):
        """METHOD PATH on the sandbox's server (real HTTP on 127.0.0.1) with these credentials."""
        import requests

        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if host_token:
            headers["X-OpenWork-Host-Token"] = host_token
        return requests.request(
            method,
            self.url + path,
            json=body,
            headers=headers,
            timeout=float(self.settings_env["OPENWORK_REQUEST_TIMEOUT"]),
        )

    def opencode(self, method: str, rest: str, body: dict | None = None):
        """METHOD on opencode of the /workspace workspace, through the server, with the owner token."""
        return self.api(method, f"/w/{WORKSPACE_ID}/opencode{rest}", token=self.tokens()["token"], body=body)

    def docker(self, *args: str, check: bool = True, timeout: float = 900, **kw) -> subprocess.CompletedProcess:
        """The guest's docker CLI; it first waits for the harness's load of the image into the engine."""
        self.engines_copy()
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise StepFailed(f"docker {' '.join(args[:2])} failed: {proc.stderr.strip()[-300:]}")
        return proc

    def engines_copy(self) -> None:
        """Wait for the image in the guest's engine (the harness may still load it); the wait is a figure."""
        waited = wait_for_the_engines_copy()
        if waited >= 0.1:
            self.figures["waited for the image load"] = self.figures.get("waited for the image load", 0.0) + waited

    def local_run_ref(self) -> None:
        """The run's tag in the engine too (the harness loads the image there beside the first steps)."""
        self.docker("tag", self.loaded_image, RUN_REF)

    def keep_logs(self) -> None:
        """Before cleanup's reset deletes them: the microVMs' own logs (runtime, kernel, exec; the
        scenario's and the microVM tests' ones) and opencode's own logs (in each sandbox's data folder:
        HOME=/data/home) into the task log folder, and that folder to MICROVM_HOST_OUT (the harness's
        share: it outlives the guest)."""
        from openwork_sandbox.runtimes.microsandbox.sdk import msb_home

        for folder in sorted((msb_home() / "sandboxes").glob("*/logs")):
            if folder.parent.name.startswith((self.name, "owtest-")):
                shutil.copytree(folder, self.log_dir / "microvm" / folder.parent.name, dirs_exist_ok=True)
        for folder in sorted(self.tmp.rglob(".local/share/opencode/log")):
            where = "-".join(folder.relative_to(self.tmp).parts[:-5])[-120:] or "home"
            shutil.copytree(folder, self.log_dir / "opencode" / where, dirs_exist_ok=True)
        share = harness_share()
        if share:
            shutil.copytree(self.log_dir, share / "e2e-logs", dirs_exist_ok=True)
            note(f"task and microVM logs copied to the harness's share ({share}/e2e-logs)")

    def cleanup(self) -> None:
        """The sandbox reset, the non-root user removed, the temporary folder deleted unless kept."""
        if self.keep:
            self.keep_logs()
        self.task("reset", "--yes", check=False)
        if self.made_user:
            subprocess.run(["userdel", "-r", USER], capture_output=True)
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def figures_line(self) -> str:
        """``figures (RUNTIME): cold up 1.0s, ...``: the scenario's last line."""
        f = self.figures
        parts = [f"{k.replace('_', ' ')} {v:.1f}s" for k, v in f.items()]
        return f"figures ({self.runtime}): " + (", ".join(parts) if parts else "none")
