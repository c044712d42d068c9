"""A task process that used the microsandbox SDK ends with os._exit and the task's own exit code.

The SDK's tokio threads may complete a Python future while the interpreter finalizes, and Rust then
aborts the process (SIGABRT, "panic in a function that cannot unwind"; seen after `invoke logs` in a
microVM had printed everything). These run real processes whose main program is named as invoke's
is, and one that is not (as pytest is not): there the interpreter finalizes as always.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.paths import ROOT

PROGRAM = f"""\
import atexit, sys
sys.path.insert(0, {str(ROOT)!r})
atexit.register(lambda: print("finalized as always", flush=True))  # runs only if the interpreter finalizes
from invoke.exceptions import Exit
from openwork_sandbox.core.boundary import skip_interpreter_finalization, task_boundary
from openwork_sandbox.core.errors import WorkflowError
if sys.argv[1] == "sdk":
    skip_interpreter_finalization()  # what MicrosandboxRuntime does when it makes its event loop
try:
    with task_boundary("logs"):
        print("every line the task had to print", flush=False)
        if sys.argv[2] != "0":
            raise WorkflowError("it failed", exit_code=int(sys.argv[2]))
except Exit as exc:
    print(exc.message, file=sys.stderr)
    sys.exit(exc.code)
"""


def _run(tmp_path, program_name: str, sdk: str, code: str) -> subprocess.CompletedProcess:
    script = tmp_path / program_name
    script.write_text(PROGRAM)
    return subprocess.run([sys.executable, str(script), sdk, code], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("code", ["0", "3"])
def test_an_invoke_process_that_used_the_sdk_skips_finalization_and_keeps_its_exit_code(tmp_path, code):
    proc = _run(tmp_path, "invoke", "sdk", code)
    assert proc.returncode == int(code)
    assert proc.stdout == "every line the task had to print\n"  # flushed; "finalized as always" never ran
    assert ("it failed" in proc.stderr) is (code != "0")


@pytest.mark.parametrize("program_name, sdk", [("invoke", "none"), ("pytest-like-host", "sdk")])
def test_other_processes_finalize_as_always(tmp_path, program_name, sdk):
    proc = _run(tmp_path, program_name, sdk, "3")
    assert proc.returncode == 3
    assert proc.stdout == "every line the task had to print\nfinalized as always\n"
