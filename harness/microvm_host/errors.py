"""How the emulated host's harness ends and speaks: its exit codes, the error that ends it, and its
progress lines on stderr (``microvm-host: ...``)."""

from __future__ import annotations

from harness.common import EXIT_EMULATION_FAULT, teller

EXIT_USAGE = 2  # bad usage or a missing input
EXIT_HARNESS = 69  # the harness could not make or start the emulated host
EXIT_HOST_FAILED = EXIT_EMULATION_FAULT  # the emulated host failed twice: not a failure of the project
EXIT_TIMEOUT = 124  # the command did not finish within MICROVM_HOST_TIMEOUT
EXIT_INTERRUPTED = 130

say = teller("microvm-host")


class HarnessError(Exception):
    """The harness itself could not do its part (exit 69, or 2 for usage)."""

    def __init__(self, msg: str, code: int = EXIT_HARNESS):
        super().__init__(msg)
        self.code = code
