"""The microsandbox runtime refuses an image that is one manifest of another architecture before it
pulls or boots (issue 31): the decision, and its place in ``create`` (before the SDK is asked)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from openwork_sandbox.core.errors import UnreachableError, WorkflowError
from openwork_sandbox.runtimes.base import LaunchSpec
from openwork_sandbox.runtimes.microsandbox import platform_check

ARM = "127.0.0.1:5000/app@sha256:" + "b" * 64
SPEC = LaunchSpec(
    name="sb",
    image=ARM,
    host_port=18787,
    bind_address="127.0.0.1",
    guest_port=8787,
    mounts={},
    env={},
    cpus=1,
    memory_mib=2048,
    registry_plain_http=False,
    fingerprint="fp",
)


def test_another_architectures_single_manifest_is_refused_in_one_line():
    assert platform_check.refusal(ARM, "linux/arm64", "linux/amd64") == (
        f"OPENWORK_MICROSANDBOX_IMAGE={ARM} is one image for linux/arm64 and this host is linux/amd64, so a "
        "microVM cannot run it; push an index of both (OPENWORK_PLATFORMS=linux/amd64,linux/arm64 invoke "
        "push-image), or build and push the image for linux/amd64"
    )


@pytest.mark.parametrize("found", ["linux/amd64", None])  # the host's own; an index (or not said)
def test_the_hosts_image_and_an_index_may_boot(found):
    assert platform_check.refusal(ARM, found, "linux/amd64") is None
    platform_check.check(dataclasses.replace(SPEC, image_platform=lambda: found), "linux/amd64")


def test_check_refuses_what_the_spec_says_and_lets_an_unanswering_registry_pass():
    with pytest.raises(WorkflowError) as err:
        platform_check.check(dataclasses.replace(SPEC, image_platform=lambda: "linux/arm64"), "linux/amd64")
    assert err.value.message.startswith(f"OPENWORK_MICROSANDBOX_IMAGE={ARM} is one image for linux/arm64")
    assert err.value.exit_code == 1

    def unreachable():
        raise UnreachableError("registry 127.0.0.1:5000 does not answer")

    platform_check.check(dataclasses.replace(SPEC, image_platform=unreachable), "linux/amd64")  # the pull says it
    platform_check.check(SPEC, "linux/amd64")  # nothing to ask


def test_create_refuses_before_the_sdk_is_asked(tmp_path: Path):
    pytest.importorskip("microsandbox")
    from openwork_sandbox.runtimes.microsandbox.runtime import MicrosandboxRuntime

    rt = MicrosandboxRuntime("owtest-i31-arch", tmp_path)
    asked = []
    rt._sdk.run = lambda *a: asked.append(a)  # any SDK call would land here
    foreign = "linux/arm64" if _host() == "linux/amd64" else "linux/amd64"
    with pytest.raises(WorkflowError) as err:
        rt.create(dataclasses.replace(SPEC, image_platform=lambda: foreign))
    assert f"is one image for {foreign} and this host is {_host()}" in err.value.message
    assert asked == []


def _host() -> str:
    import platform

    machine = platform.machine().lower()
    return "linux/" + {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
