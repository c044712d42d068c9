"""The pure logic of the emulated host for microVMs (harness.microvm_host, run by scripts/microvm-host):
no QEMU needed.

Console lines are literal lines of a Linux console (the kinds the notes on KVM under emulation list:
a stack guard page hit, a panic, an oops) and ordinary boot lines that must not count as a failure.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from harness.microvm_e2e.guest import emulation_fault
from harness.microvm_host import disk, image, logic, share

BOOT_LINES = """\
[    0.000000] Linux version 6.1.0-41-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0)
[    1.223344] SVM: TSC scaling supported
[    3.101010] kvm_amd: Nested Paging enabled
[    4.500000] EXT4-fs (vda): mounted filesystem with ordered data mode. Quota mode: none.
[    9.000000] 9pnet: Installing 9P2000 support
microvm-init: running: uname -a
[   12.000000] audit: type=1400 audit(0.0:2): apparmor="DENIED" operation="open" info="debug BUG: not a real one"
"""


@pytest.mark.parametrize(
    "line",
    [
        "[  812.345678] BUG: TASK stack guard page was hit at 00000000a1b2c3d4 (stack is 0000000011112222..0000000033334444)",
        "[  120.000001] Kernel panic - not syncing: Fatal exception in interrupt",
        "[   55.100000] Oops: 0000 [#1] PREEMPT SMP NOPTI",
        "[  300.000000] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [qemu-kvm:123]",
        "[   77.700000] general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1]",
    ],
)
def test_a_broken_kernel_is_seen_on_its_console_line(line):
    assert logic.panic_line(line) == line.strip()


def test_ordinary_boot_lines_are_not_a_failure():
    ok_lines = BOOT_LINES.splitlines()[:-1]  # the audit line's 'BUG: ' is inside quotes mid-line
    assert logic.panic_line("\n".join(ok_lines)) is None


def test_console_watch_finds_a_panic_split_across_two_reads_and_keeps_the_tail():
    watch = logic.ConsoleWatch()
    assert watch.feed("[  1.0] kvm_amd: Nested Paging enabled\n[ 99.9] Kernel pa") is None
    assert watch.fatal is None  # half a line is not judged yet
    assert (
        watch.feed("nic - not syncing: Attempted to kill init! exitcode=0x00000100\n[ 99.9] more\n")
        == "[ 99.9] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"
    )
    assert watch.tail[-1] == "[ 99.9] more"
    assert watch.tail[0] == "[  1.0] kvm_amd: Nested Paging enabled"


def test_host_verdict_boot_window_then_stall_window():
    # booting: alive until the boot window ends, frozen after
    assert logic.host_verdict(now=299, started=0, last_beat=None, boot_seconds=300, stall_seconds=120) is None
    assert "booting" in logic.host_verdict(now=301, started=0, last_beat=None, boot_seconds=300, stall_seconds=120)
    # beating: a beat 119 s ago is fine, 121 s ago means frozen
    assert logic.host_verdict(now=1000, started=0, last_beat=881, boot_seconds=300, stall_seconds=120) is None
    verdict = logic.host_verdict(now=1000, started=0, last_beat=879, boot_seconds=300, stall_seconds=120)
    assert verdict == "no heartbeat for 121 s (froze)"


def test_input_key_changes_with_every_input_and_not_with_order():
    base = {"recipe": "r1", "kernel": "6.1.158-1", "wheels": [["a.whl", "11"]], "mirror": "http://m/debian"}
    assert logic.input_key(base) == logic.input_key(dict(reversed(list(base.items()))))
    keys = {logic.input_key(base)}
    for field, value in (
        ("recipe", "r2"),
        ("kernel", "6.1.159-1"),
        ("wheels", [["a.whl", "12"]]),
        ("mirror", "http://other/debian"),
    ):
        keys.add(logic.input_key({**base, field: value}))
    assert len(keys) == 5


def test_recipe_source_covers_the_build_and_not_the_run():
    text = disk.recipe_source()
    assert "debootstrap" in text and "mkfs.ext4" in text and "microvm-init" in text
    assert "heartbeat" not in text  # the run's init comes through the share: editing it rebuilds nothing


def test_requirements_are_the_project_and_test_deps_plus_the_editable_install():
    pyproject = {
        "project": {
            "dependencies": ["invoke>=2.2", "microsandbox>=0.7.11", "python-dotenv>=1.0.1"],
            "optional-dependencies": {"test": ["pytest>=8.0"], "docs": ["sphinx"]},
        }
    }
    assert logic.requirements(pyproject) == [
        "invoke>=2.2",
        "microsandbox>=0.7.11",
        "pytest>=8.0",
        "python-dotenv>=1.0.1",
        "setuptools",
        "wheel",
    ]
    pyproject["project"]["dependencies"].append("setuptools>=61")
    assert "setuptools" not in logic.requirements(pyproject) and "setuptools>=61" in logic.requirements(pyproject)


def test_passthrough_env_takes_openwork_msb_e2e_knobs_ci_and_github_actions_only():
    env = {
        "OPENWORK_TOKEN": "t",
        "OPENWORK_MICROSANDBOX_IMAGE": "x:1",
        "MSB_HOME": "/m",
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "GITHUB_TOKEN": "secret",
        "HOME": "/root",
        "PATH": "/bin",
        "XOPENWORK_NOT": "no",
        "MICROVM_E2E_STEPS": "doctor,up",
        "MICROVM_HOST_TIMEOUT": "9",
    }
    assert logic.passthrough_env(env) == {
        "OPENWORK_TOKEN": "t",
        "OPENWORK_MICROSANDBOX_IMAGE": "x:1",
        "MSB_HOME": "/m",
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "MICROVM_E2E_STEPS": "doctor,up",
    }


def test_guest_env_gives_the_emulated_hosts_task_settings_unless_this_machine_sets_them(monkeypatch):
    for key in ("OPENWORK_HEALTH_TIMEOUT", "OPENWORK_REQUEST_TIMEOUT", "OPENWORK_MICROSANDBOX_CPUS"):
        monkeypatch.delenv(key, raising=False)
    env = share.guest_env("127.0.0.1:5000/x:1")
    assert (env["OPENWORK_HEALTH_TIMEOUT"], env["OPENWORK_REQUEST_TIMEOUT"], env["OPENWORK_MICROSANDBOX_CPUS"]) == (
        "900",
        "300",
        "1",
    )
    monkeypatch.setenv("OPENWORK_HEALTH_TIMEOUT", "1600")
    monkeypatch.setenv("OPENWORK_MICROSANDBOX_CPUS", "2")
    env = share.guest_env("127.0.0.1:5000/x:1")
    assert (env["OPENWORK_HEALTH_TIMEOUT"], env["OPENWORK_REQUEST_TIMEOUT"], env["OPENWORK_MICROSANDBOX_CPUS"]) == (
        "1600",
        "300",
        "2",
    )
    assert env["OPENWORK_MICROSANDBOX_IMAGE"] == "127.0.0.1:5000/x:1" and env["MICROVM_HOST_GUEST"] == "1"


def test_env_script_keeps_any_value_exactly(tmp_path):
    values = {
        "OPENWORK_A": "with space",
        "OPENWORK_B": 'it\'s $HOME `x` "q"',
        "OPENWORK_C": "line1\nline2",
        "OPENWORK_D": "",
    }
    script = tmp_path / "env.sh"
    script.write_text(logic.env_script(values))
    out = subprocess.run(
        ["bash", "-c", f"source {script}; for v in A B C D; do n=OPENWORK_$v; printf '%s\\0' \"${{!n}}\"; done"],
        capture_output=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.split(b"\0")[:4] == [v.encode() for v in values.values()]


def test_checkout_files_leave_out_deleted_files_and_the_state_folder(tmp_path):
    (tmp_path / "kept.py").write_text("x")
    (tmp_path / ".state" / "microvm-host").mkdir(parents=True)
    (tmp_path / ".state" / "microvm-host" / "root.img").write_text("big")
    (tmp_path / "link").symlink_to("kept.py")
    listed = ["kept.py", "deleted.py", ".state/microvm-host/root.img", "link", ""]
    assert logic.checkout_files(tmp_path, listed) == ["kept.py", "link"]


def test_figures_line_names_the_harness_figures():
    line = logic.figures_line({"guest": "cached(abc)", "boot_to_init_s": 21.04, "image_load_s": 35.0, "attempts": 1})
    assert line == "harness figures: guest=cached(abc) boot to init s=21.0 image load s=35.0 attempts=1"
    seeded = logic.figures_line({"guest": "cached(abc)", "registry_seed_s": 14.92, "attempts": 2})
    assert seeded == "harness figures: guest=cached(abc) registry seed s=14.9 attempts=2"


# --- the watch loop, with a shell process standing in for QEMU ------------------------------------
# The stand-in writes what a guest writes (the heartbeat and the command's output through the
# share, the console log) so the loop's verdicts are checked without booting anything.


VM_SHUTDOWN_FAILURE = (
    "invoke up --json exited 1: the server stopped before http://127.0.0.1:51407/health answered (state: stopped, "
    "stopped; the microVM itself stopped (2026-12-01T12:48:41.836408Z  INFO msb_krun_vmm::linux::vstate: Received "
    "KVM_EXIT_SHUTDOWN signal)); last log line: [opencode] Still waiting for health after 26s (TimeoutError)"
)


@pytest.mark.parametrize(
    "failure, inside, fault",
    [
        (
            VM_SHUTDOWN_FAILURE,
            "1",
            "2026-12-01T12:48:41.836408Z  INFO msb_krun_vmm::linux::vstate: Received KVM_EXIT_SHUTDOWN signal",
        ),
        (
            "invoke up exited 1: ... (state: stopped; the microVM itself stopped ([ 52.4] Kernel panic - not syncing: "
            "Fatal exception)); ...",
            "1",
            "[ 52.4] Kernel panic - not syncing: Fatal exception",
        ),
        (VM_SHUTDOWN_FAILURE, None, None),  # on real KVM the same stop is a failure like any other
        ("invoke up exited 1: ... the microVM itself stopped (its logs say no more); ...", "1", None),
        ("invoke smoke --json exited 1: smoke: {'failed': 1}", "1", None),
        ("invoke up exited 1: KVM_EXIT_SHUTDOWN in a server log line", "1", None),  # not the microVM's own stop
        (
            "invoke up --json exited 1: the microVM stopped while booting, twice: Received KVM_EXIT_SHUTDOWN signal; see "
            "/root/.microsandbox/sandboxes/e2e/logs/runtime.log; use the Docker runtime",
            "1",
            "Received KVM_EXIT_SHUTDOWN signal",
        ),
    ],
)
def test_only_a_microvm_stopped_by_its_emulated_cpu_counts_as_an_emulation_fault(monkeypatch, failure, inside, fault):
    if inside:
        monkeypatch.setenv("MICROVM_HOST_GUEST", inside)
    else:
        monkeypatch.delenv("MICROVM_HOST_GUEST", raising=False)
    assert emulation_fault(failure) == fault


def test_pruning_keeps_the_newest_runs_and_any_whose_qemu_still_runs(tmp_path):
    import os

    runs = tmp_path / "runs"
    for name in ["a-live", "b-old", "c", "d", "e"]:
        (runs / name).mkdir(parents=True)
    (runs / "a-live" / "qemu.pid").write_text(f"{os.getpid()}\n")  # a process that runs: this one
    (runs / "b-old" / "qemu.pid").write_text("999999999\n")  # no such process
    for i, name in enumerate(["a-live", "b-old", "c", "d", "e"]):  # oldest first
        os.utime(runs / name, (time.time() - 100 + i, time.time() - 100 + i))
    share.prune_runs(runs, keep=3)
    assert sorted(p.name for p in runs.iterdir()) == ["a-live", "c", "d", "e"]


def test_saving_an_image_keeps_the_registry_seeds(tmp_path, monkeypatch):
    """The image tars and the registry seeds are pruned apart: three of each are kept (the image tars'
    pruning once counted the seeds among them)."""
    import os

    folder = tmp_path / "images"
    folder.mkdir()
    files = [folder / f"{i:02d}{image.SEED_SUFFIX if i % 2 else '.tar'}" for i in range(10)]
    for age, path in enumerate(files):
        path.write_text("x")
        os.utime(path, (1000 + age, 1000 + age))
    image.prune_images(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "04.tar",
        "05.registry.tar",
        "06.tar",
        "07.registry.tar",
        "08.tar",
        "09.registry.tar",
    ]
