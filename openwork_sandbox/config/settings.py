# One module for now (over 400 lines): SPECS is the one list of settings, and its parsers, Settings and
# load_settings are read together whenever a setting is added. The split it would take: the value parsers
# (ports, durations, ImageRef, hosts) into settings_values.py and the .env reader into dotenv_file.py, SPECS
# and load_settings staying here; not now, while other branches add settings.
"""Every setting, read in one place: task flag > process environment > ``.env`` > built-in default.

``load_settings()`` returns one immutable :class:`Settings`. Every problem found is collected and
raised together as one :class:`~openwork_sandbox.core.errors.SettingsError`, one line per problem,
naming the setting, where the bad value came from, and what is accepted::

    OPENWORK_MICROSANDBOX_PORT="ten" (from .env:7): expected a port 1-65535, e.g. 8787

The ``.env`` file is read with python-dotenv's ``dotenv_values`` (``os.environ`` is never touched);
``--env-file`` or ``OPENWORK_ENV_FILE`` picks another file. Secrets are never printed in full.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from openwork_sandbox.core.errors import SettingsError

GUEST_PORT = 8787  # openwork-server inside the image
DEFAULT_REGISTRY = "127.0.0.1:5000"  # started by scripts/services
DEFAULT_IMAGE = f"{DEFAULT_REGISTRY}/openwork-microsandbox:dev"
DEFAULT_NAME = "openwork-microsandbox"
TRUE_WORDS = {"1", "true", "yes", "on", "y"}
FALSE_WORDS = {"0", "false", "no", "off", "n", ""}


class _Invalid(ValueError):
    """A parser's complaint: what is accepted (the caller adds name, value and origin)."""


# --- parsers: text -> value, or _Invalid("what is accepted") ------------------------------------

def _text(raw: str) -> str:
    return raw


def _bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise _Invalid("expected a boolean: 1/0, true/false, yes/no or on/off")


def _port(raw: str) -> int:
    try:
        port = int(raw.strip())
    except ValueError:
        raise _Invalid("expected a port 1-65535, e.g. 8787") from None
    if not 1 <= port <= 65535:
        raise _Invalid("expected a port 1-65535, e.g. 8787")
    return port


def _int_range(low: int, high: int, example: int, unit: str = "") -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise _Invalid(f"expected a whole number {low}-{high}{unit}, e.g. {example}") from None
        if not low <= value <= high:
            raise _Invalid(f"expected a whole number {low}-{high}{unit}, e.g. {example}")
        return value

    return parse


def _cpus(raw: str) -> int | float:
    """CPUs: a whole number (vCPUs of a microVM, cores of a container), or a fraction such as 0.5,
    which limits a Docker sandbox to part of one core (a microVM gets the next whole vCPU). Whole
    numbers stay ints, so a sandbox made before fractions were accepted keeps its fingerprint."""
    problem = "expected a number of CPUs from 0.1 to 64, e.g. 2, or 0.5 for half a core (Docker)"
    try:
        value = float(raw.strip())
    except ValueError:
        raise _Invalid(problem) from None
    if not 0.1 <= value <= 64 or round(value, 2) != value:
        raise _Invalid(problem)
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


def _seconds(raw: str) -> float:
    try:
        value = parse_duration(raw)
    except ValueError:
        value = 0.0
    if not 0 < value <= 86400:
        raise _Invalid(f"expected a duration above 0 and at most a day: {DURATION_HELP}")
    return value


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# Folders and files under the state folder that belong to the tool itself, not to a sandbox: a
# sandbox of one of these names would share (and `reset` would delete) them.
RESERVED_NAMES = frozenset({"services", "image-context", "last-build.json", "verified-images.json", "last-push.json",
                            "test-cache", "test-stack", "backups"})


def _name(raw: str) -> str:
    if raw in RESERVED_NAMES:
        raise _Invalid(f"is reserved for the tool's own state (.state/{raw}); pick another name")
    if not raw:
        raise _Invalid("expected a name of letters, digits, '_', '.', '-', e.g. openwork-microsandbox")
    if len(raw.encode()) > 128:
        raise _Invalid("expected at most 128 bytes (microsandbox and Docker reject longer names)")
    if not NAME_RE.match(raw):
        raise _Invalid(
            "expected letters, digits, '_', '.', '-' starting with a letter or digit, e.g. openwork-microsandbox"
        )
    return raw


