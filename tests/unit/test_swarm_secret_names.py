"""Swarm secret names (issue 29): ``<sandbox>.<file>.<sha12>`` while swarm takes it (64 characters at
most), shortened with a hash over the sandbox, the path and the value when longer."""

from __future__ import annotations

import hashlib

import pytest

from openwork_sandbox.runtimes.swarm.service import secret_name

TOKEN = b"t" * 32
SHA = hashlib.sha256(TOKEN).hexdigest()[:12]


@pytest.mark.parametrize(
    "sandbox,guest,expected",
    [
        ("dr-x", "/srv/openwork/secrets/openwork-token", f"dr-x.openwork-token.{SHA}"),
        # 64 characters exactly: kept as it is
        ("s" * 31, "/srv/openwork/secrets/openwork-host-token", f"{'s' * 31}.openwork-host-token.{SHA}"),
    ],
)
def test_a_name_swarm_takes_is_kept_whole(sandbox, guest, expected):
    assert secret_name(sandbox, guest, TOKEN) == expected
    assert len(expected) <= 64


def test_the_longest_name_kept_whole_is_64_characters():
    assert len(secret_name("s" * 31, "/srv/openwork/secrets/openwork-host-token", TOKEN)) == 64


def test_the_default_ephemeral_name_is_shortened_under_64_characters():
    sandbox, guest = "openwork-microsandbox-smoke-0a1b2c", "/srv/openwork/secrets/openwork-host-token"
    digest = hashlib.sha256(f"{sandbox}\0{guest}\0".encode() + TOKEN).hexdigest()[:12]
    name = secret_name(sandbox, guest, TOKEN)
    assert name == f"openwork-microsandbox-sm.openwork-host-token.{digest}"
    assert len(name) == 57


def test_two_long_sandboxes_with_one_prefix_never_share_a_secret():
    guest = "/srv/openwork/secrets/openwork-host-token"
    a = secret_name("openwork-microsandbox-smoke-000001", guest, TOKEN)
    b = secret_name("openwork-microsandbox-smoke-000002", guest, TOKEN)
    assert a != b and a.split(".")[0] == b.split(".")[0]


def test_a_new_value_is_a_new_secret_when_shortened_too():
    sandbox, guest = "openwork-microsandbox-smoke-0a1b2c", "/srv/openwork/secrets/openwork-token"
    assert secret_name(sandbox, guest, b"one") != secret_name(sandbox, guest, b"two")
