"""build-image against the real engine: the stack image (real openwork + opencode from npm, the
stand-in server) runs, rebuilds from cache without downloading, carries its labels, bakes no
secret, and the build refuses what it should."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import requests

from tests.support.paths import REGISTRY, ROOT, STACK_REPO
from tests.support.stack import stack_settings

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _health_window(image: str) -> float:
    """start period + retries x interval of the image's own HEALTHCHECK, in seconds."""
    out = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Healthcheck}}", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    hc = json.loads(out)
    assert hc and hc["Test"][0] == "CMD", "the image has no HEALTHCHECK"
    return (hc["StartPeriod"] + hc["Retries"] * hc["Interval"]) / 1e9


def test_container_serves_health_and_workspaces(stack_image, stack_container):
    window = _health_window(stack_image.ref)
    c = stack_container(wait=False)
    c.wait_healthy(timeout=window)

    assert requests.get(c.url + "/workspaces", timeout=10).status_code == 401
    auth = {"Authorization": f"Bearer {c.token}"}
    resp = requests.get(c.url + "/workspaces", headers=auth, timeout=10)
    assert resp.status_code == 200
    workspace = resp.json()["items"][0]
    assert workspace["id"] == "ws_c52ddf65534b" and workspace["path"] == "/workspace"
    # the real opencode behind the stand-in's proxy creates a session
    session = requests.post(
        f"{c.url}/w/{workspace['id']}/opencode/session", json={"title": "image test"}, headers=auth, timeout=30
    )
    assert session.status_code == 200, session.text
    assert session.json()["directory"] == "/workspace"
    assert "OpenWork orchestrator running" in c.logs()
    # the tokens reach the programs through their environment, never a command line
    cmdlines = subprocess.run(
        ["docker", "exec", c.name, "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert "openwork serve" in cmdlines and "openwork-server" in cmdlines
    assert c.token not in cmdlines and c.host_token not in cmdlines


def test_docker_health_check_turns_healthy_without_curl(stack_image, stack_container):
    window = _health_window(stack_image.ref)
    c = stack_container()
    deadline, status = time.monotonic() + window + 10, ""
    while time.monotonic() < deadline:
        status = subprocess.run(
            ["docker", "inspect", "--format", "{{.State.Health.Status}}", c.name], capture_output=True, text=True
        ).stdout.strip()
        if status == "healthy":
            break
        time.sleep(0.5)
    assert status == "healthy", c.logs()[-2000:]
    has_curl = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "sh",
            stack_image.ref,
            "-c",
            "command -v curl wget || true",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert has_curl == ""


def test_entrypoint_refuses_to_start_without_tokens(stack_image):
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-e", "OPENWORK_TOKEN=only-this-one", stack_image.ref],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 64
    assert "OPENWORK_HOST_TOKEN not set" in proc.stderr
    assert "only-this-one" not in proc.stderr + proc.stdout


def test_image_layout_and_labels(stack_image):
    # by id: a concurrent session may move the tag to a rebuild with another revision label
    cfg = json.loads(
        subprocess.run(
            ["docker", "image", "inspect", stack_image.image_id], capture_output=True, text=True, check=True
        ).stdout
    )[0]["Config"]
    labels = cfg["Labels"]
    revision = labels["org.opencontainers.image.revision"]
    assert revision == stack_image.build["revision"]
    kind = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-t", revision], capture_output=True, text=True)
    assert kind.stdout.strip() == "commit"  # the git commit the image was built from
    assert labels["org.opencontainers.image.title"] == "openwork-microsandbox"
    assert labels["org.opencontainers.image.version"] == "0.18.1"
    assert labels["org.opencontainers.image.created"].endswith("Z")
    assert labels["io.openwork.openwork.version"] == "0.18.1"
    assert labels["io.openwork.opencode.version"] == "1.17.11"
    assert labels["io.openwork.openwork-server.version"] == "0.18.1"  # what the stand-in reports
    assert cfg["Entrypoint"] == ["/usr/local/bin/microsandbox-entrypoint.sh"]
    assert set(cfg["Volumes"]) == {"/workspace", "/data"} and "8787/tcp" in cfg["ExposedPorts"]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["OPENWORK_WORKSPACE"] == "/workspace" and env["OPENWORK_DATA_DIR"] == "/data/openwork-orchestrator"
    history = subprocess.run(
        ["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", stack_image.image_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "RUN" not in history.replace("#(nop)", "")  # no RUN step: nothing ran inside the build
    # what changes most is the last file layer: a server bump pushes one layer
    copies = [line for line in history.splitlines()[::-1] if "COPY" in line]
    assert [c.split(" in ")[-1].strip() for c in copies] == [
        "/usr/local/bin/opencode",
        "/usr/local/bin/openwork",
        "/usr/local/bin/opencode-gate",
        "/usr/local/lib/openwork/opencode-gate.js",
        "/usr/local/bin/openwork-server-gate",
        "/usr/local/bin/microsandbox-entrypoint.sh",
        "/usr/local/bin/openwork-supervise",
        "/usr/local/bin/openwork-server",
    ]


def test_no_token_value_in_history_or_inspect(stack_image, tmp_path):
    token, host_token = "tok-" + "a1b2c3d4" * 4, "host-" + "e5f6a7b8" * 4
    settings = stack_settings(tmp_path, OPENWORK_TOKEN=token, OPENWORK_HOST_TOKEN=host_token)
    from openwork_sandbox.image.build import build_image

    result = build_image(settings)
    history = subprocess.run(
        ["docker", "history", "--no-trunc", result["image_id"]], capture_output=True, text=True, check=True
    ).stdout
    inspect = subprocess.run(
        ["docker", "image", "inspect", result["image_id"]], capture_output=True, text=True, check=True
    ).stdout
    # tokens in the settings change nothing in the image: the same layers as the session's image
    layers = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", stack_image.image_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(inspect)[0]["RootFS"]["Layers"] == json.loads(layers)
    for text in (history, inspect):
        assert token not in text and host_token not in text
        assert "microsandbox-token" not in text  # upstream's fixed default is not baked either
    env_names = [e.split("=", 1)[0] for e in json.loads(inspect)[0]["Config"]["Env"]]
    assert not [n for n in env_names if "TOKEN" in n]


def test_second_build_downloads_nothing_and_hits_the_cache(stack_image, tmp_path, capsys):
    from openwork_sandbox.image.build import build_image

    # two builds back to back (other work may commit between the session's build and this test,
    # and the revision label follows the commit)
    first = build_image(stack_settings(tmp_path))
    capsys.readouterr()
    again = build_image(stack_settings(tmp_path), as_json=True)
    printed = json.loads(capsys.readouterr().out)
    assert again["downloaded_bytes"] == 0
    assert again["cache_hits"] == again["build_steps"] > 0
    assert again["image_id"] == first["image_id"]
    assert printed["image_id"] == again["image_id"]
    assert set(printed["versions"]) == {"openwork", "openwork-server", "opencode"}
    assert printed["size"] > printed["binaries_size"] > 0
    last = json.loads((stack_image.settings.state_dir / "last-build.json").read_text())
    assert last["image_id"] == again["image_id"]


def test_version_check_refuses_a_wrong_pin(stack_image, tmp_path):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.image import artifacts as npm_artifacts
    from openwork_sandbox.image.build import check_versions

    settings = stack_settings(tmp_path, OPENWORK_STATE_DIR=str(tmp_path / "state"))  # nothing verified yet
    wrong = {
        name: npm_artifacts.Artifact(name, tmp_path, "", version, "npm:test")
        for name, version in (("opencode", "1.17.11"), ("openwork", "9.9.9"), ("openwork-server", None))
    }
    with pytest.raises(WorkflowError) as err:
        check_versions(settings, stack_image.image_id, wrong)
    assert "openwork reports 0.18.1, pinned 9.9.9 (OPENWORK_ORCHESTRATOR_VERSION)" in err.value.message
    assert "\n" not in err.value.message
    ok = dict(wrong, openwork=npm_artifacts.Artifact("openwork", tmp_path, "", "0.18.1", "npm:test"))
    assert check_versions(settings, stack_image.image_id, ok) == stack_image.versions


def test_missing_base_image_says_how_to_make_one(services, tmp_path):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.image.build import build_image

    settings = stack_settings(
        tmp_path, OPENWORK_BASE_IMAGE="openwork-base:no-such-tag", OPENWORK_STATE_DIR=str(tmp_path / "state")
    )
    with pytest.raises(WorkflowError) as err:
        build_image(settings)
    message = err.value.message
    assert "openwork-base:no-such-tag" in message and "scripts/make-base-image" in message
    assert "OPENWORK_BASE_IMAGE" in message and "\n" not in message


def test_a_program_without_a_version_fails_the_build_and_tags_nothing(stack_image, tmp_path):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.image.build import build_image

    mute = tmp_path / "openwork-server"
    mute.write_text("#!/bin/sh\necho 'no version here'\n")
    mute.chmod(0o755)
    ref = f"{stack_image.ref.rsplit(':', 1)[0]}:no-version"
    settings = stack_settings(
        tmp_path,
        OPENWORK_SERVER_BIN=str(mute),
        OPENWORK_MICROSANDBOX_IMAGE=ref,
        OPENWORK_STATE_DIR=str(tmp_path / "state"),
    )
    with pytest.raises(WorkflowError) as err:
        build_image(settings)
    assert "openwork-server --version printed no version" in err.value.message
    assert "\n" not in err.value.message
    tagged = subprocess.run(["docker", "image", "inspect", ref], capture_output=True)
    assert tagged.returncode != 0  # the failed image was never tagged


# --- a poisoned download cache ------------------------------------------------------------------


@pytest.fixture
def fake_npm(monkeypatch):
    """A fake npm registry on 127.0.0.1 with opencode and openwork as shell scripts that print their
    versions (what the version check asks), at versions the package keeps no digests for."""
    from tests.support.npm_registry import FakeNpm, fresh_process

    fresh_process(monkeypatch)
    fake = FakeNpm()
    fake.programs = {
        "opencode": fake.publish(
            "opencode-linux-x64-baseline", "9.9.1", "package/bin/opencode", b"#!/bin/sh\necho 9.9.1\n#" + b"-" * 40
        ),
        "openwork": fake.publish(
            "openwork-orchestrator-linux-x64", "9.9.2", "package/bin/openwork", b"#!/bin/sh\necho 9.9.2\n"
        ),
    }
    yield fake
    fake.close()


def test_a_poisoned_download_cache_is_never_baked(test_base_image, fake_npm, tmp_path):
    """build-image, the cache poisoned as whoever writes it could (each program rewritten with its digest
    records, or rewritten to the same size and touched back to its mtime, or given a setuid bit), then
    build-image again: the same image id (the same layers' bytes), each program's digest the published one."""
    import hashlib
    import os

    from openwork_sandbox.image import artifacts as npm_artifacts
    from openwork_sandbox.image.build import build_image
    from tests.support.npm_registry import forge_records

    ref = f"{REGISTRY}/{STACK_REPO}:poisoned-cache"
    settings = stack_settings(
        tmp_path,
        NPM_CONFIG_REGISTRY=fake_npm.url,
        OPENCODE_VERSION="9.9.1",
        OPENWORK_ORCHESTRATOR_VERSION="9.9.2",
        OPENWORK_CACHE_DIR=str(tmp_path / "cache"),
        OPENWORK_STATE_DIR=str(tmp_path / "state"),
        OPENWORK_MICROSANDBOX_IMAGE=ref,
    )
    first = build_image(settings)
    published = {name: hashlib.sha256(pub.program).hexdigest() for name, pub in fake_npm.programs.items()}
    assert {name: first["sha256"][name] for name in published} == published

    cached = {p.name: p for p in (settings.cache_dir / "bin").glob("*/*") if p.name in published}
    forge_records(cached["openwork"], b"#!/bin/sh\necho 9.9.2; id\n", "sha256")  # still answers its pin
    before = cached["opencode"].stat()
    cached["opencode"].write_bytes(b"#!/bin/sh\necho 9.9.1\nid >&2\n#".ljust(before.st_size, b"-"))  # same size
    os.utime(cached["opencode"], ns=(before.st_atime_ns, before.st_mtime_ns))
    npm_artifacts._FRESH_DOCS.clear()  # a new `invoke build-image`
    second = build_image(settings)
    assert second["image_id"] == first["image_id"]
    assert {name: second["sha256"][name] for name in published} == published

    os.chmod(cached["openwork"], 0o4755)
    npm_artifacts._FRESH_DOCS.clear()
    assert build_image(settings)["image_id"] == first["image_id"]
    subprocess.run(["docker", "rmi", ref], capture_output=True)


def test_build_image_with_no_registry_and_a_version_it_cannot_check_is_one_line(test_base_image, tmp_path):
    """The real `invoke build-image` on an offline host: nothing answers at NPM_CONFIG_REGISTRY and the
    package keeps no digests of the version asked for, so nothing could check the download cache."""
    from openwork_sandbox.net.ports import free_port
    from tests.support.lifecycle import invoke
    from tests.support.paths import STANDIN_SERVER, TEST_BASE_IMAGE

    dead = f"http://127.0.0.1:{free_port()}"
    proc = invoke(
        tmp_path,
        "build-image",
        timeout=300,
        NPM_CONFIG_REGISTRY=dead,
        OPENCODE_VERSION="9.9.1",
        OPENWORK_BASE_IMAGE=TEST_BASE_IMAGE,
        OPENWORK_SERVER_BIN=str(STANDIN_SERVER),
        OPENWORK_CACHE_DIR=str(tmp_path / "cache"),
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"OPENCODE_VERSION=9.9.1: npm registry {dead} did not answer, and this package keeps no digests of "
        "opencode-linux-x64-baseline@9.9.1 to check the download cache against: make the registry reachable "
        "(NPM_CONFIG_REGISTRY), use OPENCODE_VERSION=1.17.11 (its digests are kept), or set OPENWORK_OPENCODE_BIN "
        "to a local executable"
    )
