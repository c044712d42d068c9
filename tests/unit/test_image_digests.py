"""The digests kept in the package (``image.digests``) go with the default versions, and are the
real ones: a kept tarball in the tests' download cache hashes to its row, and so does its program."""

from __future__ import annotations

import base64
import hashlib
import tarfile

import pytest

from tests.support.paths import STACK_CACHE_DIR

# the default versions' packages the npm registry these rows were made against has
EXPECTED_ROWS = {
    ("opencode-linux-x64-baseline", "1.17.11", "package/bin/opencode"),
    ("openwork-orchestrator-linux-x64", "0.18.1", "package/bin/openwork"),
    ("openwork-orchestrator-linux-arm64", "0.18.1", "package/bin/openwork"),
}


def test_every_row_is_a_default_version_and_the_defaults_have_their_rows():
    from openwork_sandbox.config import SPEC_BY_FIELD
    from openwork_sandbox.image import artifacts, digests

    defaults = {
        program.package(arch): SPEC_BY_FIELD[program.version_field].default
        for program in artifacts.PROGRAMS
        for arch in ("amd64", "arm64")
    }
    for package, version in digests.KEPT:
        assert defaults.get(package) == version, (
            f"{package}@{version} is kept but {defaults.get(package)} is the default"
        )
    assert {(package, version) for package, version, _ in EXPECTED_ROWS} == set(digests.KEPT)
    for row in digests.KEPT.values():
        assert row.integrity.startswith("sha512-") and len(base64.b64decode(row.integrity[7:])) == 64
        assert len(bytes.fromhex(row.sha256)) == 32


@pytest.mark.parametrize("package,version,member", sorted(EXPECTED_ROWS))
def test_a_kept_row_matches_the_real_tarball_and_program(package, version, member):
    from openwork_sandbox.image import digests

    row = digests.KEPT[(package, version)]
    hex512 = base64.b64decode(row.integrity[7:]).hex()
    tarball = STACK_CACHE_DIR / "npm" / "sha512" / f"{hex512}.tgz"
    if not tarball.is_file():
        pytest.skip(f"{package}@{version} is not in the tests' download cache {STACK_CACHE_DIR}")
    assert hashlib.sha512(tarball.read_bytes()).hexdigest() == hex512
    with tarfile.open(tarball, "r:gz") as tar:
        src = tar.extractfile(member)
        assert src is not None
        assert hashlib.sha256(src.read()).hexdigest() == row.sha256
