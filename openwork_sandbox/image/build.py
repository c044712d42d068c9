"""``build-image``: bake the three pinned, verified programs into a lean image.

1. The base image must exist locally (or be pullable); else the error says how to make one.
2. The programs come from ``image.artifacts`` (verified, cached) or from local overrides.
3. They are staged, with ``image/context/Dockerfile`` and the entrypoint, in a build context under the
   state folder (hard links to the cache where possible) and built with the classic builder; the
   ``Dockerfile`` has no ``RUN``, so nothing in the build needs a network or an emulator.
4. One container checks every baked program's ``--version`` (skipped for an image id already
   checked); a pinned version that does not match fails the build, and the image is tagged only
   after the check passed.
5. The result (image id, size, versions) is printed, and kept in ``.state/last-build.json`` for
   ``push-image``.

Labels: ``created`` comes from ``SOURCE_DATE_EPOCH`` or the git commit time and ``revision`` from
the git commit, so a rebuild of the same inputs keeps the same image id.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from openwork_sandbox.config import Settings
from openwork_sandbox.core import console, gha
from openwork_sandbox.core.errors import Interrupted, WorkflowError
from openwork_sandbox.core.files import private_dir, write_atomic
from openwork_sandbox.core.processes import CommandTimeout, docker, last_line, run, stream_lines, which
from openwork_sandbox.image import artifacts as npm_artifacts

IMAGE_DIR = Path(__file__).resolve().parent / "context"  # package data: ships in the wheel
CONTEXT_FILES = (
    "Dockerfile",
    "microsandbox-entrypoint.sh",
    "opencode-gate",
    "opencode-gate.js",
    "openwork-server-gate",
    "openwork-supervise",
)
VERSION_RE = re.compile(r"\d+\.\d+\.\d+(?:-[\w.-]+)?")
LAST_BUILD = "last-build.json"
VERIFIED = "verified-images.json"
PROGRAM_LABEL = "io.openwork.{}.version"
DEFAULT_BASE = "debian:bookworm-slim"
# seconds the one-container version check may take: opencode's first --version is slow under
# emulation and on a loaded host (the check prints a heartbeat meanwhile)
VERSION_CHECK_TIMEOUT = 900.0
SETUP_BASE = "openwork-base:bookworm-slim"  # what scripts/setup makes where DEFAULT_BASE cannot be pulled


# --- state ---------------------------------------------------------------------------------------


def last_build_path(settings: Settings) -> Path:
    """``<state>/last-build.json``: what the last build made, for ``push-image``."""
    return settings.state_dir / LAST_BUILD


def read_last_build(settings: Settings) -> dict | None:
    """The last build's record; None when there is none or it cannot be read."""
    try:
        return json.loads(last_build_path(settings).read_text())
    except (OSError, ValueError):
        return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: Any) -> None:
    """``data`` as JSON at ``path`` (a file of the state folder: made, git-ignored, when missing)."""
    if not path.parent.is_dir():
        private_dir(path.parent, git_ignored=True)
    write_atomic(path, json.dumps(data, indent=2) + "\n", mode=0o644)


# --- base image ----------------------------------------------------------------------------------


def ensure_base_image(settings: Settings) -> dict:
    """The base image's id, architecture and reference; pull it if it is not here; a clear error if
    neither. With ``OPENWORK_BASE_IMAGE`` at its default and that image neither here nor pullable,
    the base ``scripts/setup`` made (:data:`SETUP_BASE`) is used, saying so in one line."""
    base = settings.base_image
    proc = docker("image", "inspect", "--format", "{{.Id}} {{.Architecture}}", base, check=False)
    if proc.returncode != 0:
        docker("version", "--format", "{{.Server.Version}}")  # an engine that does not answer says so
        console.info(f"base image {base} is not here; pulling it")
        with console.heartbeat(f"pulling {base}"):
            pull = docker("pull", base, check=False, timeout=300)
        if pull.returncode != 0:
            fallback = _setup_base(settings)
            if fallback:
                console.info(
                    f"{base} cannot be pulled here: building on {SETUP_BASE}, the base scripts/setup made "
                    f"(set OPENWORK_BASE_IMAGE to choose another)"
                )
                return fallback
            raise WorkflowError(
                f"base image {base} is not available (pull failed: {last_line(pull.stderr)}); make one with "
                f"scripts/make-base-image and set OPENWORK_BASE_IMAGE={SETUP_BASE}"
            )
        proc = docker("image", "inspect", "--format", "{{.Id}} {{.Architecture}}", base)
    image_id, arch = proc.stdout.split()
    return {"id": image_id, "arch": arch, "ref": base}


