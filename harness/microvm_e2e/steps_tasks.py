"""The steps that run the tasks on one sandbox as a user would: doctor, a cold `up` (binds, HOME,
the start gate), smoke, the boundary (the agent's shell driven with the client token), status,
logs, down and up, `up --replace`, reset, `smoke --ephemeral`. Each
takes the Scenario, returns its one-line detail and raises StepFailed when it does not hold."""

from __future__ import annotations

import secrets
import signal
import subprocess
import time

from harness.common import INVOKE, ROOT
from harness.microvm_e2e.outcome import StepFailed
from harness.microvm_e2e.scenario import WORKSPACE_ID, Scenario


def doctor(sc: Scenario) -> str:
    """doctor picks the runtime under test, every check passing; and what `auto` picks."""
    report, _ = sc.task_json("doctor")
    chosen = report["runtime"]["chosen"]
    if chosen != sc.runtime or not report["ok"]:
        bad = [c["name"] for c in report["checks"] if not c["ok"]]
        raise StepFailed(f"doctor chose {chosen} (ok={report['ok']}, failing: {bad})")
    auto, _ = sc.task_json("doctor", env={"OPENWORK_MICROSANDBOX_RUNTIME": "auto"})
    return f"chose {chosen}; auto picks {auto['runtime']['chosen']} ({auto['runtime']['why']})"


def up_cold(sc: Scenario) -> str:
    """A cold `up` creates the sandbox: its URL, the workspace bind read back through opencode,
    opencode's database under the data bind (HOME=/data/home), the start gate's line in the log."""
    workspace = sc.tmp / "state" / sc.name / "workspace"
    workspace.mkdir(parents=True)
    marker = f"put here by the host {secrets.token_hex(4)}"
    (workspace / "from-host.txt").write_text(marker)
    result, proc = sc.task_json("up")
    if result["action"] != "created" or result["runtime"] != sc.runtime:
        raise StepFailed(f"up did {result['action']} on {result['runtime']}")
    sc.figures["cold_up"] = proc.seconds
    if result["url"] != sc.url or result["workspace_id"] != WORKSPACE_ID:
        raise StepFailed(f"up answered {result['url']} / {result['workspace_id']}")
    began = time.monotonic()
    read = sc.opencode("GET", "/file/content?path=from-host.txt")
    sc.figures["first_opencode_request"] = time.monotonic() - began
    if read.status_code != 200 or marker not in read.text:
        raise StepFailed(f"opencode did not read the workspace bind: {read.status_code} {read.text[:200]}")
    session = sc.opencode("POST", "/session", {"title": "bind check"})
    db = sc.folder() / "data" / "home" / ".local" / "share" / "opencode" / "opencode.db"
    if session.status_code != 200 or not db.is_file():
        raise StepFailed(f"no opencode database under the data bind ({db}): session {session.status_code}")
    shown = sc.task("logs")
    log = shown.stdout + shown.stderr
    if "opencode-gate:" not in log or "[openwork-orchestrator] Run starting" not in log:
        raise StepFailed("the server log lacks the entrypoint's start (Run starting, opencode-gate)")
    return (
        f"created in {proc.seconds:.1f}s; {sc.url} answers; workspace bind read back through opencode; "
        f"opencode.db in the data bind (HOME=/data/home); start gate in the log"
    )


def smoke(sc: Scenario) -> str:
    """Every smoke check passes."""
    report, proc = sc.task_json("smoke")
    if not report["ok"] or report["counts"].get("failed") or report["counts"].get("error"):
        raise StepFailed(f"smoke: {report['counts']}")
    sc.figures["smoke"] = proc.seconds
    return (
        f"{report['counts'].get('passed')} passed in {report['total_seconds']:.2f}s ({proc.seconds:.1f}s with the task)"
    )


# What the agent's shell is asked, as an attacker holding the client token would (issue 28's findings)
BOUNDARY_PROBES = (
    "env",
    "id; grep -E '^(CapPrm|CapEff|CapAmb|NoNewPrivs)' /proc/self/status",
    "cat /srv/openwork/store/tokens.json /srv/openwork/secrets/openwork-token /srv/openwork/secrets/openwork-host-token",
    "cat /data/home/.config/openwork/tokens.json",
    "for f in /proc/[0-9]*/environ; do cat $f; echo; done",
)


