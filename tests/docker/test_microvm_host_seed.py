"""The emulated host's registry seed: a real docker-registry storage that serves the image after a real push."""

from __future__ import annotations

import subprocess

import pytest

from harness.common import LOCAL_REGISTRY
from harness.microvm_host import image


@pytest.mark.docker
def test_the_registry_seed_is_a_registry_storage_that_serves_the_image(test_base_image, tmp_path, monkeypatch):
    """registry_seed packs a real docker-registry's storage after a real docker push; a registry
    started on that storage (as the guest's is) serves the image: its manifest names the image's
    config, and every layer blob is there. A ref outside the guest's registry gets no seed."""
    import json
    import socket
    import tarfile
    import time

    import requests

    monkeypatch.setenv("MICROVM_HOST_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "images").mkdir(parents=True)
    ref = f"{LOCAL_REGISTRY}/owtest-seed:t{time.time_ns()}"
    subprocess.run(["docker", "tag", test_base_image, ref], check=True)
    image_id = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        tar, fig = image.registry_seed(ref, image_id)
        assert tar is not None and tar.exists() and fig["registry_seed_s"] > 0
        assert image.registry_seed(ref, image_id) == (tar, {"registry_seed_s": 0.0})  # cached by image and ref
        assert image.registry_seed("openwork-sandbox:latest", image_id) == (None, {})
    finally:
        subprocess.run(["docker", "rmi", ref], capture_output=True)
    storage = tmp_path / "guest-registry-data"
    storage.mkdir()
    with tarfile.open(tar) as packed:
        packed.extractall(storage)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "config.yml").write_text(
        f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: "
        f"{{rootdirectory: {storage}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n"
    )
    server = subprocess.Popen(
        ["docker-registry", "serve", str(tmp_path / "config.yml")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        base = f"http://127.0.0.1:{port}/v2/owtest-seed"
        for _ in range(100):
            try:
                resp = requests.get(
                    f"{base}/manifests/{ref.rsplit(':', 1)[1]}",
                    timeout=5,
                    headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
                )
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert resp.status_code == 200, resp.text
        manifest = json.loads(resp.content)
        assert manifest["config"]["digest"] == image_id
        for layer in manifest["layers"]:
            assert requests.head(f"{base}/blobs/{layer['digest']}", timeout=5).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