def _setup_base(settings: Settings) -> dict | None:
    """:data:`SETUP_BASE` when OPENWORK_BASE_IMAGE was left at its default and that image is here."""
    if settings.base_image != DEFAULT_BASE or settings.origin("base_image") != "default":
        return None
    proc = docker("image", "inspect", "--format", "{{.Id}} {{.Architecture}}", SETUP_BASE, check=False)
    if proc.returncode != 0:
        return None
    image_id, arch = proc.stdout.split()
    return {"id": image_id, "arch": arch, "ref": SETUP_BASE}


# --- labels --------------------------------------------------------------------------------------


def _git(settings: Settings, *args: str) -> str | None:
    if which("git") is None:
        return None
    proc = run(["git", "-C", str(settings.project_root), *args], check=False, timeout=10)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def image_metadata(settings: Settings) -> dict[str, str]:
    """The label build arguments: ``IMAGE_CREATED`` (``SOURCE_DATE_EPOCH``, else the commit time, else
    1970), ``IMAGE_REVISION`` (the commit, else ``unknown``) and ``IMAGE_SOURCE`` (the origin's URL, an
    scp-like one as https, never with credentials; else empty). Same checkout, same labels."""
    revision = _git(settings, "rev-parse", "HEAD") or "unknown"
    if settings.source_date_epoch is not None:
        epoch = settings.source_date_epoch
    else:
        commit_time = _git(settings, "log", "-1", "--format=%ct")
        epoch = int(commit_time) if commit_time and commit_time.isdigit() else 0
    created = _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    source = _git(settings, "config", "--get", "remote.origin.url") or ""
    if re.match(r"^[^/]+@[^:]+:", source):  # scp-like git@host:owner/repo -> https URL
        user_host, path = source.split(":", 1)
        source = f"https://{user_host.split('@', 1)[1]}/{path}"
    source = re.sub(r"^(https?://)[^/@]+@", r"\1", source)  # never a credential in a label
    return {"IMAGE_CREATED": created, "IMAGE_REVISION": revision, "IMAGE_SOURCE": source}


# --- build context -------------------------------------------------------------------------------


def _place(src: Path, dest: Path, *, link: bool) -> None:
    """Put ``src`` at ``dest``: a hard link to the cache when possible (no copy; a link already in
    place is left alone), else a copy with fixed mode and mtime."""
    if dest.exists() and link:
        try:
            if os.path.samefile(src, dest):
                return
        except OSError:
            pass
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    if link:
        try:
            os.link(src, dest)
            return
        except OSError:
            pass
    shutil.copyfile(src, dest)
    os.chmod(dest, 0o755)
    os.utime(dest, ns=(npm_artifacts.FIXED_MTIME * 10**9,) * 2)


def stage_context(
    settings: Settings, artifacts: dict[str, npm_artifacts.Artifact], folder: str = "image-context"
) -> Path:
    """``<state>/<folder>``: the context files and ``bin/<program>`` for each artifact, nothing else;
    a context file with the same bytes, or a cached program already linked there, is left alone."""
    context = settings.state_dir / folder
    (context / "bin").mkdir(parents=True, exist_ok=True)
    for name in CONTEXT_FILES:
        src, dest = IMAGE_DIR / name, context / name
        if not dest.exists() or dest.read_bytes() != src.read_bytes():
            _place(src, dest, link=False)
        if name == "Dockerfile":
            os.chmod(dest, 0o644)
    for name, artifact in artifacts.items():
        # cached npm programs are hard-linked; a user's own executable is copied (never touched)
        _place(artifact.path, context / "bin" / name, link=artifact.source.startswith("npm:"))
    for extra in (context / "bin").iterdir():
        if extra.name not in artifacts:
            extra.unlink()
    return context


# --- version check -------------------------------------------------------------------------------


