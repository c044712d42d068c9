"""The microsandbox runtime with the real SDK and msb runtime.

On hosts without hardware virtualization (these CI machines) everything up to the boot is real:
the pull from the local registry, the sandbox record, the boot failure and its diagnosis, status,
logs and reset of the failed sandbox. The booted path runs where microVMs boot and skips here.
"""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from openwork_sandbox.net.ports import free_port
from tests.support.lifecycle import invoke, make_settings, prepared_spec, ramfs, unique_name
from tests.support.microsandbox import (
    needs_no_microvm,
    remove_sandbox,
    sandbox_exists,
)
from tests.support.paths import REGISTRY, STANDINS


@pytest.fixture(scope="module")
def small_image(prod_base_image):
    """A small image in the local registry (the production base, ~30 MB compressed)."""
    ref = f"{REGISTRY}/owtest-lifecycle:msb-small"
    subprocess.run(["docker", "tag", prod_base_image, ref], check=True, capture_output=True)
    push = subprocess.run(["docker", "push", ref], capture_output=True, text=True, timeout=300)
    assert push.returncode == 0, push.stderr
    return ref


@needs_no_microvm
def test_up_with_microsandbox_fails_fast_here_in_one_line(tmp_path, small_image):
    name = unique_name("msb")
    marker = tmp_path / "state" / name / "workspace" / "mine.txt"
    marker.parent.mkdir(parents=True)
    marker.write_text("keep me")
    proc = invoke(
        tmp_path,
        "up",
        "--runtime",
        "microsandbox",
        OPENWORK_MICROSANDBOX_NAME=name,
        OPENWORK_MICROSANDBOX_IMAGE=small_image,
        OPENWORK_MICROSANDBOX_PORT=str(free_port()),
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "cannot run microVMs" in lines[0] and "--runtime docker" in lines[0] and "vmx/svm" in lines[0]
    assert marker.read_text() == "keep me"
    assert not sandbox_exists(name)  # it knew before booting: no ~11 s doomed boot was attempted


@needs_no_microvm
def test_real_pull_then_boot_failure_is_diagnosed_and_nothing_is_deleted(tmp_path, small_image):
    """The real SDK pulls from the local registry, the VM fails to boot, and the failure is named."""
    from microsandbox import Image

    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.runtimes.microsandbox.logs import sandbox_log_dir
    from openwork_sandbox.runtimes.microsandbox.runtime import MicrosandboxRuntime
    from openwork_sandbox.state.store import SandboxState

    name = unique_name("msbboot")
    env = dict(
        OPENWORK_MICROSANDBOX_NAME=name,
        OPENWORK_MICROSANDBOX_IMAGE=small_image,
        OPENWORK_MICROSANDBOX_PORT=str(free_port()),
        OPENWORK_MICROSANDBOX_RUNTIME="microsandbox",
        OPENWORK_MICROSANDBOX_MEMORY="512",
        OPENWORK_MICROSANDBOX_CPUS="1",
    )
    settings = make_settings(tmp_path, **env).with_overrides(replace=True)  # replace: PullPolicy.ALWAYS
    state = SandboxState(settings)
    state.ensure()
    (settings.workspace_dir / "mine.txt").write_text("keep me")
    token, host_token = state.tokens()
    runtime = MicrosandboxRuntime(name, settings.sandbox_state_dir)
    try:
        with pytest.raises(WorkflowError) as err:
            runtime.create(prepared_spec(settings, "microsandbox", token, host_token))
        message = err.value.message
        assert "\n" not in message
        assert "this host cannot run microVMs" in message
        assert "KVM_EXIT_INTERNAL_ERROR" in message
        assert str(sandbox_log_dir(name) / "runtime.log") in message
        assert "--runtime docker" in message

        # the image was really pulled from the registry
        async def inspect():
            return await Image.inspect(small_image)

        assert asyncio.run(inspect()).handle.manifest_digest.startswith("sha256:")
        # nothing deleted: the sandbox is left for inspection, the state folder is intact
        assert (settings.workspace_dir / "mine.txt").read_text() == "keep me"
        assert state.tokens() == (token, host_token)
        st = runtime.status()
        assert st.state == "stopped" and st.image == small_image and st.fingerprint

        # the network policy and the published port reached the SDK (OPENWORK_MICROSANDBOX_NETWORK's default)
        async def network():
            from microsandbox import Sandbox

            return (await Sandbox.get(name)).config()["network"]

        net = asyncio.run(network())
        assert net["policy"]["default_egress"] == "allow" and net["policy"]["default_ingress"] == "allow"
        assert net["ports"] == [
            {"guest_port": 8787, "host_bind": "127.0.0.1", "host_port": settings.port, "protocol": "tcp"}
        ]
        # status and the system log work from another process
        status = invoke(tmp_path, "status", "--json", **env)
        assert status.returncode == 1 and json.loads(status.stdout)["state"] == "stopped", status.stderr
        system = invoke(tmp_path, "logs", "--system", **env)
        assert system.returncode == 0 and "KVM_EXIT_INTERNAL_ERROR" in system.stdout, system.stderr
        # reset removes the sandbox and the state folder
        reset = invoke(tmp_path, "reset", "--yes", **env)
        assert reset.returncode == 0, reset.stderr
        assert not sandbox_exists(name) and not settings.sandbox_state_dir.exists()
    finally:
        remove_sandbox(name)


# --- msb's launch probe, answered late (the SDK gives `msb __launch-protocol` 2 s) ---------------------


@pytest.fixture(scope="module")
def slow_probe(tmp_path_factory):
    """tests/slow_launch_probe.c built: preloaded into the real msb, its launch probe answers late."""
    lib = tmp_path_factory.mktemp("slowprobe") / "slow_launch_probe.so"
    src = str(STANDINS / "slow_launch_probe.c")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), src], check=True, capture_output=True)
    return lib