def boundary(sc: Scenario) -> str:
    """Through the agent's shell (``POST .../session/<sid>/shell``, the real opencode running it),
    driven with the client token: no token in its environment, the server's files or any process's
    ``/proc``; the agent holds no capability and cannot gain one."""
    session = sc.opencode("POST", "/session", {"title": "boundary"})
    if session.status_code != 200:
        raise StepFailed(f"no session for the agent's shell: {session.status_code} {session.text[:200]}")
    sid = session.json()["id"]
    for command in BOUNDARY_PROBES:
        ran = sc.opencode("POST", f"/session/{sid}/shell", {"agent": "build", "command": command})
        if ran.status_code != 200:
            raise StepFailed(f"the agent's shell answered {ran.status_code} to `{command[:40]}`: {ran.text[:200]}")
    messages = sc.opencode("GET", f"/session/{sid}/message").json()
    shown = "\n".join(
        str((p.get("state") or {}).get("output") or ((p.get("state") or {}).get("metadata") or {}).get("output") or "")
        for m in messages
        for p in m.get("parts", [])
    )
    if "HOME=/data/home" not in shown:
        raise StepFailed(f"the agent's shell printed no environment: {shown[:300]!r}")
    tokens = sc.tokens()
    leaked = [name for name in ("token", "host_token") if tokens[name] in shown]
    if leaked:
        raise StepFailed(f"the agent's shell showed the {' and the '.join(leaked)}")
    caps = dict(line.split(":", 1) for line in shown.splitlines() if line.startswith(("Cap", "NoNewPrivs")))
    if any(v.strip() != "0000000000000000" for k, v in caps.items() if k.startswith("Cap")) or len(caps) != 4:
        raise StepFailed(f"the agent holds capabilities: {caps}")
    if caps["NoNewPrivs"].strip() != "1":
        raise StepFailed("the agent may gain privileges (NoNewPrivs 0)")
    uid = next((w for w in shown.split() if w.startswith("uid=")), "uid=?")
    return f"the agent ({uid}, no capabilities) reached no token: environment, token files, store, /proc"


def status(sc: Scenario) -> str:
    """status: running, healthy, its settings current."""
    info, _ = sc.task_json("status")
    if info["state"] != "running" or not info["healthy"] or info["settings_current"] is not True:
        raise StepFailed(f"status: {info}")
    return f"{info['state']}, healthy, {info['runtime']}, digest {str(info['digest'])[:40]}, uptime {info['uptime_seconds']}s"


def logs(sc: Scenario) -> str:
    """logs shows the server's log; `logs --follow` streams and stops on Ctrl+C; `logs --system`."""
    plain = sc.task("logs").stdout
    if "OpenWork orchestrator running" not in plain:
        raise StepFailed("invoke logs lacks the orchestrator's start report")
    follow = _follow_logs(sc)
    system = sc.task("logs", "--system").stdout
    if not system.strip():
        raise StepFailed("invoke logs --system printed nothing")
    return (
        f"{len(plain.splitlines())} lines; --follow streamed {follow} lines and stopped on Ctrl+C; "
        f"--system {len(system.splitlines())} lines"
    )


def _follow_logs(sc: Scenario) -> int:
    """Lines `logs --follow` streamed until the orchestrator's start line, then stopped with SIGINT."""
    proc = subprocess.Popen(
        [*INVOKE, "logs", "--follow", "--env-file", str(sc.env_file)],
        cwd=ROOT,
        env=sc.task_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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


def down_up(sc: Scenario) -> str:
    """down stops the sandbox; up starts it again."""
    sc.task("down")
    info, _ = sc.task_json("status", check=False)
    if info["state"] != "stopped":
        raise StepFailed(f"after down: {info['state']}")
    result, proc = sc.task_json("up")
    sc.figures["warm_up"] = proc.seconds
    if result["action"] not in ("started", "relaunched"):
        raise StepFailed(f"up after down did {result['action']}")
    return f"down: stopped; up: {result['action']} in {proc.seconds:.1f}s"


def replace(sc: Scenario) -> str:
    """A session and an issued token made through the API survive `up --replace`."""
    tokens = sc.tokens()
    created = sc.opencode("POST", "/session", {"title": "kept across replace"})
    issued = sc.api("POST", "/tokens", host_token=tokens["host_token"], body={"scope": "collaborator", "label": "e2e"})
    if created.status_code != 200 or issued.status_code not in (200, 201):
        raise StepFailed(f"making a session/token: {created.status_code} {issued.status_code}")
    sid, token = created.json()["id"], issued.json()["token"]
    result, proc = sc.task_json("up", "--replace")
    if result["action"] != "recreated":
        raise StepFailed(f"up --replace did {result['action']}")
    again = sc.opencode("GET", f"/session/{sid}")
    still = sc.api("GET", "/workspaces", token=token)
    if again.status_code != 200 or again.json().get("title") != "kept across replace" or still.status_code != 200:
        raise StepFailed(f"after replace: session {again.status_code}, issued token {still.status_code}")
    return f"recreated in {proc.seconds:.1f}s; session {sid[:14]}… and the issued token still answer"


def reset(sc: Scenario) -> str:
    """reset leaves no sandbox and no state folder."""
    sc.task("reset", "--yes")
    info, _ = sc.task_json("status", check=False)
    if info["state"] != "absent" or sc.folder().exists():
        raise StepFailed(f"after reset: {info['state']}, folder exists: {sc.folder().exists()}")
    return "sandbox absent, state folder deleted"


def ephemeral(sc: Scenario) -> str:
    """`smoke --ephemeral` passes end to end."""
    report, proc = sc.task_json("smoke", "--ephemeral")
    if not report["ok"]:
        raise StepFailed(f"smoke --ephemeral: {report['counts']}")
    sc.figures["ephemeral"] = proc.seconds
    return f"{report['counts'].get('passed')} passed; timings {report['timings']}"
