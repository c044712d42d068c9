"""The rules of openwork_sandbox/core/processes.py, the one place that runs external programs: a
timeout, a missing program and a failed program are each a one-line WorkflowError naming the
program; the environment given is the program's whole environment; streams are stopped and reaped.
Real small programs (``sh -c``, ``sleep``, ``cat``), no mocks. And the guard that keeps it the one
place: no other module imports ``subprocess`` or starts a program through ``os``/``asyncio``/``pty``.
"""

from __future__ import annotations

import ast
import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest

import openwork_sandbox
from openwork_sandbox.core import processes
from openwork_sandbox.core.errors import UnreachableError, WorkflowError

PACKAGE = Path(openwork_sandbox.__file__).resolve().parent
ROOT = PACKAGE.parent
ALLOWED = {"core/processes.py"}  # the modules that may run programs, relative to the package


# --- timeout --------------------------------------------------------------------------------------


def test_a_program_past_its_timeout_is_stopped_and_is_one_line():
    started = time.monotonic()
    with pytest.raises(processes.CommandTimeout) as err:
        processes.run(["sleep", "60"], timeout=0.5)
    assert err.value.message == "sleep 60 did not finish within 0.5s"
    assert err.value.exit_code == 1
    assert time.monotonic() - started < 30  # stopped, not waited out


def test_a_stream_past_its_timeout_is_stopped_even_while_it_writes():
    with (
        pytest.raises(processes.CommandTimeout) as err,
        processes.stream_bytes(["sh", "-c", "while :; do echo x; sleep 0.05; done"], timeout=0.5) as out,
    ):
        while out.stdout.read(2):
            pass
    assert err.value.message == "sh -c while :; do echo x; sleep 0.05; done did not finish within 0.5s"


# --- a missing program ----------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_closing_a_stream_stops_what_its_program_started_too():
    """A program's own children (docker's plugins, a shell's background job) go with it: its group is stopped."""
    lines = processes.stream_lines(["sh", "-c", "sleep 300 & echo $!; wait"])
    grandchild = int(next(lines))
    assert _alive(grandchild)
    lines.close()
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_a_missing_program_is_one_line_naming_it_and_how_to_get_it(tmp_path):
    with pytest.raises(processes.ProgramMissing) as err:
        processes.run(["owtest-no-such-program", "--version"])
    assert err.value.message == "owtest-no-such-program is not installed: install it"
    with pytest.raises(processes.ProgramMissing) as err:  # PATH of the given environment finds the program
        processes.run(["docker", "version"], env={"PATH": str(tmp_path)})
    assert err.value.message == (
        "docker is not installed: install Docker (Debian: scripts/services start installs "
        "docker.io), or start Docker Desktop"
    )


def test_every_way_of_running_says_the_same_of_a_missing_program():
    expected = "owtest-no-such-program is not installed: install it"
    with pytest.raises(processes.ProgramMissing) as lines:
        list(processes.stream_lines(["owtest-no-such-program"]))
    with pytest.raises(processes.ProgramMissing) as raw, processes.stream_bytes(["owtest-no-such-program"]):
        pass
    with pytest.raises(processes.ProgramMissing) as helper:
        processes.credential_helper("owtest-no-such-helper", "localhost:5000", timeout=5)
    assert lines.value.message == raw.value.message == expected
    assert helper.value.message == "docker-credential-owtest-no-such-helper is not installed: install it"


def test_a_program_that_cannot_be_started_is_one_line(tmp_path):
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(WorkflowError) as err:
        processes.run([str(plain)])
    assert err.value.message == f"cannot run {plain} (Permission denied)"


# --- a failed program -----------------------------------------------------------------------------


def test_a_non_zero_exit_with_check_is_one_line_with_its_last_line():
    with pytest.raises(WorkflowError) as err:
        processes.run(["sh", "-c", "echo first >&2; echo 'the reason' >&2; exit 3"])
    assert err.value.message == "sh -c echo first >&2; echo 'the reason' >&2; exit 3 failed (exit 3): the reason"
    assert type(err.value) is WorkflowError and "\n" not in err.value.message


