"""Running the microsandbox SDK's coroutines from synchronous code, and msb's own folder.

The SDK is async and its handles and streams belong to the loop that made them, so a series of
calls runs on one :class:`SdkLoop`. Every loop is made by :func:`sdk_loop`. The SDK itself is
imported inside the functions that need it (``invoke --list`` never loads it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from openwork_sandbox.core.boundary import skip_interpreter_finalization
from openwork_sandbox.core.errors import WorkflowError

T = TypeVar("T")


def msb_home() -> Path:
    """microsandbox's own state folder: ``$MSB_HOME`` (its variable, not a setting of this project),
    else ``~/.microsandbox``."""
    return Path(os.environ.get("MSB_HOME") or Path.home() / ".microsandbox")


def sdk_loop() -> asyncio.AbstractEventLoop:
    """A new event loop for the SDK's coroutines. The task process that makes it ends without the
    interpreter's finalization, which the SDK's threads must not meet (see ``core.boundary``)."""
    skip_interpreter_finalization()
    return asyncio.new_event_loop()


def sdk_error(exc: Exception, what: str) -> WorkflowError:
    """An SDK error as one line: "microsandbox could not <what>: <the SDK's words>"."""
    return WorkflowError(f"microsandbox could not {what}: {exc}")


class SdkLoop:
    """One event loop for a series of SDK calls, made on the first call and closed by :meth:`close`
    (or when the object goes). Not thread-safe: one caller at a time."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to its end on the loop and return its result; its exceptions pass unchanged."""
        if self.loop is None or self.loop.is_closed():
            self.loop = sdk_loop()
        return self.loop.run_until_complete(coro)

    def call(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        """:meth:`run`, with the SDK's errors (``MicrosandboxError``) raised as :func:`sdk_error`'s
        WorkflowError; other exceptions pass unchanged."""
        from microsandbox import MicrosandboxError

        try:
            return self.run(coro)
        except MicrosandboxError as exc:
            raise sdk_error(exc, what) from None

    def close(self) -> None:
        """Close the loop if it is open; a later call makes a new one."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # the interpreter is shutting down: nothing to close it with
            pass
