"""The three programs from the npm registry: pinned, verified against ``dist.integrity``, cached.

- The registry URL comes from ``NPM_CONFIG_REGISTRY`` (settings) or ``npm config get registry``;
  no registry host is written in this code.
- A version document (``GET <registry>/<package>/<version>``) gives ``dist.tarball`` and
  ``dist.integrity`` (sha512, base64). Published versions are immutable, so the document is cached.
- Tarballs are cached by content (``<cache>/npm/sha512/<hex>.tgz``). Every use checks the cached
  file against the integrity; a bad cached file is deleted and downloaded again. A download that
  does not match is an error naming the package and both digests, and nothing is kept.
- The program is extracted once per tarball digest into ``<cache>/bin/<program>-<hex16>/``, with a
  sha256 record that every use checks; a modified program is extracted again.
- A file's digest is re-read only when its size, mtime, inode or ctime changed since the last read
  (any write changes them): a no-op rebuild hashes nothing and stays fast.

Every download is counted in :data:`STATS` (bytes), which is how a build reports "0 bytes".
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from urllib.parse import quote

import requests

from openwork_sandbox.config import Settings
from openwork_sandbox.core import console
from openwork_sandbox.core.errors import UnreachableError, WorkflowError
from openwork_sandbox.core.files import write_atomic
from openwork_sandbox.core.processes import run, which
from openwork_sandbox.core.versions import npm_version_key
from openwork_sandbox.net.http import outside_session

CHUNK = 1 << 20
FIXED_MTIME = 315532800  # 1980-01-01: the mtime of every baked file, for reproducible layers
STATS = {"downloaded_bytes": 0, "requests": 0}
_REGISTRY_CACHE: dict[str | None, str] = {}
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


def _doc_cache(settings: Settings, package: str, version: str) -> Path:
    return settings.cache_dir / "npm" / "docs" / f"{package.replace('/', '%2f')}@{version}.json"


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
    """The registry's document for ``package@version`` (cached: published versions never change)."""
    cached = _doc_cache(settings, package, version)
    if cached.exists():
        try:
            doc = json.loads(cached.read_text())
            if doc.get("dist", {}).get("integrity") and doc.get("dist", {}).get("tarball"):
                return doc
        except (OSError, ValueError):
            pass
    registry = registry_url(settings)
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
    dist = doc.get("dist") or {}
    if not str(dist.get("integrity", "")).startswith("sha512-") or not dist.get("tarball"):
        raise WorkflowError(
            f"{package}@{version} has no sha512 dist.integrity in {registry}; refusing an unverified "
            f"download{'; set ' + override_env + ' to a local executable' if override_env else ''}"
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cached, json.dumps({"name": doc.get("name"), "version": doc.get("version"), "dist": dist}).encode())
    return doc


# --- tarballs ------------------------------------------------------------------------------------


def integrity_hex(integrity: str) -> str:
    return base64.b64decode(integrity.split("-", 1)[1]).hex()


def sri(digest: bytes) -> str:
    return "sha512-" + base64.b64encode(digest).decode()


