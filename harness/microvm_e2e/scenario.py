#!/usr/bin/env python3
"""Every task on the real microsandbox runtime, end to end: one line per step, figures last.

    scripts/microvm-e2e            the scenario (inside the emulated host: scripts/microvm-host e2e)
    scripts/microvm-e2e --avx      the real orchestrator in a microVM without AVX: `up` must end with
                                   the one line naming it (OPENWORK_MICROSANDBOX_IMAGE: the real image)

It runs from a checkout, inside `scripts/microvm-host` (an emulated host where microVMs boot), with
``OPENWORK_MICROSANDBOX_IMAGE`` naming the e2e image that `scripts/microvm-image` built (loaded into
the local Docker engine by the harness) and ``OPENWORK_MICROSANDBOX_RUNTIME=microsandbox`` (the
default here; ``docker`` runs the same scenario against the Docker runtime, e.g. on a development
machine). Every step is an `invoke` task run as a user would, in its own process, with only the
settings below; the scenario checks what the task printed (``--json``) and what the sandbox serves
(real HTTP on 127.0.0.1):

 1. doctor        picks the runtime under test
 2. seed          the image under the run's tag in the registry on 127.0.0.1:5000: the harness put it
                  in that registry's storage, so the tag is made through the registry's API; elsewhere
                  plain `docker push` (push-image, after a build-image, the slowest step here, comes at 13)
 3. up            cold: create, the server job from the image's own entrypoint, the published port,
                  the /workspace and /data binds (a file put in the workspace on the host is read
                  back through opencode), HOME=/data/home (opencode's database lands in the data
                  folder), the start gate's line in the log
 4. smoke         every check passes
 5. status        running, healthy, settings current
 6. logs          the server log; `logs --follow` (stopped after its first lines with Ctrl+C);
                  `logs --system`
 7. down, up      stopped, then started again (the server relaunched)
 8. up --replace  a session and an issued token made through the API survive the new sandbox
 9. migration     a sandbox made the old way (HOME unset: state in the guest's /root, the legacy
                  entrypoint) is replaced by `up`, its state copied out through the runtime first
10. non-root      `up` run by a user who is not root: every file under .state/<name>/ is theirs
11. reset         the sandbox and its state folder are gone
12. smoke --ephemeral
13. prepare, push-image, up of the pushed digest: build-image offline in this host, push-image (the
                  v2 proof and the SDK's pull proof), and `up` boots the digest it recorded
14. microvm tests the suite's tests that need a booted microVM (pytest -m microvm), on this host
15. docker pair   (microsandbox runs only) cold up, warm up and smoke with the Docker runtime in the same host
The last line gives the figures. Exit 0 only when every step held; the output of a task that
failed goes to stderr (its last lines) and to the run's log folder (printed at the end).

Under the harness the guest's engine loads the image while the first steps run (they need only the
registry's copy); a step that runs docker waits for that load (MICROVM_HOST_IMAGE_LOAD_RC).
Knobs: OPENWORK_HEALTH_TIMEOUT (default here 900 s: an emulated host is 14-25x slower),
OPENWORK_REQUEST_TIMEOUT (default here 120 s; also the scenario's own requests), OPENWORK_MICROSANDBOX_CPUS
(2); the emulated host gives these three its own (scripts/microvm-host: 900 s, 300 s, one vCPU),
MICROVM_E2E_KEEP=1 keeps the temporary folder, MICROVM_E2E_STEPS=STEP,... (as --only) runs only those
steps, in the scenario's order (scripts/microvm-host passes MICROVM_E2E_* into the emulated host).
A failed run copies its task logs and the microVMs' own logs (runtime, kernel, exec) to
$MICROVM_HOST_OUT/e2e-logs when the harness gives that folder.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REGISTRY = "127.0.0.1:5000"
RUN_REF = f"{REGISTRY}/openwork-microsandbox-e2e:run"
LEGACY_REF = f"{REGISTRY}/openwork-microsandbox-e2e:legacy"
BASE_REF = "openwork-e2e-base:from-image"
WORKSPACE_ID = "ws_c52ddf65534b"  # ws_ + sha256("/workspace")[:12]
USER = "owe2e"
TASK_TIMEOUT = 2400.0
# the microVM tests boot five microVMs in all (about 8 minutes each with one vCPU under emulation):
# they ran past 2400 s there beside another emulated host
TESTS_TIMEOUT = 3 * TASK_TIMEOUT


EXIT_EMULATION_FAULT = 75  # scripts/microvm-host's "emulated host failed": the same meaning


def emulation_fault(failure: str) -> str | None:
    """Inside the emulated host (MICROVM_HOST_GUEST=1): the fault line when a step failed because the
    nested microVM itself stopped with a fault of its (emulated) CPU — a guest triple fault
    (KVM_EXIT_SHUTDOWN), a guest kernel panic — after `up` had booted it again; else None. Where
    microVMs boot on real KVM such a stop is a failure like any other."""
    from openwork_sandbox.runtimes.microsandbox.logs import VM_FAULT_LINE

    if os.environ.get("MICROVM_HOST_GUEST") != "1":
        return None
    for mark, end in (("the microVM itself stopped (", ")"), ("the microVM stopped while booting, twice: ", ";")):
        if mark in failure:
            said = failure.split(mark, 1)[1]
            said = said[:said.find(end)] if end in said else said
            return said.strip() if VM_FAULT_LINE.search(said) else None
    return None


class StepFailed(Exception):
    pass


LOAD_WAIT_SECONDS = 1800.0


def wait_for_the_engines_copy() -> float:
    """Seconds waited for the harness's `docker load` of the image, which runs beside the first steps
    when the harness says so (MICROVM_HOST_IMAGE_LOAD_RC: the file its exit code lands in); 0 otherwise."""
    rc_file = os.environ.get("MICROVM_HOST_IMAGE_LOAD_RC")
    if not rc_file:
        return 0.0
    began, said = time.monotonic(), False
    while not Path(rc_file).exists():
        if not said:
            note("waiting for the harness's docker load of the image")
            said = True
        if time.monotonic() - began > LOAD_WAIT_SECONDS:
            raise StepFailed(f"the harness's docker load of the image did not end within {LOAD_WAIT_SECONDS:.0f}s")
        time.sleep(1)
    if Path(rc_file).read_text().strip() != "0":
        why = Path(rc_file).with_name("image-load.why")
        raise StepFailed(why.read_text().strip() if why.exists() else "the harness's docker load of the image failed")
    return time.monotonic() - began


def repo_and_tag(ref: str) -> tuple[str, str]:
    """("openwork-microsandbox-e2e", "run") for 127.0.0.1:5000/openwork-microsandbox-e2e:run."""
    repo, _, tag = ref[len(REGISTRY) + 1:].rpartition(":")
    return repo, tag


def registry_manifest(ref: str):
    """REGISTRY's answer for ref's manifest (a GET with every manifest type accepted), or None when
    ref is not in REGISTRY or it has no such manifest."""
    import requests

    if not ref.startswith(REGISTRY + "/") or "@" in ref:
        return None
    repo, tag = repo_and_tag(ref)
    accept = ", ".join(("application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.list.v2+json",
                        "application/vnd.docker.distribution.manifest.v2+json"))
    resp = requests.get(f"http://{REGISTRY}/v2/{repo}/manifests/{tag}", headers={"Accept": accept}, timeout=60)
    return resp if resp.status_code == 200 else None


def seeded_manifest(ref: str):
    """ref's manifest where the harness put ref into this (fresh) guest's registry, from the very image
    it loads (it then loads it beside the first steps: MICROVM_HOST_IMAGE_LOAD_RC); else None: a
    registry elsewhere may hold an older build under the same tag."""
    return registry_manifest(ref) if os.environ.get("MICROVM_HOST_IMAGE_LOAD_RC") else None


class StepSkipped(Exception):
    """A step this host cannot run (said why); only where the runtime under test is Docker."""


def say(line: str) -> None:
    print(line, flush=True)


def harness_share() -> Path | None:
    """The folder scripts/microvm-host gives a command for files to read afterwards (it outlives the
    guest, and the outer machine can read it while the command runs); None outside the harness."""
    out = os.environ.get("MICROVM_HOST_OUT")
    return Path(out) if out else None


def note(line: str) -> None:
    print(f"microvm-e2e: {line}", file=sys.stderr, flush=True)


class Scenario:
    def __init__(self, runtime: str, image: str, keep: bool):
        self.runtime, self.loaded_image = runtime, image
        # on the disk, not /tmp: a tmpfs of Linux < 6.6 (the emulated host's) keeps no xattrs, which microVM binds need
        self.tmp = Path(tempfile.mkdtemp(prefix="owe2e-", dir="/var/tmp"))
        os.chmod(self.tmp, 0o755)
        self.keep = keep
        self.log_dir = self.tmp / "logs"
        self.log_dir.mkdir()
        self.name = f"e2e-{secrets.token_hex(3)}"
        from openwork_sandbox.net.ports import free_port

        self.port = free_port()
        self.figures: dict[str, float] = {}
        self.env_file = self.tmp / "empty.env"
        self.env_file.write_text("")
        os.chmod(self.env_file, 0o644)
        self.settings_env = {
            "OPENWORK_STATE_DIR": str(self.tmp / "state"),
            "OPENWORK_MICROSANDBOX_NAME": self.name,
            "OPENWORK_MICROSANDBOX_PORT": str(self.port),
            "OPENWORK_MICROSANDBOX_RUNTIME": runtime,
            "OPENWORK_MICROSANDBOX_IMAGE": RUN_REF,
            # in the emulated host these three come from the harness (scripts/microvm-host's
            # EMULATED_HOST_SETTINGS: 900 s, 300 s, one vCPU); elsewhere a slow host's deadline, a
            # request timeout for opencode's first request after a start (it makes its instance for the
            # workspace), and the product's vCPUs
            "OPENWORK_HEALTH_TIMEOUT": os.environ.get("OPENWORK_HEALTH_TIMEOUT") or "900",
            "OPENWORK_REQUEST_TIMEOUT": os.environ.get("OPENWORK_REQUEST_TIMEOUT") or "120",
            "OPENWORK_MICROSANDBOX_CPUS": os.environ.get("OPENWORK_MICROSANDBOX_CPUS") or "2",
            "OPENWORK_OFFLINE": "true",
            "OPENWORK_BASE_IMAGE": BASE_REF,
            "OPENWORK_SERVER_BIN": str(ROOT / "tests" / "standin_openwork_server.py"),
            "OPENWORK_ORCHESTRATOR_BIN_PATH": str(ROOT / "tests" / "standin_openwork_orchestrator.py"),
            "OPENWORK_OPENCODE_BIN": str(self.tmp / "opencode"),
            "OPENWORK_CACHE_DIR": str(self.tmp / "cache"),
        }
        self.calls = 0
        self.made_user = False

    # --- running tasks ----------------------------------------------------------------------
    def task_env(self, extra: dict | None = None) -> dict:
        """This process's environment without any OPENWORK_ setting of its own, then the scenario's
        settings, then EXTRA: what every task and helper process of the scenario runs with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENWORK_")}
        return {**env, **self.settings_env, **(extra or {})}

    def task(self, *args: str, env: dict | None = None, check: bool = True, timeout: float = TASK_TIMEOUT,
             user: pwd.struct_passwd | None = None) -> subprocess.CompletedProcess:
        """``invoke ARGS`` in its own process with only the scenario's settings (+ ``env``)."""
        self.calls += 1
        clean = self.task_env(env)
        argv = [sys.executable, "-m", "invoke", *args, "--env-file", str(self.env_file)]
        if user is not None:
            argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--", *argv]
        started = time.monotonic()
        proc = subprocess.run(argv, cwd=ROOT, env=clean, capture_output=True, text=True, timeout=timeout)
        proc.seconds = time.monotonic() - started  # type: ignore[attr-defined]
        log = self.log_dir / f"{self.calls:02d}-{'-'.join(a.strip('-') for a in args)[:60]}.log"
        log.write_text(f"$ invoke {' '.join(args)}\nexit {proc.returncode} in {proc.seconds:.1f}s\n"
                       f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        if check and proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
            print(f"--- invoke {' '.join(args)} (exit {proc.returncode}), last lines:\n{tail}", file=sys.stderr)
            last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
            raise StepFailed(f"invoke {' '.join(args)} exited {proc.returncode}: {last}")
        return proc

    def task_json(self, *args: str, **kw) -> tuple[dict, subprocess.CompletedProcess]:
        proc = self.task(*args, "--json", **kw)
        try:
            return json.loads(proc.stdout), proc
        except ValueError:
            raise StepFailed(f"invoke {' '.join(args)} --json printed no JSON: {proc.stdout[:200]!r}") from None

    # --- facts about the sandbox -------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def folder(self) -> Path:
        return self.tmp / "state" / self.name

    def tokens(self) -> dict:
        return json.loads((self.folder() / "tokens.json").read_text())

    def api(self, method: str, path: str, *, token: str | None = None, host_token: str | None = None,
            body: dict | None = None):
        import requests

        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if host_token:
            headers["X-OpenWork-Host-Token"] = host_token
        return requests.request(method, self.url + path, json=body, headers=headers,
                                timeout=float(self.settings_env["OPENWORK_REQUEST_TIMEOUT"]))

    def opencode(self, method: str, rest: str, body: dict | None = None):
        return self.api(method, f"/w/{WORKSPACE_ID}/opencode{rest}", token=self.tokens()["token"], body=body)

    def docker(self, *args: str, check: bool = True, timeout: float = 900, **kw) -> subprocess.CompletedProcess:
        """The guest's docker CLI; it first waits for the harness's load of the image into the engine."""
        self.engines_copy()
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise StepFailed(f"docker {' '.join(args[:2])} failed: {proc.stderr.strip()[-300:]}")
        return proc

    # --- steps ---------------------------------------------------------------------------------
    def prepare(self) -> str:
        """What build-image needs offline, taken out of the loaded e2e image: its base (every file
        but the baked programs) and the real opencode it holds."""
        box = f"owe2e-extract-{secrets.token_hex(3)}"
        self.docker("create", "--name", box, self.loaded_image)
        try:
            self.docker("cp", f"{box}:/usr/local/bin/opencode", str(self.tmp / "opencode"))
            export = subprocess.Popen(["docker", "export", box], stdout=subprocess.PIPE)
            strip = subprocess.Popen(["tar", "--delete", "usr/local/bin/opencode", "usr/local/bin/openwork",
                                      "usr/local/bin/openwork-server", "usr/local/bin/opencode-gate",
                                      "usr/local/bin/microsandbox-entrypoint.sh", "usr/local/lib/openwork"],
                                     stdin=export.stdout, stdout=subprocess.PIPE)
            export.stdout.close()
            imported = subprocess.run(["docker", "import", "-", BASE_REF], stdin=strip.stdout, capture_output=True,
                                      text=True, timeout=900)
            strip.wait(), export.wait()
            if imported.returncode != 0:
                raise StepFailed(f"docker import of the base failed: {imported.stderr.strip()[-300:]}")
        finally:
            self.docker("rm", "-f", box, check=False)
        size = int(self.docker("image", "inspect", "--format", "{{.Size}}", BASE_REF).stdout.strip())
        return f"base {BASE_REF} ({size / 1e6:.0f} MB) and opencode from {self.loaded_image}"

    def seed(self) -> str:
        """The image under the run's tag in the registry (push-image comes later): where the harness
        seeded the registry with it (seeded_manifest), in the run's repository, the run's tag is made
        through the registry's own API; else plain docker tag and push."""
        import requests

        served = seeded_manifest(self.loaded_image)
        repo, tag = repo_and_tag(RUN_REF)
        if served is not None and repo_and_tag(self.loaded_image)[0] == repo:
            put = requests.put(f"http://{REGISTRY}/v2/{repo}/manifests/{tag}", data=served.content, timeout=60,
                               headers={"Content-Type": served.headers["Content-Type"]})
            if put.status_code != 201:
                raise StepFailed(f"the registry refused the manifest for {RUN_REF}: HTTP {put.status_code} {put.text[:200]}")
            if registry_manifest(RUN_REF) is None:
                raise StepFailed(f"the registry does not serve {RUN_REF} after the tag was made")
            return f"{RUN_REF} tagged in the registry, which the harness gave {self.loaded_image} ({put.headers.get('Docker-Content-Digest')})"
        self.docker("tag", self.loaded_image, RUN_REF)
        self.docker("push", RUN_REF, timeout=1800)
        return f"{RUN_REF} pushed with docker push"

    def engines_copy(self) -> None:
        """Wait for the image in the guest's engine (the harness may still load it); the wait is a figure."""
        waited = wait_for_the_engines_copy()
        if waited >= 0.1:
            self.figures["waited for the image load"] = self.figures.get("waited for the image load", 0.0) + waited

    def local_run_ref(self) -> None:
        """The run's tag in the engine too (the harness loads the image there beside the first steps)."""
        self.docker("tag", self.loaded_image, RUN_REF)

    def up_pushed(self) -> str:
        """`up` boots the digest push-image recorded (the image built in this host): recreated, smoke passes."""
        result, proc = self.task_json("up")
        smoke, _ = self.task_json("smoke")
        info, _ = self.task_json("status")
        if result["action"] != "created" or not smoke["ok"] or "@sha256:" not in str(info["image"]):
            raise StepFailed(f"up did {result['action']}, smoke ok={smoke['ok']}, image {info['image']}")
        self.task("reset", "--yes")
        return f"created in {proc.seconds:.1f}s from {info['image']}; smoke passed"

    def doctor(self) -> str:
        report, _ = self.task_json("doctor")
        chosen = report["runtime"]["chosen"]
        if chosen != self.runtime or not report["ok"]:
            bad = [c["name"] for c in report["checks"] if not c["ok"]]
            raise StepFailed(f"doctor chose {chosen} (ok={report['ok']}, failing: {bad})")
        auto, _ = self.task_json("doctor", env={"OPENWORK_MICROSANDBOX_RUNTIME": "auto"})
        return f"chose {chosen}; auto picks {auto['runtime']['chosen']} ({auto['runtime']['why']})"

    def push_image(self) -> str:
        result, proc = self.task_json("push-image")
        if not (result["manifest_ok"] and result["blobs_ok"]):
            raise StepFailed(f"push proof failed: {result}")
        if self.runtime == "microsandbox" and not result["msb_pull"]:
            raise StepFailed(f"the microsandbox SDK did not pull what was pushed: {result['msb_pull_detail']}")
        self.figures["push"] = proc.seconds
        return f"{result['pinned']}, {result['layers']} layers; microsandbox pull: {result['msb_pull_detail']}"

    def up_cold(self) -> str:
        workspace = self.tmp / "state" / self.name / "workspace"
        workspace.mkdir(parents=True)
        marker = f"put here by the host {secrets.token_hex(4)}"
        (workspace / "from-host.txt").write_text(marker)
        result, proc = self.task_json("up")
        if result["action"] != "created" or result["runtime"] != self.runtime:
            raise StepFailed(f"up did {result['action']} on {result['runtime']}")
        self.figures["cold_up"] = proc.seconds
        if result["url"] != self.url or result["workspace_id"] != WORKSPACE_ID:
            raise StepFailed(f"up answered {result['url']} / {result['workspace_id']}")
        began = time.monotonic()
        read = self.opencode("GET", "/file/content?path=from-host.txt")
        self.figures["first_opencode_request"] = time.monotonic() - began
        if read.status_code != 200 or marker not in read.text:
            raise StepFailed(f"opencode did not read the workspace bind: {read.status_code} {read.text[:200]}")
        session = self.opencode("POST", "/session", {"title": "bind check"})
        db = self.folder() / "data" / "home" / ".local" / "share" / "opencode" / "opencode.db"
        if session.status_code != 200 or not db.is_file():
            raise StepFailed(f"no opencode database under the data bind ({db}): session {session.status_code}")
        shown = self.task("logs")
        log = shown.stdout + shown.stderr
        if "opencode-gate:" not in log or "[openwork-orchestrator] Run starting" not in log:
            raise StepFailed("the server log lacks the entrypoint's start (Run starting, opencode-gate)")
        return (f"created in {proc.seconds:.1f}s; {self.url} answers; workspace bind read back through opencode; "
                f"opencode.db in the data bind (HOME=/data/home); start gate in the log")

    def smoke(self) -> str:
        report, proc = self.task_json("smoke")
        if not report["ok"] or report["counts"].get("failed") or report["counts"].get("error"):
            raise StepFailed(f"smoke: {report['counts']}")
        self.figures["smoke"] = proc.seconds
        return f"{report['counts'].get('passed')} passed in {report['total_seconds']:.2f}s ({proc.seconds:.1f}s with the task)"

    def status(self) -> str:
        info, _ = self.task_json("status")
        if info["state"] != "running" or not info["healthy"] or info["settings_current"] is not True:
            raise StepFailed(f"status: {info}")
        return f"{info['state']}, healthy, {info['runtime']}, digest {str(info['digest'])[:40]}, uptime {info['uptime_seconds']}s"

    def logs(self) -> str:
        plain = self.task("logs").stdout
        if "OpenWork orchestrator running" not in plain:
            raise StepFailed("invoke logs lacks the orchestrator's start report")
        follow = self._follow_logs()
        system = self.task("logs", "--system").stdout
        if not system.strip():
            raise StepFailed("invoke logs --system printed nothing")
        return (f"{len(plain.splitlines())} lines; --follow streamed {follow} lines and stopped on Ctrl+C; "
                f"--system {len(system.splitlines())} lines")

    def _follow_logs(self) -> int:
        proc = subprocess.Popen([sys.executable, "-m", "invoke", "logs", "--follow", "--env-file", str(self.env_file)],
                                cwd=ROOT, env=self.task_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines, deadline = 0, time.monotonic() + 300
        try:
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                lines += 1
                if "OpenWork orchestrator running" in line:
                    break
            if lines == 0:
                try:
                    code, err = proc.wait(timeout=30), proc.stderr.read()
                except subprocess.TimeoutExpired:
                    code, err = "none yet (still running)", ""
                last = (err.strip().splitlines() or ["no output"])[-1]
                raise StepFailed(f"logs --follow streamed nothing (exit {code}; last line on stderr: {last})")
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        if code != 0:
            raise StepFailed(f"logs --follow ended with exit {code} on Ctrl+C")
        return lines

    def down_up(self) -> str:
        self.task("down")
        info, _ = self.task_json("status", check=False)
        if info["state"] != "stopped":
            raise StepFailed(f"after down: {info['state']}")
        result, proc = self.task_json("up")
        self.figures["warm_up"] = proc.seconds
        if result["action"] not in ("started", "relaunched"):
            raise StepFailed(f"up after down did {result['action']}")
        return f"down: stopped; up: {result['action']} in {proc.seconds:.1f}s"

    def replace(self) -> str:
        tokens = self.tokens()
        created = self.opencode("POST", "/session", {"title": "kept across replace"})
        issued = self.api("POST", "/tokens", host_token=tokens["host_token"], body={"scope": "collaborator",
                                                                                    "label": "e2e"})
        if created.status_code != 200 or issued.status_code not in (200, 201):
            raise StepFailed(f"making a session/token: {created.status_code} {issued.status_code}")
        sid, token = created.json()["id"], issued.json()["token"]
        result, proc = self.task_json("up", "--replace")
        if result["action"] != "recreated":
            raise StepFailed(f"up --replace did {result['action']}")
        again = self.opencode("GET", f"/session/{sid}")
        still = self.api("GET", "/workspaces", token=token)
        if again.status_code != 200 or again.json().get("title") != "kept across replace" or still.status_code != 200:
            raise StepFailed(f"after replace: session {again.status_code}, issued token {still.status_code}")
        return f"recreated in {proc.seconds:.1f}s; session {sid[:14]}… and the issued token still answer"

    def migration(self) -> str:
        """A sandbox as the version before /data/home made it: HOME unset (the legacy entrypoint's
        /root), an old fingerprint; `up` must copy /root's state out through the runtime, verify it,
        and recreate it."""
        ctx = self.tmp / "legacy"
        ctx.mkdir()
        shutil.copy(ROOT / "tests" / "legacy_entrypoint.sh", ctx / "entrypoint.sh")
        (ctx / "Dockerfile").write_text(f"FROM {RUN_REF}\nCOPY entrypoint.sh /usr/local/bin/microsandbox-entrypoint.sh\n")
        self.local_run_ref()
        self.docker("build", "-q", "-t", LEGACY_REF, str(ctx))
        self.docker("push", LEGACY_REF)
        self.task("reset", "--yes")
        script = ROOT / "scripts" / "microvm-e2e"
        old = subprocess.run([sys.executable, str(script), "--start-old-layout", LEGACY_REF], cwd=ROOT,
                             env=self.task_env(), capture_output=True, text=True, timeout=TASK_TIMEOUT)
        (self.log_dir / "old-layout.log").write_text(old.stdout + old.stderr)
        if old.returncode != 0:
            raise StepFailed(f"could not start a sandbox the old way: {(old.stderr.strip().splitlines() or ['?'])[-1]}")
        tokens = self.tokens()
        created = self.opencode("POST", "/session", {"title": "from the old days"})
        issued = self.api("POST", "/tokens", host_token=tokens["host_token"], body={"scope": "owner", "label": "old"})
        if created.status_code != 200 or issued.status_code not in (200, 201):
            raise StepFailed(f"old sandbox: session {created.status_code}, token {issued.status_code}")
        home = self.folder() / "data" / "home"
        if (home / ".local/share/opencode/opencode.db").exists():
            raise StepFailed("the old-layout sandbox wrote into /data/home: it is not the old layout")
        sid, token = created.json()["id"], issued.json()["token"]
        result, proc = self.task_json("up")
        moved = [ln for ln in proc.stderr.splitlines() if "moved the state" in ln]
        if result["action"] != "recreated" or len(moved) != 1:
            raise StepFailed(f"up did {result['action']}; 'moved the state' lines: {moved}")
        again = self.opencode("GET", f"/session/{sid}")
        still = self.api("GET", "/workspaces", token=token)
        if again.status_code != 200 or still.status_code != 200 or not (home / ".migrated.json").is_file():
            raise StepFailed(f"after the migration: session {again.status_code}, token {still.status_code}")
        record = json.loads((home / ".migrated.json").read_text())
        return f"recreated in {proc.seconds:.1f}s, {record['files']} files copied out of /root and verified; session and token kept"

    def nonroot(self) -> str:
        try:
            user = pwd.getpwnam(USER)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True, capture_output=True)
            user = pwd.getpwnam(USER)
            self.made_user = True
        for device in ("/var/run/docker.sock", "/dev/kvm"):
            if os.path.exists(device):
                import grp

                group = grp.getgrgid(os.stat(device).st_gid).gr_name
                if group != "root":
                    subprocess.run(["usermod", "-aG", group, USER], check=True, capture_output=True)
        probe = subprocess.run(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--",
                                sys.executable, "-c", "import invoke, openwork_sandbox"], cwd=ROOT,
                               capture_output=True, text=True, env={**os.environ, "HOME": user.pw_dir})
        if probe.returncode != 0:
            why = f"{USER} cannot run {sys.executable} with this checkout: {(probe.stderr.strip().splitlines() or ['?'])[-1]}"
            if self.runtime == "docker":  # e.g. a development machine whose Python lives under /root
                raise StepSkipped(why + " (tests/test_nonroot_user.py covers Docker with a readable copy)")
            raise StepFailed(why)
        state = self.tmp / "user-state"
        state.mkdir()
        os.chown(state, user.pw_uid, user.pw_gid)
        # microsandbox builds the microVM's root filesystem in MSB_HOME, which needs xattrs: not the tmpfs /tmp
        msb_home = Path(tempfile.mkdtemp(prefix="msbu", dir="/var/tmp"))
        os.chown(msb_home, user.pw_uid, user.pw_gid)
        from openwork_sandbox.net.ports import free_port

        env = {"OPENWORK_STATE_DIR": str(state), "OPENWORK_MICROSANDBOX_NAME": f"{self.name}-u",
               "OPENWORK_MICROSANDBOX_PORT": str(free_port()), "HOME": user.pw_dir, "MSB_HOME": str(msb_home)}
        try:
            self.task("up", env=env, user=user)
            folder = state / env["OPENWORK_MICROSANDBOX_NAME"]
            foreign = [str(p) for p in [folder, *folder.rglob("*")]
                       if p.lstat().st_uid != user.pw_uid or p.lstat().st_gid != user.pw_gid]
            if foreign:
                raise StepFailed(f"{len(foreign)} files under {folder} are not {USER}'s, e.g. {foreign[:3]}")
            count = sum(1 for _ in folder.rglob("*"))
            self.task("reset", "--yes", env=env, user=user)
            if folder.exists():
                raise StepFailed(f"reset left {folder}")
        finally:
            self.task("reset", "--yes", env=env, user=user, check=False)
        return f"{count} files under .state/<name>/ all owned by {USER} (uid {user.pw_uid}); reset without sudo"

    def reset(self) -> str:
        self.task("reset", "--yes")
        info, _ = self.task_json("status", check=False)
        if info["state"] != "absent" or self.folder().exists():
            raise StepFailed(f"after reset: {info['state']}, folder exists: {self.folder().exists()}")
        return "sandbox absent, state folder deleted"

    def ephemeral(self) -> str:
        report, proc = self.task_json("smoke", "--ephemeral")
        if not report["ok"]:
            raise StepFailed(f"smoke --ephemeral: {report['counts']}")
        self.figures["ephemeral"] = proc.seconds
        return f"{report['counts'].get('passed')} passed; timings {report['timings']}"

    def microvm_tests(self) -> str:
        """The suite's tests that need a booted microVM (``pytest -m microvm``; they skip on a host
        without one), with the loaded image as their stack image and this scenario's health deadline."""
        self.engines_copy()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENWORK_")}
        env.update(OPENWORK_TEST_STACK_IMAGE=self.loaded_image,
                   **{k: self.settings_env[k] for k in ("OPENWORK_HEALTH_TIMEOUT", "OPENWORK_REQUEST_TIMEOUT",
                                                        "OPENWORK_MICROSANDBOX_CPUS")})
        started = time.monotonic()
        # pytest's folders on this scenario's disk: the emulated host's /tmp is a tmpfs (Linux 6.1)
        # without the extended attributes microVM binds need (`up` says so, and the tests failed so)
        # its output goes to the log as it comes, so a run cut off by the timeout still says how far it got;
        # under the harness that log is in its share (readable on the outer machine while the tests run)
        log = (harness_share() or self.log_dir) / "pytest-microvm.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            try:
                proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "microvm", "-v", "-rs", "-p",
                                       "no:cacheprovider", "--basetemp", str(self.tmp / "pytest"), "tests"],
                                      cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=TESTS_TIMEOUT)
                returncode = proc.returncode
            except subprocess.TimeoutExpired:
                returncode = None
        lines = log.read_text().strip().splitlines() or ["no output"]
        summary = lines[-1].strip("= ") if returncode is not None else f"cut off after {TESTS_TIMEOUT:.0f} s"
        if returncode != 0 or "skipped" in summary or "passed" not in summary:
            print("\n".join(lines[-30:]), file=sys.stderr)
            raise StepFailed(f"pytest -m microvm: {summary}")
        self.figures["microvm_tests"] = time.monotonic() - started
        return summary

    def docker_pair(self) -> str:
        """The same image on the Docker runtime in the same host: cold up, warm up, smoke."""
        from openwork_sandbox.net.ports import free_port

        env = {"OPENWORK_MICROSANDBOX_RUNTIME": "docker", "OPENWORK_MICROSANDBOX_NAME": f"{self.name}-d",
               "OPENWORK_MICROSANDBOX_PORT": str(free_port())}
        self.local_run_ref()  # its cold up is a create, not a pull, as the microVM's figures are
        try:
            cold = self.task("up", env=env).seconds
            self.task("down", env=env)
            warm = self.task("up", env=env).seconds
            smoke = self.task("smoke", env=env).seconds
        finally:
            self.task("reset", "--yes", env=env, check=False)
        self.figures.update(docker_cold_up=cold, docker_warm_up=warm, docker_smoke=smoke)
        return f"docker: cold up {cold:.1f}s, warm up {warm:.1f}s, smoke {smoke:.1f}s"

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
        if self.keep:
            self.keep_logs()
        self.task("reset", "--yes", check=False)
        if self.made_user:
            subprocess.run(["userdel", "-r", USER], capture_output=True)
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def figures_line(self) -> str:
        f = self.figures
        parts = [f"{k.replace('_', ' ')} {v:.1f}s" for k, v in f.items()]
        return f"figures ({self.runtime}): " + (", ".join(parts) if parts else "none")


