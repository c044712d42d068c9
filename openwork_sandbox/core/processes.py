"""The one place that runs external programs: docker, npm, git, tar, ss, Docker's credential helpers,
qemu-user, the programs a build checks, and this package's own child processes. No other module
imports ``subprocess`` or starts a program (an import-linter contract in ``pyproject.toml`` and
``test_processes.py`` hold it).

Every call follows the same rules:

- **Timeout.** ``run`` and ``docker`` stop a program after 600 s unless the caller names another
  timeout; a stream (``stream_lines``, ``stream_bytes``) runs as long as the caller reads, unless it
  names one (``docker logs --follow`` has no end). A program past its timeout is stopped, and that is
  a :class:`CommandTimeout`: ``<command> did not finish within <N>s``.
- **Missing program.** A program that is not installed is a :class:`ProgramMissing`:
  ``<program> is not installed: <how to get it>``; one that cannot be started for another reason
  (not executable) is ``cannot run <program> (<reason>)``.
- **Failure.** With ``check`` (the default) a non-zero exit is a ``WorkflowError``:
  ``<command> failed (exit N): <its last line on stderr>`` (on either stream, for ``stream_lines``).
  With ``check=False`` the caller reads ``returncode`` and words the failure itself.
- Each error is a ``WorkflowError``: one line, no traceback. ``<command>`` is the first three words
  of the argv (``docker pull REF``). A caller that knows the way out (which setting, which host) may
  catch one of these and say it in its own words.
- **Progress.** Nothing here prints, but ``progress=``: while that program runs,
  :func:`console.heartbeat` prints ``… <progress> (Ns)`` whenever the log was silent for
  ``console.PLAIN_EVERY`` seconds (the console's rule: a line at least every 10 s off a TTY).
- **Stopping.** A stream's program runs in a process group of its own; closing the stream, its
  timeout, Ctrl+C or SIGTERM (taken as Ctrl+C, ``core.interrupts``) stop the whole group (SIGTERM,
  SIGKILL after ``STOP_GRACE``), so nothing it started is left running; Ctrl+C and SIGTERM are held
  off while it stops.
- Secrets go to a program on its stdin (``input=``), never on its command line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from openwork_sandbox.core import console, interrupts
from openwork_sandbox.core.errors import UnreachableError, WorkflowError

DEFAULT_TIMEOUT = 600.0
DOCKER_START = "run scripts/services start (or start Docker Desktop)"  # the way out when the engine does not answer
# what the docker client says when no engine answers, and when this user may not use its socket (old and new wording)
_ENGINE_DOWN = re.compile(r"Cannot connect to the Docker (daemon|API)|Is the docker daemon running", re.IGNORECASE)
_SOCKET_DENIED = re.compile(
    r"permission denied while trying to connect to the Docker (?:daemon socket|API) at (\S+)", re.IGNORECASE
)
STOP_GRACE = 5.0  # seconds a stopped stream's process group has to exit after SIGTERM before SIGKILL
INSTALL_HINTS = {
    "docker": "install Docker (Debian: scripts/services start installs docker.io), or start Docker Desktop",
    "msb": "pip install microsandbox (it brings the msb runtime)",
    "skopeo": "Debian: apt-get install skopeo",
    "npm": "install Node.js and npm",
}


class CommandTimeout(WorkflowError):
    """A program was stopped because it ran past its timeout."""


class ProgramMissing(WorkflowError):
    """The program to run is not installed (not on ``PATH``, or no such file)."""


@dataclasses.dataclass(frozen=True)
class Result:
    """A finished program: its exit code and what it wrote (``str``, or ``bytes`` with ``text=False``)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: Any
    stderr: Any


def which(program: str) -> str | None:
    """The path ``program`` would run from, or None when it is not installed."""
    return shutil.which(program)