def test_without_check_the_caller_reads_the_exit_code_and_output():
    result = processes.run(["sh", "-c", "echo out; echo err >&2; exit 4"], check=False)
    assert (result.returncode, result.stdout, result.stderr) == (4, "out\n", "err\n")
    assert result.argv == ("sh", "-c", "echo out; echo err >&2; exit 4")


def test_a_failed_stream_says_so_after_its_output():
    seen = []
    with pytest.raises(WorkflowError) as err:
        for line in processes.stream_lines(["sh", "-c", "echo one; echo two >&2; exit 5"]):
            seen.append(line)
    assert seen == ["one", "two"]
    assert err.value.message == "sh -c echo one; echo two >&2; exit 5 failed (exit 5): two"


def test_a_failed_byte_stream_with_check_raises_after_the_block():
    with (
        pytest.raises(WorkflowError) as err,
        processes.stream_bytes(["sh", "-c", "printf data; echo 'no such file' >&2; exit 2"]) as out,
    ):
        assert out.stdout.read() == b"data"
    assert err.value.message == "sh -c printf data; echo 'no such file' >&2; exit 2 failed (exit 2): no such file"
    with processes.stream_bytes(["sh", "-c", "echo gone >&2; exit 2"], check=False) as out:
        out.stdout.read()
    assert (out.returncode, out.stderr) == (2, b"gone\n")


def test_an_engine_that_does_not_answer_is_unreachable(monkeypatch, tmp_path):
    if shutil.which("docker") is None:
        pytest.skip("the docker client is not installed")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(UnreachableError) as err:
        processes.docker("version", "--format", "{{.Server.Version}}", timeout=60)
    assert err.value.message == (
        "the Docker engine does not answer: run scripts/services start (or start Docker Desktop)"
    )
    assert err.value.exit_code == 3


@pytest.mark.parametrize(
    "stderr",
    [
        "permission denied while trying to connect to the Docker daemon socket at tcp://10.0.0.9:2375: Get "
        '"http://10.0.0.9:2375/v1.47/info": dial tcp: connect: permission denied',
        "permission denied while trying to connect to the docker API at tcp://10.0.0.9:2375",
    ],
)
def test_a_socket_this_user_may_not_use_is_named_with_the_way_out(stderr):
    assert processes.docker_socket_denied(stderr) == (
        "this user cannot use the Docker socket tcp://10.0.0.9:2375 (permission denied): add the user to the "
        "socket's group docker (sudo usermod -aG docker $USER, then log in again), or use a rootless engine "
        "(DOCKER_HOST or docker context use)"
    )


def test_other_docker_errors_are_not_taken_for_a_denied_socket():
    assert processes.docker_socket_denied("Error response from daemon: No such container: x") is None
    assert processes.docker_socket_denied("open /root/.docker/config.json: permission denied") is None


# --- environment and input ------------------------------------------------------------------------


def test_the_given_environment_is_the_whole_environment(monkeypatch):
    monkeypatch.setenv("OWTEST_FROM_PARENT", "parent")
    given = {"PATH": os.environ["PATH"], "OWTEST_GIVEN": "given"}
    result = processes.run(["sh", "-c", 'echo "$OWTEST_GIVEN/${OWTEST_FROM_PARENT:-unset}"'], env=given)
    assert result.stdout == "given/unset\n"
    inherited = processes.run(["sh", "-c", 'echo "${OWTEST_FROM_PARENT:-unset}"'])
    assert inherited.stdout == "parent\n"


def test_input_goes_to_stdin_and_bytes_stay_bytes():
    assert processes.run(["cat"], input="a secret\n").stdout == "a secret\n"
    assert processes.run(["cat"], input=b"\x00\xff", text=False).stdout == b"\x00\xff"


