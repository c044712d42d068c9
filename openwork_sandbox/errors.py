"""Exceptions that end a task cleanly: one message, one exit code, no traceback.

Helpers raise these; ``tasks.py`` turns them into ``invoke.exceptions.Exit`` at the task boundary
(see :func:`task_boundary`).
"""

from __future__ import annotations

import contextlib
import sys

EXIT_FAILED = 1  # a check or an operation failed
EXIT_BAD_SETTINGS = 2  # bad settings or usage
EXIT_UNREACHABLE = 3  # nothing listening where we were told to look
EXIT_INTERRUPTED = 130  # Ctrl+C


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


@contextlib.contextmanager
def task_boundary(task: str = "openwork-sandbox"):
    """Turn expected failures into ``invoke.exceptions.Exit`` (message on stderr, exit code).

    Ctrl+C ends with 130 and no traceback. Anything else is a bug and keeps its traceback.
    Under GitHub Actions a failure ends with ``::error title=<task>::<reason>``; a task that ends
    with a bare non-zero ``Exit`` gives its reason as the Exit's ``reason`` attribute.
    """
    from invoke.exceptions import Exit

    from . import gha

    try:
        yield
    except WorkflowError as exc:
        if gha.active():  # the message first, as always; then the annotation, last
            print(exc.message, file=sys.stderr, flush=True)
            gha.error(task, exc.message)
            raise Exit(code=exc.exit_code) from None
        raise Exit(exc.message, code=exc.exit_code) from None
    except Exit as exc:
        if exc.code and gha.active():
            if exc.message:
                print(exc.message, file=sys.stderr, flush=True)
            gha.error(task, exc.message or getattr(exc, "reason", None) or f"{task} failed (exit {exc.code})")
            raise Exit(code=exc.code) from None
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        gha.error(task, "interrupted")
        raise Exit(code=EXIT_INTERRUPTED) from None
    except Exception as exc:  # a bug: keep the traceback, but let CI name it too
        gha.error(task, f"unexpected {exc.__class__.__name__}: {exc}")
        raise
