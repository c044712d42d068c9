"""The three programs from the npm registry: pinned, checked from their bytes on every use, cached.

The download cache (``OPENWORK_CACHE_DIR``) proves nothing: whoever can write it (CI restores it
with ``actions/cache``) can rewrite any file and any record in it. So a program is used only after
its bytes were checked against a record the cache cannot forge:

- a version with digests kept in the package (``image.digests``, the default versions): the
  tarball's sha512 and the program's sha256 from that table; no request is made;
- any other version: the registry's ``dist.integrity`` (sha512), asked of the registry once per
  process and never read from the cache, and the sha256 of the program read out of the tarball that
  matched it.

- The registry URL comes from ``NPM_CONFIG_REGISTRY`` (settings) or ``npm config get registry``;
  no registry host is written in this code. Every download goes to it: a version document's
  ``dist.tarball`` keeps its path and takes the configured registry's scheme, host and port.
- Tarballs are cached by content (``<cache>/npm/sha512/<hex>.tgz``) and hashed whenever one is
  needed; a bad cached file is deleted and downloaded again. A download that does not match is an
  error naming the package and both digests, and nothing is kept.
- The program is extracted into ``<cache>/bin/<program>-<hex16>/``; every use hashes its bytes and
  checks it is as extraction left it (a regular file, mode 0755, the fixed mtime); a modified one is
  extracted again from the verified tarball. No digest kept beside a cached file is read.
- A version without kept digests cannot be built while the registry does not answer (an offline
  host): one line naming the version's setting and the ways out.

Every download is counted in :data:`STATS` (bytes), which is how a build reports "0 bytes".
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import re
import stat
import tarfile
import tempfile
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from openwork_sandbox.config import SPEC_BY_FIELD, Settings
from openwork_sandbox.core import console
from openwork_sandbox.core.errors import UnreachableError, WorkflowError
from openwork_sandbox.core.processes import run, which
from openwork_sandbox.core.versions import npm_version_key
from openwork_sandbox.image import digests
from openwork_sandbox.net.http import outside_session

CHUNK = 1 << 20
FIXED_MTIME = 315532800  # 1980-01-01: the mtime of every baked file, for reproducible layers
STATS = {"downloaded_bytes": 0, "requests": 0}
_REGISTRY_CACHE: dict[str | None, str] = {}
_FRESH_DOCS: dict[tuple[str, str, str], dict] = {}  # (registry, package, version): asked this process
_SESSION: list[requests.Session] = []  # one session (proxies from the environment), made on first use


@dataclasses.dataclass(frozen=True)
class Program:
    name: str  # file name in /usr/local/bin
    version_field: str  # Settings field with the pinned version
    version_env: str
    override_field: str  # Settings field with a local executable
    override_env: str

    def package(self, arch: str) -> str:
        """The npm package holding this program for ``arch`` (``amd64``, ``arm64``); any other
        architecture is a WorkflowError naming the override setting."""
        npm_arch = {"amd64": "x64", "arm64": "arm64"}.get(arch)
        if npm_arch is None:
            raise WorkflowError(
                f"no published {self.name} build for architecture {arch}; set {self.override_env} "
                f"to a local {self.name} executable"
            )
        if self.name == "openwork":
            return f"openwork-orchestrator-linux-{npm_arch}"
        if self.name == "openwork-server":
            return "openwork-server"
        return "opencode-linux-x64-baseline" if npm_arch == "x64" else "opencode-linux-arm64"

    @property
    def member(self) -> tuple[str, ...]:
        """Where the executable may sit in the package tarball (first match wins)."""
        if self.name == "openwork-server":
            # the orchestrator looks for dist/bin/openwork-server in the openwork-server package
            return ("package/dist/bin/openwork-server", "package/bin/openwork-server")
        return (f"package/bin/{self.name}",)


PROGRAMS = (
    Program("opencode", "opencode_version", "OPENCODE_VERSION", "opencode_bin", "OPENWORK_OPENCODE_BIN"),
    Program(
        "openwork",
        "orchestrator_version",
        "OPENWORK_ORCHESTRATOR_VERSION",
        "orchestrator_bin",
        "OPENWORK_ORCHESTRATOR_BIN_PATH",
    ),
    Program("openwork-server", "server_version", "OPENWORK_SERVER_VERSION", "server_bin", "OPENWORK_SERVER_BIN"),
)
PROGRAM_BY_NAME = {p.name: p for p in PROGRAMS}


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One program ready to bake: a verified executable on disk."""

    program: str
    path: Path
    sha256: str
    version: str | None  # pinned version; None for a local override (it reports its own)
    source: str  # "npm:<package>@<version>" or "local:<path>"
    integrity: str | None = None