# Docker's reference grammar (distribution/reference), slightly simplified.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
IMAGE_RE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """A parsed image reference: ``registry/repository:tag[@digest]``."""

    registry: str | None  # None: Docker Hub (docker.io)
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, raw: str) -> "ImageRef":
        m = IMAGE_RE.match(raw.strip())
        if not m:
            raise _Invalid("expected an image reference like 127.0.0.1:5000/openwork-microsandbox:dev")
        domain, path = m.group("domain"), m.group("path")
        # "foo/bar": "foo" is a registry only if it looks like a host (has '.', ':' or is localhost)
        if domain and not ("." in domain or ":" in domain or domain == "localhost" or domain.startswith("[")):
            path, domain = f"{domain}/{path}", None
            if not re.fullmatch(rf"{_COMPONENT}(?:/{_COMPONENT})*", path):
                raise _Invalid("expected an image reference like 127.0.0.1:5000/openwork-microsandbox:dev")
        return cls(domain, path, m.group("tag"), m.group("digest"))

    @property
    def reference(self) -> str:
        """The tag, or the digest when there is no tag (what a v2 manifest URL wants)."""
        return self.tag or self.digest or "latest"

    @property
    def registry_host(self) -> str:
        return self.registry or "docker.io"

    @property
    def registry_is_loopback(self) -> bool:
        host = self.registry_host.rsplit(":", 1)[0].strip("[]") if not self.registry_host.startswith("[") \
            else self.registry_host.split("]")[0].strip("[")
        return is_loopback(host)

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}" if self.registry else self.repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def _image(raw: str) -> str:
    ImageRef.parse(raw)
    return raw.strip()


def _token(raw: str) -> str:
    if raw == "":
        raise _Invalid("is empty: set a token without whitespace, or unset it to have one generated")
    if any(ch.isspace() for ch in raw):
        raise _Invalid("contains whitespace: a token must be one word")
    return raw


HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


def _host(raw: str) -> str:
    value = raw.strip()
    try:
        ipaddress.ip_address(value.strip("[]"))
        return value.strip("[]")
    except ValueError:
        pass
    if not HOST_RE.match(value) or len(value) > 253:
        raise _Invalid("expected a host name or IP address without scheme or port, e.g. 127.0.0.1")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise _Invalid(f"expected one of {'|'.join(choices)}")
        return value

    return parse


def _version(raw: str) -> str:
    from openwork_sandbox.core.versions import npm_version

    value = npm_version(raw)
    if value is None:
        raise _Invalid("expected a version like 1.2.3")
    return value


def _path(raw: str) -> str:
    if not raw.strip():
        raise _Invalid("expected a path")
    return raw.strip()


