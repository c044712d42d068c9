"""The one runtime rule (runtimes.choice), as literal tables: host facts -> choice and reason.

Pure: no host is probed. The expected answers are written out here, never computed by the code.
"""

from __future__ import annotations

import pytest

from openwork_sandbox.runtimes.choice import HostFacts, decide_runtime, microvm_verdict

MSB = "/usr/bin/msb"
DOCKER_OK = (True, "Docker engine 26.1 answers")
DOCKER_DOWN = (False, "the Docker engine does not answer")

X86_VMX = HostFacts("Linux", "x86_64", kvm_present=True, kvm_usable=True, cpu_flag="vmx", msb=MSB, docker=DOCKER_OK)
X86_NESTED_OFF = HostFacts(
    "Linux", "x86_64", kvm_present=True, kvm_usable=True, cpu_flag=None, msb=MSB, docker=DOCKER_OK
)
X86_NO_KVM = HostFacts("Linux", "x86_64", cpu_flag="svm", msb=MSB, docker=DOCKER_OK)
X86_KVM_NOT_MINE = HostFacts(
    "Linux", "x86_64", kvm_present=True, kvm_usable=False, cpu_flag="svm", msb=MSB, docker=DOCKER_OK
)
ARM_KVM = HostFacts("Linux", "aarch64", kvm_present=True, kvm_usable=True, msb=MSB, docker=DOCKER_OK)
ARM_NO_KVM = HostFacts("Linux", "aarch64", msb=MSB, docker=DOCKER_OK)
MAC_ARM = HostFacts("Darwin", "arm64", msb=MSB, docker=DOCKER_DOWN)
MAC_INTEL = HostFacts("Darwin", "x86_64", msb=MSB, docker=DOCKER_OK)
WINDOWS = HostFacts("Windows", "AMD64", docker=DOCKER_OK)
NO_MSB = HostFacts("Linux", "x86_64", kvm_present=True, kvm_usable=True, cpu_flag="vmx", msb=None, docker=DOCKER_OK)
NOTHING = HostFacts("Linux", "x86_64", kvm_present=True, kvm_usable=True, msb=MSB, docker=DOCKER_DOWN)
UNASKED = HostFacts("Linux", "x86_64", msb=MSB, docker=None)  # up does not ask Docker for an explicit docker


@pytest.mark.parametrize(
    "facts, ok, reason",
    [
        (X86_VMX, True, "/dev/kvm is usable and the CPU has vmx"),
        (X86_NESTED_OFF, False, "no vmx/svm CPU flag"),
        (X86_NO_KVM, False, "/dev/kvm is missing"),
        (X86_KVM_NOT_MINE, False, "not readable and writable by this user"),
        (ARM_KVM, True, "no CPU flag needed"),
        (ARM_NO_KVM, False, "/dev/kvm is missing"),
        (MAC_ARM, True, "Apple silicon"),
        (MAC_INTEL, False, "needs Apple silicon"),
        (WINDOWS, False, "does not run on Windows"),
        (NO_MSB, False, "msb runtime is missing"),
    ],
)
def test_microvm_verdict(facts, ok, reason):
    got_ok, why = microvm_verdict(facts)
    assert got_ok is ok and reason in why, why


@pytest.mark.parametrize(
    "facts, setting, recorded, kind, usable, reason",
    [
        # auto: microVMs where they boot
        (X86_VMX, "auto", None, "microsandbox", True, "auto: microVMs can boot here"),
        (ARM_KVM, "auto", None, "microsandbox", True, "auto: microVMs can boot here"),  # the arm64 bug
        (MAC_ARM, "auto", None, "microsandbox", True, "Apple silicon"),
        # auto: else Docker when it answers
        (X86_NESTED_OFF, "auto", None, "docker", True, "auto: microVMs cannot boot here: no vmx/svm"),
        (MAC_INTEL, "auto", None, "docker", True, "Docker engine 26.1 answers"),
        (ARM_NO_KVM, "auto", None, "docker", True, "/dev/kvm is missing"),
        # auto: neither
        (NOTHING, "auto", None, None, False, "no runtime can run the sandbox here"),
        # auto: the runtime the sandbox already uses
        (X86_VMX, "auto", "docker", "docker", True, "already uses docker"),
        (X86_VMX, "auto", "microsandbox", "microsandbox", True, "already uses microsandbox"),
        (X86_NESTED_OFF, "auto", "microsandbox", "docker", True, "microVMs cannot boot here"),
        # explicit settings are kept; unusable when the host cannot run them
        (X86_VMX, "microsandbox", None, "microsandbox", True, "set to microsandbox"),
        (X86_NESTED_OFF, "microsandbox", None, "microsandbox", False, "this host cannot run microVMs: no vmx/svm"),
        (MAC_INTEL, "microsandbox", "docker", "microsandbox", False, "needs Apple silicon"),
        (X86_VMX, "docker", "microsandbox", "docker", True, "set to docker"),
        (NOTHING, "docker", None, "docker", False, "does not answer"),
        (UNASKED, "docker", None, "docker", True, "set to docker"),
    ],
)
def test_decide_runtime(facts, setting, recorded, kind, usable, reason):
    picked = decide_runtime(facts, setting, recorded)
    assert (picked.kind, picked.usable) == (kind, usable), picked
    assert reason in picked.reason, picked.reason
