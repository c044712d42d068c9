"""``build-image --platform linux/amd64,linux/arm64``: one image per platform, and their image index.

Each platform's image is built as the single-platform build does (``image.build``: the same
``Dockerfile``, build context, labels), from that platform's pinned, integrity-checked programs
(``image.artifacts``, e.g. ``opencode-linux-arm64``) or its own local overrides, on a base of that
platform. Before anything is built every platform is checked: each base's architecture (read from
its ``/bin/sh``, as Docker 20.10 marks every image with its own), each program published at its pin
for the platform, each override present and of the platform's architecture; a failure is one line,
exit 2. Then per platform: the build, the version gate (the host's programs in a container, a foreign
platform's under qemu-user, ``image.foreign_check``), and its OCI image (``image.oci``: the config
names the platform). The index of all of them is what ``push-image`` pushes (``image.index_push``).

The host's platform's image is tagged ``OPENWORK_MICROSANDBOX_IMAGE``; another platform's image is
tagged ``<image>-<os>-<arch>`` (a local name only: Docker marks it with the host's architecture).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from openwork_sandbox.config import Settings
from openwork_sandbox.core import console, interrupts
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, UnreachableError, WorkflowError
from openwork_sandbox.core.platforms import (
    ELF_NAMES,
    Platform,
    elf_arch,
    host_platform,
    parse_platform,
    parse_platforms,
)
from openwork_sandbox.core.processes import docker
from openwork_sandbox.image import artifacts as npm_artifacts
from openwork_sandbox.image import foreign_check, oci

FOREIGN_BASE = "openwork-base:bookworm-slim-{arch}"  # what scripts/setup makes for another platform
BASE_ARCH = "base-arch.json"
OVERRIDES = ("orchestrator_bin", "server_bin", "opencode_bin")


def wanted(settings: Settings) -> tuple[Platform, ...]:
    """The platforms to build: ``OPENWORK_PLATFORMS`` (``--platform``), else the host's."""
    return parse_platforms(settings.platform) if settings.platform else (host_platform(),)


def built_for(last_build: dict) -> tuple[Platform, ...]:
    """The platforms a recorded build (``last-build.json``) was for."""
    names = [p.get("platform") for p in last_build.get("platforms") or []]
    return tuple(parse_platform(n) for n in names if n) or (host_platform(),)


def is_multi(settings: Settings) -> bool:
    """Anything beyond the host's platform alone: the index build (the host alone is the single-platform build)."""
    return wanted(settings) != (host_platform(),)


def _bad(message: str) -> WorkflowError:
    return WorkflowError(message, exit_code=EXIT_BAD_SETTINGS)


def _env(field: str) -> str:
    from openwork_sandbox.config import SPEC_BY_FIELD

    return SPEC_BY_FIELD[field].env


def check_overrides(settings: Settings, plats: tuple[Platform, ...]) -> None:
    """A setting given per platform names a file for every platform built (one line otherwise)."""
    for field in OVERRIDES:
        entries = settings.per_platform.get(field)
        if entries is None:
            continue
        for plat in plats:
            if str(plat) not in entries:
                raise _bad(
                    f"{_env(field)} names no file for {plat}: add {plat}=/path/to/"
                    f"{npm_artifacts.PROGRAM_BY_NAME[_program(field)].name} to it, or build without {plat}"
                )


def _program(field: str) -> str:
    return next(p.name for p in npm_artifacts.PROGRAMS if p.override_field == field)


def platform_settings(settings: Settings, plat: Platform) -> Settings:
    """The settings one platform's build sees: its base and its overrides in the usual fields."""
    host = plat == host_platform()
    changes: dict = {}
    for field in OVERRIDES:
        entries = settings.per_platform.get(field)
        changes[field] = entries.get(str(plat)) if entries is not None else (getattr(settings, field) if host else None)
    bases = settings.per_platform.get("base_image")
    if bases is not None and str(plat) in bases:
        changes["base_image"] = bases[str(plat)]
    elif not host:
        if settings.origin("base_image") != "default" and bases is None:
            raise _bad(
                f"OPENWORK_BASE_IMAGE names the base of this host's platform only: name one for {plat} too, "
                f"as OPENWORK_BASE_IMAGE={host_platform()}={settings.base_image},{plat}=IMAGE "
                f"(scripts/make-base-image --platform {plat} makes one)"
            )
        changes["base_image"] = FOREIGN_BASE.format(arch=plat.arch)
    return settings.with_overrides(**changes)


