"""The task boundary: where an expected failure becomes a one-line message and an exit code.

Every task in ``tasks.py`` runs its helper inside :func:`task_boundary` (above :mod:`errors`, which
only defines the exceptions, and :mod:`gha`, which writes the ``::error`` annotation).
"""

from __future__ import annotations

import contextlib
import sys

from . import gha
from .errors import EXIT_INTERRUPTED, WorkflowError


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
