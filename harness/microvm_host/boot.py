"""One boot of the emulated host: QEMU (TCG, ``-cpu max``: AMD SVM with nested paging) on an overlay
of the guest's disk, the share as 9p, the console in serial.log; and the watch that streams the
command's output here and ends the boot with its verdict."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.microvm_host.errors import say
from harness.microvm_host.logic import ConsoleWatch, host_verdict

ACCEL = "tcg,thread=multi,tb-size=1024"  # QEMU's -accel (MICROVM_HOST_ACCEL overrides)
# One vCPU (MICROVM_HOST_CPUS overrides): with two, the emulated host's kernel broke ("stack guard
# page was hit" in the KVM vCPU thread) in a large share of boots; a run that finishes beats a fast one
CPUS = "1"


class Attempt:
    """One boot of the emulated host running CMD. Result: ('done', rc) or ('host', reason) or
    ('setup', reason) or ('timeout', reason)."""

    def __init__(self, guest: Path, run_dir: Path, deadline: float):
        self.guest = guest
        self.run_dir = run_dir
        self.share = run_dir / "share"
        self.deadline = deadline
        self.qemu: subprocess.Popen | None = None
        self.phases: dict[str, float] = {}
        self.first_beat_at: float | None = None

    def start(self) -> None:
        """Start QEMU on a copy-on-write overlay of the guest's disk (run_dir/disk.qcow2); it dies with
        this process. Knobs: MICROVM_HOST_ACCEL, _CPU, _CPUS, _MEMORY."""
        disk = self.run_dir / "disk.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.guest / "root.img"), str(disk)],
            check=True,
            timeout=60,
        )
        cmd = [
            "qemu-system-x86_64",
            "-accel",
            os.environ.get("MICROVM_HOST_ACCEL", ACCEL),
            "-cpu",
            os.environ.get("MICROVM_HOST_CPU", "max"),
            "-smp",
            os.environ.get("MICROVM_HOST_CPUS", CPUS),
            "-m",
            os.environ.get("MICROVM_HOST_MEMORY", "8G"),
            "-kernel",
            str(self.guest / "vmlinuz"),
            "-initrd",
            str(self.guest / "initrd.img"),
            "-append",
            "root=/dev/vda rw console=ttyS0 init=/sbin/microvm-init mitigations=off panic=-1",
            "-drive",
            f"file={disk},if=virtio,format=qcow2,cache=unsafe",
            "-virtfs",
            f"local,path={self.share},mount_tag=share,security_model=none,id=share",
            "-nic",
            "none",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            f"file:{self.run_dir / 'serial.log'}",
            "-no-reboot",
            "-pidfile",
            str(self.run_dir / "qemu.pid"),
        ]
        (self.run_dir / "serial.log").write_text("")
        with open(self.run_dir / "qemu.log", "wb") as log:  # QEMU writes its own copy
            self.qemu = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )

    def stop(self) -> None:
        """QEMU stopped (SIGTERM, SIGKILL after 10 s) if it still runs."""
        if self.qemu and self.qemu.poll() is None:
            self.qemu.terminate()
            try:
                self.qemu.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.qemu.kill()
                self.qemu.wait()

    def _read_phases(self) -> None:
        """Take in the guest's new phase lines (``NAME UPTIME`` in share/phases), each said once."""
        path = self.share / "phases"
        if path.exists():
            for line in path.read_text().splitlines():
                name, _, uptime = line.partition(" ")
                if name and name not in self.phases:
                    try:
                        self.phases[name] = float(uptime)
                    except ValueError:
                        pass
                    say(f"emulated host: {name} (guest uptime {uptime} s)")

    def watch(self) -> tuple[str, object]:
        """Until the boot ends: stream share/stdout and share/stderr here, read the console and the
        heartbeat (MICROVM_HOST_BOOT_SECONDS, MICROVM_HOST_STALL_SECONDS), say a line every 10 s
        without output; return the verdict (see the class)."""
        started = time.monotonic()
        boot_s = float(os.environ.get("MICROVM_HOST_BOOT_SECONDS", "300"))
        stall_s = float(os.environ.get("MICROVM_HOST_STALL_SECONDS", "120"))
        console = ConsoleWatch()
        outs = {
            "stdout": (self.share / "stdout", sys.stdout.buffer),
            "stderr": (self.share / "stderr", sys.stderr.buffer),
        }
        positions = {"stdout": 0, "stderr": 0, "serial": 0}
        last_beat_text, last_beat = None, None
        last_print = time.monotonic()
        fatal_at = None

        def drain() -> bool:
            nonlocal last_print
            wrote = False
            for name, (path, sink) in outs.items():
                if path.exists():
                    with open(path, "rb") as fh:
                        fh.seek(positions[name])
                        data = fh.read()
                    if data:
                        positions[name] += len(data)
                        sink.write(data)
                        sink.flush()
                        wrote = True
            if wrote:
                last_print = time.monotonic()
            return wrote

        def read_console() -> bool:
            """Feed what the console wrote since the last read; whether it showed a fatal line."""
            with open(self.run_dir / "serial.log", "rb") as fh:
                fh.seek(positions["serial"])
                chunk = fh.read()
            positions["serial"] += len(chunk)
            return bool(chunk) and console.feed(chunk.decode(errors="replace"))

        while True:
            now = time.monotonic()
            drain()
            if read_console() and fatal_at is None:
                fatal_at = now
            beat = self.share / "heartbeat"
            try:
                text = beat.read_text()
            except OSError:
                text = None
            if text and text != last_beat_text:
                last_beat_text, last_beat = text, now
                if self.first_beat_at is None:
                    self.first_beat_at = now - started
            self._read_phases()
            if (self.share / "rc").exists():
                drain()
                try:
                    self.qemu.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
                return "done", int((self.share / "rc").read_text().strip() or 1)
            if (self.share / "setup-failed").exists():
                return "setup", (self.share / "setup-failed").read_text().strip()
            if fatal_at is not None and (now - fatal_at > 3 or self.qemu.poll() is not None):
                return "host", f"its kernel broke: {console.fatal}"
            if self.qemu.poll() is not None:
                time.sleep(0.5)
                drain()
                read_console()  # what it wrote between this loop's read and its exit
                if (self.share / "rc").exists():
                    continue
                try:
                    qemu_log = (self.run_dir / "qemu.log").read_text(errors="replace").strip()[-300:]
                except OSError:
                    qemu_log = ""
                tail = " | ".join(line for line in console.tail[-3:] if line.strip())
                return "host", (
                    f"QEMU exited (code {self.qemu.returncode}) before the command finished"
                    + (f"; qemu: {qemu_log}" if qemu_log else "")
                    + (f"; console: {tail}" if tail else "")
                )
            frozen = host_verdict(now, started, last_beat, boot_s, stall_s)
            if frozen:
                return "host", frozen
            if now > self.deadline:
                return "timeout", "the command did not finish in time"
            if now - last_print >= 10:
                where = max(self.phases, key=self.phases.get) if self.phases else "booting"
                beat_age = f"heartbeat {now - last_beat:.0f} s ago" if last_beat else "no heartbeat yet"
                say(f"waiting: {now - started:.0f} s since boot, last step '{where}', {beat_age}")
                last_print = now
            time.sleep(0.5)


def _die_with_parent() -> None:
    """QEMU dies with the harness, even when the harness is killed (PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass
