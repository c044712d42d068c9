"""The emulated host's pure logic: cache keys, reading its console, judging its heartbeat, what goes
into the guest, the wheel set, the checkout's files and the figures line. No QEMU, no I/O beyond
the arguments (``checkout_files`` looks at the files it is given)."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path

from harness.microvm_host.errors import EXIT_USAGE, HarnessError

GUEST_CHECKOUT = "/src/openwork-sandbox"  # where the guest holds its copy of the checkout
GUEST_VENV = "/opt/venv"  # the guest's Python, with the project's dependencies
EXTRA_WHEELS = ("setuptools", "wheel")  # the editable install of the checkout, offline

# Lines on the emulated host's console that mean it is broken (an emulation fault)
PANIC_PATTERNS = (  # at the start of a kernel line (after its timestamp and an optional "watchdog: ")
    re.compile(
        r"^(?:\[\s*\d+\.\d+\]\s*)?(?:[\w-]+: )?(?:BUG: |kernel BUG at |Kernel panic - not syncing|Oops: "
        r"|general protection fault)"
    ),
)


def input_key(material: dict) -> str:
    """The cache key of the guest: a hash over every input, independent of dict order."""
    blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def panic_line(text: str) -> str | None:
    """The first console line that says the emulated host's kernel broke, if any."""
    for line in text.splitlines():
        if any(p.search(line) for p in PANIC_PATTERNS):
            return line.strip()
    return None


class ConsoleWatch:
    """Feeds the console log in chunks (a line may be split across reads) and finds a panic line."""

    def __init__(self) -> None:
        self._partial = ""
        self.fatal: str | None = None
        self.tail: list[str] = []

    def feed(self, chunk: str) -> str | None:
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            line = line.rstrip("\r")
            self.tail = (self.tail + [line])[-30:]
            if self.fatal is None:
                self.fatal = panic_line(line)
        return self.fatal


def host_verdict(
    now: float, started: float, last_beat: float | None, boot_seconds: float, stall_seconds: float
) -> str | None:
    """Why the emulated host counts as frozen at NOW, or None while it looks alive.

    Before its first heartbeat it has BOOT_SECONDS from STARTED; after, STALL_SECONDS between beats."""
    if last_beat is None:
        if now - started > boot_seconds:
            return f"no heartbeat within {boot_seconds:.0f} s of starting QEMU (froze while booting)"
        return None
    if now - last_beat > stall_seconds:
        return f"no heartbeat for {now - last_beat:.0f} s (froze)"
    return None


def passthrough_env(environ: dict) -> dict:
    """The variables that go into the guest: OPENWORK_*, MSB_*, MICROVM_E2E_* (the scenario's knobs),
    CI, GITHUB_ACTIONS."""
    return {
        k: v
        for k, v in environ.items()
        if k.startswith(("OPENWORK_", "MSB_", "MICROVM_E2E_")) or k in ("CI", "GITHUB_ACTIONS")
    }


def env_script(env: dict) -> str:
    """A bash file that exports ENV exactly (any value, quoted)."""
    bad = [k for k in env if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
    if bad:
        raise HarnessError(f"cannot pass variable {bad[0]!r} into the guest (not a shell name)", EXIT_USAGE)
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))


def requirements(pyproject: dict) -> list[str]:
    """The wheel set's requirement lines: the project's dependencies and its test extra, plus the
    editable install's setuptools and wheel. As pyproject.toml says them (not pinned to what this
    machine has installed: the guest can be built before or while this machine installs them)."""
    project = pyproject.get("project", {})
    reqs = list(project.get("dependencies", [])) + list(project.get("optional-dependencies", {}).get("test", []))
    names = {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in reqs}
    reqs += [r for r in EXTRA_WHEELS if r not in names]
    return sorted(set(reqs), key=str.lower)


def checkout_files(root: Path, listed: list[str]) -> list[str]:
    """The files of the checkout copy: what git lists (tracked + untracked-not-ignored) that exists
    now (a deleted tracked file is left out), never the harness's own cache."""
    return sorted(
        p for p in listed if p and not p.startswith(".state/") and ((root / p).is_symlink() or (root / p).is_file())
    )


def figures_line(fig: dict) -> str:
    """``harness figures: guest=… boot to init s=21.0 …``: the figures FIG holds, in a fixed order."""
    parts = []
    for key, label in (
        ("guest", "guest"),
        ("build_s", "guest build s"),
        ("image_save_s", "image save s"),
        ("registry_seed_s", "registry seed s"),
        ("boot_to_init_s", "boot to init s"),
        ("guest_uptime_at_init_s", "guest uptime at init s"),
        ("services_s", "services s"),
        ("image_load_s", "image load s"),
        ("cmd_s", "command s"),
        ("total_s", "total s"),
        ("attempts", "attempts"),
    ):
        if key in fig:
            value = fig[key]
            parts.append(f"{label}={value:.1f}" if isinstance(value, float) else f"{label}={value}")
    return "harness figures: " + " ".join(parts)