def _per_platform(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A plain value (the host's platform's) or ``linux/amd64=a,linux/arm64=b`` (each value parsed)."""

    def per_platform(raw: str) -> Any:
        from openwork_sandbox.core.platforms import PlatformError, parse_per_platform

        try:
            value = parse_per_platform(raw)
        except PlatformError as exc:
            raise _Invalid(str(exc)) from None
        if isinstance(value, dict):
            return {name: parse(v) for name, v in value.items()}
        return parse(value)

    return per_platform


def _platforms(raw: str) -> str:
    from openwork_sandbox.core.platforms import PlatformError, parse_platforms

    try:
        return ",".join(str(p) for p in parse_platforms(raw))  # normalized: linux/amd64,linux/arm64
    except PlatformError as exc:
        raise _Invalid(str(exc)) from None


def _url(raw: str) -> str:
    value = raw.strip()
    if not re.match(r"^https?://[^\s/]+", value):
        raise _Invalid("expected an http(s) URL, e.g. http://127.0.0.1:8787")
    return value


ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Variables the image's entrypoint, the orchestrator or this tool set inside the sandbox: passing one
# through OPENWORK_SANDBOX_ENV would silently replace (or be replaced by) theirs.
SANDBOX_ENV_RESERVED = frozenset({"HOME", "USER", "SHELL", "PATH", "PWD", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
                                  "XDG_STATE_HOME", "XDG_CACHE_HOME", "OPENCODE_CONFIG", "OPENCODE_CONFIG_DIR",
                                  "OPENCODE_CONFIG_CONTENT", "OPENCODE_SERVER_USERNAME", "OPENCODE_SERVER_PASSWORD"})


def _env_names(raw: str) -> tuple[str, ...]:
    """``A,B , C`` -> ("A", "B", "C"): names of host variables for opencode's environment."""
    names: list[str] = []
    for part in raw.split(","):
        name = part.strip()
        if not name:
            continue
        if not ENV_NAME_RE.match(name):
            raise _Invalid(f"{name!r} is not a variable name: expected comma-separated names like "
                           "ANTHROPIC_API_KEY,OPENAI_API_KEY")
        if name in SANDBOX_ENV_RESERVED or name.startswith("OPENWORK_"):
            raise _Invalid(f"{name} is set by the sandbox itself and cannot be passed in; drop it from the list")
        if name not in names:
            names.append(name)
    return tuple(names)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- the table of settings: the only list of names the code reads -------------------------------

@dataclasses.dataclass(frozen=True)
class Spec:
    field: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    secret: bool = False


SPECS: tuple[Spec, ...] = (
    # where and what to boot (upstream's names)
    Spec("image", "OPENWORK_MICROSANDBOX_IMAGE", _image, DEFAULT_IMAGE,
         "OCI image reference to build, push and boot"),
    Spec("name", "OPENWORK_MICROSANDBOX_NAME", _name, DEFAULT_NAME,
         "sandbox (or container) name; also names the state folder .state/<name>"),
    Spec("workspace_dir", "OPENWORK_MICROSANDBOX_WORKSPACE_DIR", _path, None,
         "host folder bind-mounted at /workspace (default .state/<name>/workspace)"),
    Spec("data_dir", "OPENWORK_MICROSANDBOX_DATA_DIR", _path, None,
         "host folder bind-mounted at /data (default .state/<name>/data)"),
    Spec("replace", "OPENWORK_MICROSANDBOX_REPLACE", _bool, False,
         "recreate the sandbox on up (state folders are kept)"),
    Spec("port", "OPENWORK_MICROSANDBOX_PORT", _port, GUEST_PORT,
         "host port published to the server's 8787"),
    Spec("connect_host", "OPENWORK_CONNECT_HOST", _host, "127.0.0.1",
         "host name clients use; loopback publishes on loopback only"),
    Spec("token", "OPENWORK_TOKEN", _token, None,
         "client token (default: generated once per sandbox, kept in .state/<name>/)", secret=True),
    Spec("host_token", "OPENWORK_HOST_TOKEN", _token, None,
         "host/owner token (default: generated once per sandbox)", secret=True),
    Spec("allow_default_tokens", "OPENWORK_ALLOW_DEFAULT_TOKENS", _bool, False,
         "accept upstream's published default tokens (microsandbox-token, microsandbox-host-token), which anyone can guess"),
    # runtime
    Spec("runtime", "OPENWORK_MICROSANDBOX_RUNTIME", _choice("auto", "microsandbox", "docker"), "auto",
         "auto picks microsandbox where microVMs boot, else Docker"),
    Spec("cpus", "OPENWORK_MICROSANDBOX_CPUS", _cpus, 2,
         "virtual CPUs; a fraction (0.5) limits a Docker sandbox to part of a core, a microVM gets whole vCPUs"),
    Spec("memory", "OPENWORK_MICROSANDBOX_MEMORY", _int_range(256, 262144, 2048, " MiB"), 2048,
         "memory in MiB"),
    Spec("network", "OPENWORK_MICROSANDBOX_NETWORK", _choice("allow-all", "public-only", "none"), "allow-all",
         "what the microVM may reach: allow-all (as upstream: the host, the LAN, the internet), public-only "
         "(the internet only), none (nothing outbound; the published port still answers)"),
    Spec("approval_mode", "OPENWORK_APPROVAL_MODE", _choice("auto", "manual"), "auto",
         "openwork-server approval mode"),
    Spec("offline", "OPENWORK_OFFLINE", _bool, False,
         "the sandbox has no internet: opencode skips its models.dev fetch (offline it can hang start-up)"),
    Spec("state_dir", "OPENWORK_STATE_DIR", _path, None,
         "folder that holds .state/<name>/ folders (default: .state in the project)"),
    Spec("health_timeout", "OPENWORK_HEALTH_TIMEOUT", _seconds, 120.0,
         "how long to wait for GET /health after boot (90, 90s, 2m)"),
    Spec("start_slots", "OPENWORK_START_SLOTS", _int_range(0, 1024, 2), None,
         "how many sandboxes may start at once on this host, for every checkout and user (default: one per CPU "
         "core; 0: no limit); an `up` beyond that waits for a slot"),
    Spec("ephemeral_max_duration", "OPENWORK_EPHEMERAL_MAX_DURATION", _seconds, 3600.0,
         "longest a `smoke --ephemeral` sandbox may live (1h, 90m): microsandbox stops it then by itself, and "
         "`invoke reset --stale` removes one that is older or whose job is gone"),
    Spec("request_timeout", "OPENWORK_REQUEST_TIMEOUT", _seconds, 15.0,
         "how long one HTTP request may take (15, 15s, 1m)"),
    # image build (upstream's build-argument names)
    Spec("orchestrator_version", "OPENWORK_ORCHESTRATOR_VERSION", _version, "0.18.1",
         "openwork (orchestrator) version baked into the image"),
    Spec("server_version", "OPENWORK_SERVER_VERSION", _version, "0.18.1",
         "openwork-server version baked into the image"),
    Spec("opencode_version", "OPENCODE_VERSION", _version, "1.17.11",
         "opencode version baked into the image"),
    Spec("orchestrator_bin", "OPENWORK_ORCHESTRATOR_BIN_PATH", _per_platform(_path), None,
         "bake this local openwork executable instead of downloading"),
    Spec("server_bin", "OPENWORK_SERVER_BIN", _per_platform(_path), None,
         "bake this local openwork-server executable instead of downloading"),
    Spec("opencode_bin", "OPENWORK_OPENCODE_BIN", _per_platform(_path), None,
         "bake this local opencode executable instead of downloading"),
    Spec("base_image", "OPENWORK_BASE_IMAGE", _per_platform(_image), "debian:bookworm-slim",
         "base of the image (scripts/make-base-image makes one offline); per platform: "
         "linux/amd64=IMAGE,linux/arm64=IMAGE"),
    Spec("platform", "OPENWORK_PLATFORMS", _platforms, None,
         "platforms to build and push, e.g. linux/amd64,linux/arm64 (default: this host's alone)"),
    Spec("source_date_epoch", "SOURCE_DATE_EPOCH", _int_range(0, 4102444800, 1700000000, " (Unix seconds)"), None,
         "image 'created' label (default: the git commit time), so rebuilds keep the same image id"),
    Spec("cache_dir", "OPENWORK_CACHE_DIR", _path, None,
         "download cache (default $XDG_CACHE_HOME/openwork-sandbox)"),
    Spec("npm_registry", "NPM_CONFIG_REGISTRY", _url, None,
         "npm registry to download from (default: npm's own configuration)"),
    # registry credentials
    Spec("registry_username", "OPENWORK_REGISTRY_USERNAME", _text, None,
         "user for docker login before push"),
    Spec("registry_password", "OPENWORK_REGISTRY_PASSWORD", _text, None,
         "password for docker login (passed on stdin)", secret=True),
    Spec("registry_insecure", "OPENWORK_REGISTRY_INSECURE", _bool, False,
         "allow plain HTTP to a registry that is not on loopback"),
    Spec("registry_ca", "OPENWORK_REGISTRY_CA", _path, None,
         "PEM file of the registry's CA, trusted besides the system CAs and /etc/docker/certs.d/<host:port>/"),
    # the agent: model providers and their keys (sandbox_secrets.py, opencode_config.py)
    Spec("sandbox_env", "OPENWORK_SANDBOX_ENV", _env_names, (),
         "comma-separated names of host variables (e.g. ANTHROPIC_API_KEY) put in opencode's environment; "
         "values go in through a 0600 file, never the sandbox's configuration"),
    Spec("opencode_config", "OPENWORK_OPENCODE_CONFIG", _path, None,
         "a JSON/JSONC file in opencode's config format (provider, model, ...) that becomes the sandbox's "
         "opencode configuration"),
    Spec("prompt_timeout", "OPENWORK_PROMPT_TIMEOUT", _seconds, 120.0,
         "how long `smoke --prompt` waits for the agent's whole reply (120, 2m)"),
)
SPEC_BY_FIELD = {s.field: s for s in SPECS}
SPEC_BY_ENV = {s.env: s for s in SPECS}
ENV_FILE_VAR = "OPENWORK_ENV_FILE"
KNOWN_NAMES = tuple(SPEC_BY_ENV) + (ENV_FILE_VAR,)


@dataclasses.dataclass(frozen=True)
class Settings:
    """All settings, validated. Paths are absolute. ``origins`` says where each value came from."""

    image: str
    name: str
    workspace_dir: Path
    data_dir: Path
    replace: bool
    port: int
    connect_host: str
    token: str | None
    host_token: str | None
    allow_default_tokens: bool
    runtime: str
    cpus: int | float
    memory: int
    network: str
    approval_mode: str
    offline: bool
    state_dir: Path
    health_timeout: float
    start_slots: int | None
    ephemeral_max_duration: float
    request_timeout: float
    orchestrator_version: str
    server_version: str
    opencode_version: str
    orchestrator_bin: Path | None
    server_bin: Path | None
    opencode_bin: Path | None
    base_image: str
    source_date_epoch: int | None
    cache_dir: Path
    npm_registry: str | None
    registry_username: str | None
    registry_password: str | None
    registry_insecure: bool
    registry_ca: Path | None
    sandbox_env: tuple[str, ...]
    opencode_config: Path | None
    prompt_timeout: float
    platform: str | None  # OPENWORK_PLATFORMS / --platform: the platforms to build (None: the host's)
    project_root: Path
    env_file: Path | None
    origins: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)
    # the values set per platform (linux/amd64=…,linux/arm64=…), by field; the field itself holds the host's
    per_platform: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict, compare=False)
    # the values of the OPENWORK_SANDBOX_ENV variables that are set (environment > .env): secrets
    sandbox_env_values: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    ephemeral: bool = False  # a throwaway sandbox of `smoke --ephemeral` (not a setting: smoke sets it)

    # --- derived values ---------------------------------------------------------------------
    @property
    def image_ref(self) -> ImageRef:
        return ImageRef.parse(self.image)

    @property
    def sandbox_state_dir(self) -> Path:
        """``.state/<name>/``: tokens, job id, lock, and (by default) the two bind-mounted folders."""
        return self.state_dir / self.name

    @property
    def bind_address(self) -> str:
        """Host address the port is published on: loopback unless clients connect from elsewhere."""
        if is_loopback(self.connect_host):
            return "::1" if self.connect_host in ("::1",) else "127.0.0.1"
        try:
            ipaddress.ip_address(self.connect_host)
            return self.connect_host
        except ValueError:
            return "0.0.0.0"

    @property
    def url(self) -> str:
        host = f"[{self.connect_host}]" if ":" in self.connect_host else self.connect_host
        return f"http://{host}:{self.port}"

    @property
    def registry_plain_http(self) -> bool:
        """Plain HTTP may be used for the registry (after HTTPS, when it does not speak TLS): loopback
        registries and insecure ones. Which one it speaks is found by asking it (``registry``)."""
        return self.image_ref.registry_is_loopback or self.registry_insecure

    def origin(self, field: str) -> str:
        return self.origins.get(field, "default")

    def public_dict(self) -> dict[str, Any]:
        """Every setting with secrets masked, for --json and doctor."""
        from openwork_sandbox.core.console import mask

        out: dict[str, Any] = {}
        for spec in SPECS:
            value = getattr(self, spec.field)
            out[spec.env] = mask(value) if spec.secret and value else (str(value) if isinstance(value, Path) else value)
        out["OPENWORK_SANDBOX_ENV"] = ",".join(self.sandbox_env)  # names only, never the values
        return out

    @property
    def sandbox_env_missing(self) -> tuple[str, ...]:
        """Names in OPENWORK_SANDBOX_ENV that are set neither in the environment nor in ``.env``."""
        return tuple(n for n in self.sandbox_env if n not in self.sandbox_env_values)

    def with_overrides(self, **changes: Any) -> "Settings":
        """A copy with some values changed (e.g. a unique name for an ephemeral smoke run)."""
        if "name" in changes:
            _name(changes["name"])
        return dataclasses.replace(self, **changes)


