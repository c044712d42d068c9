"""The download cache cannot lie: a cache poisoned as an attacker who can write it would (CI restores
it from actions/cache) never puts its bytes into the build context; downloads go to the configured
registry; with no registry, only the digests kept in the package can check a download.

The registry is a fake npm registry over real HTTP on 127.0.0.1 (``tests.support.npm_registry``,
real gzipped tar files); what the build stages is read from the real build context that
``image.build.stage_context`` writes, after ``image.artifacts.resolve``, as build-image does.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from openwork_sandbox.net.ports import free_port
from tests.support.npm_registry import FakeNpm, forge_records, fresh_process, integrity_of, make_tgz

VERSIONS = {"opencode": "9.9.1", "openwork": "9.9.2", "openwork-server": "9.9.3"}  # none of them kept
PACKAGES = {  # program -> (package on amd64, member)
    "opencode": ("opencode-linux-x64-baseline", "package/bin/opencode"),
    "openwork": ("openwork-orchestrator-linux-x64", "package/bin/openwork"),
    "openwork-server": ("openwork-server", "package/dist/bin/openwork-server"),
}
EVIL = b"#!/bin/sh\necho pwned\n"


def _program_bytes(name: str) -> bytes:
    return f"#!/bin/sh\necho {name} {VERSIONS[name]}\n".encode() + bytes(range(256)) * 64


@pytest.fixture
def npm(monkeypatch):
    """The configured registry, each program published at its version; a fresh process's memory."""
    fresh_process(monkeypatch)
    fake = FakeNpm()
    fake.published = {
        name: fake.publish(package, VERSIONS[name], member, _program_bytes(name))
        for name, (package, member) in PACKAGES.items()
    }
    yield fake
    fake.close()


def _settings(tmp_path: Path, registry: str, **environ: str):
    from openwork_sandbox.config import load_settings

    (tmp_path / "empty.env").write_text("")
    return load_settings(
        environ={
            "NPM_CONFIG_REGISTRY": registry,
            "OPENWORK_CACHE_DIR": str(tmp_path / "cache"),
            "OPENWORK_STATE_DIR": str(tmp_path / "state"),
            "OPENCODE_VERSION": VERSIONS["opencode"],
            "OPENWORK_ORCHESTRATOR_VERSION": VERSIONS["openwork"],
            "OPENWORK_SERVER_VERSION": VERSIONS["openwork-server"],
            **environ,
        },
        env_file=tmp_path / "empty.env",
        root=tmp_path,
    )


def _build(settings) -> dict[str, bytes]:
    """What build-image would bake: resolve, then stage the context; the staged programs' bytes.
    A new process each time (nothing remembered from an earlier build)."""
    from openwork_sandbox.image import artifacts as npm_artifacts
    from openwork_sandbox.image.build import stage_context

    npm_artifacts._FRESH_DOCS.clear()
    context = stage_context(settings, npm_artifacts.resolve(settings, "amd64"))
    return {p.name: p.read_bytes() for p in (context / "bin").iterdir()}


def _good(npm) -> dict[str, bytes]:
    return {name: pub.program for name, pub in npm.published.items()}


def _cached_programs(settings) -> dict[str, Path]:
    return {p.name: p for p in (settings.cache_dir / "bin").glob("*/*") if p.name in VERSIONS}


def test_a_program_rewritten_with_its_digest_records_is_extracted_again(npm, tmp_path, capfd):
    settings = _settings(tmp_path, npm.url)
    assert _build(settings) == _good(npm)
    cached = _cached_programs(settings)
    assert sorted(cached) == sorted(VERSIONS)
    for path in cached.values():
        forge_records(path, EVIL, "sha256")

    assert _build(settings) == _good(npm)
    assert {name: p.read_bytes() for name, p in cached.items()} == _good(npm)
    assert capfd.readouterr().err.count("was modified: extracting it again from the verified tarball") == 3


def test_a_program_rewritten_and_touched_back_to_its_mtime_is_caught(npm, tmp_path):
    settings = _settings(tmp_path, npm.url)
    _build(settings)
    path = _cached_programs(settings)["opencode"]
    good, before = path.read_bytes(), path.stat()
    path.write_bytes(EVIL.ljust(len(good), b"#"))  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    assert _build(settings)["opencode"] == good


