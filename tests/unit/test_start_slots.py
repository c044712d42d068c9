"""Host-wide start slots (openwork_sandbox/sandbox/start_slots.py): real flocks on real files, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.support.lifecycle import ROOT


def test_a_start_beyond_the_slots_waits_for_one_and_says_who_holds_them(tmp_path, capsys):
    from openwork_sandbox.sandbox.start_slots import start_slot

    order: list[str] = []
    first_in = threading.Event()
    release = threading.Event()

    def first():
        with start_slot(1, "sandbox-a", folder=tmp_path):
            order.append("a in")
            first_in.set()
            release.wait(10)
            order.append("a out")

    t = threading.Thread(target=first)
    t.start()
    assert first_in.wait(10)
    threading.Timer(0.5, release.set).start()
    with start_slot(1, "sandbox-b", folder=tmp_path) as waited:
        order.append("b in")
    t.join(10)
    assert order == ["a in", "a out", "b in"]
    assert waited > 0
    said = capsys.readouterr().err
    assert "waiting for a start slot: 1 start(s) already run on this host (sandbox-a (pid" in said
    assert "OPENWORK_START_SLOTS=1" in said and "got a start slot after" in said


def test_two_slots_let_two_starts_run_and_zero_means_no_limit(tmp_path, capsys):
    from openwork_sandbox.sandbox.start_slots import start_slot

    with start_slot(2, "a", folder=tmp_path), start_slot(2, "b", folder=tmp_path) as waited:
        assert waited < 1
    with start_slot(0, "a", folder=tmp_path), start_slot(0, "b", folder=tmp_path):
        pass
    assert "waiting" not in capsys.readouterr().err


def test_a_killed_up_never_keeps_its_slot(tmp_path):
    from openwork_sandbox.sandbox.start_slots import start_slot

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from openwork_sandbox.sandbox.start_slots import start_slot\n"
            f"with start_slot(1, 'held', folder=Path({str(tmp_path)!r})):\n"
            "    print('in', flush=True); time.sleep(60)\n",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "in"
        assert "held" in (tmp_path / "slot-0.lock").read_text()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        began = time.monotonic()
        with start_slot(1, "next", folder=tmp_path):
            assert "next" in (tmp_path / "slot-0.lock").read_text()
        assert time.monotonic() - began < 5
    finally:
        holder.kill()
        holder.wait()


# --- port claims ------------------------------------------------------------------------------------


def test_a_port_claimed_by_another_sandbox_fails_at_once_naming_it(tmp_path):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.sandbox.start_slots import port_claim

    with port_claim(19371, "sandbox-a", folder=tmp_path):
        began = time.monotonic()
        with pytest.raises(WorkflowError) as err, port_claim(19371, "sandbox-b", wait=30, folder=tmp_path):
            pass
        assert time.monotonic() - began < 10  # not the 30 s a second `up` of the same name would wait
        with port_claim(19372, "sandbox-b", folder=tmp_path):  # another port is another claim
            pass
    assert err.value.message == (
        f"port 19371 is taken by the sandbox sandbox-a (pid {os.getpid()}), whose `invoke up` is starting it now: "
        "choose another port with --port / OPENWORK_MICROSANDBOX_PORT"
    )
    with port_claim(19371, "sandbox-b", folder=tmp_path):  # released when the body ended
        pass


def test_a_second_up_of_the_same_sandbox_waits_for_the_claim(tmp_path):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.sandbox.start_slots import port_claim

    release = threading.Event()
    held = threading.Event()

    def first():
        with port_claim(19373, "sandbox-a", folder=tmp_path):
            held.set()
            release.wait(10)

    t = threading.Thread(target=first)
    t.start()
    assert held.wait(10)
    with pytest.raises(WorkflowError) as err, port_claim(19373, "sandbox-a", wait=0.5, folder=tmp_path):
        pass
    assert err.value.message.startswith("sandbox sandbox-a is busy: another `invoke up` (pid ")
    threading.Timer(0.5, release.set).start()
    with port_claim(19373, "sandbox-a", wait=10, folder=tmp_path):
        assert release.is_set()
    t.join(10)