# --- loading ----------------------------------------------------------------------------------

_DOTENV_KEY = re.compile(r"""[ \t]*(?:export[ \t]+)?(?P<key>'[^'\n]*'|[^=#\s'"]+)[ \t]*(?P<eq>=[ \t]*)?""")
_DOTENV_QUOTED = {'"': re.compile(r'"(?:\\.|[^"\\])*"', re.S), "'": re.compile(r"'(?:\\'|[^'])*'", re.S)}
_DOTENV_NAME = re.compile(r"(?:export[ \t]+)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)")
_DOTENV_END = re.compile(r"[ \t]*(?:#[^\r\n]*)?(?:\r?\n|$)")  # a CRLF file too, as python-dotenv reads it


def _parse_dotenv(path: Path, text: str) -> tuple[list[str], dict[str, int]]:
    """Lines python-dotenv cannot parse (it only logs and skips them), and each key's line number.

    python-dotenv's grammar, scanned here: blank lines and ``#`` comments; ``[export] KEY[=VALUE]``
    where VALUE is unquoted (to the end of the line, ``# comment`` allowed) or single- or
    double-quoted (may span lines, backslash escapes)."""
    secret_keys = {s.env for s in SPECS if s.secret}
    secret_like = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)  # e.g. OPENAI_API_KEY
    problems, numbers = [], {}
    pos, line = 0, 1
    in_secret = False  # after a secret whose quote never closed: the next bad lines may be the rest of it
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        raw = text[pos:end]
        if not raw.strip() or raw.lstrip().startswith("#"):
            pos, line = end + 1, line + 1
            continue
        m = _DOTENV_KEY.match(text, pos, end)
        ok, after = m is not None, end
        if m:
            after = m.end()
            if m.group("eq") and after < end and text[after] in _DOTENV_QUOTED:
                quoted = _DOTENV_QUOTED[text[after]].match(text, after)
                after = quoted.end() if quoted else end
                ok = quoted is not None
            elif m.group("eq"):
                after = end  # unquoted: the rest of the line
            ok = ok and _DOTENV_END.match(text, after) is not None
        if ok:
            numbers[m.group("key").strip("'")] = line
            stop = _DOTENV_END.match(text, after).end()
            in_secret = False
        else:
            shown = raw.strip()
            named = _DOTENV_NAME.match(shown)  # a secret's value is hidden, with or without its '='
            if named and (named.group("key") in secret_keys or secret_like.search(named.group("key"))):
                rest = shown[named.end():].lstrip()
                shown = named.group("key") + ("=…" if rest.startswith("=") else " …")
                in_secret = rest.lstrip("= \t")[:1] in ("'", '"')
            elif in_secret:
                shown = "…"  # hidden: it may be the rest of that secret's value
            elif len(shown) > 40:
                shown = shown[:37] + "..."
            problems.append(f"{path}:{line}: cannot parse {shown!r}: expected NAME=value")
            stop = end + 1
        line += text.count("\n", pos, stop)
        pos = stop
    return problems, numbers