def test_a_program_given_a_setuid_bit_in_the_cache_is_not_staged_with_it(npm, tmp_path):
    """The context bakes a file's mode (COPY keeps it, owner root): the genuine program setuid root
    would be an escalation for whatever runs in the sandbox."""
    import stat

    settings = _settings(tmp_path, npm.url)
    _build(settings)
    path = _cached_programs(settings)["openwork"]
    mtime = path.stat().st_mtime_ns
    os.chmod(path, 0o4755)
    os.utime(path, ns=(mtime, mtime))

    assert _build(settings)["openwork"] == npm.published["openwork"].program
    staged = tmp_path / "state" / "image-context" / "bin" / "openwork"
    assert stat.S_IMODE(staged.stat().st_mode) == 0o755


def test_tarball_and_cached_document_rewritten_together_are_downloaded_again_from_the_registry(npm, tmp_path):
    """What passed before: an evil tarball, a cached version document whose dist.integrity names it,
    the good tarball's file overwritten with it, and the programs rewritten. The document is asked of
    the registry, the bad tarball is downloaded again, the programs extracted from it."""
    settings = _settings(tmp_path, npm.url)
    _build(settings)
    sha512_dir = settings.cache_dir / "npm" / "sha512"
    for name, (package, member) in PACKAGES.items():
        pub = npm.published[name]
        evil_tgz = make_tgz({"package/package.json": b"{}", member: EVIL})
        evil_integrity = integrity_of(evil_tgz)
        evil_hex = hashlib.sha512(evil_tgz).hexdigest()
        doc = {"name": package, "version": pub.version, "dist": {"integrity": evil_integrity, "tarball": "x"}}
        docs = settings.cache_dir / "npm" / "docs"
        docs.mkdir(parents=True, exist_ok=True)
        (docs / f"{package}@{pub.version}.json").write_text(json.dumps(doc))
        forge_records(sha512_dir / f"{evil_hex}.tgz", evil_tgz, "sha512")
        forge_records(sha512_dir / f"{hashlib.sha512(pub.tgz).hexdigest()}.tgz", evil_tgz, "sha512")
        planted = settings.cache_dir / "bin" / f"{name}-{evil_hex[:16]}" / name
        planted.parent.mkdir(parents=True, exist_ok=True)
        forge_records(planted, EVIL, "sha256")
    for path in _cached_programs(settings).values():
        forge_records(path, EVIL, "sha256")
    npm.seen.clear()

    assert _build(settings) == _good(npm)
    for pub in npm.published.values():
        assert f"/{pub.package}/{pub.version}" in npm.seen  # the document, asked of the registry
        assert pub.tarball_path in npm.seen  # the overwritten tarball, downloaded again
        assert (sha512_dir / f"{hashlib.sha512(pub.tgz).hexdigest()}.tgz").read_bytes() == pub.tgz


def test_downloads_go_to_the_configured_registry_whatever_host_a_document_names(npm, tmp_path):
    elsewhere = FakeNpm()  # the host a document names: it would serve other bytes
    try:
        for name, (package, member) in PACKAGES.items():
            elsewhere.publish(package, VERSIONS[name], member, EVIL)
            # the configured registry's own document names the other host (a mirror keeping upstream URLs)
            npm.publish(package, VERSIONS[name], member, _program_bytes(name), tarball_base=elsewhere.url)
        settings = _settings(tmp_path, npm.url)
        assert _build(settings) == _good(npm)
        assert elsewhere.seen == []
        assert all(pub.tarball_path in npm.seen for pub in npm.published.values())

        # a document left in the cache by an earlier build against the other host, and a bad tarball
        pub = npm.published["opencode"]
        docs = settings.cache_dir / "npm" / "docs"
        docs.mkdir(parents=True, exist_ok=True)
        doc = {"name": pub.package, "version": pub.version, "dist": {"integrity": pub.integrity}}
        doc["dist"]["tarball"] = elsewhere.url + pub.tarball_path
        (docs / f"{pub.package}@{pub.version}.json").write_text(json.dumps(doc))
        tarball = settings.cache_dir / "npm" / "sha512" / f"{hashlib.sha512(pub.tgz).hexdigest()}.tgz"
        tarball.write_bytes(b"truncated")
        npm.seen.clear()
        assert _build(settings)["opencode"] == pub.program
        assert pub.tarball_path in npm.seen and elsewhere.seen == []
    finally:
        elsewhere.close()


