"""`invoke manifests`, run as a user runs it, read by kubectl's own parser (``kubectl kustomize``
needs no cluster): the stream on stdout and the files of ``--output`` are the same objects."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.support.lifecycle import invoke

pytestmark = pytest.mark.integration

IMAGE = "127.0.0.1:5000/owtest-k8s@sha256:" + "cd" * 32


def kustomized(folder, resources: list[str]) -> dict:
    """What kubectl reads from ``resources`` in ``folder``, by (kind, name)."""
    (folder / "kustomization.yaml").write_text("resources:\n" + "".join(f"- {r}\n" for r in resources))
    proc = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(proc.stdout)}


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed (apt-get install kubernetes-client)"
)
def test_kubectl_reads_the_stream_and_the_files_as_the_same_objects(tmp_path):
    env = {"OPENWORK_MICROSANDBOX_NAME": "k8s-cli", "OPENWORK_MICROSANDBOX_IMAGE": IMAGE}
    streamed = invoke(tmp_path, "manifests", **env)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.startswith("---\n{")
    assert "manifests: Secret, PersistentVolumeClaim" in streamed.stderr and "---" not in streamed.stderr
    (tmp_path / "stream").mkdir()
    (tmp_path / "stream" / "all.yaml").write_text(streamed.stdout)
    from_stream = kustomized(tmp_path / "stream", ["all.yaml"])

    out = tmp_path / "files"
    written = invoke(tmp_path, "manifests", "--output", str(out), **env)
    assert written.returncode == 0, written.stderr
    assert written.stdout == ""  # the Secret only in its file
    from_files = kustomized(out, sorted(p.name for p in out.glob("*.yaml")))

    assert sorted(from_stream) == [
        ("Deployment", "k8s-cli"),
        ("NetworkPolicy", "k8s-cli"),
        ("PersistentVolumeClaim", "k8s-cli-data"),
        ("PersistentVolumeClaim", "k8s-cli-store"),
        ("PersistentVolumeClaim", "k8s-cli-workspace"),
        ("Secret", "k8s-cli-secrets"),
        ("Service", "k8s-cli"),
    ]
    assert from_files == from_stream  # the same tokens: kept in .state/k8s-cli/tokens.json between runs
    assert from_stream[("Deployment", "k8s-cli")]["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE


def test_an_output_folder_of_other_files_is_refused_in_one_line(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = invoke(tmp_path, "manifests", "--output", str(out), OPENWORK_MICROSANDBOX_IMAGE=IMAGE)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("holds files `invoke manifests` did not write: name a new or empty folder")
    )
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert not (tmp_path / "state").exists()  # nothing made: no tokens, no state folder