def _create_sandbox(tmp_path, image: str):
    """``MicrosandboxRuntime.create`` of a sandbox named anew, as `up` calls it (pull, then boot)."""
    from openwork_sandbox.runtimes.microsandbox.runtime import MicrosandboxRuntime
    from openwork_sandbox.state.store import SandboxState

    settings = make_settings(
        tmp_path,
        OPENWORK_MICROSANDBOX_NAME=unique_name("msbprobe"),
        OPENWORK_MICROSANDBOX_IMAGE=image,
        OPENWORK_MICROSANDBOX_PORT=str(free_port()),
        OPENWORK_MICROSANDBOX_RUNTIME="microsandbox",
        OPENWORK_MICROSANDBOX_MEMORY="512",
        OPENWORK_MICROSANDBOX_CPUS="1",
    )
    state = SandboxState(settings)
    state.ensure()
    runtime = MicrosandboxRuntime(settings.name, settings.sandbox_state_dir)
    return settings.name, lambda: runtime.create(prepared_spec(settings, "microsandbox", *state.tokens()))


@needs_no_microvm
def test_a_launch_probe_answered_late_once_is_tried_again(tmp_path, small_image, slow_probe, monkeypatch, capsys):
    """Late once (2.5 s, the SDK's limit is 2): the boot is tried again and gets as far as this host
    lets it (no KVM here: the boot failure), not the SDK's "upgrade msb" advice."""
    from openwork_sandbox.core.errors import WorkflowError

    once = tmp_path / "late-once"
    once.touch()
    monkeypatch.setenv("LD_PRELOAD", str(slow_probe))
    monkeypatch.setenv("SLOW_LP_MS", "2500")
    monkeypatch.setenv("SLOW_LP_ONCE", str(once))
    name, create = _create_sandbox(tmp_path, small_image)
    try:
        with pytest.raises(WorkflowError) as err:
            create()
        said = capsys.readouterr().err
        assert not once.exists()  # the late probe did happen
        assert "did not answer microsandbox's launch probe" in said and "trying again (2 of 5)" in said, said
        assert "(3 of 5)" not in said
        assert "this host cannot run microVMs" in err.value.message, err.value.message
        assert "launch probe" not in err.value.message and "upgrade msb" not in err.value.message
    finally:
        remove_sandbox(name)


def test_a_launch_probe_never_answered_in_time_ends_in_one_line_naming_it(
    tmp_path, small_image, slow_probe, monkeypatch, capsys
):
    """Late every time: five tries, then one line that says what happened and what to do, instead of
    the SDK's "selected msb runtime does not support network.http.deny_response; upgrade msb"."""
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.runtimes.microsandbox import launch as microsandbox_launch
    from openwork_sandbox.runtimes.microsandbox.launch import selected_msb

    monkeypatch.setattr(microsandbox_launch, "PAUSES_S", (0.1,) * 4)  # the pauses are not what is tested
    monkeypatch.setenv("LD_PRELOAD", str(slow_probe))
    monkeypatch.setenv("SLOW_LP_MS", "2500")
    name, create = _create_sandbox(tmp_path, small_image)
    try:
        with pytest.raises(WorkflowError) as err:
            create()
        said = capsys.readouterr().err
        assert "trying again (2 of 5)" in said and "trying again (5 of 5)" in said, said
        message = err.value.message
        assert "\n" not in message and message.startswith(f"microsandbox could not create {name}: ")
        assert f"{selected_msb()} did not answer the SDK's launch probe" in message and "5 times" in message
        assert "too busy or slow" in message and "MSB_PATH" in message and "network.http" not in message
    finally:
        remove_sandbox(name)