def last_line(output: str | bytes | None) -> str:
    """The last non-blank line of a program's output, stripped; ``(no output)`` when there is none."""
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    lines = [ln.strip() for ln in (output or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _command(argv: Sequence[str]) -> str:
    return " ".join(argv[:3])


def _timed_out(argv: Sequence[str], timeout: float | None) -> CommandTimeout:
    return CommandTimeout(f"{_command(argv)} did not finish within {timeout:g}s")


def _failed(argv: Sequence[str], returncode: int, output: str | bytes | None) -> WorkflowError:
    return WorkflowError(f"{_command(argv)} failed (exit {returncode}): {last_line(output)}")


def _not_started(argv: Sequence[str], exc: OSError) -> WorkflowError:
    """A program that could not be started, as one line: a missing one says how to get it."""
    program = argv[0]
    if isinstance(exc, FileNotFoundError) and exc.filename in (None, program):
        return ProgramMissing(f"{program} is not installed: {INSTALL_HINTS.get(program, 'install it')}")
    where = f": {exc.filename}" if exc.filename not in (None, program) else ""
    return WorkflowError(f"cannot run {program} ({exc.strerror or exc}{where})")


def _progress(what: str | None):
    return console.heartbeat(what) if what else contextlib.nullcontext()


def run(
    argv: Sequence[str],
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    input: str | bytes | None = None,
    stdin: Any = None,
    check: bool = True,
    text: bool = True,
    env: dict | None = None,
    cwd: str | Path | None = None,
    progress: str | None = None,
) -> Result:
    """Run ``argv`` to its end and capture what it writes. ``input`` is written to its stdin (or
    ``stdin`` is a file to read from, such as another program's stdout); ``env`` replaces the
    environment (and its ``PATH`` finds the program). Errors per the module's rules."""
    argv = list(argv)
    with _progress(progress):
        try:
            proc = subprocess.run(
                argv,
                input=input,
                stdin=stdin,
                capture_output=True,
                timeout=timeout,
                text=text,
                env=env,
                cwd=cwd,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise _timed_out(argv, timeout) from None
        except OSError as exc:
            raise _not_started(argv, exc) from None
    if check and proc.returncode != 0:
        raise _failed(argv, proc.returncode, proc.stderr)
    return Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def docker(
    *args: str, input: str | None = None, timeout: float | None = DEFAULT_TIMEOUT, check: bool = True, text: bool = True
) -> Result:
    """``docker ARGS``, as :func:`run`; with ``check``, an engine that does not answer is an
    ``UnreachableError`` that says how to start it, and a socket this user may not use a
    ``WorkflowError`` that says how to get access (:func:`docker_socket_denied`)."""
    proc = run(["docker", *args], input=input, timeout=timeout, check=False, text=text)
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else (proc.stderr or "")
        denied = docker_socket_denied(err)
        if denied:
            raise WorkflowError(denied)
        if _ENGINE_DOWN.search(err):
            raise UnreachableError(f"the Docker engine does not answer: {DOCKER_START}")
        raise _failed(["docker", *args], proc.returncode, err)
    return proc


def docker_socket_denied(stderr: str) -> str | None:
    """The one line for a docker client this user may not connect with (its socket said permission
    denied, whichever socket ``DOCKER_HOST`` or the context names), with the way out; None for any
    other output. The socket's group is read from the socket itself (``docker`` when unknown)."""
    found = _SOCKET_DENIED.search(stderr or "")
    if not found:
        return None
    address = found.group(1).rstrip(":")
    group = "docker"
    if address.startswith("unix://"):
        import grp
        import os

        try:
            group = grp.getgrgid(os.stat(address[len("unix://") :]).st_gid).gr_name
        except (OSError, KeyError):
            pass
    return (
        f"this user cannot use the Docker socket {address} (permission denied): add the user to the socket's group "
        f"{group} (sudo usermod -aG {group} $USER, then log in again), or use a rootless engine (DOCKER_HOST or "
        "docker context use)"
    )


def credential_helper(helper: str, server: str, *, timeout: float) -> Result:
    """``docker-credential-<helper> get`` as Docker runs it: the server address on stdin, the helper
    protocol's JSON on stdout. Never checked: the caller reads "credentials not found" itself."""
    return run([f"docker-credential-{helper}", "get"], input=server, timeout=timeout, check=False)


def qemu_user(qemu: str, root: Path, argv: Sequence[str], *, env: dict, timeout: float) -> Result:
    """``argv`` (a program of another architecture) under qemu-user's ``qemu``, with ``root`` as the
    root its dynamic loader and libraries are found under (``-L``); only ``env`` as its environment."""
    return run([qemu, "-L", str(root), *argv], env=env, timeout=timeout, check=False)


def python_module(module: str, *, input: str, env: dict, timeout: float) -> Result:
    """``python -m <module>`` with this interpreter, ``input`` on its stdin; never checked."""
    return run([sys.executable, "-m", module], input=input, env=env, timeout=timeout, check=False)


_KILL = getattr(signal, "SIGKILL", signal.SIGTERM)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to ``proc``'s process group (it leads one: ``start_new_session``); to ``proc``
    alone where there are no process groups; nothing when the group is gone."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, sig)
        else:  # pragma: no cover - not POSIX
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and what it started in its group: SIGTERM, SIGKILL to the group after
    ``STOP_GRACE`` (or to what is left of it once ``proc`` ended); Ctrl+C and SIGTERM wait meanwhile."""
    with interrupts.no_interrupts():
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc, _KILL)
        proc.wait()


def _deadline(proc: subprocess.Popen, timeout: float | None) -> tuple[threading.Event, threading.Timer | None]:
    """A timer that stops ``proc``'s group (SIGTERM) once ``timeout`` seconds passed; the event says it did."""
    expired = threading.Event()
    if not timeout:
        return expired, None

    def expire() -> None:
        expired.set()
        _signal_group(proc, signal.SIGTERM)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    return expired, timer


def stream_lines(argv: Sequence[str], *, env: dict | None = None, timeout: float | None = None) -> Iterator[str]:
    """Yield a program's output lines (stdout and stderr merged, without the newline) as they come.

    Closing the generator (or Ctrl+C in the caller) stops the program and its process group (the
    module's rule; a caller that may be interrupted between lines closes it, ``contextlib.closing``,
    so the program is stopped before its ``except`` runs). After the output, a non-zero
    exit that was not caused by closing raises the module's one-line error (its last line is the
    last line the program wrote); a program still running after ``timeout`` seconds is stopped,
    silent or not, and that is a :class:`CommandTimeout`.
    """
    argv = list(argv)
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
            bufsize=1,
            start_new_session=True,  # its own process group: stopped whole, and Ctrl+C reaches it through us
        )
    except OSError as exc:
        raise _not_started(argv, exc) from None
    expired, timer = _deadline(proc, timeout)
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
            _stop_group(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    if expired.is_set():
        raise _timed_out(argv, timeout)
    if finished and proc.wait() != 0:
        raise _failed(argv, proc.returncode, last)


class ByteStream:
    """A running program's stdout as a binary pipe (``stdout``); once the ``with`` block of
    :func:`stream_bytes` has ended, its ``returncode`` and ``stderr`` (bytes)."""

    def __init__(self, stdout) -> None:
        self.stdout = stdout
        self.returncode: int | None = None
        self.stderr = b""


@contextlib.contextmanager
def stream_bytes(
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    finish_timeout: float | None = None,
    check: bool = True,
    progress: str | None = None,
) -> Iterator[ByteStream]:
    """Run ``argv`` with its stdout a binary pipe the ``with`` block reads as it comes (a tar stream
    into ``tarfile``, or another program's ``stdin``).

    When the block ends, the rest of stdout is read and dropped and the program waited for, at most
    ``finish_timeout`` seconds; its ``returncode`` and ``stderr`` are then set. When the block raises,
    the program is killed first (the rest of a large stream is not read) and the block's exception
    goes on. ``timeout`` bounds the whole run. Errors per the module's rules, after the block.
    """
    argv = list(argv)
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True
        )
    except OSError as exc:
        raise _not_started(argv, exc) from None
    expired, timer = _deadline(proc, timeout)
    stream = ByteStream(proc.stdout)
    try:
        with _progress(progress):
            yield stream
    except BaseException:
        _signal_group(proc, _KILL)
        _finish(proc, stream, None)
        if expired.is_set():
            raise _timed_out(argv, timeout) from None
        raise
    finally:
        if timer is not None:
            timer.cancel()
    if not _finish(proc, stream, finish_timeout):
        raise _timed_out(argv, finish_timeout)
    if expired.is_set():
        raise _timed_out(argv, timeout)
    if check and stream.returncode != 0:
        raise _failed(argv, stream.returncode or 0, stream.stderr)


def _finish(proc: subprocess.Popen, stream: ByteStream, timeout: float | None) -> bool:
    """Drain and reap ``proc`` into ``stream``; False when it was still running after ``timeout`` (then killed)."""
    try:
        stream.stderr = proc.communicate(timeout=timeout)[1] or b""
        done = True
    except subprocess.TimeoutExpired:
        _signal_group(proc, _KILL)
        stream.stderr = proc.communicate()[1] or b""
        done = False
    stream.returncode = proc.returncode
    return done
