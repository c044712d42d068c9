"""What the scenario gets from the emulated host's harness when it runs there (scripts/microvm-host):
the share for files to read afterwards, the image its engine may still be loading, the registry it
seeded with that image, and which failures are emulation faults. Outside the harness each is absent."""

from __future__ import annotations

import os
import time
from pathlib import Path

from harness.common import LOCAL_REGISTRY
from harness.microvm_e2e.outcome import StepFailed, note

LOAD_WAIT_SECONDS = 1800.0


def emulation_fault(failure: str) -> str | None:
    """Inside the emulated host (MICROVM_HOST_GUEST=1): the fault line when a step failed because the
    nested microVM itself stopped with a fault of its (emulated) CPU — a guest triple fault
    (KVM_EXIT_SHUTDOWN), a guest kernel panic — after `up` had booted it again; else None. Where
    microVMs boot on real KVM such a stop is a failure like any other."""
    from openwork_sandbox.runtimes.microsandbox.logs import VM_FAULT_LINE

    if os.environ.get("MICROVM_HOST_GUEST") != "1":
        return None
    for mark, end in (("the microVM itself stopped (", ")"), ("the microVM stopped while booting, twice: ", ";")):
        if mark in failure:
            said = failure.split(mark, 1)[1]
            said = said[: said.find(end)] if end in said else said
            return said.strip() if VM_FAULT_LINE.search(said) else None
    return None


def wait_for_the_engines_copy() -> float:
    """Seconds waited for the harness's `docker load` of the image, which runs beside the first steps
    when the harness says so (MICROVM_HOST_IMAGE_LOAD_RC: the file its exit code lands in); 0 otherwise.
    Raises StepFailed when the load failed or did not end within LOAD_WAIT_SECONDS."""
    rc_file = os.environ.get("MICROVM_HOST_IMAGE_LOAD_RC")
    if not rc_file:
        return 0.0
    began, said = time.monotonic(), False
    while not Path(rc_file).exists():
        if not said:
            note("waiting for the harness's docker load of the image")
            said = True
        if time.monotonic() - began > LOAD_WAIT_SECONDS:
            raise StepFailed(f"the harness's docker load of the image did not end within {LOAD_WAIT_SECONDS:.0f}s")
        time.sleep(1)
    if Path(rc_file).read_text().strip() != "0":
        why = Path(rc_file).with_name("image-load.why")
        raise StepFailed(why.read_text().strip() if why.exists() else "the harness's docker load of the image failed")
    return time.monotonic() - began


def repo_and_tag(ref: str) -> tuple[str, str]:
    """("openwork-microsandbox-e2e", "run") for 127.0.0.1:5000/openwork-microsandbox-e2e:run."""
    repo, _, tag = ref[len(LOCAL_REGISTRY) + 1 :].rpartition(":")
    return repo, tag


def registry_manifest(ref: str):
    """LOCAL_REGISTRY's answer for ref's manifest (a GET with every manifest type accepted), or None
    when ref is not in LOCAL_REGISTRY or it has no such manifest."""
    import requests

    if not ref.startswith(LOCAL_REGISTRY + "/") or "@" in ref:
        return None
    repo, tag = repo_and_tag(ref)
    accept = ", ".join(
        (
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
    )
    resp = requests.get(f"http://{LOCAL_REGISTRY}/v2/{repo}/manifests/{tag}", headers={"Accept": accept}, timeout=60)
    return resp if resp.status_code == 200 else None


def seeded_manifest(ref: str):
    """ref's manifest where the harness put ref into this (fresh) guest's registry, from the very image
    it loads (it then loads it beside the first steps: MICROVM_HOST_IMAGE_LOAD_RC); else None: a
    registry elsewhere may hold an older build under the same tag."""
    return registry_manifest(ref) if os.environ.get("MICROVM_HOST_IMAGE_LOAD_RC") else None


def harness_share() -> Path | None:
    """The folder scripts/microvm-host gives a command for files to read afterwards (it outlives the
    guest, and the outer machine can read it while the command runs); None outside the harness."""
    out = os.environ.get("MICROVM_HOST_OUT")
    return Path(out) if out else None
