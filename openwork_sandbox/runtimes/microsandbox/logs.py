"""The microVM's logs: msb's own log files, and the SDK's reads of the server job's and system logs.

- msb keeps each sandbox's ``runtime.log`` and ``kernel.log`` in :func:`sandbox_log_dir`. They say
  why a microVM did not boot or stopped, which the SDK's errors do not: :func:`kvm_lines`,
  :func:`vm_fault_lines`, :func:`boot_fault` and :func:`boot_failure_message` read them. A missing
  or unreadable file counts as an empty one.
- :func:`follow_job` and :func:`follow_system` turn the SDK's async log reads into synchronous line
  iterators for ``logs --follow``, each SDK call awaited on the runtime's one loop (an SDK method
  called outside a running loop raises).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

from openwork_sandbox.runtimes.choice import DOCKER_HINT
from openwork_sandbox.runtimes.microsandbox.jobs import LIVE_JOB
from openwork_sandbox.runtimes.microsandbox.sdk import SdkLoop, msb_home

BOOT_FAILURE_MARK = "before agent relay became available"  # the SDK's words for a VM that died while booting
KVM_LINE = re.compile(r"KVM_EXIT_\w+|KVM[^\n]*(error|fail)|/dev/kvm", re.IGNORECASE)
VM_FAULT_LINE = re.compile(r"Kernel panic|BUG:|Oops|stack guard page|KVM_EXIT_\w+", re.IGNORECASE)
FOLLOW_POLL_S = 0.5  # `logs --follow`: a look at the server job's log this often while it adds nothing


def sandbox_log_dir(name: str) -> Path:
    """The folder of msb's logs of the sandbox ``name`` (``runtime.log``, ``kernel.log``, ``exec.log``)."""
    return msb_home() / "sandboxes" / name / "logs"


def _log_lines(name: str, pattern: re.Pattern) -> list[str]:
    """The lines of the sandbox's runtime and kernel logs that match ``pattern``, stripped, in order."""
    found = []
    for log in ("runtime.log", "kernel.log"):
        try:
            text = (sandbox_log_dir(name) / log).read_text(errors="replace")
        except OSError:
            continue
        found += [line.strip() for line in text.splitlines() if pattern.search(line)]
    return found


def kvm_lines(name: str) -> list[str]:
    """KVM complaints in the sandbox's runtime and kernel logs (empty when there are none)."""
    return _log_lines(name, KVM_LINE)


def vm_fault_lines(name: str) -> list[str]:
    """Lines of the sandbox's runtime and kernel logs that say why the microVM itself stopped (its
    guest kernel panicked, KVM shut it down): empty when they say nothing of the kind."""
    return _log_lines(name, re.compile(f"{VM_FAULT_LINE.pattern}|{KVM_LINE.pattern}", re.IGNORECASE))


def stopped_phrase(name: str) -> str:
    """ "the microVM itself stopped (<its logs' last fault line>)", or "(its logs say no more)"."""
    fault = vm_fault_lines(name)
    return f"the microVM itself stopped ({fault[-1] if fault else 'its logs say no more'})"


def boot_fault(name: str, error: str) -> str | None:
    """The fault line when the microVM's CPU stopped it while it booted (``KVM_EXIT_SHUTDOWN``, a guest
    triple fault, or a guest kernel panic) on a host where microVMs do boot: a fault of that one boot,
    worth one more try. None for any other ``error`` or log, and on a host that cannot run microVMs."""
    from openwork_sandbox.runtimes.probe import microvm_support

    if BOOT_FAILURE_MARK not in error and "KVM_EXIT" not in error:
        return None
    fault = [line for line in vm_fault_lines(name) if "KVM_EXIT_SHUTDOWN" in line or "panic" in line.lower()]
    return fault[-1] if fault and microvm_support()[0] else None


def boot_failure_message(name: str, error: str) -> str | None:
    """One line for a microVM that did not boot: on a host that cannot run microVMs, that and why;
    on one that can, that it stopped twice (``create`` boots once more after a :func:`boot_fault`).
    Both name the runtime log and the Docker runtime as the way out. None when neither ``error`` nor
    the logs speak of a failed boot."""
    kvm = kvm_lines(name)
    if BOOT_FAILURE_MARK not in error and not kvm:
        return None
    from openwork_sandbox.runtimes.probe import microvm_support

    ok, why = microvm_support()
    cause = kvm[-1].split(": ", 1)[-1] if kvm else "the VM process exited before its agent answered"
    where = f"see {sandbox_log_dir(name) / 'runtime.log'}; {DOCKER_HINT}"
    if ok:
        return f"the microVM stopped while booting, twice: {cause}; {where}"
    return f"this host cannot run microVMs: {cause}; {why}; {where}"


def entry_lines(entries) -> list[str]:
    """The text lines of the SDK's job log entries (their ``data`` as bytes; undecodable bytes replaced)."""
    out: list[str] = []
    for entry in entries:
        data = entry.data if isinstance(entry.data, bytes) else bytes(entry.data)
        out += data.decode(errors="replace").splitlines()
    return out


def system_lines(entries) -> list[str]:
    """The text of the SDK's system log entries, one line each."""
    return [e.text().rstrip("\n") for e in entries]


def follow_job(sdk: SdkLoop, job, name: str, tail: int | None, since_ms: int | None) -> Iterator[str]:
    """The server ``job``'s log lines (the last ``tail``, since ``since_ms``), then what it adds, until
    the job ends: ``job.logs`` from the last entry's cursor every FOLLOW_POLL_S while nothing comes.
    A line is never given twice. The SDK's errors are raised as ``sdk.call``'s WorkflowError naming
    the sandbox ``name``."""
    seen: set[str] = set()  # a resume point that comes again is not printed twice

    async def look(cursor: str | None):
        if cursor is None:
            return await job.logs(tail=tail, since=since_ms)
        return await job.logs(from_cursor=cursor)

    async def running() -> bool:
        return (await job.inspect()).state in LIVE_JOB

    cursor = None
    while True:
        fresh = [e for e in sdk.call(look(cursor), f"read the logs of {name}") if e.cursor not in seen]
        yield from entry_lines(fresh)
        if fresh:
            seen.update(e.cursor for e in fresh)
            cursor = fresh[-1].cursor
            continue
        if not sdk.call(running(), f"look at the server job of {name}"):
            return
        time.sleep(FOLLOW_POLL_S)


def follow_system(sdk: SdkLoop, stream) -> Iterator[str]:
    """The lines of the SDK's async log ``stream`` (opened on ``sdk``'s loop), each next entry awaited
    on that loop; ends when the stream does. An entry without text gives one empty line."""

    async def next_entry():
        return await stream.__anext__()

    while True:
        try:
            entry = sdk.run(next_entry())
        except StopAsyncIteration:
            return
        yield from entry.text().rstrip("\n").splitlines() or [""]
