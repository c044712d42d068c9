"""Image platforms (``linux/amd64``, ``linux/arm64``): parsing, the host's own, ELF architectures.

- ``OPENWORK_PLATFORMS`` / ``build-image --platform``: a comma-separated list; unset means the
  host's platform alone.
- The local-binary overrides and ``OPENWORK_BASE_IMAGE`` name a value per platform as
  ``linux/amd64=/path/a,linux/arm64=/path/b``; a plain value is the host's platform's.
- A file's architecture is what its ELF header says (``e_machine``), never an image's metadata:
  Docker may label an image it imports or builds with its own architecture.

Imports nothing from the rest of the package.
"""

from __future__ import annotations

import dataclasses
import platform as _platform
import re

SUPPORTED = ("linux/amd64", "linux/arm64")
ALIASES = {"linux/arm64/v8": "linux/arm64", "linux/x86_64": "linux/amd64", "linux/aarch64": "linux/arm64"}
ELF_MACHINES = {0x3E: "amd64", 0xB7: "arm64"}  # e_machine: EM_X86_64, EM_AARCH64
QEMU_USER = {"amd64": "qemu-x86_64-static", "arm64": "qemu-aarch64-static"}
ELF_NAMES = {"amd64": "x86-64", "arm64": "aarch64"}


class PlatformError(ValueError):
    """Bad platform text; settings turns it into its one-line problem."""


@dataclasses.dataclass(frozen=True)
class Platform:
    """One image platform, ``linux/amd64`` or ``linux/arm64``."""

    os: str
    arch: str  # Docker/OCI name: amd64, arm64

    @property
    def variant(self) -> str | None:
        return "v8" if self.arch == "arm64" else None

    def __str__(self) -> str:
        return f"{self.os}/{self.arch}"

    def oci(self) -> dict:
        """The ``platform`` object of an image index entry (and the config's fields)."""
        out = {"architecture": self.arch, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    @property
    def slug(self) -> str:
        """For file and tag names: ``linux-arm64``."""
        return f"{self.os}-{self.arch}"


def host_arch() -> str:
    """This machine's architecture by its Docker/OCI name (``amd64``, ``arm64``; another as the kernel names it)."""
    machine = _platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


def host_platform() -> Platform:
    """The platform this machine's images have: Linux on the host's architecture."""
    return Platform("linux", host_arch())  # images are Linux's, on a Mac too


def parse_platform(text: str) -> Platform:
    """One platform name (aliases such as ``linux/x86_64`` accepted); :class:`PlatformError` for any other."""
    name = ALIASES.get(text.strip().lower(), text.strip().lower())
    if name not in SUPPORTED:
        raise PlatformError(
            f"unknown platform {text.strip()!r}: use {' or '.join(SUPPORTED)} (comma-separated for several)"
        )
    os_name, arch = name.split("/")
    return Platform(os_name, arch)


def parse_platforms(text: str) -> tuple[Platform, ...]:
    """``linux/amd64,linux/arm64`` → the platforms, in the given order, each once; :class:`PlatformError`
    for an empty list or an unknown name."""
    items = [part for part in (p.strip() for p in text.split(",")) if part]
    if not items:
        raise PlatformError(f"is empty: name one or more of {', '.join(SUPPORTED)}")
    return tuple(dict.fromkeys(parse_platform(p) for p in items))


PER_PLATFORM = re.compile(r"^\s*[A-Za-z0-9]+/[A-Za-z0-9/]+\s*=")


def parse_per_platform(text: str) -> str | dict[str, str]:
    """A plain value (the host's platform's), or ``linux/amd64=a,linux/arm64=b`` → ``{"linux/amd64": "a", …}``;
    :class:`PlatformError` for an entry without a value, an unknown platform or one named twice."""
    if not PER_PLATFORM.match(text):
        return text.strip()
    out: dict[str, str] = {}
    for part in (p for p in text.split(",") if p.strip()):
        name, eq, value = part.partition("=")
        if not eq or not value.strip():
            raise PlatformError(
                f"{part.strip()!r} names no value: write platform=value, e.g. linux/amd64=/path/a,linux/arm64=/path/b"
            )
        key = str(parse_platform(name))
        if key in out:
            raise PlatformError(f"names {key} twice")
        out[key] = value.strip()
    return out


def for_platform(value: str | dict[str, str] | None, plat: Platform) -> str | None:
    """The value for ``plat``: its own entry, or a plain value when ``plat`` is the host's."""
    if isinstance(value, dict):
        return value.get(str(plat))
    return value if value and plat == host_platform() else None


def elf_arch(head: bytes) -> str | None:
    """``amd64``/``arm64`` from the first 20 bytes of an ELF file; None for a script or anything else."""
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "little" if head[5] == 1 else "big"
    machine = int.from_bytes(head[18:20], order)
    return ELF_MACHINES.get(machine, f"e_machine {machine:#x}")