def test_missing_image_is_a_pull_failure_with_the_way_out(tmp_path, services):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.runtimes.microsandbox.runtime import MicrosandboxRuntime
    from openwork_sandbox.sandbox.launch import launch_spec

    name = unique_name("msbpull")
    ref = f"{REGISTRY}/owtest-lifecycle:never-pushed-{name}"
    settings = make_settings(
        tmp_path,
        OPENWORK_MICROSANDBOX_NAME=name,
        OPENWORK_MICROSANDBOX_IMAGE=ref,
        OPENWORK_MICROSANDBOX_PORT=str(free_port()),
    )
    try:
        with pytest.raises(WorkflowError) as err:
            MicrosandboxRuntime(name, settings.sandbox_state_dir).create(
                launch_spec(settings, "microsandbox", "t" * 40, "h" * 40)
            )
        assert f"could not pull {ref}" in err.value.message and "invoke push-image" in err.value.message
        assert "manifest unknown" in err.value.message
    finally:
        remove_sandbox(name)


# --- what create passes to the SDK (no boot) ---------------------------------------------------------


@pytest.mark.parametrize(
    "setting, egress, ingress, allowed_groups",
    [
        ("allow-all", "allow", "allow", []),  # upstream's choice: the host and the LAN too
        ("public-only", "deny", "allow", ["public"]),  # the SDK's own default
        ("none", "deny", "allow", []),  # nothing out; the published port still answers
    ],
)
def test_network_setting_maps_to_the_sdk_policy(tmp_path, setting, egress, ingress, allowed_groups):
    from openwork_sandbox.runtimes.microsandbox.spec import create_kwargs
    from openwork_sandbox.sandbox.launch import launch_spec

    port = free_port()
    settings = make_settings(tmp_path, OPENWORK_MICROSANDBOX_NETWORK=setting, OPENWORK_MICROSANDBOX_PORT=str(port))
    kwargs = create_kwargs(launch_spec(settings, "microsandbox", "t" * 40, "h" * 40))
    policy = kwargs["network"].policy
    assert (str(policy.default_egress), str(policy.default_ingress)) == (egress, ingress)
    groups = [
        r.destination.value
        for r in policy.rules
        if str(r.action) == "allow"
        and r.destination is not None
        and str(r.destination.kind) == "group"
        and r.destination.value != "host"
    ]
    assert groups == allowed_groups
    [binding] = kwargs["network"].ports
    assert (binding.host_port, binding.guest_port, binding.bind) == (port, 8787, "127.0.0.1")
    assert "ports" not in kwargs and kwargs["detached"] is True and kwargs["replace"] is True
    assert kwargs["env"]["OPENWORK_TOKEN_FILE"] == "/srv/openwork/secrets/openwork-token"
    assert "t" * 40 not in json.dumps(kwargs["env"])  # the microVM's stored configuration holds no token


def test_offline_does_not_change_the_network_policy(tmp_path):
    from openwork_sandbox.runtimes.microsandbox.spec import create_kwargs
    from openwork_sandbox.sandbox.launch import launch_spec

    for offline in ("true", "false"):
        settings = make_settings(tmp_path, OPENWORK_OFFLINE=offline)
        spec = launch_spec(settings, "microsandbox", "t" * 40, "h" * 40)
        assert spec.network == "allow-all"
        assert str(create_kwargs(spec)["network"].policy.default_egress) == "allow"


def test_network_setting_is_checked(tmp_path):
    from openwork_sandbox.core.errors import SettingsError

    with pytest.raises(SettingsError) as err:
        make_settings(tmp_path, OPENWORK_MICROSANDBOX_NETWORK="lan")
    assert 'OPENWORK_MICROSANDBOX_NETWORK="lan"' in str(err.value) and "allow-all|public-only|none" in str(err.value)


def test_one_event_loop_serves_every_call_of_a_runtime(tmp_path):
    """The SDK's handles belong to the loop that made them: a runtime keeps one loop, not one per call."""
    from openwork_sandbox.runtimes.microsandbox.runtime import MicrosandboxRuntime

    rt = MicrosandboxRuntime(unique_name("loop"), tmp_path / "state")
    assert rt.status().state == "absent"
    loop = rt._sdk.loop
    assert rt.log_tail() == [] and rt.remove() is False and rt.status().state == "absent"
    assert rt._sdk.loop is loop and not loop.is_closed()
    rt.close()
    assert loop.is_closed()