def _base(settings: Settings, plat: Platform) -> dict:
    """The platform's base (the host's may be pulled); its architecture read from its files. Another
    platform's base that is not here, or a base of another architecture, is one line, exit 2."""
    from openwork_sandbox.image.build import ensure_base_image

    if plat == host_platform():
        base = ensure_base_image(settings)
    else:  # never pulled: a pull would bring the host's platform under that name
        proc = docker("image", "inspect", "--format", "{{.Id}}", settings.base_image, check=False)
        if proc.returncode != 0:
            raise _bad(
                f"base image {settings.base_image} for {plat} is not here: make it with scripts/make-base-image "
                f"--platform {plat} (or name another in OPENWORK_BASE_IMAGE={plat}=IMAGE)"
            )
        base = {"id": proc.stdout.strip(), "arch": plat.arch, "ref": settings.base_image}
    arch = _files_arch(settings, base["id"])
    if arch is not None and arch != plat.arch:
        raise _bad(
            f"OPENWORK_BASE_IMAGE: {base['ref']} is an {arch} base, not {plat.arch}: name a {plat} base "
            f"(OPENWORK_BASE_IMAGE={plat}=IMAGE; scripts/make-base-image --platform {plat} makes one)"
        )
    return {**base, "arch": plat.arch}


def _files_arch(settings: Settings, image_id: str) -> str | None:
    """The architecture of an image's ``/bin/sh`` (kept per image id in the state folder's
    ``base-arch.json``); None when it has none or ``docker cp`` cannot copy it out."""
    path = settings.state_dir / BASE_ARCH
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if image_id in known:
        return known[image_id]
    import io
    import tarfile

    cid = docker("create", image_id, "/bin/sh").stdout.strip()
    try:
        proc = docker("cp", "-L", f"{cid}:/bin/sh", "-", check=False, timeout=120, text=False)
    finally:
        docker("rm", cid, check=False)
    arch = None
    if proc.returncode == 0:
        try:
            with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r:") as tar:
                member = next((m for m in tar if m.isfile()), None)
                f = tar.extractfile(member) if member else None
                arch = elf_arch(f.read(20)) if f else None
        except tarfile.TarError:
            arch = None
    known[image_id] = arch
    from openwork_sandbox.image import build as ib

    ib._write_json(path, dict(list(known.items())[-50:]))
    return arch


def _check_published(settings: Settings, plat: Platform) -> None:
    """Every program without an override is published for ``plat`` at its pin, and can be checked
    (``artifacts.check_verifiable``; one line, exit 2)."""
    for program in npm_artifacts.PROGRAMS:
        if getattr(settings, program.override_field):
            continue
        version = getattr(settings, program.version_field)
        package = program.package(plat.arch)
        try:
            npm_artifacts.check_verifiable(settings, program, package, version)
        except UnreachableError:
            raise
        except WorkflowError as exc:
            raise _bad(
                f"{program.version_env}={version}: {program.name} is not published for {plat} ({exc.message})"
            ) from None


def _check_override_arch(artifacts: dict[str, npm_artifacts.Artifact], plat: Platform) -> None:
    """Every local override is an ELF file of ``plat``'s architecture, or not ELF (one line, exit 2)."""
    for name, artifact in artifacts.items():
        if artifact.source.startswith("npm:"):
            continue
        with open(artifact.path, "rb") as f:
            arch = elf_arch(f.read(20))
        if arch is not None and arch != plat.arch:
            env = npm_artifacts.PROGRAM_BY_NAME[name].override_env
            raise _bad(
                f"{env}: {artifact.path} is an {arch} program, not {plat.arch}: name a {ELF_NAMES.get(plat.arch)} "
                f"build as {env}={plat}=/path"
            )


def foreign_tag(image: str, plat: Platform) -> str:
    """The local tag of another platform's image: ``<repository>:<tag>-<os>-<arch>`` (tag ``latest`` if none)."""
    from openwork_sandbox.config import ImageRef

    ref = ImageRef.parse(image)
    base = f"{ref.registry}/{ref.repository}" if ref.registry else ref.repository
    return f"{base}:{ref.tag or 'latest'}-{plat.slug}"


def build_image(settings: Settings, as_json: bool = False, *, no_cache: bool = False) -> dict:
    """What ``build-image`` does: the host's platform alone is the single-platform build (``image.build``);
    other platforms, or several, are one image each and their index. Ctrl+C or SIGTERM stops the
    programs it runs and ends it in one line (``Interrupted``, exit 130); the record of the last
    build is written whole at the end or not at all."""
    from openwork_sandbox.image import build as ib

    check_overrides(settings, wanted(settings))
    said = (
        f"interrupted: stopped build-image of {settings.image} before it was recorded (nothing it ran is left "
        "running); push-image still pushes the last finished build: `invoke build-image` builds again"
    )
    with interrupts.stopped_in_one_line(lambda: said):
        if not is_multi(settings):
            return ib.build_image(settings, as_json, no_cache=no_cache)
        with ib._build_lock(settings):
            return build_platforms(settings, as_json, no_cache)