def check_versions(settings: Settings, image_id: str, artifacts: dict[str, npm_artifacts.Artifact]) -> dict[str, str]:
    """Run every baked program's ``--version`` in one container (no network); pinned versions must
    match (:func:`compare_versions`). The result is kept per image id in ``<state>/verified-images.json``,
    so an image already checked is not run again."""
    verified_path = settings.state_dir / VERIFIED
    verified = _read_json(verified_path)
    if image_id in verified:
        return verified[image_id]
    script = (
        "for p in " + " ".join(artifacts) + '; do printf "%s=" "$p"; "$p" --version 2>&1 | tr "\\n" " "; echo; done'
    )
    proc = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
        "-e",
        "HOME=/tmp",
        image_id,
        "-c",
        script,
        timeout=VERSION_CHECK_TIMEOUT,
    )
    outputs: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        name, _, output = line.partition("=")
        if name in artifacts:
            outputs[name] = output
    reported = compare_versions(outputs, artifacts)
    verified[image_id] = reported
    _write_json(verified_path, dict(list(verified.items())[-50:]))  # the last 50 images are plenty
    return reported


def compare_versions(
    outputs: dict[str, str], artifacts: dict[str, npm_artifacts.Artifact], where: str = ""
) -> dict[str, str]:
    """The versions the programs' ``--version`` outputs name; a pin that does not match fails the build."""
    reported: dict[str, str] = {}
    for name, output in outputs.items():
        match = VERSION_RE.search(output)
        reported[name] = match.group(0) if match else ""
    problems = []
    for name, artifact in artifacts.items():
        got = reported.get(name, "")
        if not got:
            problems.append(f"{name} --version printed no version")
        elif artifact.version and got != artifact.version:
            program = npm_artifacts.PROGRAM_BY_NAME[name]
            problems.append(f"{name} reports {got}, pinned {artifact.version} ({program.version_env})")
    if problems:
        raise WorkflowError(f"baked programs{where} fail the version check: " + "; ".join(problems))
    return reported


def _cache_stats(output: str) -> tuple[int, int]:
    """(steps the classic builder can take from its cache, steps it did take from it).
    ``FROM`` and the ``ARG`` lines before it are never cached, so they are not counted."""
    instructions = re.findall(r"^Step \d+/\d+ : (\w+)", output, re.M)
    first_from = next((i for i, word in enumerate(instructions) if word.upper() == "FROM"), -1)
    return len(instructions) - first_from - 1, output.count("Using cache")


def _host_reported_version(path: Path) -> str:
    """What a local override says it is, for its label ("local" when it cannot run on this host)."""
    try:
        proc = run([str(path), "--version"], check=False, timeout=15)
    except (WorkflowError, OSError):  # e.g. a Linux binary on a macOS host: "Exec format error"
        return "local"
    match = VERSION_RE.search(proc.stdout + proc.stderr) if proc.returncode == 0 else None
    return match.group(0) if match else "local"


# --- build ---------------------------------------------------------------------------------------


def build_image(settings: Settings, as_json: bool = False, *, no_cache: bool = False) -> dict:
    """Build ``settings.image`` from the pinned programs; print and return what was built.

    ``no_cache`` builds every layer again (scripts/bench-image uses it to time a cold build).
    The host's platform only: ``image.multiplatform.build_image`` is what ``build-image`` calls.
    Raises WorkflowError for a missing base, a download or integrity failure, a failed build or a
    failed version check; the tag moves only after the check passed."""
    with _build_lock(settings):
        return _build(settings, as_json, no_cache)