class _RecordingJob:
    """The part of the SDK's ``Job`` that ``stop_job`` uses; ``exits_on_term`` says whether the
    process inside ends on SIGTERM (an orchestrator that stops its children) or ignores it."""

    def __init__(self, exits_on_term: bool, state: str = "running"):
        self.exits_on_term, self.state, self.calls = exits_on_term, state, []

    async def inspect(self):
        import types

        return types.SimpleNamespace(state=self.state)

    async def signal(self, sig):
        self.calls.append(("signal", sig))
        if self.exits_on_term:
            self.state = "exited"

    async def kill(self):
        self.calls.append(("kill",))
        self.state = "failed"


def test_the_server_job_gets_sigterm_before_sigkill():
    """A SIGKILL of the job alone would leave opencode and openwork-server running in the microVM
    (holding the port and the database): the job is asked to stop first, as `docker stop` does."""
    import asyncio
    import signal

    from openwork_sandbox.runtimes.microsandbox.jobs import stop_job

    polite = _RecordingJob(exits_on_term=True)
    asyncio.run(stop_job(polite, grace=5))
    assert polite.calls == [("signal", signal.SIGTERM)]
    stubborn = _RecordingJob(exits_on_term=False)
    asyncio.run(stop_job(stubborn, grace=0.5))
    assert stubborn.calls == [("signal", signal.SIGTERM), ("kill",)]
    done = _RecordingJob(exits_on_term=True, state="exited")
    asyncio.run(stop_job(done))
    asyncio.run(stop_job(None))
    assert done.calls == []


def test_a_state_folder_without_extended_attributes_is_refused_before_the_boot(tmp_path):
    """microsandbox's bind mounts need user xattrs on the host folder; found in the emulated host,
    whose /tmp is a tmpfs of Linux 6.1 ("strict stat virtualization requires xattr write support").
    Here a real ramfs (no xattrs at all) stands for such a filesystem; needs root to mount it."""
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.runtimes.microsandbox.runtime import MicrosandboxRuntime
    from openwork_sandbox.sandbox.launch import launch_spec

    with ramfs() as mnt:
        name = unique_name("xattr")
        settings = make_settings(
            tmp_path,
            OPENWORK_MICROSANDBOX_NAME=name,
            OPENWORK_STATE_DIR=str(mnt / "state"),
            OPENWORK_MICROSANDBOX_PORT=str(free_port()),
        )
        settings.workspace_dir.mkdir(parents=True)
        settings.data_dir.mkdir(parents=True)
        with pytest.raises(WorkflowError) as err:
            MicrosandboxRuntime(name, settings.sandbox_state_dir).create(
                launch_spec(settings, "microsandbox", "t" * 40, "h" * 40)
            )
        assert err.value.exit_code == 2 and "extended attributes" in err.value.message
        assert str(settings.data_dir.resolve()) in err.value.message and "OPENWORK_STATE_DIR" in err.value.message
        assert not sandbox_exists(name)  # refused before anything was made


def test_an_msb_home_without_extended_attributes_is_named_before_the_boot(tmp_path, monkeypatch, small_image):
    """microsandbox puts the microVM's root filesystem together in its own folder (MSB_HOME), which
    needs xattrs too: found in the emulated host, where a non-root user's MSB_HOME lay on the tmpfs
    /tmp and `up` blamed the state folders (on ext4). A real ramfs stands for such a filesystem; the
    real SDK, given the same MSB_HOME, fails with only "trampoline rootfs: strict stat virtualization
    requires xattr write support on the mount root"."""
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.runtimes.microsandbox.runtime import MicrosandboxRuntime
    from openwork_sandbox.sandbox.launch import launch_spec

    with ramfs() as mnt:
        monkeypatch.setenv("MSB_HOME", str(mnt / "msb"))
        name = unique_name("xattrhome")
        settings = make_settings(
            tmp_path,
            OPENWORK_MICROSANDBOX_NAME=name,
            OPENWORK_MICROSANDBOX_IMAGE=small_image,
            OPENWORK_MICROSANDBOX_PORT=str(free_port()),
        )
        settings.workspace_dir.mkdir(parents=True)  # on ext4 (tmp_path): takes xattrs
        settings.data_dir.mkdir(parents=True)
        with pytest.raises(WorkflowError) as err:
            MicrosandboxRuntime(name, settings.sandbox_state_dir).create(
                launch_spec(settings, "microsandbox", "t" * 40, "h" * 40)
            )
        message = err.value.message
        assert err.value.exit_code == 2 and "\n" not in message
        assert f"its own folder {mnt / 'msb'} (MSB_HOME)" in message and "extended attributes" in message
        assert "set MSB_HOME to a folder on ext4" in message
        assert str(settings.workspace_dir) not in message and "OPENWORK_STATE_DIR" not in message
        assert not (mnt / "msb").exists()  # refused before the SDK made anything there