def build_platforms(settings: Settings, as_json: bool = False, no_cache: bool = False) -> dict:
    """One image per wanted platform and their index; every platform's input is checked before any
    build. Records ``last-build.json`` (with ``platforms`` and ``index``), prints and returns it."""
    from openwork_sandbox.image import build as ib

    started = time.monotonic()
    downloaded_before = npm_artifacts.STATS["downloaded_bytes"]
    plats = wanted(settings)
    check_overrides(settings, plats)
    # everything that can be wrong with the input, before anything is built
    prepared = []
    for plat in plats:
        plat_settings = platform_settings(settings, plat)
        base = _base(plat_settings, plat)
        _check_published(plat_settings, plat)
        prepared.append((plat, plat_settings, base))
    resolved = []
    for plat, plat_settings, base in prepared:
        artifacts = npm_artifacts.resolve(plat_settings, plat.arch)
        _check_override_arch(artifacts, plat)
        resolved.append((plat, plat_settings, base, artifacts))
    meta = ib.image_metadata(settings)
    results = []
    for plat, plat_settings, base, artifacts in resolved:
        results.append(_build_one(ib, plat, plat_settings, base, artifacts, meta, no_cache))
    index = oci.index(settings.cache_dir, [r["oci"] for r in results])
    host = next((r for r in results if r["platform"] == str(host_platform())), results[0])
    result = {
        "image": settings.image,
        "image_id": host["image_id"],
        "size": host["size"],
        "binaries_size": host["binaries_size"],
        "overhead": host["size"] - host["binaries_size"],
        "versions": host["versions"],
        "sources": host["sources"],
        "sha256": host["sha256"],
        "base_image": host["base_image"],
        "arch": host["arch"],
        "created": meta["IMAGE_CREATED"],
        "revision": meta["IMAGE_REVISION"],
        "platforms": results,
        "index": index,
        "downloaded_bytes": npm_artifacts.STATS["downloaded_bytes"] - downloaded_before,
        "seconds": round(time.monotonic() - started, 2),
    }
    ib._write_json(ib.last_build_path(settings), result)
    if as_json:
        console.emit_json(result)
    else:
        _print(result)
    return result


def _build_one(ib, plat: Platform, settings: Settings, base: dict, artifacts: dict, meta: dict, no_cache: bool) -> dict:
    host = plat == host_platform()
    context = ib.stage_context(settings, artifacts, "image-context" if host else f"image-context-{plat.slug}")
    pinned = (
        {name: (a.version or ib._host_reported_version(a.path)) for name, a in artifacts.items()}
        if host
        else {name: (a.version or "local") for name, a in artifacts.items()}
    )
    build_args = {
        "BASE_IMAGE": base["ref"],
        "OPENWORK_VERSION": pinned["openwork"],
        "OPENWORK_SERVER_VERSION": pinned["openwork-server"],
        "OPENCODE_VERSION": pinned["opencode"],
        **meta,
    }
    key = _inputs_key(ib, base, build_args, artifacts)
    image_id = None if no_cache else _built_before(settings, key)
    steps = cache_hits = 0
    if image_id:
        console.info(f"{console.OK} {plat}: inputs unchanged since {image_id[:19]} was built (docker build skipped)")
    else:
        iidfile = context.parent / f".{context.name}.iid"
        argv = ["build", "--iidfile", str(iidfile)] + (["--no-cache"] if no_cache else [])
        for name, value in build_args.items():
            argv += ["--build-arg", f"{name}={value}"]
        console.info(f"building {settings.image} for {plat} on {base['ref']}")
        output = ib._docker_build(settings, argv + [str(context)])
        steps, cache_hits = ib._cache_stats(output)
        image_id = iidfile.read_text().strip()
        _remember_build(settings, key, image_id)
    if host:
        with console.heartbeat(f"checking the baked programs' versions in {image_id[:19]}"):
            versions = ib.check_versions(settings, image_id, artifacts)
        how = "ran each program's --version in a container"
    else:
        versions, how = _check_foreign(ib, settings, plat, base, context, artifacts)
    docker("tag", image_id, settings.image if host else foreign_tag(settings.image, plat))
    size = int(docker("image", "inspect", "--format", "{{.Size}}", image_id).stdout.strip())
    exported = oci.export(settings.cache_dir, image_id, plat)
    return {
        "platform": str(plat),
        "image_id": image_id,
        "tag": settings.image if host else foreign_tag(settings.image, plat),
        "size": size,
        "binaries_size": sum(a.path.stat().st_size for a in artifacts.values()),
        "base_image": base["ref"],
        "arch": plat.arch,
        "versions": {name: versions.get(name, "") for name in ("openwork", "openwork-server", "opencode")},
        "sources": {name: a.source for name, a in artifacts.items()},
        "sha256": {name: a.sha256 for name, a in artifacts.items()},
        "checked": how,
        "build_steps": steps,
        "cache_hits": cache_hits,
        "oci": exported,
    }