def test_one_programs_stdout_is_anothers_stdin():
    with processes.stream_bytes(["printf", "piped"]) as out:
        upper = processes.run(["tr", "a-z", "A-Z"], stdin=out.stdout)
    assert upper.stdout == "PIPED"
    assert out.returncode == 0


def test_a_tar_is_read_as_it_comes(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    with (
        processes.stream_bytes(["tar", "-c", "-C", str(tmp_path), "a.txt"]) as out,
        tarfile.open(fileobj=out.stdout, mode="r|") as tar,
    ):
        found = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    assert found == {"a.txt": b"alpha"}


def test_a_block_that_fails_stops_the_program_and_its_error_goes_on():
    started = time.monotonic()
    with (
        pytest.raises(ValueError, match="the reader gave up"),
        processes.stream_bytes(["sh", "-c", "while :; do echo endless; done"]) as out,
    ):
        out.stdout.read(10)
        raise ValueError("the reader gave up")
    assert out.returncode is not None and out.returncode < 0  # killed by a signal
    assert time.monotonic() - started < 30


def test_progress_prints_a_line_while_a_silent_program_runs(monkeypatch, capsys):
    from openwork_sandbox.core import console

    monkeypatch.setattr(console, "PLAIN_EVERY", 0.2)
    console.info("before")
    processes.run(["sleep", "1.2"], progress="owtest sleeping")
    err = capsys.readouterr().err
    assert "… owtest sleeping (" in err


# --- the one place --------------------------------------------------------------------------------

RUNS_A_PROGRAM = {
    "os": (
        "system",
        "popen",
        "execv",
        "execve",
        "execvp",
        "execvpe",
        "execl",
        "execle",
        "execlp",
        "execlpe",
        "spawnv",
        "spawnve",
        "spawnvp",
        "spawnvpe",
        "spawnl",
        "spawnle",
        "spawnlp",
        "spawnlpe",
        "posix_spawn",
        "posix_spawnp",
    ),
    "asyncio": ("create_subprocess_exec", "create_subprocess_shell"),
    "pty": ("spawn",),
}


def programs_run_outside(package: Path, allowed: set[str]) -> list[str]:
    """``path:line what`` for every module of ``package`` but ``allowed`` that imports ``subprocess``
    or calls one of :data:`RUNS_A_PROGRAM`."""
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "subprocess" for a in node.names):
                found.append(f"{rel}:{node.lineno} import subprocess")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "subprocess":
                found.append(f"{rel}:{node.lineno} from subprocess import")
            elif isinstance(node, ast.ImportFrom) and node.module in RUNS_A_PROGRAM:
                names = [a.name for a in node.names if a.name in RUNS_A_PROGRAM[node.module]]
                found += [f"{rel}:{node.lineno} from {node.module} import {n}" for n in names]
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.attr in RUNS_A_PROGRAM.get(node.value.id, ())
            ):
                found.append(f"{rel}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def test_only_core_processes_runs_programs():
    assert programs_run_outside(PACKAGE, ALLOWED) == []


def test_the_guard_names_each_way_around_it(tmp_path):
    package = tmp_path / "pkg"
    (package / "core").mkdir(parents=True)
    (package / "core" / "processes.py").write_text("import subprocess\n")
    (package / "sneaky.py").write_text(
        "import os\nimport subprocess as sp\nfrom subprocess import run\nfrom os import popen\nimport asyncio\n"
        "os.system('true')\nasyncio.create_subprocess_exec('true')\n"
    )
    assert programs_run_outside(package, ALLOWED) == [
        "sneaky.py:2 import subprocess",
        "sneaky.py:3 from subprocess import",
        "sneaky.py:4 from os import popen",
        "sneaky.py:6 os.system",
        "sneaky.py:7 asyncio.create_subprocess_exec",
    ]
