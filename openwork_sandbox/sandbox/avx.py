"""A CPU without AVX: the pinned orchestrator cannot run there, said in one line.

``openwork serve`` is a Bun executable built for CPUs with AVX; on a CPU without it, it dies at
start, before a line of its own, with Bun's crash report (it contains :data:`NO_AVX_MARK`).
``doctor`` reads the host's flag (``runtimes.probe.host_facts``); ``up`` recognises the crash in
the server log and ends with :func:`no_avx_message` instead of the panic (no retry helps).
"""

from __future__ import annotations

from collections.abc import Iterable

from openwork_sandbox.core.errors import WorkflowError

NO_AVX_MARK = "CPU lacks AVX support"  # Bun's crash report, on a CPU without AVX
FIX = (
    "run it on a host whose CPU has AVX (a microVM gets its host's CPU features; one nested in an emulated "
    "host gets none), or bake an orchestrator built for Bun's baseline target with OPENWORK_ORCHESTRATOR_BIN_PATH"
)


def no_avx_message(orchestrator_version: str) -> str:
    """The one line that names the cause and the fix (``FIX``)."""
    return f"this CPU has no AVX: openwork-orchestrator {orchestrator_version} cannot run here; {FIX}"


def crashed_for_want_of_avx(log_lines: Iterable[str]) -> bool:
    """The server log holds Bun's "no AVX" crash report."""
    return any(NO_AVX_MARK in line for line in log_lines or ())


def raise_if_no_avx(orchestrator_version: str, log_lines: Iterable[str], log_hint: str = "") -> None:
    """The server died of a CPU without AVX: one line naming the cause and the fix (no retry helps)."""
    if crashed_for_want_of_avx(log_lines):
        where = f" (Bun's crash report: {log_hint})" if log_hint else ""
        raise WorkflowError(no_avx_message(orchestrator_version) + where)