def _signature(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a cached file. The last result is kept beside it (``<file>.<algorithm>``) with
    the file's size, mtime, inode and ctime; while none of those changed the file is not re-read
    (any write changes them), which keeps a no-op rebuild fast."""
    record = path.with_name(path.name + f".{algorithm}")
    try:
        saved = json.loads(record.read_text())
        if saved.get("stat") == _signature(path):
            return saved["hex"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    write_atomic(record, json.dumps({"hex": h.hexdigest(), "stat": _signature(path)}).encode())
    return h.hexdigest()


def file_sri(path: Path) -> str:
    return sri(bytes.fromhex(file_digest(path, "sha512")))


def fetch_tarball(
    settings: Settings, package: str, version: str, *, integrity: str | None = None, override_env: str | None = None
) -> Path:
    """A verified tarball of ``package@version`` in the content-addressed cache.

    ``integrity`` overrides the registry's (tests use it to prove a mismatch is refused).
    """
    doc = version_doc(settings, package, version, override_env)
    expected = integrity or doc["dist"]["integrity"]
    if not expected.startswith("sha512-"):
        raise WorkflowError(f"{package}@{version}: only sha512 integrity is accepted, got {expected[:16]}…")
    path = settings.cache_dir / "npm" / "sha512" / f"{integrity_hex(expected)}.tgz"
    if path.exists():
        actual = file_sri(path)
        if actual == expected:
            return path
        console.info(
            f"! cached {package}@{version} does not match its integrity (cached {actual[:23]}…, "
            f"expected {expected[:23]}…): deleted, downloading again"
        )
        path.unlink()
        path.with_name(path.name + ".sha512").unlink(missing_ok=True)
    _download(settings, doc["dist"]["tarball"], path, package, version, expected)
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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def extract_program(settings: Settings, program: Program, tarball: Path, package: str, version: str) -> Artifact:
    """The program's executable, extracted once per tarball digest; its sha256 is re-checked."""
    key = tarball.stem[:16]
    folder = settings.cache_dir / "bin" / f"{program.name}-{key}"
    exe, record = folder / program.name, folder / "sha256"
    if exe.exists() and record.exists():
        digest = file_digest(exe, "sha256")
        if digest == record.read_text().strip():
            return Artifact(
                program.name,
                exe,
                digest,
                version,
                f"npm:{package}@{version}",
                integrity=sri(bytes.fromhex(tarball.stem)),
            )
        console.info(f"! cached {program.name} {version} was modified: extracting it again from the verified tarball")
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "r:gz") as tar:
        names = set(tar.getnames())
        member = next((m for m in program.member if m in names), None)
        if member is None:
            raise WorkflowError(
                f"{package}@{version} has no {' or '.join(program.member)}; set "
                f"{program.override_env} to a local {program.name} executable"
            )
        src = tar.extractfile(member)
        if src is None:
            raise WorkflowError(f"{package}@{version}: {member} is not a regular file")
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".partial-")
        with os.fdopen(fd, "wb") as out, src:
            shutil.copyfileobj(src, out, CHUNK)
    os.chmod(tmp, 0o755)
    os.utime(tmp, ns=(FIXED_MTIME * 10**9, FIXED_MTIME * 10**9))  # same layer bytes on every machine
    os.replace(tmp, exe)
    digest = file_digest(exe, "sha256")
    write_atomic(record, (digest + "\n").encode())
    return Artifact(
        program.name, exe, digest, version, f"npm:{package}@{version}", integrity=sri(bytes.fromhex(tarball.stem))
    )


def local_artifact(program: Program, path: Path) -> Artifact:
    """A local override as it is (never copied into the cache); a missing or non-executable file is
    a WorkflowError naming the setting."""
    if not path.is_file():
        raise WorkflowError(f"{program.override_env}={path}: no such file; point it at your {program.name} executable")
    if not os.access(path, os.X_OK):
        raise WorkflowError(f"{program.override_env}={path}: not executable; chmod +x it")
    return Artifact(program.name, path, sha256_file(path), None, f"local:{path}")


def resolve(settings: Settings, arch: str) -> dict[str, Artifact]:
    """All three programs, in image layer order: local overrides as they are, the rest from npm.
    Raises WorkflowError (an unpublished version, an integrity mismatch, a bad override) or
    UnreachableError (the registry did not answer)."""
    out: dict[str, Artifact] = {}
    for program in PROGRAMS:
        override = getattr(settings, program.override_field)
        if override:
            out[program.name] = local_artifact(program, Path(override))
            continue
        version = getattr(settings, program.version_field)
        package = program.package(arch)
        tarball = fetch_tarball(settings, package, version, override_env=program.override_env)
        out[program.name] = extract_program(settings, program, tarball, package, version)
    return out
