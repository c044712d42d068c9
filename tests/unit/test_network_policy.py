"""OPENWORK_MICROSANDBOX_NETWORK holds on every runtime, or `up` refuses it: the rule
(``launch.network_refusal``) as a table of policy × engine × runtime setting, what each runtime says
it holds (``Runtime.network_support``), and `up` and `doctor` driven through the in-memory runtime
(tests/support/fake_runtime.py) made to answer as each engine kind does. No engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes import RUNNING
from openwork_sandbox.runtimes.base import NetworkSupport
from openwork_sandbox.runtimes.choice import HostFacts
from openwork_sandbox.runtimes.docker import DockerRuntime, network_support_of
from openwork_sandbox.sandbox.launch import check_network, network_refusal
from openwork_sandbox.sandbox.up import up
from tests.support.fake_runtime import flow_settings

NO_VM = (False, "no vmx/svm CPU flag")  # choice.microvm_verdict on a host where microVMs cannot boot
VM = (True, "/dev/kvm is usable")
BRIDGE_WHY = (
    "Docker cannot filter what a container sends: on its bridge it reaches the host's own addresses and the LAN "
    "(an --internal network reaches the host too, and publishes no port)"
)
HOST_WHY = (
    "this Docker engine has no bridge network, so the container shares the host's network "
    "(its loopback services, the LAN)"
)
SHARED = (
    "network: the agent shares the host's network (host networking): it reaches the host's loopback services "
    "and the LAN as any program on the host does"
)
TO_ALLOW_ALL = "or set OPENWORK_MICROSANDBOX_NETWORK=allow-all"
EVERY = frozenset({"allow-all", "public-only", "none"})


def engine(kind: str) -> tuple[str, NetworkSupport]:
    """(runtime kind, what it holds) for an engine kind: Docker with a bridge, Docker without one, a microVM."""
    if kind == "microvm":
        from openwork_sandbox.runtimes.microsandbox.runtime import MicrosandboxRuntime

        return "microsandbox", MicrosandboxRuntime("nb", Path("/nonexistent")).network_support()
    return "docker", network_support_of(kind == "bridge")


# --- what each runtime holds ------------------------------------------------------------------------------


@pytest.mark.parametrize("bridge, shares", [(True, False), (False, True)])
def test_docker_holds_allow_all_alone_with_a_bridge_and_without(monkeypatch, tmp_path, bridge, shares):
    from openwork_sandbox.runtimes import docker

    monkeypatch.setattr(docker, "engine_has_bridge", lambda: bridge)
    held = DockerRuntime("nb", tmp_path).network_support()
    assert held.enforced == frozenset({"allow-all"}) and held.shares_host is shares
    assert held.limit == (BRIDGE_WHY if bridge else HOST_WHY)


def test_microsandbox_holds_every_policy_the_setting_offers(tmp_path):
    from openwork_sandbox.runtimes.microsandbox.runtime import MicrosandboxRuntime

    held = MicrosandboxRuntime("nb", tmp_path).network_support()
    assert held == NetworkSupport(EVERY) and not held.shares_host


@pytest.mark.parametrize("policy", ["none", "public-only"])
def test_docker_create_never_boots_a_policy_it_cannot_hold(monkeypatch, tmp_path, policy):
    """`up` refuses first; a caller that skips it still gets no container (no docker command is run)."""
    from openwork_sandbox.core import processes
    from openwork_sandbox.runtimes import docker
    from openwork_sandbox.sandbox.launch import launch_spec

    ran = []
    monkeypatch.setattr(docker, "engine_has_bridge", lambda: False)
    monkeypatch.setattr(processes, "docker", lambda *a, **k: ran.append(a))
    settings = flow_settings(tmp_path, OPENWORK_MICROSANDBOX_NETWORK=policy)
    with pytest.raises(WorkflowError) as err:
        DockerRuntime(settings.name, settings.sandbox_state_dir).create(
            launch_spec(settings, "docker", "t" * 40, "h" * 40)
        )
    assert err.value.exit_code == 2
    assert err.value.message == f"the Docker runtime cannot enforce OPENWORK_MICROSANDBOX_NETWORK={policy}: {HOST_WHY}"
    assert ran == [] and not settings.sandbox_state_dir.exists()


# --- the rule, as a table ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["host", "bridge", "microvm"])
@pytest.mark.parametrize("runtime", ["docker", "microsandbox", "auto"])
def test_allow_all_is_held_by_every_runtime(tmp_path, kind, runtime):
    settings = flow_settings(tmp_path, OPENWORK_MICROSANDBOX_RUNTIME=runtime)
    assert network_refusal(settings, *engine(kind), NO_VM) is None


@pytest.mark.parametrize("policy", ["none", "public-only"])
def test_microsandbox_holds_none_and_public_only(tmp_path, policy):
    settings = flow_settings(
        tmp_path, OPENWORK_MICROSANDBOX_NETWORK=policy, OPENWORK_MICROSANDBOX_RUNTIME="microsandbox"
    )
    assert network_refusal(settings, *engine("microvm"), VM) is None


@pytest.mark.parametrize(
    "policy, kind, runtime, microvm, what, way",
    [
        (
            "none",
            "host",
            "docker",
            NO_VM,
            f"OPENWORK_MICROSANDBOX_NETWORK=none (from environment) cannot be enforced by the docker runtime: {HOST_WHY}",
            "the microsandbox runtime enforces it, on a host where microVMs boot (not this one: no vmx/svm CPU flag)",
        ),
        (
            "public-only",
            "bridge",
            "docker",
            VM,
            "OPENWORK_MICROSANDBOX_NETWORK=public-only (from environment) cannot be enforced by the docker runtime: "
            + BRIDGE_WHY,
            "use the microsandbox runtime, which enforces it (OPENWORK_MICROSANDBOX_RUNTIME=microsandbox)",
        ),
        (
            "none",
            "bridge",
            "auto",
            NO_VM,
            "OPENWORK_MICROSANDBOX_NETWORK=none (from environment) cannot be enforced here: microVMs cannot boot "
            f"here (no vmx/svm CPU flag), so auto chose the docker runtime, and {BRIDGE_WHY}",
            "the microsandbox runtime enforces it, on a host where microVMs boot",
        ),
        (
            "public-only",
            "host",
            "auto",
            NO_VM,
            "OPENWORK_MICROSANDBOX_NETWORK=public-only (from environment) cannot be enforced here: microVMs cannot "
            f"boot here (no vmx/svm CPU flag), so auto chose the docker runtime, and {HOST_WHY}",
            "the microsandbox runtime enforces it, on a host where microVMs boot",
        ),
        (  # auto keeps the runtime a sandbox already uses, even where microVMs boot
            "none",
            "host",
            "auto",
            VM,
            "OPENWORK_MICROSANDBOX_NETWORK=none (from environment) cannot be enforced here: auto keeps the docker "
            f"runtime this sandbox uses, and {HOST_WHY}",
            "use the microsandbox runtime, which enforces it (OPENWORK_MICROSANDBOX_RUNTIME=microsandbox)",
        ),
    ],
)
def test_docker_refuses_what_it_cannot_hold_naming_the_way_out(tmp_path, policy, kind, runtime, microvm, what, way):
    settings = flow_settings(tmp_path, OPENWORK_MICROSANDBOX_NETWORK=policy, OPENWORK_MICROSANDBOX_RUNTIME=runtime)
    assert network_refusal(settings, *engine(kind), microvm) == (what, f"{way}; {TO_ALLOW_ALL}")


def test_the_refusal_names_where_the_setting_came_from(tmp_path):
    from openwork_sandbox.config.settings import load_settings

    env_file = tmp_path / "x.env"
    env_file.write_text("OPENWORK_MICROSANDBOX_NETWORK=none\n")
    settings = load_settings(environ={"OPENWORK_MICROSANDBOX_RUNTIME": "docker"}, env_file=env_file, root=tmp_path)
    what, _ = network_refusal(settings, *engine("host"), NO_VM)
    assert what.startswith(f"OPENWORK_MICROSANDBOX_NETWORK=none (from {env_file}:1) cannot be enforced")


# --- `up` through the fake runtime, answering as each engine kind ---------------------------------------------


def refused_up(fake_engine, tmp_path, monkeypatch, policy: str, support: NetworkSupport):
    """`up` with ``policy`` on a Docker fake that holds ``support``: the WorkflowError it ended with."""
    from openwork_sandbox.runtimes import probe

    monkeypatch.setattr(probe, "microvm_support", lambda: NO_VM)
    settings = flow_settings(tmp_path, OPENWORK_MICROSANDBOX_NETWORK=policy)
    fake = fake_engine.runtime_for("docker", settings)
    fake.network = support
    with pytest.raises(WorkflowError) as err:
        up(settings)
    return settings, fake, err.value


@pytest.mark.parametrize("policy", ["none", "public-only"])
@pytest.mark.parametrize("bridge", [False, True])
def test_up_refuses_a_policy_docker_cannot_hold_before_anything_is_made(
    fake_engine, tmp_path, monkeypatch, capsys, policy, bridge
):
    settings, fake, err = refused_up(fake_engine, tmp_path, monkeypatch, policy, network_support_of(bridge))
    assert err.exit_code == 2
    assert err.message == (
        f"OPENWORK_MICROSANDBOX_NETWORK={policy} (from environment) cannot be enforced by the docker runtime: "
        f"{BRIDGE_WHY if bridge else HOST_WHY}; the microsandbox runtime enforces it, on a host where microVMs "
        f"boot (not this one: no vmx/svm CPU flag); {TO_ALLOW_ALL}"
    )
    assert fake.actions() == [] and [name for name, _ in fake.calls] == ["network_support", "status"]
    assert not (tmp_path / "state").exists()
    assert capsys.readouterr().err == ""  # the refusal is the one line (the task boundary prints it)


def test_a_refusal_names_the_sandbox_that_runs_without_the_policy(fake_engine, tmp_path, monkeypatch):
    """A sandbox made before (with another policy, or before this check) keeps running: the line says so."""
    settings = flow_settings(tmp_path)
    up(settings)
    port = str(settings.port)
    record = (settings.sandbox_state_dir / "sandbox.json").read_text()
    from openwork_sandbox.runtimes import probe

    monkeypatch.setattr(probe, "microvm_support", lambda: NO_VM)
    fake = fake_engine.runtime_for("docker", settings)
    before = fake.actions()
    with pytest.raises(WorkflowError) as err:
        up(flow_settings(tmp_path, OPENWORK_MICROSANDBOX_NETWORK="none", OPENWORK_MICROSANDBOX_PORT=port))
    assert err.value.message.endswith(
        f"; {TO_ALLOW_ALL}; the sandbox fake-sb that runs now does not hold it either: `invoke down` stops it"
    )
    assert fake.actions() == before and fake.state == RUNNING
    assert (settings.sandbox_state_dir / "sandbox.json").read_text() == record


@pytest.mark.parametrize("bridge", [False, True])
def test_up_on_docker_holds_allow_all_and_says_when_it_shares_the_host_network(fake_engine, tmp_path, capsys, bridge):
    settings = flow_settings(tmp_path)
    fake = fake_engine.runtime_for("docker", settings)
    fake.network = network_support_of(bridge)
    capsys.readouterr()
    up(settings, as_json=True)
    said = capsys.readouterr()
    assert json.loads(said.out)["action"] == "created" and fake.spec.network == "allow-all"
    lines = said.err.splitlines()
    assert lines.count(SHARED) == (0 if bridge else 1)
    if not bridge:  # after the runtime line (and its why), before anything is booted
        runtime = next(i for i, line in enumerate(lines) if line.startswith("runtime: docker"))
        assert lines[runtime + 2] == SHARED and lines[runtime + 1].startswith("  why: set to docker")


@pytest.mark.parametrize("policy", ["allow-all", "public-only", "none"])
def test_up_on_microsandbox_boots_every_policy_as_set(fake_engine, tmp_path, capsys, monkeypatch, policy):
    from openwork_sandbox.runtimes import probe

    monkeypatch.setattr(probe, "choose_runtime", _chooses_microsandbox)
    settings = flow_settings(
        tmp_path, OPENWORK_MICROSANDBOX_NETWORK=policy, OPENWORK_MICROSANDBOX_RUNTIME="microsandbox"
    )
    up(settings)
    fake = fake_engine.runtime_for("microsandbox", settings)
    assert fake.actions() == ["create", "keep_running"] and fake.spec.network == policy
    assert "shares the host's network" not in capsys.readouterr().err


def _chooses_microsandbox(setting, recorded=None):
    from openwork_sandbox.runtimes.choice import RuntimeChoice

    return RuntimeChoice("microsandbox", "set to microsandbox; /dev/kvm is usable")


def test_auto_on_a_host_without_microvms_refuses_naming_microsandbox(fake_engine, tmp_path, monkeypatch):
    from openwork_sandbox.runtimes import probe
    from openwork_sandbox.runtimes.choice import RuntimeChoice

    monkeypatch.setattr(probe, "choose_runtime", lambda s, r=None: RuntimeChoice("docker", "auto: microVMs cannot"))
    monkeypatch.setattr(probe, "microvm_support", lambda: NO_VM)
    settings = flow_settings(tmp_path, OPENWORK_MICROSANDBOX_NETWORK="none", OPENWORK_MICROSANDBOX_RUNTIME="auto")
    with pytest.raises(WorkflowError) as err:
        up(settings)
    assert err.value.exit_code == 2
    assert err.value.message == (
        "OPENWORK_MICROSANDBOX_NETWORK=none (from environment) cannot be enforced here: microVMs cannot boot here "
        "(no vmx/svm CPU flag), so auto chose the docker runtime, and the fake engine has no bridge network, so it "
        f"shares the host's network; the microsandbox runtime enforces it, on a host where microVMs boot; {TO_ALLOW_ALL}"
    )
    assert fake_engine.fakes[("docker", settings.name)].actions() == []
    assert not (tmp_path / "state").exists()


def test_check_network_asks_the_runtime_only(fake_engine, tmp_path):
    settings = flow_settings(tmp_path)
    fake = fake_engine.runtime_for("docker", settings)
    fake.network = network_support_of(True)
    assert check_network(settings, fake) is None
    fake.network = network_support_of(False)
    assert check_network(settings, fake) == SHARED.removeprefix("network: ")
    assert fake.actions() == []


# --- `doctor` ------------------------------------------------------------------------------------------------


def doctor_row(fake_engine, tmp_path, monkeypatch, policy: str, support: NetworkSupport | None, facts: HostFacts):
    from openwork_sandbox.runtimes import choice
    from openwork_sandbox.sandbox import doctor

    settings = flow_settings(tmp_path, OPENWORK_MICROSANDBOX_NETWORK=policy, OPENWORK_MICROSANDBOX_RUNTIME="auto")
    picked = choice.decide_runtime(facts, "auto")
    if support is not None:
        fake_engine.runtime_for(picked.kind, settings).network = support
    return doctor.check_network(settings, facts, picked)


NO_KVM = HostFacts("Linux", "x86_64", kvm_present=True, kvm_usable=True, msb="/x/msb", docker=(True, "Docker 20"))
KVM = HostFacts("Linux", "x86_64", True, True, "vmx", "/x/msb", docker=(True, "Docker 20"))


def test_doctor_says_plainly_that_the_agent_shares_the_host_network(fake_engine, tmp_path, monkeypatch):
    row = doctor_row(fake_engine, tmp_path, monkeypatch, "allow-all", network_support_of(False), NO_KVM)
    assert (row.name, row.ok, row.needed_by) == ("network", True, frozenset({"docker"}))
    assert row.detail == "allow-all, held by the docker runtime: " + SHARED.removeprefix("network: ")


def test_doctor_fails_the_row_docker_cannot_hold(fake_engine, tmp_path, monkeypatch):
    row = doctor_row(fake_engine, tmp_path, monkeypatch, "public-only", network_support_of(True), NO_KVM)
    assert not row.ok and row.needed_by == frozenset({"docker"})
    assert row.detail == (
        "OPENWORK_MICROSANDBOX_NETWORK=public-only (from environment) cannot be enforced here: microVMs cannot boot "
        "here (no vmx/svm CPU flag in /proc/cpuinfo, so CPU virtualization is off; inside a VM, enable nested "
        f"virtualization), so auto chose the docker runtime, and {BRIDGE_WHY}"
    )
    assert row.fix == f"the microsandbox runtime enforces it, on a host where microVMs boot; {TO_ALLOW_ALL}"


@pytest.mark.parametrize(
    "policy, reach",
    [
        ("allow-all", "the host, the LAN and the internet"),
        ("public-only", "the internet only"),
        ("none", "nothing outbound"),
    ],
)
def test_doctor_on_microsandbox_says_what_the_policy_leaves(fake_engine, tmp_path, monkeypatch, policy, reach):
    row = doctor_row(fake_engine, tmp_path, monkeypatch, policy, None, KVM)
    assert row.ok and row.detail == f"{policy}, held by the microsandbox runtime: the sandbox reaches {reach}"


def test_doctor_does_not_ask_an_engine_that_does_not_answer(fake_engine, tmp_path, monkeypatch):
    facts = HostFacts("Linux", "x86_64", docker=(False, "the Docker engine does not answer"))
    row = doctor_row(fake_engine, tmp_path, monkeypatch, "none", None, facts)
    assert row.ok and row.needed_by == frozenset() and row.detail == "none: not asked (the runtime cannot work here)"
    assert fake_engine.fakes == {}
