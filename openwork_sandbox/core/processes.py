"""Where external commands are run (docker, msb, skopeo, npm). Nothing here prints.

Every failure becomes a :class:`WorkflowError` whose message names the command and its last
line of stderr; a missing program says how to get it.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Sequence

from openwork_sandbox.core.errors import UnreachableError, WorkflowError

INSTALL_HINTS = {
    "docker": "install Docker (Debian: scripts/services start installs docker.io), or start Docker Desktop",
    "msb": "pip install microsandbox (it brings the msb runtime)",
    "skopeo": "Debian: apt-get install skopeo",
    "npm": "install Node.js and npm",
}


class CommandTimeout(WorkflowError):
    """A command was stopped because it ran past its timeout."""


def which(program: str) -> str | None:
    return shutil.which(program)


def run(
    argv: Sequence[str],
    *,
    input: str | bytes | None = None,
    timeout: float | None = 600,
    check: bool = True,
    text: bool = True,
    env: dict | None = None,
    cwd: str | None = None,
) -> subprocess.CompletedProcess:
    """Run a command, capture its output; with ``check`` a failure raises a one-line WorkflowError."""
    program = argv[0]
    if which(program) is None:
        raise WorkflowError(f"{program} is not installed: {INSTALL_HINTS.get(program, 'install it')}")
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, timeout=timeout, text=text, env=env, cwd=cwd
        )
    except subprocess.TimeoutExpired:
        raise WorkflowError(f"{' '.join(argv[:3])} did not finish within {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        raise WorkflowError(f"{' '.join(argv[:3])} failed (exit {proc.returncode}): {last_line(proc.stderr)}")
    return proc


def last_line(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    lines = [ln.strip() for ln in (output or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def docker(*args: str, input: str | None = None, timeout: float | None = 600, check: bool = True) -> subprocess.CompletedProcess:
    """``docker ARGS``; an engine that does not answer is an UnreachableError."""
    proc = run(["docker", *args], input=input, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        err = proc.stderr or ""
        if "Cannot connect to the Docker daemon" in err or "Is the docker daemon running" in err:
            raise UnreachableError("the Docker engine does not answer: run scripts/services start (or start Docker Desktop)")
        raise WorkflowError(f"docker {' '.join(args[:2])} failed (exit {proc.returncode}): {last_line(err)}")
    return proc


def stream_lines(argv: Sequence[str], *, env: dict | None = None, timeout: float | None = None):
    """Yield a command's output lines (stdout and stderr merged) as they come.

    Closing the generator (or Ctrl+C in the caller) stops the command; a non-zero exit that was
    not caused by us raises a one-line WorkflowError after the output. With ``timeout`` a command
    still running after that many seconds is stopped, silent or not, and that is the error.
    """
    import threading

    program = argv[0]
    if which(program) is None:
        raise WorkflowError(f"{program} is not installed: {INSTALL_HINTS.get(program, 'install it')}")
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", env=env, bufsize=1)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.terminate()

    timer = threading.Timer(timeout, expire) if timeout else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    last = ""
    finished = False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            last = line.strip() or last
            yield line.rstrip("\n")
        finished = True
    finally:
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    if expired.is_set():
        raise CommandTimeout(f"{' '.join(argv[:3])} did not finish within {timeout:g}s")
    if finished and proc.wait() != 0:
        raise WorkflowError(f"{' '.join(argv[:3])} failed (exit {proc.returncode}): {last or '(no output)'}")
