"""Host-wide start slots (openwork_sandbox/sandbox/start_slots.py): real flocks on real files, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

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