# --- registry ------------------------------------------------------------------------------------


def registry_url(settings: Settings) -> str:
    """The npm registry: NPM_CONFIG_REGISTRY (settings), else npm's own configuration."""
    if settings.npm_registry:
        return settings.npm_registry.rstrip("/")
    if None in _REGISTRY_CACHE:
        return _REGISTRY_CACHE[None]
    if which("npm") is None:
        raise WorkflowError("cannot tell which npm registry to use: set NPM_CONFIG_REGISTRY (or install npm)")
    url = run(["npm", "config", "get", "registry"], timeout=30).stdout.strip()
    if not re.match(r"^https?://", url):
        raise WorkflowError(f"npm config get registry returned {url!r}: set NPM_CONFIG_REGISTRY to the registry URL")
    _REGISTRY_CACHE[None] = url.rstrip("/")
    return _REGISTRY_CACHE[None]


def _get(url: str, registry: str, *, timeout: float, stream: bool = False, headers: dict | None = None):
    STATS["requests"] += 1
    if not _SESSION:
        _SESSION.append(outside_session())
    try:
        return _SESSION[0].get(url, timeout=timeout, stream=stream, headers=headers or {})
    except requests.RequestException as exc:
        raise UnreachableError(
            f"npm registry {registry} did not answer ({exc.__class__.__name__}): "
            "check the network or NPM_CONFIG_REGISTRY"
        ) from None


def existing_versions(settings: Settings, package: str) -> list[str]:
    """Versions the registry has for a package (newest last), [] when the package is unknown."""
    registry = registry_url(settings)
    resp = _get(
        f"{registry}/{quote(package, safe='@')}",
        registry,
        timeout=settings.request_timeout,
        headers={"Accept": "application/vnd.npm.install-v1+json"},
    )
    if resp.status_code != 200:
        return []
    try:
        versions = list(resp.json().get("versions", {}))
    except ValueError:
        return []
    return sorted(versions, key=npm_version_key)


def version_doc(settings: Settings, package: str, version: str, override_env: str | None = None) -> dict:
    """The registry's document for ``package@version``, asked of the registry (once per process and
    registry, never read from the download cache: its ``dist.integrity`` is what a cached download
    is checked against). An unpublished version, or one without a sha512 integrity, is a
    WorkflowError naming the versions there are and ``override_env``; a registry that does not
    answer, an UnreachableError."""
    registry = registry_url(settings)
    key = (registry, package, version)
    if key in _FRESH_DOCS:
        return _FRESH_DOCS[key]
    resp = _get(f"{registry}/{quote(package, safe='@')}/{quote(version)}", registry, timeout=settings.request_timeout)
    if resp.status_code == 404:
        versions = existing_versions(settings, package)
        hint = f"; or set {override_env} to a local executable" if override_env else ""
        if not versions:
            raise WorkflowError(f"npm registry {registry} has no package {package}{hint}")
        raise WorkflowError(
            f"npm registry {registry} has no {package}@{version}; it has {len(versions)} "
            f"version{'s' if len(versions) != 1 else ''}, the newest: {', '.join(versions[-5:])}{hint}"
        )
    if resp.status_code != 200:
        raise WorkflowError(f"npm registry {registry} answered HTTP {resp.status_code} for {package}@{version}")
    try:
        doc = resp.json()
    except ValueError:
        raise WorkflowError(f"npm registry {registry} sent a non-JSON document for {package}@{version}") from None
    dist = doc.get("dist") if isinstance(doc, dict) else None
    if (
        not isinstance(dist, dict)
        or not str(dist.get("integrity", "")).startswith("sha512-")
        or not isinstance(dist.get("tarball"), str)
    ):
        raise WorkflowError(
            f"{package}@{version} has no sha512 dist.integrity in {registry}; refusing an unverified "
            f"download{'; set ' + override_env + ' to a local executable' if override_env else ''}"
        )
    _FRESH_DOCS[key] = doc
    return doc