BUILDS = "platform-builds.json"


def _inputs_key(ib, base: dict, build_args: dict, artifacts: dict) -> str:
    """Everything a build's image id depends on: the base's id, the build arguments, the context's
    files (the programs by their sha256, the rest by content). Same key, same image id."""
    import hashlib

    h = hashlib.sha256(json.dumps([base["id"], build_args], sort_keys=True).encode())
    for name in ib.CONTEXT_FILES:
        h.update(name.encode() + b"\0" + (ib.IMAGE_DIR / name).read_bytes())
    for name, artifact in artifacts.items():
        h.update(f"{name}={artifact.sha256}".encode())
    return h.hexdigest()


def _built_before(settings: Settings, key: str) -> str | None:
    from openwork_sandbox.image import build as ib

    image_id = ib._read_json(settings.state_dir / BUILDS).get(key)
    if not isinstance(image_id, str):
        return None
    present = docker("image", "inspect", "--format", "{{.Id}}", image_id, check=False)
    return image_id if present.returncode == 0 and present.stdout.strip() == image_id else None


def _remember_build(settings: Settings, key: str, image_id: str) -> None:
    from openwork_sandbox.image import build as ib

    known = ib._read_json(settings.state_dir / BUILDS)
    known[key] = image_id
    ib._write_json(settings.state_dir / BUILDS, dict(list(known.items())[-20:]))


def _check_foreign(
    ib, settings: Settings, plat: Platform, base: dict, context: Path, artifacts: dict
) -> tuple[dict[str, str], str]:
    """The version gate of a platform this host cannot run. What runs is the programs on the base's
    files, so the result is kept per base and programs (a rebuild that changes a label only, e.g.
    after a commit, does not run qemu again)."""
    import hashlib

    verified_path = settings.state_dir / ib.VERIFIED
    verified = ib._read_json(verified_path)
    key = (
        "qemu:"
        + hashlib.sha256(
            json.dumps(
                [str(plat), base["id"], sorted((name, a.sha256, a.version) for name, a in artifacts.items())]
            ).encode()
        ).hexdigest()
    )
    entry = verified.get(key)
    if isinstance(entry, dict) and "versions" in entry:
        return entry["versions"], entry["how"]
    programs = {name: context / "bin" / name for name in artifacts}
    with console.heartbeat(f"checking the {plat} programs' versions"):
        outputs, how = foreign_check.check(settings.cache_dir, plat, base["id"], programs)
    if outputs:
        versions = ib.compare_versions(outputs, artifacts, f" for {plat}")
    else:  # no emulator: the ELF check passed; the pins are what npm's integrity-checked tarballs hold
        versions = {name: a.version or "local" for name, a in artifacts.items()}
    console.info(f"{console.OK} {plat}: {how}")
    verified[key] = {"versions": versions, "how": how}
    ib._write_json(verified_path, dict(list(verified.items())[-50:]))
    return versions, how


def _print(r: dict) -> None:
    console.info(
        f"{console.OK} built {r['image']} for {', '.join(p['platform'] for p in r['platforms'])} "
        f"(index {r['index']['digest'][:19]}…)"
    )
    rows = []
    for p in r["platforms"]:
        rows.append([p["platform"], f"{p['image_id'][:19]}  {console.human_bytes(p['size'])}  on {p['base_image']}"])
        rows += [
            [f"  {name}", f"{p['versions'][name]}  {p['sources'][name]}"]
            for name in ("openwork", "openwork-server", "opencode")
        ]
        rows.append(["  checked", p["checked"]])
        rows.append(
            [
                "  docker cache",
                f"{p['cache_hits']} of {p['build_steps']} steps from cache"
                if p["build_steps"]
                else "docker build skipped: inputs unchanged",
            ]
        )
    rows += [["downloaded", console.human_bytes(r["downloaded_bytes"])], ["took", f"{r['seconds']:.1f} s"]]
    console.print_table(rows)