def start_old_layout(image: str) -> int:
    """(Helper process of the migration step.) Create the sandbox as the version before /data/home
    did: the same runtime call, without HOME in its environment, with an old fingerprint."""
    import dataclasses

    from openwork_sandbox.state import persist
    from openwork_sandbox.net.health import wait_for_health
    from openwork_sandbox.sandbox.lifecycle import launch_spec
    from openwork_sandbox.runtimes import runtime_for
    from openwork_sandbox.config import load_settings
    from openwork_sandbox.state.store import SandboxState

    settings = load_settings(env_file=os.devnull, root=ROOT)
    state = SandboxState(settings)
    state.ensure()
    token, host_token = state.tokens()
    spec = launch_spec(settings, settings.runtime, token, host_token)
    env = {k: v for k, v in spec.env.items() if k not in persist.guest_env()}
    spec = dataclasses.replace(spec, image=image, env=env, fingerprint="before-data-home")
    rt = runtime_for(settings.runtime, settings)
    rt.create(spec)
    state.save_record(runtime=settings.runtime, image=image, fingerprint="before-data-home", port=settings.port,
                      url=settings.url)
    wait_for_health(settings.url, settings.health_timeout, is_alive=rt.is_alive, describe=rt.describe)
    return 0


def avx_scenario(runtime: str, image: str) -> int:
    """The real orchestrator where the CPU has no AVX: `up` ends with the one line naming it."""
    sc = Scenario(runtime, image, keep=bool(os.environ.get("MICROVM_E2E_KEEP")))
    sc.settings_env["OPENWORK_MICROSANDBOX_IMAGE"] = image
    for key in ("OPENWORK_ORCHESTRATOR_BIN_PATH", "OPENWORK_SERVER_BIN", "OPENWORK_OPENCODE_BIN", "OPENWORK_BASE_IMAGE"):
        sc.settings_env.pop(key)
    started = time.monotonic()
    try:
        if image.startswith(REGISTRY + "/") and seeded_manifest(image) is None:
            sc.docker("push", image)
        proc = sc.task("up", check=False)
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        from openwork_sandbox.sandbox.avx import no_avx_message

        wanted = no_avx_message("0.18.1").split(";")[0]
        ok = proc.returncode == 1 and wanted in last and "panic(" not in proc.stderr
        say(f"{'✓' if ok else '✗'} real orchestrator without AVX ({time.monotonic() - started:.1f}s): "
            f"up exited {proc.returncode}, last line: {last}")
        if not ok:
            print("\n".join(proc.stderr.splitlines()[-30:]), file=sys.stderr)
        return 0 if ok else 1
    finally:
        sc.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--avx", action="store_true", help="the real orchestrator in a sandbox without AVX")
    parser.add_argument("--only", metavar="STEP,STEP", help="run only these steps (e.g. doctor,seed,up,smoke)")
    parser.add_argument("--start-old-layout", metavar="IMAGE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.start_old_layout:
        return start_old_layout(args.start_old_layout)
    runtime = os.environ.get("OPENWORK_MICROSANDBOX_RUNTIME") or "microsandbox"
    image = os.environ.get("OPENWORK_MICROSANDBOX_IMAGE")
    if not image:
        note("set OPENWORK_MICROSANDBOX_IMAGE to the e2e image (scripts/microvm-image prints it)")
        return 2
    if args.avx:
        return avx_scenario(runtime, image)
    sc = Scenario(runtime, image, keep=bool(os.environ.get("MICROVM_E2E_KEEP")))
    # push-image (a build-image first, the slowest step under emulation) goes after the microVM steps,
    # which boot the loaded image pushed with plain `docker push` (seed), so a slow host reaches them
    steps = [("doctor", sc.doctor), ("seed", sc.seed), ("up", sc.up_cold),
             ("smoke", sc.smoke), ("status", sc.status), ("logs", sc.logs), ("down + up", sc.down_up),
             ("up --replace", sc.replace), ("migration", sc.migration), ("non-root user", sc.nonroot),
             ("reset", sc.reset), ("smoke --ephemeral", sc.ephemeral), ("prepare", sc.prepare),
             ("push-image", sc.push_image), ("up of the pushed digest", sc.up_pushed),
             ("microvm tests", sc.microvm_tests)]
    if runtime == "microsandbox":
        steps.append(("docker pair", sc.docker_pair))
    only = args.only or os.environ.get("MICROVM_E2E_STEPS", "").strip()
    if only:
        wanted = {w.strip() for w in only.split(",")}
        unknown = wanted - {label for label, _ in steps}
        if unknown:
            note(f"no such step: {', '.join(sorted(unknown))} (the steps: {', '.join(label for label, _ in steps)})")
            shutil.rmtree(sc.tmp, ignore_errors=True)
            return 2
        steps = [(label, step) for label, step in steps if label in wanted]
    note(f"runtime {runtime}, image {image}, sandbox {sc.name}, logs in {sc.log_dir}")
    failed, faulted = 0, False
    try:
        for label, step in steps:
            if failed:
                say(f"- {label}: skipped (an earlier step failed)")
                continue
            began = time.monotonic()
            try:
                detail = step()
                say(f"✓ {label} ({time.monotonic() - began:.1f}s): {detail}")
            except StepSkipped as exc:
                say(f"- {label}: skipped ({exc})")
            except StepFailed as exc:
                failed += 1
                say(f"✗ {label} ({time.monotonic() - began:.1f}s): {exc}")
                fault = emulation_fault(str(exc))
                if fault:
                    say(f"  (an emulation fault: {fault})")
                    faulted = True
            except Exception as exc:  # noqa: BLE001 - a step that broke is a failed step, with its traceback
                import traceback

                traceback.print_exc()
                failed += 1
                say(f"✗ {label} ({time.monotonic() - began:.1f}s): {exc.__class__.__name__}: {exc}")
    finally:
        if failed:
            sc.keep = True
            note(f"kept {sc.tmp} (task logs in {sc.log_dir})")
        sc.cleanup()
        say(sc.figures_line())
    if faulted:
        say(f"the scenario stopped at an emulation fault, not a failure of the project (exit {EXIT_EMULATION_FAULT})")
        return EXIT_EMULATION_FAULT
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
