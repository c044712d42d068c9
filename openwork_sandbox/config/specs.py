"""The table of settings, :data:`SPECS`: the only list of the names the code reads, each with its
field in :class:`~openwork_sandbox.config.settings.Settings`, its variable, its parser and its default.

A setting is a row here and a field of the same name in ``Settings``; ``load_settings`` reads every row
the same way (flag > environment > ``.env`` > default) and makes the path settings absolute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from openwork_sandbox.config import images, values

GUEST_PORT = 8787  # openwork-server inside the image
DEFAULT_REGISTRY = "127.0.0.1:5000"  # started by scripts/services
DEFAULT_IMAGE = f"{DEFAULT_REGISTRY}/openwork-microsandbox:dev"
DEFAULT_NAME = "openwork-microsandbox"
ENV_FILE_VAR = "OPENWORK_ENV_FILE"  # names the .env file, so it is read from the environment, never the file


@dataclasses.dataclass(frozen=True)
class Spec:
    """One setting: ``field`` its name in ``Settings`` and in ``load_settings``'s flags, ``env`` its
    variable (in the environment and ``.env``), ``parse`` its rule (text -> value, or
    :class:`~openwork_sandbox.config.values.Invalid`), ``default`` its value when unset (taken as is,
    not parsed), ``help`` one line on what it does; a ``secret`` is masked wherever it is shown."""

    field: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    secret: bool = False


SPECS: tuple[Spec, ...] = (
    # where and what to boot (upstream's names)
    Spec(
        "image",
        "OPENWORK_MICROSANDBOX_IMAGE",
        images.image,
        DEFAULT_IMAGE,
        "OCI image reference to build, push and boot",
    ),
    Spec(
        "name",
        "OPENWORK_MICROSANDBOX_NAME",
        values.sandbox_name,
        DEFAULT_NAME,
        "sandbox (or container) name; also names the state folder .state/<name>",
    ),
    Spec(
        "workspace_dir",
        "OPENWORK_MICROSANDBOX_WORKSPACE_DIR",
        values.path,
        None,
        "host folder bind-mounted at /workspace (default .state/<name>/workspace)",
    ),
    Spec(
        "data_dir",
        "OPENWORK_MICROSANDBOX_DATA_DIR",
        values.path,
        None,
        "host folder bind-mounted at /data (default .state/<name>/data)",
    ),
    Spec(
        "replace",
        "OPENWORK_MICROSANDBOX_REPLACE",
        values.boolean,
        False,
        "recreate the sandbox on up (state folders are kept)",
    ),
    Spec("port", "OPENWORK_MICROSANDBOX_PORT", values.port, GUEST_PORT, "host port published to the server's 8787"),
    Spec(
        "connect_host",
        "OPENWORK_CONNECT_HOST",
        values.host,
        "127.0.0.1",
        "host name clients use; loopback publishes on loopback only",
    ),
    Spec(
        "tls",
        "OPENWORK_TLS",
        values.tls_mode,
        "auto",
        "TLS on the published port: auto (on when OPENWORK_CONNECT_HOST is not loopback), true or false",
    ),
    Spec(
        "tls_cert",
        "OPENWORK_TLS_CERT",
        values.path,
        None,
        "your own PEM certificate (chain) for the server, with OPENWORK_TLS_KEY (default: one made per sandbox)",
    ),
    Spec(
        "tls_key",
        "OPENWORK_TLS_KEY",
        values.path,
        None,
        "the PEM private key of OPENWORK_TLS_CERT",
    ),
    Spec(
        "tls_ca",
        "OPENWORK_TLS_CA",
        values.path,
        None,
        "PEM CA bundle trusted for OPENWORK_TLS_CERT's certificate and by `smoke --url` (default: the system "
        "CAs; a certificate made here is checked against its own CA)",
    ),
    Spec(
        "token",
        "OPENWORK_TOKEN",
        values.token,
        None,
        "client token (default: generated once per sandbox, kept in .state/<name>/)",
        secret=True,
    ),
    Spec(
        "host_token",
        "OPENWORK_HOST_TOKEN",
        values.token,
        None,
        "host/owner token (default: generated once per sandbox)",
        secret=True,
    ),
    Spec(
        "allow_default_tokens",
        "OPENWORK_ALLOW_DEFAULT_TOKENS",
        values.boolean,
        False,
        "accept upstream's published default tokens (microsandbox-token, microsandbox-host-token), which anyone can guess",
    ),
    # runtime
    Spec(
        "runtime",
        "OPENWORK_MICROSANDBOX_RUNTIME",
        values.choice("auto", "microsandbox", "docker", "swarm"),
        "auto",
        "auto picks microsandbox where microVMs boot, else Docker; swarm: a service on the Docker Swarm DOCKER_HOST manages (never picked by auto)",
    ),
    Spec(
        "cpus",
        "OPENWORK_MICROSANDBOX_CPUS",
        values.cpus,
        2,
        "virtual CPUs; a fraction (0.5) limits a Docker sandbox to part of a core, a microVM gets whole vCPUs",
    ),
    # 384: the least a sandbox starts in (docs/design-notes/config.md: measured on Docker, plus the real server)
    Spec("memory", "OPENWORK_MICROSANDBOX_MEMORY", values.memory_mib(384), 2048, "memory in MiB"),
    # off by default: a bound saves 10-25 MiB and costs opencode 2-4x on busy requests (docs/design-notes/cost.md)
    Spec(
        "opencode_heap",
        "OPENWORK_OPENCODE_HEAP_MIB",
        values.int_range(0, 262144, 256, " MiB"),
        0,
        "the RAM opencode's JavaScript heap is sized for, in MiB (it collects sooner: 10-25 MiB less, "
        "2-4x slower on busy requests; not a limit); 0: sized for the sandbox's memory",
    ),
    Spec(
        "network",
        "OPENWORK_MICROSANDBOX_NETWORK",
        values.choice("allow-all", "public-only", "none"),
        "allow-all",
        "what the sandbox may reach: allow-all (as upstream: the host, the LAN, the internet), public-only "
        "(the internet only), none (nothing outbound; the published port still answers); the Docker runtime "
        "holds allow-all alone and `up` refuses the others",
    ),
    Spec(
        "launch",
        "OPENWORK_LAUNCH",
        values.choice("orchestrator", "server"),
        "orchestrator",
        "what the image starts: orchestrator (`openwork serve`, which starts opencode and openwork-server) or "
        "server (openwork-server alone, which starts opencode itself: one program fewer)",
    ),
    Spec(
        "approval_mode",
        "OPENWORK_APPROVAL_MODE",
        values.choice("auto", "manual"),
        "auto",
        "openwork-server approval mode",
    ),
    Spec(
        "offline",
        "OPENWORK_OFFLINE",
        values.boolean,
        False,
        "the sandbox has no internet: opencode skips its models.dev fetch (offline it can hang start-up)",
    ),
    Spec(
        "state_dir",
        "OPENWORK_STATE_DIR",
        values.path,
        None,
        "folder that holds .state/<name>/ folders (default: .state in the project)",
    ),
    Spec(
        "health_timeout",
        "OPENWORK_HEALTH_TIMEOUT",
        values.seconds,
        120.0,
        "how long to wait for GET /health after boot (90, 90s, 2m)",
    ),
    Spec(
        "start_slots",
        "OPENWORK_START_SLOTS",
        values.int_range(0, 1024, 2),
        None,
        "how many sandboxes may start at once on this host, for every checkout and user (default: one per CPU "
        "core; 0: no limit); an `up` beyond that waits for a slot",
    ),
    Spec(
        "ephemeral_max_duration",
        "OPENWORK_EPHEMERAL_MAX_DURATION",
        values.seconds,
        3600.0,
        "longest a `smoke --ephemeral` sandbox may live (1h, 90m): microsandbox stops it then by itself, and "
        "`invoke reset --stale` removes one that is older or whose job is gone",
    ),
    Spec(
        "request_timeout",
        "OPENWORK_REQUEST_TIMEOUT",
        values.seconds,
        15.0,
        "how long one HTTP request may take (15, 15s, 1m)",
    ),
    # image build (upstream's build-argument names)
    Spec(
        "orchestrator_version",
        "OPENWORK_ORCHESTRATOR_VERSION",
        values.version,
        "0.18.1",
        "openwork (orchestrator) version baked into the image",
    ),
    Spec(
        "server_version",
        "OPENWORK_SERVER_VERSION",
        values.version,
        "0.18.1",
        "openwork-server version baked into the image",
    ),
    Spec("opencode_version", "OPENCODE_VERSION", values.version, "1.17.11", "opencode version baked into the image"),
    Spec(
        "orchestrator_bin",
        "OPENWORK_ORCHESTRATOR_BIN_PATH",
        values.per_platform(values.path),
        None,
        "bake this local openwork executable instead of downloading",
    ),
    Spec(
        "server_bin",
        "OPENWORK_SERVER_BIN",
        values.per_platform(values.path),
        None,
        "bake this local openwork-server executable instead of downloading",
    ),
    Spec(
        "opencode_bin",
        "OPENWORK_OPENCODE_BIN",
        values.per_platform(values.path),
        None,
        "bake this local opencode executable instead of downloading",
    ),
    Spec(
        "base_image",
        "OPENWORK_BASE_IMAGE",
        values.per_platform(images.image),
        "debian:bookworm-slim",
        "base of the image (scripts/make-base-image makes one offline); per platform: "
        "linux/amd64=IMAGE,linux/arm64=IMAGE",
    ),
    Spec(
        "platform",
        "OPENWORK_PLATFORMS",
        values.platforms,
        None,
        "platforms to build and push, e.g. linux/amd64,linux/arm64 (default: this host's alone)",
    ),
    Spec(
        "source_date_epoch",
        "SOURCE_DATE_EPOCH",
        values.int_range(0, 4102444800, 1700000000, " (Unix seconds)"),
        None,
        "image 'created' label (default: the git commit time), so rebuilds keep the same image id",
    ),
    Spec(
        "cache_dir",
        "OPENWORK_CACHE_DIR",
        values.path,
        None,
        "download cache (default $XDG_CACHE_HOME/openwork-sandbox)",
    ),
    Spec(
        "npm_registry",
        "NPM_CONFIG_REGISTRY",
        values.url,
        None,
        "npm registry to download from (default: npm's own configuration)",
    ),
    # registry credentials
    Spec("registry_username", "OPENWORK_REGISTRY_USERNAME", values.text, None, "user for docker login before push"),
    Spec(
        "registry_password",
        "OPENWORK_REGISTRY_PASSWORD",
        values.text,
        None,
        "password for docker login (passed on stdin)",
        secret=True,
    ),
    Spec(
        "registry_insecure",
        "OPENWORK_REGISTRY_INSECURE",
        values.boolean,
        False,
        "allow plain HTTP to a registry that is not on loopback",
    ),
    Spec(
        "registry_ca",
        "OPENWORK_REGISTRY_CA",
        values.path,
        None,
        "PEM file of the registry's CA, trusted besides the system CAs and /etc/docker/certs.d/<host:port>/",
    ),
    # the agent: model providers and their keys (state/secrets.py, config/opencode.py)
    Spec(
        "sandbox_env",
        "OPENWORK_SANDBOX_ENV",
        values.env_names,
        (),
        "comma-separated names of host variables (e.g. ANTHROPIC_API_KEY) put in opencode's environment; "
        "values go in through a 0600 file, never the sandbox's configuration",
    ),
    Spec(
        "opencode_config",
        "OPENWORK_OPENCODE_CONFIG",
        values.path,
        None,
        "a JSON/JSONC file in opencode's config format (provider, model, ...) that becomes the sandbox's "
        "opencode configuration",
    ),
    Spec(
        "prompt_timeout",
        "OPENWORK_PROMPT_TIMEOUT",
        values.seconds,
        120.0,
        "how long `smoke --prompt` waits for the agent's whole reply (120, 2m)",
    ),
)
SPEC_BY_FIELD = {s.field: s for s in SPECS}
SPEC_BY_ENV = {s.env: s for s in SPECS}
KNOWN_NAMES = tuple(SPEC_BY_ENV) + (ENV_FILE_VAR,)  # the names a misspelled .env key is matched against
