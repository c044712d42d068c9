"""The task boundary: where an expected failure becomes a one-line message and an exit code.

Every task in ``tasks.py`` runs its helper inside :func:`task_boundary`. A task process that loaded a
native library which must not meet interpreter finalization ends with ``os._exit`` and the task's
exit code (:func:`skip_interpreter_finalization`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys

from openwork_sandbox.core import gha
from openwork_sandbox.core.errors import EXIT_INTERRUPTED, WorkflowError

# --- ending a task process without the interpreter's finalization ------------------------------------
# A native library whose threads call into Python (the microsandbox SDK's) must not meet interpreter
# finalization: such a thread aborts the process (SIGABRT) after the task's output. Once a runtime has
# loaded one, the process ends after the tasks with os._exit(the last task's exit code), stdout and
# stderr flushed; only in a task program (invoke, this package's console program), never in a host such
# as pytest, whose exit code is not a task's.
_finalize = {"skip": False, "code": 0, "registered": False}
TASK_PROGRAMS = ("invoke", "inv", "openwork-sandbox", "openwork_sandbox")


def _in_task_program() -> bool:
    """The main program is invoke (``invoke``, ``python -m invoke``) or this package's console program."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = spec.name.split(".")[0] if spec is not None else os.path.basename(sys.argv[0] if sys.argv else "")
    return name in TASK_PROGRAMS


def skip_interpreter_finalization() -> None:
    """Called by a runtime whose native library must not meet the interpreter's finalization: the task
    process then ends with ``os._exit`` (see the comment above)."""
    _finalize["skip"] = True


def _exit_now() -> None:
    """The atexit handler: flush stdout and stderr, then ``os._exit`` with the last task's code."""
    if _finalize["skip"]:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(_finalize["code"])


def _ended(code: int) -> None:
    """A task ended with ``code`` (the process's exit code unless a later task ends otherwise)."""
    _finalize["code"] = code
    if _finalize["skip"] and not _finalize["registered"] and _in_task_program():
        atexit.register(_exit_now)  # registered last, so it runs first of the atexit handlers
        _finalize["registered"] = True


@contextlib.contextmanager
def task_boundary(task: str = "openwork-sandbox"):
    """Turn expected failures into ``invoke.exceptions.Exit`` (message on stderr, exit code).

    Ctrl+C ends with 130 and no traceback. Anything else is a bug and keeps its traceback.
    Under GitHub Actions a failure ends with ``::error title=<task>::<reason>``; a task that ends
    with a bare non-zero ``Exit`` gives its reason as the Exit's ``reason`` attribute.
    """
    from invoke.exceptions import Exit

    try:
        yield
        _ended(0)
    except WorkflowError as exc:
        _ended(exc.exit_code)
        if gha.active():  # the message first, as always; then the annotation, last
            print(exc.message, file=sys.stderr, flush=True)
            gha.error(task, exc.message)
            raise Exit(code=exc.exit_code) from None
        raise Exit(exc.message, code=exc.exit_code) from None
    except Exit as exc:
        _ended(exc.code or 0)
        if exc.code and gha.active():
            if exc.message:
                print(exc.message, file=sys.stderr, flush=True)
            gha.error(task, exc.message or getattr(exc, "reason", None) or f"{task} failed (exit {exc.code})")
            raise Exit(code=exc.code) from None
        raise
    except KeyboardInterrupt:
        _ended(EXIT_INTERRUPTED)
        print("interrupted", file=sys.stderr)
        gha.error(task, "interrupted")
        raise Exit(code=EXIT_INTERRUPTED) from None
    except Exception as exc:  # a bug: keep the traceback, but let CI name it too
        _ended(1)
        gha.error(task, f"unexpected {exc.__class__.__name__}: {exc}")
        raise
