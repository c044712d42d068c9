#!/usr/bin/env python3
"""STAND-IN for opencode that always loses the start race: `serve` drops its first request.

opencode 1.17.11 calls listen() before it attaches its HTTP handler, so a request that connects in
between is read and never answered (one start in seven, at random). This stand-in makes that
certain, for tests: baked into a test image beside the real /usr/local/bin/opencode and named by
OPENWORK_OPENCODE_REAL (the opencode that the image's start gate serves, see openwork_sandbox/image/context/opencode-gate), it

- answers `--version` from the image's record of the baked opencode (OPENWORK_OPENCODE_VERSION), as
  the image's gate does, and passes every other command but `serve` to the real opencode;
- for `serve --hostname H --port P ...` listens on H:P at once, reads the FIRST connection's
  request and never answers it (the connection stays open, as with the real race), and forwards
  every later connection byte for byte to the real opencode, which it starts with the same
  arguments on another port. A later connection made before the real opencode listens is closed
  (as a refused connect would be).

With OPENCODE_STANDIN_GAP_SECONDS=N it drops EVERY connection made in the first N seconds after it
listens, in the same way: the gap between listen() and the handler as it is on a host a hundred
times slower than this one (a nested microVM under emulation), where it lasts far longer than the
real opencode's fraction of a second here.

So it keeps opencode's contract (arguments, port, stdout, environment, exit status) and adds the
race at its worst. Runs on the python test base (python3-minimal).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

REAL = os.environ.get("OPENCODE_STANDIN_REAL", "/usr/local/bin/opencode")
MARK = "[standin-opencode-drops-first-request]"


def _option(args: list[str], name: str, default: str) -> tuple[int, str]:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return i, args[i + 1]
    return -1, default


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve_one(client: socket.socket, host: str, port: int) -> None:
    try:
        upstream = socket.create_connection((host, port), timeout=2)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
    _pipe(upstream, client)


def main() -> int:
    args = sys.argv[1:]
    baked = os.environ.get("OPENWORK_OPENCODE_VERSION", "")
    if args == ["--version"] and REAL == "/usr/local/bin/opencode" and baked[:1].isdigit():
        # as the image's opencode-gate does for the baked opencode: the build checked it reports this,
        # and the orchestrator gives `--version` only 4 s, less than a first opencode run takes on a busy host
        print(baked)
        return 0
    if not args or args[0] != "serve":
        os.execv(REAL, [REAL, *args])
    at, port = _option(args, "--port", "4096")
    _, host = _option(args, "--hostname", "127.0.0.1")
    listener = socket.create_server((host, int(port)))
    probe = socket.create_server((host, 0))
    internal = probe.getsockname()[1]
    probe.close()
    real_args = [a for i, a in enumerate(args) if at < 0 or i not in (at, at + 1)] + ["--port", str(internal)]
    child = subprocess.Popen([REAL, *real_args])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: child.send_signal(s))
    held: list[socket.socket] = []
    gap = float(os.environ.get("OPENCODE_STANDIN_GAP_SECONDS") or 0)
    listening_since = time.monotonic()

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            if not held or time.monotonic() - listening_since < gap:
                held.append(client)  # open, so that the client sees no end either
                # read the request, never answer it (a thread each: a client that sends late holds up no other)
                threading.Thread(target=client.recv, args=(65536,), daemon=True).start()
                if len(held) == 1:
                    print(
                        f"{MARK} read the first request and will never answer it (the start race)"
                        + (f"; nor any other in its first {gap:g} s" if gap else ""),
                        flush=True,
                    )
                continue
            threading.Thread(target=_serve_one, args=(client, host, internal), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return child.wait()


if __name__ == "__main__":
    code = main()
    sys.exit(code if code >= 0 else 128 - code)
