"""Every setting, read in one place: task flag > process environment > ``.env`` > built-in default.

``load_settings()`` returns one immutable :class:`Settings`. Every problem found is collected and
raised together as one :class:`~openwork_sandbox.core.errors.SettingsError`, one line per problem,
naming the setting, where the bad value came from, and what is accepted::

    OPENWORK_MICROSANDBOX_PORT="ten" (from .env:7): expected a port 1-65535, e.g. 8787

``--env-file`` or ``OPENWORK_ENV_FILE`` picks another ``.env`` file. Secrets are never shown in full.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from openwork_sandbox.config.env_file import misspelled_keys, read_env_file
from openwork_sandbox.config.images import ImageRef
from openwork_sandbox.config.rules import folder_problems, tls_problems, token_problems
from openwork_sandbox.config.specs import ENV_FILE_VAR, SPEC_BY_FIELD, SPECS, Spec
from openwork_sandbox.config.values import Invalid, is_loopback, sandbox_name
from openwork_sandbox.core.errors import SettingsError


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting, validated: one field per row of ``SPECS`` (paths absolute), and what loading
    them found besides: ``origins`` (field -> where its value came from; a field missing is a
    default), ``per_platform`` and ``sandbox_env_values``."""

    image: str
    name: str
    workspace_dir: Path
    data_dir: Path
    replace: bool
    port: int
    connect_host: str
    tls: str  # auto | true | false (see tls_on)
    tls_cert: Path | None
    tls_key: Path | None
    tls_ca: Path | None
    token: str | None
    host_token: str | None
    allow_default_tokens: bool
    runtime: str
    cpus: int | float
    memory: int
    opencode_heap: int
    network: str
    launch: str
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
        """``image``, parsed."""
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
    def tls_on(self) -> bool:
        """The published port speaks TLS: OPENWORK_TLS=true, or auto with a connect host beyond loopback."""
        return self.tls == "true" or (self.tls == "auto" and not is_loopback(self.connect_host))

    @property
    def url(self) -> str:
        """``http(s)://<connect_host>:<port>`` (https when :attr:`tls_on`), an IPv6 address in brackets:
        where clients reach the server."""
        host = f"[{self.connect_host}]" if ":" in self.connect_host else self.connect_host
        return f"{'https' if self.tls_on else 'http'}://{host}:{self.port}"

    @property
    def registry_plain_http(self) -> bool:
        """Plain HTTP may be used for the registry (after HTTPS, when it does not speak TLS): loopback
        registries and insecure ones. Which one it speaks is found by asking it (``registry.client``)."""
        return self.image_ref.registry_is_loopback or self.registry_insecure

    def origin(self, field: str) -> str:
        """Where ``field``'s value came from: ``flag --…``, ``environment``, ``<.env file>:<line>`` or ``default``."""
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

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some values changed (e.g. a unique name for an ephemeral smoke run); a new
        ``name`` must pass the name rule (:class:`~openwork_sandbox.config.values.Invalid` if not)."""
        if "name" in changes:
            sandbox_name(changes["name"])
        return dataclasses.replace(self, **changes)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    deleting: bool = False,
) -> Settings:
    """Read every setting once: ``flags`` (task flags; ``None`` means "not given") > ``environ`` >
    the ``.env`` file > defaults. Raises :class:`SettingsError` listing every problem.

    ``root`` is the project folder: ``.env`` and ``.state/`` (and relative paths in settings) are
    found there. It defaults to the current directory, never to where the package is installed.

    ``deleting`` (``reset``): the workspace and data folders at their default place, inside the
    sandbox's state folder that is about to be deleted, are not judged (a file or a link there is
    what ``reset`` cleans); folders set in the settings are, as for every task."""
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
    source = "--env-file" if env_file is not None else ENV_FILE_VAR
    file_values, file_lines = read_env_file(env_path, explicit, problems, source=source)
    try:
        env_label = str(env_path.relative_to(Path.cwd()))
    except ValueError:
        env_label = str(env_path)

    problems += misspelled_keys(file_values, file_lines, env_label)
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
        except Invalid as exc:
            problems.append(f'{spec.env}="{_shown(spec, raw)}" (from {origin}): {exc}')

    if problems:
        raise SettingsError(problems)

    per_platform = _split_per_platform(values, project_root)
    state_dir = _absolute(values["state_dir"], project_root) if values["state_dir"] else project_root / ".state"
    name_dir = state_dir / values["name"]
    cache_root = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    values.update(
        state_dir=state_dir,
        workspace_dir=_absolute(values["workspace_dir"], project_root)
        if values["workspace_dir"]
        else name_dir / "workspace",
        data_dir=_absolute(values["data_dir"], project_root) if values["data_dir"] else name_dir / "data",
        cache_dir=_absolute(values["cache_dir"], project_root)
        if values["cache_dir"]
        else cache_root / "openwork-sandbox",
        orchestrator_bin=_absolute(values["orchestrator_bin"], project_root) if values["orchestrator_bin"] else None,
        server_bin=_absolute(values["server_bin"], project_root) if values["server_bin"] else None,
        opencode_bin=_absolute(values["opencode_bin"], project_root) if values["opencode_bin"] else None,
        registry_ca=_absolute(values["registry_ca"], project_root) if values["registry_ca"] else None,
        **{f: _absolute(values[f], project_root) if values[f] else None for f in ("tls_cert", "tls_key", "tls_ca")},
        opencode_config=_absolute(values["opencode_config"], project_root) if values["opencode_config"] else None,
    )
    problems = token_problems(values["token"], values["host_token"], values["allow_default_tokens"], origins)
    home = Path(environ.get("HOME") or Path.home())
    if not (deleting and "workspace_dir" not in origins and "data_dir" not in origins):
        problems += folder_problems(values, origins, project_root=project_root, home=home)
    problems += tls_problems(values, origins)
    if problems:
        raise SettingsError(problems)
    # the named variables' values: the process environment first, then the .env file (as the settings)
    passed = {
        n: environ[n] if n in environ else file_values[n]
        for n in values["sandbox_env"]
        if n in environ or n in file_values
    }
    return Settings(
        **values,
        project_root=project_root,
        env_file=env_path if env_path.exists() else None,
        origins=origins,
        per_platform=per_platform,
        sandbox_env_values=passed,
    )


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


def _shown(spec: Spec, raw: str) -> str:
    """``raw`` as a problem line may show it: masked for a secret setting."""
    from openwork_sandbox.core.console import mask

    return mask(raw) if spec.secret else raw


def _absolute(value: str | Path, root: Path) -> Path:
    """``value`` with ``~`` expanded, relative to ``root`` unless absolute."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path)