def test_a_registry_url_with_a_path_keeps_it(npm, tmp_path):
    """NPM_CONFIG_REGISTRY with a path (a registry under a prefix, as some proxies serve one)."""
    from openwork_sandbox.image.artifacts import tarball_url

    settings = _settings(tmp_path, "https://127.0.0.1:4873/npm/")
    assert tarball_url(settings, "http://127.0.0.1:9/opencode/-/opencode-1.0.0.tgz") == (
        "https://127.0.0.1:4873/npm/opencode/-/opencode-1.0.0.tgz"
    )
    assert tarball_url(settings, "http://127.0.0.1:9/npm/opencode/-/opencode-1.0.0.tgz?x=1") == (
        "https://127.0.0.1:4873/npm/opencode/-/opencode-1.0.0.tgz?x=1"
    )
    plain = _settings(tmp_path, "http://127.0.0.1:4873")
    assert tarball_url(plain, "https://127.0.0.2/@scope/pkg/-/pkg-1.0.0.tgz") == (
        "http://127.0.0.1:4873/@scope/pkg/-/pkg-1.0.0.tgz"
    )


# --- digests kept in the package ---------------------------------------------------------------


@pytest.fixture
def kept(npm, monkeypatch):
    """The package keeps the fake programs' digests (computed here, from the published bytes)."""
    from openwork_sandbox.image import digests

    table = {
        (pub.package, pub.version): digests.Kept(pub.integrity, pub.program_sha256) for pub in npm.published.values()
    }
    monkeypatch.setattr(digests, "KEPT", table)
    return table


def test_kept_digests_check_the_cache_with_no_registry_and_nothing_else_does(npm, kept, tmp_path, capfd):
    """An offline host: the registry does not answer (nothing listens at NPM_CONFIG_REGISTRY)."""
    from openwork_sandbox.core.errors import UnreachableError

    offline = _settings(tmp_path, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UnreachableError) as cold:
        _build(offline)  # nothing cached: nothing to check, nothing to download
    assert cold.value.exit_code == 3 and "\n" not in cold.value.message
    assert "NPM_CONFIG_REGISTRY" in cold.value.message
    assert not (tmp_path / "state" / "image-context").exists()

    online = _settings(tmp_path, npm.url)
    assert _build(online) == _good(npm)  # downloaded, checked, extracted
    npm.seen.clear()
    for path in _cached_programs(online).values():
        forge_records(path, EVIL, "sha256")
    assert _build(online) == _good(npm)  # extracted again from the tarball the kept digest matched
    assert npm.seen == []  # with no request
    for path in _cached_programs(offline).values():
        forge_records(path, EVIL, "sha256")
    assert _build(offline) == _good(npm)  # and so with no registry at all

    pub = npm.published["opencode"]
    tarball = offline.cache_dir / "npm" / "sha512" / f"{hashlib.sha512(pub.tgz).hexdigest()}.tgz"
    forge_records(tarball, make_tgz({"package/bin/opencode": EVIL}), "sha512")
    forge_records(_cached_programs(offline)["opencode"], EVIL, "sha256")
    with pytest.raises(UnreachableError, match="did not answer"):
        _build(offline)  # refused before staging: the bad tarball cannot be downloaded again
    assert not tarball.exists()
    assert "does not match its integrity" in capfd.readouterr().err


def test_a_registry_that_serves_other_bytes_for_a_kept_version_is_refused(npm, kept, tmp_path):
    from openwork_sandbox.core.errors import WorkflowError

    other = FakeNpm()
    try:
        package, member = PACKAGES["opencode"]
        served = other.publish(package, VERSIONS["opencode"], member, EVIL)
        for name in ("openwork", "openwork-server"):
            pub = npm.published[name]
            other.publish(pub.package, pub.version, PACKAGES[name][1], pub.program)
        with pytest.raises(WorkflowError) as err:
            _build(_settings(tmp_path, other.url))
        message = err.value.message
        assert served.integrity in message and npm.published["opencode"].integrity in message
        assert "this package keeps" in message and "\n" not in message
        assert served.tarball_path not in other.seen
        assert _cached_programs(_settings(tmp_path, other.url)).get("opencode") is None
    finally:
        other.close()


def test_offline_a_version_without_kept_digests_is_refused_in_one_line(npm, tmp_path):
    from openwork_sandbox.core.errors import UnreachableError

    settings = _settings(tmp_path, npm.url)
    assert _build(settings) == _good(npm)  # everything in the cache: but nothing there is proof
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UnreachableError) as err:
        _build(_settings(tmp_path, dead))
    assert err.value.exit_code == 3
    assert err.value.message == (
        f"OPENCODE_VERSION=9.9.1: npm registry {dead} did not answer, and this package keeps no digests of "
        "opencode-linux-x64-baseline@9.9.1 to check the download cache against: make the registry reachable "
        "(NPM_CONFIG_REGISTRY), use OPENCODE_VERSION=1.17.11 (its digests are kept), or set OPENWORK_OPENCODE_BIN "
        "to a local executable"
    )
