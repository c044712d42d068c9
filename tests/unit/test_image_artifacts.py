"""Downloads from the real npm registry: integrity checked, cache content-addressed, tampering
caught, missing versions explained in one line.

The small meta package ``openwork-orchestrator`` (2 kB, it holds bin/openwork as a Node script)
stands in for the big platform packages where a test has to download again.
"""

from __future__ import annotations

import os

import pytest

from openwork_sandbox.net.ports import free_port
from tests.support.stack import stack_settings

SMALL = ("openwork-orchestrator", "0.18.1")


@pytest.fixture
def settings(tmp_path):
    return stack_settings(
        tmp_path, OPENWORK_CACHE_DIR=str(tmp_path / "cache"), OPENWORK_STATE_DIR=str(tmp_path / "state")
    )


def _files(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_download_is_verified_and_cached_by_content(settings):
    from openwork_sandbox.image import artifacts as npm_artifacts

    before = npm_artifacts.STATS["downloaded_bytes"]
    path = npm_artifacts.fetch_tarball(settings, *SMALL)
    first = npm_artifacts.STATS["downloaded_bytes"] - before
    doc = npm_artifacts.version_doc(settings, *SMALL)
    assert first == path.stat().st_size > 0
    assert npm_artifacts.file_sri(path) == doc["dist"]["integrity"]
    assert path.name == npm_artifacts.integrity_hex(doc["dist"]["integrity"]) + ".tgz"

    again = npm_artifacts.fetch_tarball(settings, *SMALL)
    assert again == path
    assert npm_artifacts.STATS["downloaded_bytes"] - before == first  # second fetch: zero bytes


def test_tampered_cache_file_is_detected_and_downloaded_again(settings, capfd):
    from openwork_sandbox.image import artifacts as npm_artifacts

    path = npm_artifacts.fetch_tarball(settings, *SMALL)
    good = path.read_bytes()
    path.write_bytes(good[:-10] + b"tampered!!")
    before = npm_artifacts.STATS["downloaded_bytes"]

    again = npm_artifacts.fetch_tarball(settings, *SMALL)
    assert again.read_bytes() == good
    assert npm_artifacts.STATS["downloaded_bytes"] - before == len(good)
    assert "does not match its integrity" in capfd.readouterr().err


def test_tampered_extracted_program_is_extracted_again(settings):
    from openwork_sandbox.image import artifacts as npm_artifacts

    program = npm_artifacts.PROGRAM_BY_NAME["openwork"]  # the meta package has package/bin/openwork too
    tarball = npm_artifacts.fetch_tarball(settings, *SMALL)
    first = npm_artifacts.extract_program(settings, program, tarball, *SMALL)
    original = first.path.read_bytes()
    with open(first.path, "ab") as f:
        f.write(b"\n# injected\n")
    second = npm_artifacts.extract_program(settings, program, tarball, *SMALL)
    assert second.path.read_bytes() == original
    assert second.sha256 == first.sha256 and os.access(second.path, os.X_OK)


def test_integrity_mismatch_names_package_and_digests_and_keeps_nothing(settings):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.image import artifacts as npm_artifacts

    wrong = npm_artifacts.sri(b"\x00" * 64)
    with pytest.raises(WorkflowError) as err:
        npm_artifacts.fetch_tarball(settings, *SMALL, integrity=wrong)
    message = err.value.message
    real = npm_artifacts.version_doc(settings, *SMALL)["dist"]["integrity"]
    assert "openwork-orchestrator@0.18.1" in message and wrong in message and real in message
    assert "\n" not in message
    assert _files(settings.cache_dir / "npm" / "sha512") == []  # no partial, no corrupt file kept


def test_missing_version_names_versions_and_the_override(settings, tmp_path):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.image import artifacts as npm_artifacts

    missing = stack_settings(tmp_path, OPENWORK_CACHE_DIR=str(settings.cache_dir), OPENCODE_VERSION="0.0.1")
    with pytest.raises(WorkflowError) as err:
        npm_artifacts.resolve(missing, "amd64")
    message = err.value.message
    assert "opencode-linux-x64-baseline@0.0.1" in message
    assert "the newest:" in message  # a few versions that exist
    assert "OPENWORK_OPENCODE_BIN" in message and "\n" not in message
    assert _files(settings.cache_dir / "npm" / "sha512") == []


def test_missing_package_is_one_line(settings):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.image import artifacts as npm_artifacts

    with pytest.raises(WorkflowError) as err:
        npm_artifacts.version_doc(settings, "openwork-sandbox-test-no-such-package", "1.0.0", "OPENWORK_SERVER_BIN")
    assert "has no package openwork-sandbox-test-no-such-package" in err.value.message
    assert "OPENWORK_SERVER_BIN" in err.value.message


def test_registry_setting_wins_and_a_dead_registry_is_one_line(tmp_path):
    from openwork_sandbox.core.errors import UnreachableError
    from openwork_sandbox.image import artifacts as npm_artifacts

    url = f"http://127.0.0.1:{free_port()}"
    dead = stack_settings(tmp_path, NPM_CONFIG_REGISTRY=url, OPENWORK_CACHE_DIR=str(tmp_path / "cache"))
    assert npm_artifacts.registry_url(dead) == url
    with pytest.raises(UnreachableError) as err:
        npm_artifacts.version_doc(dead, *SMALL)
    assert url in err.value.message and "NPM_CONFIG_REGISTRY" in err.value.message


def test_local_override_must_be_an_executable_file(tmp_path):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.image import artifacts as npm_artifacts

    program = npm_artifacts.PROGRAM_BY_NAME["openwork-server"]
    with pytest.raises(WorkflowError, match=r"OPENWORK_SERVER_BIN=.*no such file"):
        npm_artifacts.local_artifact(program, tmp_path / "nope")
    plain = tmp_path / "server"
    plain.write_text("#!/bin/sh\n")
    with pytest.raises(WorkflowError, match="not executable; chmod"):
        npm_artifacts.local_artifact(program, plain)


def test_docker_build_failures_are_one_line_naming_the_image(monkeypatch):
    import types

    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.image import build as image_build

    fake = types.SimpleNamespace(image="localhost:5000/openwork:test")

    def failing(lines, message="docker build --iidfile failed (exit 1): (no output)", error=WorkflowError):
        def stream(argv, timeout=None):
            yield from lines
            raise error(message)

        return stream

    monkeypatch.setattr(image_build, "stream_lines", failing(["Step 1/2 : FROM base", "no such file: x"]))
    with pytest.raises(WorkflowError) as failed:
        image_build._docker_build(fake, ["build", "."])
    assert failed.value.message == "docker build of localhost:5000/openwork:test failed: no such file: x"

    monkeypatch.setattr(image_build, "stream_lines", failing([]))
    with pytest.raises(WorkflowError) as silent:
        image_build._docker_build(fake, ["build", "."])
    assert silent.value.message == "docker build --iidfile failed (exit 1): (no output)"

    monkeypatch.setattr(
        image_build,
        "stream_lines",
        lambda argv, timeout=None: (line for line in ["Step 1/2 : FROM base", "Step 2/2 : COPY"]),
    )
    assert image_build._docker_build(fake, ["build", "."]) == "Step 1/2 : FROM base\nStep 2/2 : COPY"

    from openwork_sandbox.core.processes import CommandTimeout

    monkeypatch.setattr(
        image_build,
        "stream_lines",
        failing(["Step 1/2 : FROM base"], "docker build did not finish", error=CommandTimeout),
    )
    with pytest.raises(WorkflowError) as slow:
        image_build._docker_build(fake, ["build", "."], timeout=1800)
    assert slow.value.message == "docker build of localhost:5000/openwork:test did not finish within 1800s"


def test_a_silent_command_is_stopped_at_its_timeout():
    """stream_lines stops a command that prints nothing past its timeout (a hung `docker build`)."""
    import time

    from openwork_sandbox.core.processes import CommandTimeout, stream_lines

    started = time.monotonic()
    with pytest.raises(CommandTimeout) as err:
        list(stream_lines(["sleep", "60"], timeout=0.5))
    assert err.value.message == "sleep 60 did not finish within 0.5s"
    assert time.monotonic() - started < 30  # stopped, not waited out (60 s)
