"""The value rules of settings: each parser turns a setting's text into its value or raises
:class:`Invalid` saying what is accepted.

A parser knows nothing of the setting it parses: the caller (``settings.load_settings``) adds the
setting's name, the value as given and where it came from. Parsers never print a value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

TRUE_WORDS = {"1", "true", "yes", "on", "y"}
FALSE_WORDS = {"0", "false", "no", "off", "n", ""}


class Invalid(ValueError):
    """A parser's complaint: what is accepted, e.g. "expected a port 1-65535, e.g. 8787"."""


def text(raw: str) -> str:
    """Any text, as given."""
    return raw


def boolean(raw: str) -> bool:
    """1/0, true/false, yes/no, on/off, y/n in any case; empty is false."""
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise Invalid("expected a boolean: 1/0, true/false, yes/no or on/off")


def port(raw: str) -> int:
    """A TCP port, 1-65535."""
    try:
        number = int(raw.strip())
    except ValueError:
        raise Invalid("expected a port 1-65535, e.g. 8787") from None
    if not 1 <= number <= 65535:
        raise Invalid("expected a port 1-65535, e.g. 8787")
    return number


def int_range(low: int, high: int, example: int, unit: str = "") -> Callable[[str], int]:
    """A parser of whole numbers from ``low`` to ``high``; ``example`` and ``unit`` go in its complaint."""

    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise Invalid(f"expected a whole number {low}-{high}{unit}, e.g. {example}") from None
        if not low <= value <= high:
            raise Invalid(f"expected a whole number {low}-{high}{unit}, e.g. {example}")
        return value

    return parse


def memory_mib(floor: int) -> Callable[[str], int]:
    """A parser of memory in MiB from ``floor`` (the least a sandbox starts in: below it the kernel
    kills opencode at every start) to 262144."""
    whole = int_range(floor, 262144, 2048, " MiB")

    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            return whole(raw)
        if value < floor:
            raise Invalid(
                f"is below {floor} MiB, the least a sandbox starts in (the kernel kills opencode for lack of "
                f"memory at every start): set {floor} or more, e.g. 2048"
            )
        return whole(raw)

    return parse


def cpus(raw: str) -> int | float:
    """CPUs from 0.1 to 64 in steps of 0.01: a whole number (vCPUs of a microVM, cores of a
    container) or a fraction such as 0.5 (part of one core for Docker; a microVM gets the next whole
    vCPU). A whole number is returned as an ``int``: the launch fingerprint depends on it."""
    problem = "expected a number of CPUs from 0.1 to 64, e.g. 2, or 0.5 for half a core (Docker)"
    try:
        value = float(raw.strip())
    except ValueError:
        raise Invalid(problem) from None
    if not 0.1 <= value <= 64 or round(value, 2) != value:
        raise Invalid(problem)
    return int(value) if value.is_integer() else value


DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_HELP = "seconds, or a number with s, m, h or d, e.g. 90, 90s or 2m"


def parse_duration(text: str) -> float:
    """The one duration rule (timeouts, ``logs --since``): ``90``, ``90s``, ``2m``, ``1.5h``, ``1d``
    -> seconds. Raises ValueError naming what is accepted."""
    m = DURATION_RE.match(str(text))
    if not m:
        raise ValueError(f"expected {DURATION_HELP}")
    return float(m.group(1)) * DURATION_UNITS[m.group(2)]


def seconds(raw: str) -> float:
    """A duration (:func:`parse_duration`) above 0 and at most a day, in seconds."""
    try:
        value = parse_duration(raw)
    except ValueError:
        value = 0.0
    if not 0 < value <= 86400:
        raise Invalid(f"expected a duration above 0 and at most a day: {DURATION_HELP}")
    return value


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Folders and files under the state folder that belong to the tool itself, not to a sandbox: a
# sandbox of one of these names would share (and `reset` would delete) them. The harness's and the
# tests' folders under the checkout's .state/ too. Compared case-insensitively (macOS, Windows).
RESERVED_NAMES = frozenset(
    {
        "services",  # scripts/services
        "backups",  # sandbox.backup
        "microvm-host",  # harness/microvm_host: the emulated host's disk and logs
        "microvm-image",  # harness/microvm_image
        "last-build.json",
        "verified-images.json",
        "last-push.json",
        "base-arch.json",
        "platform-builds.json",
    }
)
# patterns of the same: test-cache, test-stack, test-multi... (tests), image-context[-<platform>]
# (image.build), bench-<pid> and bench-platforms-<pid> (harness/bench; its sandboxes' bench-mic-... pass)
RESERVED_PATTERN = re.compile(r"test-.*|image-context.*|bench-(?:platforms-)?[0-9]+")


def reserved_name(name: str) -> bool:
    """``name`` is (in any case) one of :data:`RESERVED_NAMES` or matches :data:`RESERVED_PATTERN`."""
    folded = name.casefold()
    return folded in RESERVED_NAMES or RESERVED_PATTERN.fullmatch(folded) is not None


def sandbox_name(raw: str) -> str:
    """A sandbox name: letters, digits, '_', '.', '-', starting with a letter or digit, at most 128
    bytes (microsandbox and Docker refuse longer), and not reserved (:func:`reserved_name`)."""
    if reserved_name(raw):
        raise Invalid(f"is reserved for the tool's own state (.state/{raw}); pick another name")
    if not raw:
        raise Invalid("expected a name of letters, digits, '_', '.', '-', e.g. openwork-microsandbox")
    if len(raw.encode()) > 128:
        raise Invalid("expected at most 128 bytes (microsandbox and Docker reject longer names)")
    if not NAME_RE.match(raw):
        raise Invalid(
            "expected letters, digits, '_', '.', '-' starting with a letter or digit, e.g. openwork-microsandbox"
        )
    return raw