def _read_env_file(path: Path, explicit: bool, problems: list[str]) -> tuple[dict[str, str], dict[str, int]]:
    from dotenv import dotenv_values

    if not path.exists():
        if explicit:
            problems.append(f"{ENV_FILE_VAR}={path}: no such file; create it (copy .env.example) or drop the setting")
        return {}, {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{ENV_FILE_VAR}={path}: cannot read it ({exc.__class__.__name__}); fix its permissions or encoding")
        return {}, {}
    bad_lines, numbers = _parse_dotenv(path, text)
    if bad_lines:  # the load fails anyway; don't let python-dotenv log its own warning too
        problems.extend(bad_lines)
        return {}, numbers
    values = {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}  # read once
    return values, numbers


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, KNOWN_NAMES, n=1, cutoff=0.8)
    return f"; did you mean {close[0]}?" if close else ""


def _shown(spec: Spec, raw: str) -> str:
    from openwork_sandbox.core.console import mask

    return mask(raw) if spec.secret else raw


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
) -> Settings:
    """Read every setting once: ``flags`` (task flags; ``None`` means "not given") > ``environ`` >
    the ``.env`` file > defaults. Raises :class:`SettingsError` listing every problem.

    ``root`` is the project folder: ``.env`` and ``.state/`` (and relative paths in settings) are
    found there. It defaults to the current directory, never to where the package is installed."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    project_root = Path(root or Path.cwd()).resolve()
    problems: list[str] = []

    unknown_flags = set(flags) - set(SPEC_BY_FIELD)
    if unknown_flags:
        raise TypeError(f"unknown setting flags: {sorted(unknown_flags)}")

    explicit = env_file is not None or bool(environ.get(ENV_FILE_VAR))
    env_path = Path(env_file or environ.get(ENV_FILE_VAR) or project_root / ".env").expanduser()
    if not env_path.is_absolute():
        env_path = (Path.cwd() / env_path).resolve()
    file_values, file_lines = _read_env_file(env_path, explicit, problems)
    try:
        env_label = str(env_path.relative_to(Path.cwd()))
    except ValueError:
        env_label = str(env_path)

    for key in file_values:
        if key not in SPEC_BY_ENV and key != ENV_FILE_VAR and (key.startswith("OPENWORK") or key.startswith("OPENCODE")):
            hint = _suggest(key)
            if hint:
                problems.append(f"{key} (from {env_label}:{file_lines.get(key, '?')}): unknown setting{hint}")

    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for spec in SPECS:
        if spec.field in flags:
            raw, origin = flags[spec.field], f"flag --{spec.field.replace('_', '-')}"
        elif spec.env in environ:
            raw, origin = environ[spec.env], "environment"
        elif spec.env in file_values:
            raw, origin = file_values[spec.env], f"{env_label}:{file_lines.get(spec.env, '?')}"
        else:
            values[spec.field] = spec.default
            continue
        origins[spec.field] = origin
        if not isinstance(raw, str):  # typed flag values (bool/int) from Invoke
            raw = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
        try:
            values[spec.field] = spec.parse(raw)
        except _Invalid as exc:
            problems.append(f'{spec.env}="{_shown(spec, raw)}" (from {origin}): {exc}')

    if problems:
        raise SettingsError(problems)

    per_platform = _split_per_platform(values, project_root)
    state_dir = _absolute(values["state_dir"], project_root) if values["state_dir"] else project_root / ".state"
    name_dir = state_dir / values["name"]
    cache_root = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    values.update(
        state_dir=state_dir,
        workspace_dir=_absolute(values["workspace_dir"], project_root) if values["workspace_dir"] else name_dir / "workspace",
        data_dir=_absolute(values["data_dir"], project_root) if values["data_dir"] else name_dir / "data",
        cache_dir=_absolute(values["cache_dir"], project_root) if values["cache_dir"] else cache_root / "openwork-sandbox",
        orchestrator_bin=_absolute(values["orchestrator_bin"], project_root) if values["orchestrator_bin"] else None,
        server_bin=_absolute(values["server_bin"], project_root) if values["server_bin"] else None,
        opencode_bin=_absolute(values["opencode_bin"], project_root) if values["opencode_bin"] else None,
        registry_ca=_absolute(values["registry_ca"], project_root) if values["registry_ca"] else None,
        opencode_config=_absolute(values["opencode_config"], project_root) if values["opencode_config"] else None,
    )
    problems = token_problems(values["token"], values["host_token"], values["allow_default_tokens"], origins)
    problems += folder_problems(values, origins)
    if problems:
        raise SettingsError(problems)
    # the named variables' values: the process environment first, then the .env file (as the settings)
    passed = {n: environ[n] if n in environ else file_values[n] for n in values["sandbox_env"]
              if n in environ or n in file_values}
    return Settings(**values, project_root=project_root, env_file=env_path if env_path.exists() else None,
                    origins=origins, per_platform=per_platform, sandbox_env_values=passed)


def _split_per_platform(values: dict[str, Any], root: Path) -> dict[str, dict[str, Any]]:
    """Move per-platform values out of ``values`` (the field keeps the host's platform's entry)."""
    from openwork_sandbox.core.platforms import host_platform

    out: dict[str, dict[str, Any]] = {}
    for field in ("orchestrator_bin", "server_bin", "opencode_bin", "base_image"):
        value = values[field]
        if isinstance(value, dict):
            if field != "base_image":
                value = {name: _absolute(v, root) for name, v in value.items()}
            out[field] = value
            host = value.get(str(host_platform()))
            values[field] = host if host is not None or field != "base_image" else SPEC_BY_FIELD[field].default
    return out


# --- rules across settings: tokens that would hurt, folders that would leak -------------------------

# upstream's example publishes these; anyone who read it can use a sandbox that keeps them
UPSTREAM_DEFAULT_TOKENS = ("microsandbox-token", "microsandbox-host-token")


def _from(origins: Mapping[str, str], field: str) -> str:
    return origins.get(field, "default")


def token_problems(token: str | None, host_token: str | None, allow_default: bool,
                   origins: Mapping[str, str] | None = None) -> list[str]:
    """The one rule for tokens that would hurt the sandbox: the client token equal to the host
    token (every client would be the owner), and upstream's published default tokens (unless
    ``OPENWORK_ALLOW_DEFAULT_TOKENS``). One line per problem; no token is shown."""
    origins = origins or {}
    problems = []
    if token and host_token and token == host_token:
        problems.append(f"OPENWORK_TOKEN and OPENWORK_HOST_TOKEN are the same token (from {_from(origins, 'token')} and "
                        f"{_from(origins, 'host_token')}): every client would have the host's owner rights; give the "
                        "client a token of its own, or unset OPENWORK_TOKEN to have one generated")
    if not allow_default:
        for field, env, value in (("token", "OPENWORK_TOKEN", token), ("host_token", "OPENWORK_HOST_TOKEN", host_token)):
            if value in UPSTREAM_DEFAULT_TOKENS:
                problems.append(f"{env} (from {_from(origins, field)}) is upstream's published default token "
                                f"{value!r}, which anyone can guess: unset it to have a strong one generated, or set "
                                "OPENWORK_ALLOW_DEFAULT_TOKENS=true to keep it anyway")
    return problems


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _not_a_folder(path: Path) -> Path | None:
    """The first of ``path`` and its parents that exists and is not a folder (a file), or None."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
        if candidate.is_symlink():  # a dangling link: mkdir would fail on it too
            return candidate
    return None


