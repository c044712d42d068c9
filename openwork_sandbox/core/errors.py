"""Exceptions that end a task cleanly: one message, one exit code, no traceback.

Helpers raise these; ``tasks.py`` turns them into ``invoke.exceptions.Exit`` at the task boundary
(:func:`openwork_sandbox.core.boundary.task_boundary`).
"""

from __future__ import annotations

EXIT_FAILED = 1  # a check or an operation failed
EXIT_BAD_SETTINGS = 2  # bad settings or usage
EXIT_UNREACHABLE = 3  # nothing listening where we were told to look
EXIT_INTERRUPTED = 130  # Ctrl+C, and SIGTERM where a task takes it as Ctrl+C (core.interrupts)


class WorkflowError(Exception):
    """An expected failure: the message is the whole story for the user."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class SettingsError(WorkflowError):
    """One or more settings are bad; each problem is one line of the message."""

    exit_code = EXIT_BAD_SETTINGS

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class UnreachableError(WorkflowError):
    """Nothing answered where the settings point (no engine, no registry, no server)."""

    exit_code = EXIT_UNREACHABLE


class Interrupted(WorkflowError):
    """Ctrl+C or SIGTERM ended a task that stopped what it had started: the message says what was
    stopped and what was left as it was (exit 130, as Ctrl+C)."""

    exit_code = EXIT_INTERRUPTED
