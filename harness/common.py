"""What the harnesses share: the checkout they run from, the stand-ins they bake or boot, how they
speak, the environment a task runs with, and a scratch registry.

Every harness module runs as ``python -m harness.<module>`` from the checkout's root (its
``scripts/<name>`` entry point changes into it so that ``harness`` is importable); its ``__main__``
first calls :func:`back_to_caller_cwd`, so relative paths in its arguments and environment keep
meaning what they meant in the folder it was called from.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: tasks.py, openwork_sandbox/, scripts/, tests/

# the test stand-ins the harnesses bake into images or boot (one constant each: they are tests' files)
STANDINS = ROOT / "tests" / "standins"
STANDIN_SERVER = STANDINS / "standin_openwork_server.py"
STANDIN_ORCHESTRATOR = STANDINS / "standin_openwork_orchestrator.py"
LEGACY_ENTRYPOINT = STANDINS / "legacy_entrypoint.sh"

LOCAL_REGISTRY = "127.0.0.1:5000"  # the registry `scripts/services start` runs, here and in the emulated host
EXIT_EMULATION_FAULT = 75  # the emulated host (or the microVM nested in it) failed: .ci/run warns, not fails
CALLER_CWD_VAR = "HARNESS_CALLER_CWD"  # set by the scripts/ entry points: the folder they were called from
INVOKE = (sys.executable, "-m", "invoke")  # a task as a user runs it (from ROOT: this checkout's tasks.py)
SETTINGS_PREFIX = "OPENWORK"  # the settings' variables; a task of a harness gets only the harness's own


def back_to_caller_cwd() -> None:
    """Change back into the folder the ``scripts/`` entry point was called from (``HARNESS_CALLER_CWD``,
    removed from the environment so no child sees it); nothing when run without an entry point."""
    caller = os.environ.pop(CALLER_CWD_VAR, None)
    if caller:
        os.chdir(caller)


def teller(name: str) -> Callable[[str], None]:
    """A function printing ``NAME: line`` to stderr at once: a harness's progress and problems (its
    results go to stdout)."""

    def say(line: str) -> None:
        print(f"{name}: {line}", file=sys.stderr, flush=True)

    return say


def task_env(*settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any ``OPENWORK*`` variable, then each of SETTINGS in turn:
    what a task run by a harness sees, whatever the caller's shell had set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIX)}
    for layer in settings:
        env.update(layer)
    return env


@dataclass(frozen=True)
class TaskRun:
    """One finished task: its exit code, its output and its wall-clock seconds (Python's start included)."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_task(
    *args: str,
    env: Mapping[str, str],
    env_file: Path | None = None,
    timeout: float | None = None,
    prefix: Sequence[str] = (),
) -> TaskRun:
    """``invoke ARGS [--env-file ENV_FILE]`` as a user runs it: its own process, from ROOT, with exactly
    ENV, PREFIX (e.g. a ``setpriv``) before it, output captured. Raises subprocess.TimeoutExpired past
    TIMEOUT seconds; a failed task is a TaskRun like any other."""
    argv = [*prefix, *INVOKE, *args, *(["--env-file", str(env_file)] if env_file else [])]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=timeout)
    return TaskRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def empty_env_file(folder: Path) -> Path:
    """FOLDER/empty.env, empty and readable by every user: the ``--env-file`` that keeps a checkout's
    own ``.env`` out of a harness's tasks."""
    path = folder / "empty.env"
    path.write_text("")
    os.chmod(path, 0o644)
    return path


def docker_image_id(ref: str, timeout: float = 60) -> str | None:
    """The local Docker engine's id (``sha256:…``) of image REF, or None when it has no such image."""
    proc = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True, timeout=timeout
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


@contextlib.contextmanager
def scratch_registry(folder: Path, log: Path | None = None) -> Iterator[str]:
    """An empty ``docker-registry`` on a free loopback port, its storage in FOLDER/data and its config
    in FOLDER/registry.yml, for the block: yields its address (``127.0.0.1:PORT``) once ``/v2/``
    answers, stops it afterwards. Its output goes to LOG (appended), else nowhere. Raises
    RuntimeError when it does not answer within about 10 s."""
    from openwork_sandbox.net.ports import free_port

    addr = f"127.0.0.1:{free_port()}"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "registry.yml"
    config.write_text(
        f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {folder}/data}}\n"
        f"http: {{addr: {addr}}}\n"
    )
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log, "ab")) if log else subprocess.DEVNULL
        server = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            _wait_for_registry(addr)
            yield addr
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_for_registry(addr: str) -> None:
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a loopback address: never a proxy
    delay, deadline = 0.05, time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with no_proxy.open(f"http://{addr}/v2/", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise RuntimeError(f"the scratch registry on {addr} did not answer")