@contextlib.contextmanager
def _build_lock(settings: Settings):
    """One build at a time per state folder (they share the build context and the cache)."""
    private_dir(settings.state_dir, own=settings.origin("state_dir") == "default", git_ignored=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(settings.state_dir / ".image-build.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.info("waiting for another build-image in this project to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build(settings: Settings, as_json: bool, no_cache: bool) -> dict:
    started = time.monotonic()
    downloaded_before = npm_artifacts.STATS["downloaded_bytes"]
    base = ensure_base_image(settings)
    artifacts = npm_artifacts.resolve(settings, base["arch"])
    context = stage_context(settings, artifacts)
    meta = image_metadata(settings)
    pinned = {name: (a.version or _host_reported_version(a.path)) for name, a in artifacts.items()}
    build_args = {
        "BASE_IMAGE": base["ref"],
        "OPENWORK_VERSION": pinned["openwork"],
        "OPENWORK_SERVER_VERSION": pinned["openwork-server"],
        "OPENCODE_VERSION": pinned["opencode"],
        **meta,
    }
    iidfile = context.parent / ".image-context.iid"
    # tagged only once the version check passed: a failed build leaves the previous tag alone
    argv = ["build", "--iidfile", str(iidfile)] + (["--no-cache"] if no_cache else [])
    for key, value in build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    console.info(f"building {settings.image} on {base['ref']} ({base['arch']})")
    output = _docker_build(settings, argv + [str(context)])
    steps, cache_hits = _cache_stats(output)
    image_id = iidfile.read_text().strip()
    with console.heartbeat(f"checking the baked programs' versions in {image_id[:19]}"):
        versions = check_versions(settings, image_id, artifacts)
    docker("tag", image_id, settings.image)
    size = int(docker("image", "inspect", "--format", "{{.Size}}", image_id).stdout.strip())
    binaries = sum(a.path.stat().st_size for a in artifacts.values())
    result = {
        "image": settings.image,
        "image_id": image_id,
        "size": size,
        "binaries_size": binaries,
        "overhead": size - binaries,
        "versions": {name: versions[name] for name in ("openwork", "openwork-server", "opencode")},
        "sources": {name: a.source for name, a in artifacts.items()},
        "sha256": {name: a.sha256 for name, a in artifacts.items()},
        "base_image": base["ref"],
        "arch": base["arch"],
        "created": meta["IMAGE_CREATED"],
        "revision": meta["IMAGE_REVISION"],
        "downloaded_bytes": npm_artifacts.STATS["downloaded_bytes"] - downloaded_before,
        "build_steps": steps,
        "cache_hits": cache_hits,
        "seconds": round(time.monotonic() - started, 2),
    }
    _write_json(last_build_path(settings), result)
    if as_json:
        console.emit_json(result)
    else:
        _print(result)
    return result


def _docker_build(settings: Settings, argv: list[str], timeout: float = 1800) -> str:
    """``docker build``, its step lines printed as they come (folded under GitHub Actions, and a
    heartbeat between lines that take long); returns the whole output for the cache figures.
    Ctrl+C or SIGTERM (taken as Ctrl+C by ``build-image``) stops it and what it started, then raises
    ``Interrupted`` (one line, exit 130): the last build's record (what push-image pushes) is unchanged."""
    lines: list[str] = []
    with gha.group(f"docker build {settings.image}"), console.heartbeat(f"docker build {settings.image}"):
        try:
            # closed (the build stopped) before an interrupt's line is said
            with contextlib.closing(stream_lines(["docker", *argv], timeout=timeout)) as output:
                for line in output:  # stopped at the timeout, silent or not
                    lines.append(line)
                    if line.strip():
                        console.info(f"  {line}")
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted: stopped docker build of {settings.image} (nothing of it is left running); "
                "push-image still pushes the last finished build: `invoke build-image` builds again"
            ) from None
        except CommandTimeout:
            raise WorkflowError(f"docker build of {settings.image} did not finish within {timeout:.0f}s") from None
        except WorkflowError:
            if not lines:  # docker did not start, or said nothing: stream_lines' own line says so
                raise
            raise WorkflowError(f"docker build of {settings.image} failed: {last_line(chr(10).join(lines))}") from None
    return "\n".join(lines)


def _print(r: dict) -> None:
    console.info(f"{console.OK} built {r['image']}")
    console.print_table(
        [
            ["image id", r["image_id"]],
            [
                "size",
                f"{console.human_bytes(r['size'])} (programs {console.human_bytes(r['binaries_size'])}, "
                f"base and rest {console.human_bytes(r['overhead'])})",
            ],
            *[
                [name, f"{r['versions'][name]}  {r['sources'][name]}"]
                for name in ("openwork", "openwork-server", "opencode")
            ],
            ["downloaded", console.human_bytes(r["downloaded_bytes"])],
            ["docker cache", f"{r['cache_hits']} of {r['build_steps']} steps from cache"],
            ["took", f"{r['seconds']:.1f} s"],
        ]
    )