def test_a_microvm_that_died_under_its_server_is_named_with_its_own_log_line(tmp_path, monkeypatch):
    """The job's log ends mid-start when the VM dies under it (seen in the emulated host: a guest
    kernel's stack guard page, KVM_EXIT_SHUTDOWN): the message says the microVM stopped, and why."""
    from openwork_sandbox.runtimes.base import RUNNING, STOPPED, RuntimeStatus
    from openwork_sandbox.runtimes.microsandbox import runtime as msb

    monkeypatch.setenv("MSB_HOME", str(tmp_path / "msb"))
    logs = tmp_path / "msb" / "sandboxes" / "box" / "logs"
    logs.mkdir(parents=True)
    (logs / "kernel.log").write_text(
        "[ 1.0] booting\n[ 52.3] BUG: TASK stack guard page was hit at 0000\n"
        "[ 52.4] Kernel panic - not syncing: Fatal exception\n"
    )
    rt = msb.MicrosandboxRuntime("box", tmp_path / "state")
    seen = {"state": STOPPED}
    monkeypatch.setattr(rt, "status", lambda: RuntimeStatus(seen["state"], detail="stopped"))
    monkeypatch.setattr(rt, "log_tail", lambda lines=40: ["[opencode] Still waiting for health after 42s"])
    state, lines, hint = rt.describe()
    assert state == "stopped, stopped; the microVM itself stopped ([ 52.4] Kernel panic - not syncing: Fatal exception)"
    assert str(logs) in hint and lines == ["[opencode] Still waiting for health after 42s"]
    assert rt.machine_fault() == "the microVM itself stopped ([ 52.4] Kernel panic - not syncing: Fatal exception)"
    (logs / "kernel.log").write_text("[ 1.0] booting\n")
    (logs / "runtime.log").write_text("INFO msb_krun_vmm::linux::vstate: Received KVM_EXIT_SHUTDOWN signal\n")
    assert rt.machine_fault() == (
        "the microVM itself stopped (INFO msb_krun_vmm::linux::vstate: Received KVM_EXIT_SHUTDOWN signal)"
    )
    (logs / "runtime.log").unlink()
    assert rt.describe()[0] == "stopped, stopped; the microVM itself stopped (its logs say no more)"
    seen["state"] = RUNNING  # a running VM whose job stopped: the base's words only, and no machine fault
    state, _, hint = rt.describe()
    assert state == "running, stopped" and "own logs" not in hint and rt.machine_fault() is None


@pytest.mark.parametrize(
    "runtime_log, kvm_ok, retried",
    [
        (
            "INFO msb_krun_vmm::linux::vstate: Received KVM_EXIT_SHUTDOWN signal\n",
            True,
            True,
        ),  # seen in the emulated host
        (
            "INFO msb_krun_vmm::linux::vstate: Received KVM_EXIT_SHUTDOWN signal\n",
            False,
            False,
        ),  # no KVM: not a fault of one boot
        ("ERROR vstate: KVM_EXIT_INTERNAL_ERROR\n", True, False),  # what a host without vmx/svm gets
        ("INFO entering VM\n", True, False),  # the logs say nothing of a fault
    ],
)
def test_only_a_boot_stopped_by_the_microvms_cpu_on_a_kvm_host_is_tried_again(
    tmp_path, monkeypatch, runtime_log, kvm_ok, retried
):
    from openwork_sandbox.runtimes import probe
    from openwork_sandbox.runtimes.microsandbox import logs as msb_logs

    monkeypatch.setenv("MSB_HOME", str(tmp_path / "msb"))
    logs = tmp_path / "msb" / "sandboxes" / "box" / "logs"
    logs.mkdir(parents=True)
    (logs / "runtime.log").write_text(runtime_log)
    monkeypatch.setattr(probe, "microvm_support", lambda: (kvm_ok, "/dev/kvm is usable" if kvm_ok else "no vmx/svm"))
    error = "runtime error: sandbox process exited (exit status: 0) before agent relay became available"
    fault = msb_logs.boot_fault("box", error)
    assert (fault is not None) is retried
    if retried:
        assert "KVM_EXIT_SHUTDOWN" in fault
        assert msb_logs.boot_failure_message("box", error).startswith("the microVM stopped while booting, twice: ")
    assert msb_logs.boot_fault("box", "image error: manifest unknown") is None  # a pull failure is never a boot fault
