"""The one version parser: Python packages by PEP 440, npm programs by semver, both on ``packaging``.

``at_least`` compares installed Python packages with their minimums (doctor). ``npm_version``
checks a pinned npm version (settings) and ``npm_version_key`` orders a registry's versions: the
``major.minor.patch`` core is a ``packaging`` Version, a release sorts after its pre-releases, and
pre-release identifiers compare as semver says (numbers numerically, before words).
"""

from __future__ import annotations

import re

from packaging.version import InvalidVersion, Version

SEMVER = re.compile(r"^v?(?P<core>\d+\.\d+\.\d+)(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


def at_least(version: str, minimum: str) -> bool:
    """``version >= minimum`` by PEP 440; a version that does not parse is not enough."""
    try:
        return Version(version) >= Version(minimum)
    except InvalidVersion:
        return False


def npm_version(text: str) -> str | None:
    """``text`` without a leading ``v`` when it is a semver version (1.2.3, 1.2.3-beta.1), else None."""
    m = SEMVER.match(text.strip())
    return text.strip().lstrip("v") if m else None


def npm_version_key(text: str) -> tuple:
    """Sort key for npm versions: 1.2.3-beta.2 < 1.2.3-beta.10 < 1.2.3 < 1.10.0; junk sorts first."""
    m = SEMVER.match(text.strip())
    if not m:
        return (Version("0"), False, ())
    pre = m.group("pre")
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")) if pre else ()
    return (Version(m.group("core")), pre is None, ids)
