"""Provider keys and opencode's configuration into the sandbox, and nowhere else.

``OPENWORK_SANDBOX_ENV`` names host variables (``ANTHROPIC_API_KEY,OPENAI_API_KEY``) for opencode's
environment; ``OPENWORK_OPENCODE_CONFIG`` names opencode's configuration file
(:mod:`openwork_sandbox.config.opencode`). Neither goes into the sandbox's environment, which the
runtimes keep in their stored configuration (``docker inspect``'s ``Config.Env``, the microVM's):

- ``up`` writes ``.state/<name>/sandbox-secrets/`` (0700) holding ``sandbox.env`` (0600: one
  shell-quoted ``export NAME='value'`` line per variable) and ``opencode.jsonc`` (0600, as written);
- the runtime bind-mounts that folder read-only at :data:`GUEST_DIR`, outside ``/workspace`` (which
  collaborators read through the server) and ``/data``;
- the image's ``opencode-gate`` sources ``sandbox.env`` and points ``OPENCODE_CONFIG`` at
  ``opencode.jsonc`` just before it starts opencode, so only opencode and what the agent runs hold
  the keys.

The server's side has a folder of its own, out of the agent's reach (the image's entrypoint makes
:data:`PRIVATE_GUEST` root's, 0700, and only the server side may enter it):

- ``.state/<name>/server-secrets/`` (0700) holds the client and host tokens as files (0600), mounted
  read-only at :data:`SERVER_SECRETS_GUEST`; the sandbox gets only their paths
  (``OPENWORK_TOKEN_FILE``, ``OPENWORK_HOST_TOKEN_FILE``), so no token is in its environment or the
  runtime's stored configuration;
- ``.state/<name>/server-store/`` (0700) is the server's private store (issued tokens), mounted at
  :data:`STORE_GUEST`.

Values never reach a command line, a log or a message (:func:`openwork_sandbox.core.gha.mask` hides
them under GitHub Actions). The sandbox's fingerprint holds a digest of each part, so a changed name
or value makes the next ``up`` recreate the sandbox and say why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from openwork_sandbox.config import Settings
from openwork_sandbox.core.errors import SettingsError
from openwork_sandbox.core.files import private_dir, write_atomic

GUEST_DIR = "/etc/openwork-sandbox"  # where the folder is mounted (read by image/opencode-gate)
HOST_DIR = "sandbox-secrets"  # under .state/<name>/
PRIVATE_GUEST = "/srv/openwork"  # root's, 0700 inside the sandbox (the image's entrypoint)
SERVER_SECRETS_GUEST = f"{PRIVATE_GUEST}/secrets"
STORE_GUEST = f"{PRIVATE_GUEST}/store"
SERVER_SECRETS_DIR = "server-secrets"  # under .state/<name>/
STORE_DIR = "server-store"  # under .state/<name>/
TOKEN_FILES = {"OPENWORK_TOKEN": "openwork-token", "OPENWORK_HOST_TOKEN": "openwork-host-token"}
ENV_FILE = "sandbox.env"
CONFIG_FILE = "opencode.jsonc"


@dataclasses.dataclass(frozen=True)
class SandboxSecrets:
    """What goes into the sandbox's secrets folder (values in clear: never print)."""

    env: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)
    config_text: str | None = dataclasses.field(default=None, repr=False)

    @property
    def empty(self) -> bool:
        return not self.env and self.config_text is None

    def env_script(self) -> str:
        """``export NAME='value'`` lines for ``.`` in sh: a value is single-quoted (``'`` as ``'\\''``),
        so nothing in it is ever run or expanded."""
        return "".join(f"export {name}='" + value.replace("'", "'\\''") + "'\n" for name, value in self.env.items())

    def files(self) -> dict[str, str]:
        """The folder's files by name: ``sandbox.env`` when a variable is set, ``opencode.jsonc`` when a config is."""
        out = {ENV_FILE: self.env_script()} if self.env else {}
        if self.config_text is not None:
            out[CONFIG_FILE] = self.config_text
        return out

    def digests(self) -> dict[str, str]:
        """For the settings fingerprint and the record, one digest per part that is set (no value is
        stored): ``env`` (names and values) and ``opencode_config`` (the file's text)."""
        from openwork_sandbox.state.store import secret_digest

        out = {}
        if self.env:
            out["env"] = secret_digest("\0".join(f"{k}\0{v}" for k, v in self.env.items()))
        if self.config_text is not None:
            out["opencode_config"] = secret_digest(self.config_text)
        return out


PART_SETTING = {"env": "OPENWORK_SANDBOX_ENV (names or values)", "opencode_config": "OPENWORK_OPENCODE_CONFIG"}


