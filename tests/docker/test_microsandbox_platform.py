"""The microsandbox runtime refuses an image that is one manifest of another architecture before it
pulls or boots anything (issue 31), against the real local registry: a real linux/arm64 image
(the arm64 test base, made offline) pushed by `docker push` as a single manifest, and the host's
own image beside it. What the registry holds is read with skopeo, not the code under test. No
microVM is booted (none can boot here without KVM)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.core.platforms import host_platform
from tests.support.lifecycle import make_settings, prepared_spec, unique_name
from tests.support.paths import REGISTRY, STACK_REPO

pytestmark = pytest.mark.docker

REPO = f"{REGISTRY}/{STACK_REPO}-single"


def _push(local: str, ref: str) -> str:
    for args in (["tag", local, ref], ["push", ref]):
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    return ref


def _skopeo(*args: str) -> dict:
    proc = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _push_arm64(local: str, ref: str, folder: Path) -> str:
    """``local`` (the arm64 base, whose files are aarch64 but which Docker 20.10's import labels
    amd64) pushed to ``ref`` as one manifest whose config says linux/arm64, as a build for that
    platform makes it: skopeo copies it to an OCI layout, the config's platform is set there (the
    manifest and the layout's index follow its new digest), skopeo pushes it."""
    layout = folder / "oci"
    subprocess.run(["skopeo", "copy", f"docker-daemon:{local}", f"oci:{layout}:arm64"], check=True, capture_output=True)

    def blob(digest: str) -> Path:
        return layout / "blobs" / "sha256" / digest.split(":", 1)[1]

    def put(data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blob(digest).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(blob(index["manifests"][0]["digest"]).read_bytes())
    config = json.loads(blob(manifest["config"]["digest"]).read_bytes())
    config.update(architecture="arm64", variant="v8")
    manifest["config"].update(put(json.dumps(config).encode()))
    index["manifests"][0].update(put(json.dumps(manifest).encode()))
    (layout / "index.json").write_text(json.dumps(index))
    subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:arm64", f"docker://{ref}"],
        check=True,
        capture_output=True,
    )
    return ref


@pytest.fixture(scope="module")
def images(arm_base, test_base_image, tmp_path_factory):
    """The arm64 base and the host's base, each pushed as one manifest: {platform: reference}."""
    pushed = {
        "linux/arm64": _push_arm64(arm_base, f"{REPO}:arm64", tmp_path_factory.mktemp("arm64")),
        str(host_platform()): _push(test_base_image, f"{REPO}:host"),
    }
    for platform, ref in pushed.items():
        assert "manifests" not in _skopeo("--raw", f"docker://{ref}")  # one manifest, no index
        config = _skopeo("--config", f"docker://{ref}")
        assert f"{config['os']}/{config['architecture']}" == platform
    return pushed


def _spec(tmp_path, image: str):
    settings = make_settings(
        tmp_path,
        OPENWORK_MICROSANDBOX_NAME=unique_name("f31msbarch"),
        OPENWORK_MICROSANDBOX_IMAGE=image,
        OPENWORK_MICROSANDBOX_RUNTIME="microsandbox",
    )
    from openwork_sandbox.state.store import SandboxState

    state = SandboxState(settings)
    state.ensure()
    token, host_token = state.tokens()
    return settings, prepared_spec(settings, "microsandbox", token, host_token)


def test_the_platform_of_a_single_manifest_is_read_from_the_registry(images, tmp_path):
    from openwork_sandbox.registry.client import manifest_platform

    for platform, ref in images.items():
        settings, _ = _spec(tmp_path, ref)
        assert manifest_platform(settings, ref) == platform


def test_create_refuses_a_foreign_single_manifest_before_it_pulls_or_boots(images, tmp_path, short_msb_home):
    pytest.importorskip("microsandbox")
    from openwork_sandbox.runtimes.microsandbox import platform_check
    from openwork_sandbox.runtimes.microsandbox.runtime import MicrosandboxRuntime

    host = str(host_platform())
    if host != "linux/amd64":
        pytest.skip("the foreign image here is linux/arm64")
    settings, spec = _spec(tmp_path, images["linux/arm64"])
    runtime = MicrosandboxRuntime(settings.name, settings.sandbox_state_dir)
    try:
        with pytest.raises(WorkflowError) as err:
            runtime.create(spec)
        assert err.value.message == (
            f"OPENWORK_MICROSANDBOX_IMAGE={images['linux/arm64']} is one image for linux/arm64 and this host is "
            "linux/amd64, so a microVM cannot run it; push an index of both "
            "(OPENWORK_PLATFORMS=linux/amd64,linux/arm64 invoke push-image), or build and push the image for linux/amd64"
        )
        assert runtime.status().state == "absent"  # nothing made
        _, own = _spec(tmp_path, images[host])
        platform_check.check(own, host)  # the host's image goes on to the pull and the boot
    finally:
        runtime.remove()