def token(raw: str) -> str:
    """A token: one word of visible ASCII (what an HTTP ``Authorization`` header carries), not empty
    (unset means "generate one")."""
    if raw == "":
        raise Invalid("is empty: set a token without whitespace, or unset it to have one generated")
    if any(ch.isspace() for ch in raw):
        raise Invalid("contains whitespace: a token must be one word")
    if not all("!" <= ch <= "~" for ch in raw):  # what an HTTP header's Bearer value carries: visible ASCII
        raise Invalid(
            "contains a character HTTP headers cannot carry (non-ASCII or a control character): "
            "use ASCII letters, digits and punctuation only"
        )
    return raw


HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


def host(raw: str) -> str:
    """A host name (at most 253 characters) or an IP address, without scheme or port; an IPv6
    address is returned without its brackets."""
    value = raw.strip()
    try:
        ipaddress.ip_address(value.strip("[]"))
        return value.strip("[]")
    except ValueError:
        pass
    if not HOST_RE.match(value) or len(value) > 253:
        raise Invalid("expected a host name or IP address without scheme or port, e.g. 127.0.0.1")
    return value


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name, or an IP address with or without brackets) is this machine:
    ``localhost``, ``localhost.localdomain``, 127.0.0.0/8 or ::1."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def tls_mode(raw: str) -> str:
    """``auto`` (also empty), or a boolean word (:func:`boolean`) as ``true``/``false``."""
    word = raw.strip().lower()
    if word in ("", "auto"):
        return "auto"
    try:
        return "true" if boolean(word) else "false"
    except Invalid:
        raise Invalid("expected auto, true or false") from None


def choice(*choices: str) -> Callable[[str], str]:
    """A parser of one of ``choices``, in any case; the value is returned in lower case."""

    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise Invalid(f"expected one of {'|'.join(choices)}")
        return value

    return parse


def version(raw: str) -> str:
    """A version as npm writes it (``core.versions.npm_version``), e.g. 1.2.3."""
    from openwork_sandbox.core.versions import npm_version

    value = npm_version(raw)
    if value is None:
        raise Invalid("expected a version like 1.2.3")
    return value


def path(raw: str) -> str:
    """A path, not blank, stripped; ``settings.load_settings`` makes it absolute."""
    if not raw.strip():
        raise Invalid("expected a path")
    return raw.strip()


def per_platform(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser of a plain value (the host's platform's) or of ``linux/amd64=a,linux/arm64=b`` (a
    dict by platform); each value is parsed by ``parse``."""

    def parse_each(raw: str) -> Any:
        from openwork_sandbox.core.platforms import PlatformError, parse_per_platform

        try:
            value = parse_per_platform(raw)
        except PlatformError as exc:
            raise Invalid(str(exc)) from None
        if isinstance(value, dict):
            return {name: parse(v) for name, v in value.items()}
        return parse(value)

    return parse_each


def platforms(raw: str) -> str:
    """A comma-separated list of platforms, returned normalized: ``linux/amd64,linux/arm64``."""
    from openwork_sandbox.core.platforms import PlatformError, parse_platforms

    try:
        return ",".join(str(p) for p in parse_platforms(raw))
    except PlatformError as exc:
        raise Invalid(str(exc)) from None


def url(raw: str) -> str:
    """An http:// or https:// URL with a host."""
    value = raw.strip()
    if not re.match(r"^https?://[^\s/]+", value):
        raise Invalid("expected an http(s) URL, e.g. http://127.0.0.1:8787")
    return value


ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Variables the image's entrypoint, the orchestrator or this tool set inside the sandbox: passing one
# through OPENWORK_SANDBOX_ENV would silently replace (or be replaced by) theirs.
SANDBOX_ENV_RESERVED = frozenset(
    {
        "HOME",
        "USER",
        "SHELL",
        "PATH",
        "PWD",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "XDG_STATE_HOME",
        "XDG_CACHE_HOME",
        "OPENCODE_CONFIG",
        "OPENCODE_CONFIG_DIR",
        "OPENCODE_CONFIG_CONTENT",
        "OPENCODE_SERVER_USERNAME",
        "OPENCODE_SERVER_PASSWORD",
    }
)


def env_names(raw: str) -> tuple[str, ...]:
    """``A,B , C`` -> ("A", "B", "C"): names of host variables for opencode's environment, each once,
    in order; blanks are skipped. Refuses names of :data:`SANDBOX_ENV_RESERVED` and ``OPENWORK_*``."""
    names: list[str] = []
    for part in raw.split(","):
        name = part.strip()
        if not name:
            continue
        if not ENV_NAME_RE.match(name):
            raise Invalid(
                f"{name!r} is not a variable name: expected comma-separated names like ANTHROPIC_API_KEY,OPENAI_API_KEY"
            )
        if name in SANDBOX_ENV_RESERVED or name.startswith("OPENWORK_"):
            raise Invalid(f"{name} is set by the sandbox itself and cannot be passed in; drop it from the list")
        if name not in names:
            names.append(name)
    return tuple(names)
