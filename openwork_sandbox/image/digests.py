"""Digests kept in the package: what a cached download of a default version is checked against,
without trusting the download cache and without asking the registry (``image.artifacts``).

One row per npm package and version: the tarball's ``dist.integrity`` (sha512, as the registry
publishes it) and the sha256 of the program in that tarball. A version with a row builds from the
download cache with no request (also where the registry does not answer); any other version is
checked against the registry's ``dist.integrity``, fetched fresh. A default version in ``config/specs.py``
and its rows change in the same commit (``tests/unit/test_image_digests.py`` holds them together).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Kept:
    integrity: str  # the tarball's sha512, "sha512-<base64>"
    sha256: str  # the program's bytes in the tarball, hex


KEPT: dict[tuple[str, str], Kept] = {
    ("opencode-linux-x64-baseline", "1.17.11"): Kept(
        "sha512-y0sibv7zg0KDLD7hdMCLe4+YYP6t5PQmqTV88KR7jWIU7qvl1hyuIAI84QLCt+7DACpNsFsUfofu6Hib051jZw==",
        "0254a429cd0e6cf0ba53fc01672cf98e4a8dc728f7fa94be88f1e4b3645e6ded",
    ),
    ("openwork-orchestrator-linux-x64", "0.18.1"): Kept(
        "sha512-113i3zG15ZjBQVbY56qnF7lOiDt1enzIhrYuYoZD3qPUOfWefIFdYVRvzvvvzNPcUIL0s1/mcvEb/EKbHpDGtQ==",
        "67a58a86e05e5bb24fdf7b710ee867a5955f7858abcc796aa066d1e6a2c6dd22",
    ),
    ("openwork-orchestrator-linux-arm64", "0.18.1"): Kept(
        "sha512-3rr22qORjlJFXpNn9da3ioogKMI6GhH/94mlHr7nPqo7Od+cuz01V/TUCY0HADBaxN723wnwhd7Zkspna2KzJw==",
        "77ebff67141698e4ba70eb72d879734bfabd639e1096daf2a33cff6aba3944ae",
    ),
}


def kept(package: str, version: str) -> Kept | None:
    """The digests this package keeps for ``package@version``, or None."""
    return KEPT.get((package, version))