def tarball_url(settings: Settings, url: str) -> str:
    """``url`` (a document's ``dist.tarball``) on the configured registry: the registry's scheme,
    host and port, the path kept (under the registry's own path when it is not there already), so a
    download never goes to a host the document names."""
    registry = urlsplit(registry_url(settings))
    path, query = urlsplit(url).path, urlsplit(url).query
    prefix = registry.path.rstrip("/")
    if prefix and path != prefix and not path.startswith(prefix + "/"):
        path = prefix + "/" + path.lstrip("/")
    return urlunsplit((registry.scheme, registry.netloc, path, query, ""))


# --- tarballs ------------------------------------------------------------------------------------


def integrity_hex(integrity: str) -> str:
    return base64.b64decode(integrity.split("-", 1)[1]).hex()


def sri(digest: bytes) -> str:
    return "sha512-" + base64.b64encode(digest).decode()


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of the file's bytes, read whole on every call: no digest kept beside a cached file
    is trusted (its size and mtime can be forged)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sri(path: Path) -> str:
    return sri(bytes.fromhex(file_digest(path, "sha512")))


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def tarball_path(settings: Settings, integrity: str) -> Path:
    return settings.cache_dir / "npm" / "sha512" / f"{integrity_hex(integrity)}.tgz"


def fetch_tarball(
    settings: Settings, package: str, version: str, *, integrity: str | None = None, override_env: str | None = None
) -> Path:
    """A tarball of ``package@version`` in the content-addressed cache whose bytes match ``integrity``
    (tests pass a wrong one to prove a mismatch is refused), else the digest the package keeps, else
    the registry's ``dist.integrity`` asked now. A cached file is hashed on every call; a bad one is
    deleted and downloaded again from the configured registry. Raises WorkflowError (a mismatch, or
    the registry's integrity differs from the kept one) or UnreachableError."""
    kept = digests.kept(package, version)
    if integrity:
        expected = integrity
    elif kept:
        expected = kept.integrity
    else:
        expected = version_doc(settings, package, version, override_env)["dist"]["integrity"]
    if not expected.startswith("sha512-"):
        raise WorkflowError(f"{package}@{version}: only sha512 integrity is accepted, got {expected[:16]}…")
    path = tarball_path(settings, expected)
    if path.exists():
        actual = file_sri(path)
        if actual == expected:
            return path
        console.info(
            f"! cached {package}@{version} does not match its integrity (cached {actual[:23]}…, "
            f"expected {expected[:23]}…): deleted, downloading again"
        )
        path.unlink()
    doc = version_doc(settings, package, version, override_env)
    if kept and not integrity and doc["dist"]["integrity"] != kept.integrity:
        raise WorkflowError(
            f"npm registry {registry_url(settings)} gives {package}@{version} the dist.integrity "
            f"{doc['dist']['integrity']}, not the {kept.integrity} this package keeps: refusing it "
            "(check NPM_CONFIG_REGISTRY)"
        )
    _download(settings, tarball_url(settings, doc["dist"]["tarball"]), path, package, version, expected)
    return path


