#!/usr/bin/env python3
"""STAND-IN for ``openwork serve`` (the orchestrator 0.18.1), for tests only; never a default.

The real orchestrator is a Bun executable that needs AVX. Inside the nested microVM these tests
boot under emulation (``scripts/microvm-host``) the CPU has no AVX, and the real one dies 3-4 s
after start ("CPU lacks AVX support"). The e2e test image therefore bakes this script as
``/usr/local/bin/openwork`` through the same local-binary override a user would use for their own
build (``OPENWORK_ORCHESTRATOR_BIN_PATH``), so the image's entrypoint, the opencode start gate,
HOME=/data/home and the tokens all run unchanged; only the orchestrator is replaced.

It keeps the orchestrator's contract (``shared/docs/openwork-contract.md``, "What openwork serve
does at start"):

- ``--version`` prints the pinned version (``OPENWORK_STANDIN_ORCHESTRATOR_VERSION``, else
  :data:`VERSION`);
- ``serve`` takes the flags the image's entrypoint passes (``--workspace --remote-access
  --openwork-port --opencode-host --opencode-port --openwork-token --openwork-host-token
  --approval --cors --connect-host --allow-external --sidecar-source --opencode-source
  --openwork-server-bin --opencode-bin``); the tokens come from the flags or, as the entrypoint
  passes them, from ``OPENWORK_TOKEN`` / ``OPENWORK_HOST_TOKEN``;
- it starts ``<opencode-bin> serve --hostname 127.0.0.1 --port P`` with random basic-auth
  credentials (``OPENCODE_SERVER_USERNAME`` / ``OPENCODE_SERVER_PASSWORD``, and
  ``OPENCODE_CONFIG_DIR=$OPENWORK_DATA_DIR/opencode-config``), cwd = the workspace,
  and waits until ``GET /global/health`` answers 200. Unlike the real one (a fixed 10 s window)
  it waits as long as it takes, with a request timeout on every poll, and prints a progress line
  every few seconds (an emulated host needs 20-40 s);
- it then starts ``<openwork-server-bin> --host 0.0.0.0|127.0.0.1 --port <openwork port>
  --workspace <ws> --approval <mode> --cors <origins> --opencode-base-url
  http://127.0.0.1:<opencode port> --opencode-directory <ws>`` with ``OPENWORK_TOKEN``,
  ``OPENWORK_HOST_TOKEN``, ``OPENWORK_OPENCODE_USERNAME``, ``OPENWORK_OPENCODE_PASSWORD`` in its
  environment (plus ``OPENWORK_OPENCODE_BASE_URL``/``_DIRECTORY``, ``OPENWORK_RUN_ID``, as the real
  one passes), waits for ``GET /health``, and verifies it: ``GET /workspaces`` with the client
  token (the workspace at the given path), ``GET /approvals`` with the host token, ``POST /tokens``
  with the host token (an owner token is issued, as the real one does);
- each child's output is printed with a ``[opencode]`` / ``[openwork-server]`` prefix, beside the
  orchestrator's own lines (``Run starting``, ``[opencode] Process spawned``, ``[opencode]
  Healthy``, ``[openwork-server] Healthy``, ``Run ready``);
- SIGTERM/SIGINT go to both children; when either child exits, the other is stopped and the
  orchestrator exits with the child's status.

Not kept: the opencode config file the real one writes into the workspace, sidecar downloads
(the entrypoint passes ``--sidecar-source external``), its TUI and its other subcommands.

It runs under Debian's ``python3-minimal`` (no ``http``, ``json`` or ``urllib.request``): HTTP is
done by hand over ``socket``.
"""

import argparse
import base64
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

VERSION = "0.18.1"  # what the stand-in reports; OPENWORK_STANDIN_ORCHESTRATOR_VERSION overrides it
PROGRESS_EVERY = 5.0  # seconds between "still waiting" lines (the caller restarts a start that goes quiet)
POLL_TIMEOUT = 5.0  # seconds for one health request (the real one has none: its start can hang)
VERIFY_TIMEOUT = 30.0
_rng = random.SystemRandom()
_print_lock = threading.Lock()


def say(line):
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def log(message):
    say("[openwork-orchestrator] %s" % message)


def error(message):
    say("[openwork-orchestrator] ERROR %s" % message)


def random_secret(n=32):
    return "".join(_rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(n))


# --- HTTP by hand (python3-minimal has no http package) ------------------------------------------