def folder_problems(values: Mapping[str, Any], origins: Mapping[str, str]) -> list[str]:
    """Folders that cannot work or would leak: a workspace or data path that is (or is under) a
    file, and a data folder equal to, inside or containing the workspace (the token store and
    opencode's database would be readable by the agent and every collaborator)."""
    problems = []
    state_blocked = _not_a_folder(Path(values["state_dir"])) is not None  # doctor and `up` name OPENWORK_STATE_DIR
    for field in ("workspace_dir", "data_dir"):
        spec = SPEC_BY_FIELD[field]
        blocker = _not_a_folder(Path(values[field]))
        if blocker is None or (state_blocked and field not in origins):  # a default under that state folder
            continue
        what = "is a file, not a folder" if blocker == Path(values[field]) else f"cannot be a folder: {blocker} is a file"
        problems.append(f"{spec.env}={values[field]} (from {_from(origins, field)}) {what}; point {spec.env} at a "
                        f"folder, or move the file away")
    if problems:
        return problems
    workspace, data = (Path(os.path.realpath(values[f])) for f in ("workspace_dir", "data_dir"))
    if _is_within(data, workspace) or _is_within(workspace, data):
        relation = ("is the workspace folder" if data == workspace else
                    "is inside the workspace folder" if _is_within(data, workspace) else "contains the workspace folder")
        problems.append(f"OPENWORK_MICROSANDBOX_DATA_DIR={values['data_dir']} (from {_from(origins, 'data_dir')}) "
                        f"{relation} OPENWORK_MICROSANDBOX_WORKSPACE_DIR={values['workspace_dir']} (from "
                        f"{_from(origins, 'workspace_dir')}): the token store and opencode's database would be readable "
                        "by the agent and every collaborator; point the two settings at separate folders")
    return problems


def _absolute(value: str | Path, root: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path)