def _download(settings: Settings, url: str, dest: Path, package: str, version: str, expected: str) -> None:
    registry = registry_url(settings)
    dest.parent.mkdir(parents=True, exist_ok=True)
    resp = _get(url, registry, timeout=settings.request_timeout, stream=True)
    if resp.status_code != 200:
        raise WorkflowError(
            f"npm registry {registry} answered HTTP {resp.status_code} for the {package}@{version} tarball"
        )
    total = int(resp.headers.get("Content-Length") or 0) or None
    h = hashlib.sha512()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".partial-")
    try:
        with (
            os.fdopen(fd, "wb") as out,
            console.Progress(f"{package}@{version}", total) as bar,
            console.heartbeat(lambda: f"downloading {package}@{version}: {console.human_bytes(bar.done)} so far"),
        ):
            try:
                for chunk in resp.iter_content(CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    STATS["downloaded_bytes"] += len(chunk)
                    bar.advance(len(chunk))
            except requests.RequestException as exc:
                raise UnreachableError(
                    f"download of {package}@{version} from {registry} broke off ({exc.__class__.__name__}); run again"
                ) from None
        actual = sri(h.digest())
        if actual != expected:
            raise WorkflowError(
                f"{package}@{version}: downloaded tarball does not match dist.integrity "
                f"(expected {expected}, got {actual}); nothing was kept"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- programs ------------------------------------------------------------------------------------


def program_path(settings: Settings, program: Program, integrity: str) -> Path:
    """Where the program of the tarball with ``integrity`` is kept once extracted."""
    return settings.cache_dir / "bin" / f"{program.name}-{integrity_hex(integrity)[:16]}" / program.name


def _as_extracted(path: Path) -> bool:
    """``path`` is a regular file (not a link) with the mode and mtime extraction gives it: the
    context bakes both (a setuid bit set in the cache would be baked too)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755 and st.st_mtime_ns == FIXED_MTIME * 10**9


def _member(tarball: Path, program: Program, package: str, version: str, out=None) -> str:
    """The sha256 of the program in ``tarball`` (the first of ``program.member`` it has), its bytes
    also written to ``out`` when given. A tarball without it is a WorkflowError naming the override."""
    with tarfile.open(tarball, "r:gz") as tar:
        found = {}
        for info in tar:  # read as far as the preferred member only: the archive is decompressed once
            if info.name in program.member:
                found[info.name] = info
                if info.name == program.member[0]:
                    break
        member = next((found[name] for name in program.member if name in found), None)
        if member is None:
            raise WorkflowError(
                f"{package}@{version} has no {' or '.join(program.member)}; set "
                f"{program.override_env} to a local {program.name} executable"
            )
        src = tar.extractfile(member)
        if src is None:
            raise WorkflowError(f"{package}@{version}: {member.name} is not a regular file")
        h = hashlib.sha256()
        with src:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                h.update(chunk)
                if out is not None:
                    out.write(chunk)
    return h.hexdigest()


def _npm_artifact(program: Program, exe: Path, sha256: str, package: str, version: str, integrity: str) -> Artifact:
    return Artifact(program.name, exe, sha256, version, f"npm:{package}@{version}", integrity=integrity)


def extract_program(
    settings: Settings, program: Program, tarball: Path, package: str, version: str, expected_sha256: str | None = None
) -> Artifact:
    """The program from ``tarball`` (a verified tarball from :func:`fetch_tarball`), extracted once
    into ``<cache>/bin/<program>-<hex16>/``. Every call hashes the cached executable against
    ``expected_sha256`` (the digest the package keeps) or, without one, the program read out of the
    tarball; one that differs, or is not as extraction left it (a regular file, mode 0755, the fixed
    mtime), is extracted again. A tarball whose program
    does not hash to ``expected_sha256`` is a WorkflowError, and nothing is kept."""
    integrity = sri(bytes.fromhex(tarball.stem))
    exe = program_path(settings, program, integrity)
    if exe.exists() or exe.is_symlink():
        expected = expected_sha256 or _member(tarball, program, package, version)
        if _as_extracted(exe) and sha256_file(exe) == expected:
            return _npm_artifact(program, exe, expected, package, version, integrity)
        console.info(f"! cached {program.name} {version} was modified: extracting it again from the verified tarball")
    exe.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=exe.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _member(tarball, program, package, version, out)
        if expected_sha256 and digest != expected_sha256:
            raise WorkflowError(
                f"{package}@{version}: its {program.name} has sha256 {digest}, not the {expected_sha256} this "
                "package keeps; nothing was kept"
            )
        os.chmod(tmp, 0o755)
        os.utime(tmp, ns=(FIXED_MTIME * 10**9, FIXED_MTIME * 10**9))  # same layer bytes on every machine
        os.replace(tmp, exe)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return _npm_artifact(program, exe, digest, package, version, integrity)


def local_artifact(program: Program, path: Path) -> Artifact:
    """A local override as it is (never copied into the cache); a missing or non-executable file is
    a WorkflowError naming the setting."""
    if not path.is_file():
        raise WorkflowError(f"{program.override_env}={path}: no such file; point it at your {program.name} executable")
    if not os.access(path, os.X_OK):
        raise WorkflowError(f"{program.override_env}={path}: not executable; chmod +x it")
    return Artifact(program.name, path, sha256_file(path), None, f"local:{path}")


def check_verifiable(settings: Settings, program: Program, package: str, version: str) -> None:
    """``package@version`` can be checked: the package keeps its digests, or the registry has it
    (asked now, see :func:`version_doc`). A registry that does not answer is an UnreachableError in
    one line naming the version's setting and the ways out (nothing else could check the cache)."""
    if digests.kept(package, version):
        return
    try:
        version_doc(settings, package, version, program.override_env)
    except UnreachableError:
        default = SPEC_BY_FIELD[program.version_field].default
        use_default = (
            f", use {program.version_env}={default} (its digests are kept)" if digests.kept(package, default) else ""
        )
        raise UnreachableError(
            f"{program.version_env}={version}: npm registry {registry_url(settings)} did not answer, and this "
            f"package keeps no digests of {package}@{version} to check the download cache against: make the "
            f"registry reachable (NPM_CONFIG_REGISTRY){use_default}, or set {program.override_env} to a local executable"
        ) from None


def npm_program(settings: Settings, program: Program, arch: str) -> Artifact:
    """``program`` at its pinned version for ``arch``, its bytes checked (see the module's docstring).
    With kept digests a cached program that matches them needs neither the tarball nor a request."""
    version = getattr(settings, program.version_field)
    package = program.package(arch)
    check_verifiable(settings, program, package, version)
    kept = digests.kept(package, version)
    if kept:
        exe = program_path(settings, program, kept.integrity)
        if _as_extracted(exe) and sha256_file(exe) == kept.sha256:
            return _npm_artifact(program, exe, kept.sha256, package, version, kept.integrity)
    tarball = fetch_tarball(settings, package, version, override_env=program.override_env)
    return extract_program(settings, program, tarball, package, version, kept.sha256 if kept else None)


def resolve(settings: Settings, arch: str) -> dict[str, Artifact]:
    """All three programs, in image layer order: local overrides as they are, the rest from npm
    (:func:`npm_program`). Raises WorkflowError (an unpublished version, an integrity mismatch, a bad
    override) or UnreachableError (the registry did not answer)."""
    out: dict[str, Artifact] = {}
    for program in PROGRAMS:
        override = getattr(settings, program.override_field)
        if override:
            out[program.name] = local_artifact(program, Path(override))
        else:
            out[program.name] = npm_program(settings, program, arch)
    return out