def _dechunk(body):
    out, pos = b"", 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            return out
        size = int(body[pos:end].split(b";")[0] or b"0", 16)
        if size == 0:
            return out
        out += body[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


def request(port, method, path, headers=None, body=b"", timeout=POLL_TIMEOUT, host="127.0.0.1"):
    """(status, body bytes) of one HTTP/1.1 request with ``Connection: close``; raises OSError."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        head = [
            "%s %s HTTP/1.1" % (method, path),
            "Host: %s:%d" % (host, port),
            "Connection: close",
            "Content-Length: %d" % len(body),
        ]
        head += ["%s: %s" % item for item in (headers or {}).items()]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    header, _, payload = data.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/\d\.\d (\d{3})", lines[0] if lines else "")
    if not match:
        raise OSError("no HTTP answer")
    if any(re.match(r"(?i)transfer-encoding:\s*chunked", line) for line in lines[1:]):
        payload = _dechunk(payload)
    return int(match.group(1)), payload


def basic_auth(user, password):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


# --- children ------------------------------------------------------------------------------------


class Child:
    def __init__(self, label, argv, env, cwd):
        self.label = label
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        say("[%s] Process spawned (pid %d)" % (label, self.proc.pid))
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for raw in iter(self.proc.stdout.readline, b""):
            say("[%s] %s" % (self.label, raw.decode("utf-8", "replace").rstrip("\r\n")))

    def exited(self):
        return self.proc.poll()

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except OSError:
                pass


class Run:
    def __init__(self):
        self.children = []
        self.stopping = False

    def spawn(self, label, argv, env, cwd):
        child = Child(label, argv, env, cwd)
        self.children.append(child)
        return child

    def dead(self):
        """(label, exit status) of the first child that has exited, else None."""
        for child in self.children:
            code = child.exited()
            if code is not None:
                return child.label, code
        return None

    def shutdown(self, sig=signal.SIGTERM, grace=10.0):
        self.stopping = True
        for child in self.children:
            child.stop(sig)
        deadline = time.monotonic() + grace
        for child in self.children:
            while child.exited() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            child.stop(signal.SIGKILL)


class ChildDied(Exception):
    def __init__(self, label, code):
        super().__init__("%s exited (%s)" % (label, code))
        self.label, self.code = label, code


def wait_healthy(run, label, probe):
    """Poll ``probe()`` (True when healthy) until it is, printing progress; ChildDied when a child exits."""
    say("[%s] Waiting for health" % label)
    started = last_note = time.monotonic()
    delay, last_problem = 0.05, "no answer yet"
    while True:
        gone = run.dead()
        if gone:
            raise ChildDied(*gone)
        try:
            ok, last_problem = probe()
            if ok:
                say("[%s] Healthy (after %.1fs)" % (label, time.monotonic() - started))
                return
        except (OSError, ValueError) as exc:
            last_problem = exc.__class__.__name__
        now = time.monotonic()
        if now - last_note >= PROGRESS_EVERY:
            last_note = now
            say("[%s] Still waiting for health after %.0fs (%s)" % (label, now - started, last_problem))
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def verify_server(port, token, host_token, workspace):
    """The real orchestrator's checks of openwork-server; raises RuntimeError naming the one that failed."""
    status, body = request(port, "GET", "/health", timeout=VERIFY_TIMEOUT)
    if status != 200 or b'"ok":true' not in body.replace(b" ", b""):
        raise RuntimeError("GET /health answered %d" % status)
    status, body = request(port, "GET", "/workspaces", {"Authorization": "Bearer " + token}, timeout=VERIFY_TIMEOUT)
    if status != 200 or ('"path":"%s"' % workspace).encode() not in body.replace(b" ", b""):
        raise RuntimeError("GET /workspaces answered %d without the workspace %s" % (status, workspace))
    status, _ = request(port, "GET", "/approvals", {"X-OpenWork-Host-Token": host_token}, timeout=VERIFY_TIMEOUT)
    if status != 200:
        raise RuntimeError("GET /approvals with the host token answered %d" % status)
    payload = b'{"scope":"owner","label":"openwork-orchestrator"}'
    status, body = request(
        port,
        "POST",
        "/tokens",
        {"X-OpenWork-Host-Token": host_token, "Content-Type": "application/json"},
        payload,
        timeout=VERIFY_TIMEOUT,
    )
    if status not in (200, 201) or b'"token"' not in body:
        raise RuntimeError("POST /tokens with the host token answered %d" % status)


# --- serve ---------------------------------------------------------------------------------------


def serve_parser():
    p = argparse.ArgumentParser(prog="openwork serve (stand-in)")
    p.add_argument("--workspace", default=os.environ.get("OPENWORK_WORKSPACE") or os.getcwd())
    p.add_argument("--remote-access", action="store_true")
    p.add_argument("--openwork-port", type=int, default=int(os.environ.get("OPENWORK_PORT") or 8787))
    p.add_argument("--opencode-host", default="127.0.0.1")
    p.add_argument("--opencode-port", type=int, default=int(os.environ.get("OPENWORK_OPENCODE_PORT") or 4096))
    p.add_argument("--openwork-token", default=None)
    p.add_argument("--openwork-host-token", default=None)
    p.add_argument("--approval", default="manual")
    p.add_argument("--cors", default="*")
    p.add_argument("--connect-host", default="127.0.0.1")
    p.add_argument("--allow-external", action="store_true")
    p.add_argument("--sidecar-source", default="auto")
    p.add_argument("--opencode-source", default="auto")
    p.add_argument("--openwork-server-bin", default="openwork-server")
    p.add_argument("--opencode-bin", default="opencode")
    return p


def serve(argv):
    args, unknown = serve_parser().parse_known_args(argv)
    workspace = os.path.abspath(args.workspace).rstrip("/") or "/"
    token = args.openwork_token or os.environ.get("OPENWORK_TOKEN") or random_secret()
    host_token = args.openwork_host_token or os.environ.get("OPENWORK_HOST_TOKEN") or random_secret()
    oc_user, oc_password = "%x" % _rng.getrandbits(256), random_secret(48)
    run_id = "%08x-%04x-4%03x-%04x-%012x" % (
        _rng.getrandbits(32),
        _rng.getrandbits(16),
        _rng.getrandbits(12),
        0x8000 | _rng.getrandbits(14),
        _rng.getrandbits(48),
    )
    data_dir = os.environ.get("OPENWORK_DATA_DIR") or os.path.join(os.environ.get("HOME") or "/tmp", ".openwork")
    config_dir = os.path.join(data_dir, "opencode-config")
    run = Run()

    def on_signal(signum, _frame):
        log("Received %s, stopping" % signal.Signals(signum).name)
        run.shutdown(signal.SIGTERM)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log("Run starting")
    log(
        "stand-in orchestrator %s: workspace %s, opencode %s:%d, openwork-server port %d%s"
        % (
            os.environ.get("OPENWORK_STANDIN_ORCHESTRATOR_VERSION") or VERSION,
            workspace,
            args.opencode_host,
            args.opencode_port,
            args.openwork_port,
            "; ignored: " + " ".join(unknown) if unknown else "",
        )
    )
    try:
        os.makedirs(config_dir, exist_ok=True)
        common = dict(os.environ, OPENWORK_RUN_ID=run_id, OPENWORK_LOG_FORMAT="pretty")
        env = dict(
            common,
            OPENCODE_SERVER_USERNAME=oc_user,
            OPENCODE_SERVER_PASSWORD=oc_password,
            OPENWORK="1",
            OPENCODE_CLIENT="openwork-orchestrator",
            OPENCODE_CONFIG_DIR=config_dir,
        )
        run.spawn(
            "opencode",
            [
                args.opencode_bin,
                "serve",
                "--hostname",
                args.opencode_host,
                "--port",
                str(args.opencode_port),
                "--cors",
                args.cors,
            ],
            env,
            workspace,
        )
        auth = {"Authorization": basic_auth(oc_user, oc_password)}

        def opencode_ok():
            status, body = request(args.opencode_port, "GET", "/global/health", auth, host=args.opencode_host)
            return status == 200 and b"healthy" in body, "HTTP %d" % status

        wait_healthy(run, "opencode", opencode_ok)
        base_url = "http://%s:%d" % (args.opencode_host, args.opencode_port)
        server_env = dict(
            common,
            OPENWORK_TOKEN=token,
            OPENWORK_HOST_TOKEN=host_token,
            OPENWORK_OPENCODE_USERNAME=oc_user,
            OPENWORK_OPENCODE_PASSWORD=oc_password,
            OPENWORK_OPENCODE_BASE_URL=base_url,
            OPENWORK_OPENCODE_DIRECTORY=workspace,
        )
        run.spawn(
            "openwork-server",
            [
                args.openwork_server_bin,
                "--host",
                "0.0.0.0" if args.remote_access else "127.0.0.1",
                "--port",
                str(args.openwork_port),
                "--workspace",
                workspace,
                "--approval",
                args.approval,
                "--approval-timeout",
                "30000",
                "--cors",
                args.cors,
                "--opencode-base-url",
                base_url,
                "--opencode-directory",
                workspace,
                "--log-format",
                "pretty",
            ],
            server_env,
            workspace,
        )

        def server_ok():
            status, _ = request(args.openwork_port, "GET", "/health")
            return status == 200, "HTTP %d" % status

        wait_healthy(run, "openwork-server", server_ok)
        verify_server(args.openwork_port, token, host_token, workspace)
        log("Verified openwork-server (health, workspaces, approvals, tokens)")
        for line in (
            "OpenWork orchestrator running (stand-in)",
            "Run ID: " + run_id,
            "Workspace: " + workspace,
            "OpenCode: " + base_url,
            "OpenWork server: http://%s:%d" % (args.connect_host, args.openwork_port),
            "OpenWork owner token: issued (withheld from stdout)",
        ):
            say(line)
        while True:
            gone = run.dead()
            if gone:
                raise ChildDied(*gone)
            time.sleep(0.2)
    except ChildDied as exc:
        error("Run failed: %s exited with status %s" % (exc.label, exc.code))
        run.shutdown()
        return exc.code if isinstance(exc.code, int) and exc.code > 0 else 1
    except (RuntimeError, OSError) as exc:
        error("Run failed: %s" % exc)
        run.shutdown()
        return 1


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--version"], ["-v"]):
        print(os.environ.get("OPENWORK_STANDIN_ORCHESTRATOR_VERSION") or VERSION)
        return 0
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    sys.stderr.write("openwork (stand-in): only `serve` and `--version` are kept\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
