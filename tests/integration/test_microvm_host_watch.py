"""The emulated host's watch (harness.microvm_host.boot.Attempt) over a real child standing in for QEMU
and its guest: it streams the command's output and exit code, and calls a host frozen, panicked, dead
or without services from the heartbeat and console it is given, on real (short) timers."""

from __future__ import annotations

import subprocess
import time

from harness.microvm_host.boot import Attempt


def _attempt(tmp_path, monkeypatch, guest_script: str, stall: str = "3", boot: str = "5"):
    monkeypatch.setenv("MICROVM_HOST_STALL_SECONDS", stall)
    monkeypatch.setenv("MICROVM_HOST_BOOT_SECONDS", boot)
    (tmp_path / "share").mkdir()
    (tmp_path / "serial.log").write_text("")
    attempt = Attempt(guest=tmp_path, run_dir=tmp_path, deadline=time.monotonic() + 60)
    attempt.qemu = subprocess.Popen(["bash", "-c", guest_script], cwd=tmp_path)
    try:
        return attempt, attempt.watch()
    finally:
        attempt.stop()


BEAT = 'beat() { echo "$1 0.0" > share/heartbeat; }; '


def test_watch_streams_the_output_and_returns_the_commands_exit_code(tmp_path, monkeypatch, capfd):
    _, verdict = _attempt(
        tmp_path,
        monkeypatch,
        BEAT + "beat 1; echo 'init 9.5' >> share/phases; "
        "echo out-line > share/stdout; echo err-line > share/stderr; sleep 0.6; beat 2; "
        "echo 'cmd-start 10.0' >> share/phases; echo 3 > share/rc",
    )
    assert verdict == ("done", 3)
    out, err = capfd.readouterr()
    assert out == "out-line\n"
    assert "err-line\n" in err and "emulated host: init (guest uptime 9.5 s)" in err


def test_watch_calls_a_host_that_stops_beating_frozen(tmp_path, monkeypatch):
    _, (kind, detail) = _attempt(tmp_path, monkeypatch, BEAT + "beat 1; sleep 30")
    assert kind == "host" and detail.startswith("no heartbeat for ") and detail.endswith("s (froze)")


def test_watch_calls_a_host_that_never_beats_frozen_while_booting(tmp_path, monkeypatch):
    _, (kind, detail) = _attempt(tmp_path, monkeypatch, "sleep 30", boot="2")
    assert (kind, detail) == ("host", "no heartbeat within 2 s of starting QEMU (froze while booting)")


def test_watch_sees_a_panic_on_the_console(tmp_path, monkeypatch):
    _, (kind, detail) = _attempt(
        tmp_path,
        monkeypatch,
        BEAT + "beat 1; "
        "echo '[  812.345678] BUG: TASK stack guard page was hit at 00000000a1b2c3d4' >> serial.log; "
        "while :; do sleep 0.5; beat $RANDOM; done",
    )
    assert (kind, detail) == (
        "host",
        "its kernel broke: [  812.345678] BUG: TASK stack guard page was hit at 00000000a1b2c3d4",
    )


def test_watch_reports_qemu_dying_before_the_command_finished(tmp_path, monkeypatch):
    _, (kind, detail) = _attempt(tmp_path, monkeypatch, BEAT + "beat 1; echo 'last words' >> serial.log; exit 1")
    assert kind == "host"
    assert detail.startswith("QEMU exited (code 1) before the command finished") and "console: last words" in detail


def test_watch_reports_a_guest_whose_services_did_not_come_up(tmp_path, monkeypatch):
    _, verdict = _attempt(
        tmp_path, monkeypatch, BEAT + "beat 1; echo 'scripts/services start failed' > share/setup-failed; sleep 30"
    )
    assert verdict == ("setup", "scripts/services start failed")


# what `invoke up` printed last in the emulated host when the nested microVM triple-faulted (a real line)