def changed_parts(recorded: dict | None, now: dict) -> tuple[str, ...]:
    """The settings whose part differs between the digests a sandbox was made with and ``now``."""
    recorded = recorded or {}
    return tuple(PART_SETTING[k] for k in PART_SETTING if recorded.get(k) != now.get(k))


def missing_problem(settings: Settings) -> str | None:
    """One line naming the OPENWORK_SANDBOX_ENV variables that are unset (or empty), or None."""
    missing = [n for n in settings.sandbox_env if not settings.sandbox_env_values.get(n)]
    if not missing:
        return None
    names = " and ".join(missing) if len(missing) < 3 else ", ".join(missing)
    verb = "is" if len(missing) == 1 else "are"
    return (
        f"{names} {verb} named in OPENWORK_SANDBOX_ENV (from {settings.origin('sandbox_env')}) but {verb} not set "
        "(or empty): export it, add it to .env, or drop it from OPENWORK_SANDBOX_ENV"
    )


def gather(settings: Settings) -> SandboxSecrets:
    """The values and the config for ``up``; :class:`SettingsError` (exit 2) for an unset variable or a
    config file that cannot be used, before anything is booted."""
    from openwork_sandbox.config.opencode import load

    problems = []
    missing = missing_problem(settings)
    if missing:
        problems.append(missing)
    config_text = None
    if settings.opencode_config is not None:
        try:
            config_text = load(settings.opencode_config, settings.origin("opencode_config")).text
        except SettingsError as exc:
            problems += exc.problems
    if problems:
        raise SettingsError(problems)
    env = {n: settings.sandbox_env_values[n] for n in settings.sandbox_env}
    return SandboxSecrets(env, config_text)


def current(settings: Settings) -> SandboxSecrets:
    """What ``up`` would deliver, without failing (for ``status``' "settings changed" and doctor):
    unset variables are left out, a config that cannot be read counts as none."""
    from openwork_sandbox.config.opencode import load

    config_text = None
    if settings.opencode_config is not None:
        try:
            config_text = load(settings.opencode_config).text
        except SettingsError:
            config_text = None
    env = {n: settings.sandbox_env_values[n] for n in settings.sandbox_env if settings.sandbox_env_values.get(n)}
    return SandboxSecrets(env, config_text)


def host_dir(settings: Settings) -> Path:
    """``.state/<name>/sandbox-secrets``: the folder the runtime mounts at :data:`GUEST_DIR`."""
    return settings.sandbox_state_dir / HOST_DIR


def write(settings: Settings, secrets: SandboxSecrets) -> Path | None:
    """Write the folder (0700) and its files (0600, atomically) for the runtime to mount; files no
    longer wanted are deleted. Returns the folder, or None (and no folder) when there is nothing."""
    folder = host_dir(settings)
    wanted = secrets.files()
    if not wanted:
        if folder.is_dir() and not folder.is_symlink():
            for name in (ENV_FILE, CONFIG_FILE):
                (folder / name).unlink(missing_ok=True)
            try:
                folder.rmdir()
            except OSError:
                pass
        return None
    if folder.is_symlink():
        folder.unlink()
    private_dir(folder, own=True)
    for name, text in wanted.items():
        write_atomic(folder / name, text, mode=0o600)
    for name in (ENV_FILE, CONFIG_FILE):
        if name not in wanted:
            (folder / name).unlink(missing_ok=True)
    return folder


def server_secrets_dir(settings: Settings) -> Path:
    """``.state/<name>/server-secrets``: the token files, mounted read-only at :data:`SERVER_SECRETS_GUEST`."""
    return settings.sandbox_state_dir / SERVER_SECRETS_DIR


def store_dir(settings: Settings) -> Path:
    """``.state/<name>/server-store``: the server's private store, mounted at :data:`STORE_GUEST`."""
    return settings.sandbox_state_dir / STORE_DIR


def token_env() -> dict[str, str]:
    """The sandbox's environment for its tokens: where their files are mounted, never the values."""
    return {f"{var}_FILE": f"{SERVER_SECRETS_GUEST}/{name}" for var, name in TOKEN_FILES.items()}


def write_server_side(settings: Settings, token: str, host_token: str) -> None:
    """Write the token files (0600, atomically) into their folder and make the store folder, both
    0700, for the runtime to mount; a symlink in their place is replaced by a real folder."""
    values = {"OPENWORK_TOKEN": token, "OPENWORK_HOST_TOKEN": host_token}
    for folder in (server_secrets_dir(settings), store_dir(settings)):
        if folder.is_symlink():
            folder.unlink()
        private_dir(folder, own=True)
    for var, name in TOKEN_FILES.items():
        write_atomic(server_secrets_dir(settings) / name, values[var] + "\n", mode=0o600)
