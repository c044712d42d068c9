"""The steps around the image: the run's tag in the guest's registry (seed), what build-image needs
offline taken out of the loaded image (prepare), push-image with its proofs, and `up` of the pushed
digest. Each takes the Scenario, returns its one-line detail and raises StepFailed when it does not hold."""

from __future__ import annotations

import secrets
import subprocess

from harness.common import LOCAL_REGISTRY
from harness.microvm_e2e.guest import registry_manifest, repo_and_tag, seeded_manifest
from harness.microvm_e2e.outcome import StepFailed
from harness.microvm_e2e.scenario import BASE_REF, RUN_REF, Scenario


def seed(sc: Scenario) -> str:
    """The image under the run's tag in the registry (push-image comes later): where the harness
    seeded the registry with it (seeded_manifest), in the run's repository, the run's tag is made
    through the registry's own API; else plain docker tag and push."""
    import requests

    served = seeded_manifest(sc.loaded_image)
    repo, tag = repo_and_tag(RUN_REF)
    if served is not None and repo_and_tag(sc.loaded_image)[0] == repo:
        put = requests.put(
            f"http://{LOCAL_REGISTRY}/v2/{repo}/manifests/{tag}",
            data=served.content,
            timeout=60,
            headers={"Content-Type": served.headers["Content-Type"]},
        )
        if put.status_code != 201:
            raise StepFailed(
                f"the registry refused the manifest for {RUN_REF}: HTTP {put.status_code} {put.text[:200]}"
            )
        if registry_manifest(RUN_REF) is None:
            raise StepFailed(f"the registry does not serve {RUN_REF} after the tag was made")
        return f"{RUN_REF} tagged in the registry, which the harness gave {sc.loaded_image} ({put.headers.get('Docker-Content-Digest')})"
    sc.docker("tag", sc.loaded_image, RUN_REF)
    sc.docker("push", RUN_REF, timeout=1800)
    return f"{RUN_REF} pushed with docker push"


def prepare(sc: Scenario) -> str:
    """What build-image needs offline, taken out of the loaded e2e image: its base (every file
    but the baked programs) and the real opencode it holds."""
    box = f"owe2e-extract-{secrets.token_hex(3)}"
    sc.docker("create", "--name", box, sc.loaded_image)
    try:
        sc.docker("cp", f"{box}:/usr/local/bin/opencode", str(sc.tmp / "opencode"))
        export = subprocess.Popen(["docker", "export", box], stdout=subprocess.PIPE)
        strip = subprocess.Popen(
            [
                "tar",
                "--delete",
                "usr/local/bin/opencode",
                "usr/local/bin/openwork",
                "usr/local/bin/openwork-server",
                "usr/local/bin/opencode-gate",
                "usr/local/bin/microsandbox-entrypoint.sh",
                "usr/local/lib/openwork",
            ],
            stdin=export.stdout,
            stdout=subprocess.PIPE,
        )
        export.stdout.close()
        imported = subprocess.run(
            ["docker", "import", "-", BASE_REF], stdin=strip.stdout, capture_output=True, text=True, timeout=900
        )
        strip.wait(), export.wait()
        if imported.returncode != 0:
            raise StepFailed(f"docker import of the base failed: {imported.stderr.strip()[-300:]}")
    finally:
        sc.docker("rm", "-f", box, check=False)
    size = int(sc.docker("image", "inspect", "--format", "{{.Size}}", BASE_REF).stdout.strip())
    return f"base {BASE_REF} ({size / 1e6:.0f} MB) and opencode from {sc.loaded_image}"


def push_image(sc: Scenario) -> str:
    """push-image proves what it pushed (v2 manifest and blobs; on microsandbox the SDK's pull)."""
    result, proc = sc.task_json("push-image")
    if not (result["manifest_ok"] and result["blobs_ok"]):
        raise StepFailed(f"push proof failed: {result}")
    if sc.runtime == "microsandbox" and not result["msb_pull"]:
        raise StepFailed(f"the microsandbox SDK did not pull what was pushed: {result['msb_pull_detail']}")
    sc.figures["push"] = proc.seconds
    return f"{result['pinned']}, {result['layers']} layers; microsandbox pull: {result['msb_pull_detail']}"


def up_pushed(sc: Scenario) -> str:
    """`up` boots the digest push-image recorded (the image built in this host): recreated, smoke passes."""
    result, proc = sc.task_json("up")
    smoke, _ = sc.task_json("smoke")
    info, _ = sc.task_json("status")
    if result["action"] != "created" or not smoke["ok"] or "@sha256:" not in str(info["image"]):
        raise StepFailed(f"up did {result['action']}, smoke ok={smoke['ok']}, image {info['image']}")
    sc.task("reset", "--yes")
    return f"created in {proc.seconds:.1f}s from {info['image']}; smoke passed"
