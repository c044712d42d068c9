"""What Docker itself knows about a registry: the credentials ``docker login`` saved, and the CAs
Docker trusts for it. A tool that honours these works after ``docker login`` (what CI's
``docker/login-action`` does) and with a private CA dropped into ``/etc/docker/certs.d/``.

Credentials, in Docker's own order for a registry host:

1. ``credHelpers[<host>]`` in ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``):
   ``docker-credential-<helper> get`` with the server address on stdin;
2. else ``credsStore``: the same protocol with that helper;
3. else ``auths[<host>]``: ``auth`` (base64 ``user:password``) or ``username``/``password``, and
   ``identitytoken`` (an OAuth2 refresh token for the registry's token endpoint).

``auths`` keys are matched as Docker matches them (``https://host/v1/`` or ``host`` alike).
Secrets never go on a command line and are never printed: :class:`Credentials` masks them in its
``repr``. Nothing here writes a file.

Trust: ``/etc/docker/certs.d/<host:port>/*.crt`` (``ca.crt`` among them) are CA certificates for
that registry, as the Docker engine reads them. Client certificates (``*.cert``/``*.key``) are
not used.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
from pathlib import Path

from openwork_sandbox.core import processes
from openwork_sandbox.core.errors import WorkflowError

DOCKER_HUB_HOSTS = {"docker.io", "index.docker.io", "registry-1.docker.io"}
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"  # the key Docker uses for Docker Hub
CERTS_D = Path("/etc/docker/certs.d")
HELPER_TIMEOUT = 60.0
TOKEN_USERNAME = "<token>"  # a helper's way of saying "Secret is an identity token"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """A registry login: user and password, or an identity token. ``source`` says where it came from."""

    username: str
    password: str = dataclasses.field(repr=False)
    source: str
    identity_token: str | None = dataclasses.field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, source={self.source!r})"


def config_dir(environ: dict | None = None) -> Path:
    """Docker's configuration folder: ``$DOCKER_CONFIG``, else ``~/.docker``."""
    env = os.environ if environ is None else environ
    return Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker").expanduser()


def config_path(environ: dict | None = None) -> Path:
    return config_dir(environ) / "config.json"


def server_key(host: str) -> str:
    """What Docker stores and hands to a credential helper for a registry host."""
    return DOCKER_HUB_SERVER if host in DOCKER_HUB_HOSTS else host


def _hostname(key: str) -> str:
    """Docker's ``ConvertToHostname``: drop the scheme and any path."""
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key.split("/", 1)[0]


def read_config(environ: dict | None = None) -> dict:
    """Docker's ``config.json``: ``{}`` when there is none; a one-line WorkflowError when it does not parse."""
    path = config_path(environ)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise WorkflowError(
            f"cannot read Docker's configuration {path} ({exc.__class__.__name__}): fix it, or point "
            "DOCKER_CONFIG at another folder"
        ) from None
    return data if isinstance(data, dict) else {}


def _from_auths(config: dict, host: str, path: Path) -> Credentials | None:
    auths = config.get("auths") or {}
    wanted = server_key(host)
    entry = auths.get(wanted) or auths.get(host)
    if entry is None:
        entry = next((v for k, v in auths.items() if _hostname(k) == _hostname(wanted)), None)
    if not isinstance(entry, dict):
        return None
    source = f"{path} (auths)"
    username, password = entry.get("username") or "", entry.get("password") or ""
    if entry.get("auth"):
        try:
            username, _, password = base64.b64decode(entry["auth"]).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise WorkflowError(
                f"{path}: the saved login for {host} is not valid base64 user:password; run docker login {host} again"
            ) from None
    token = entry.get("identitytoken") or None
    if token:
        return Credentials(username or TOKEN_USERNAME, "", source, identity_token=token)
    if username and password:
        return Credentials(username, password, source)
    return None


def helper_get(helper: str, host: str) -> Credentials | None:
    """The login credential helper ``helper`` keeps for ``host`` (``docker-credential-<helper> get``
    as Docker runs it), None when it has none ("credentials not found" or no secret). A helper that
    is not installed, does not answer within :data:`HELPER_TIMEOUT`, fails or answers something else
    than the protocol's JSON is a one-line WorkflowError naming it."""
    program = f"docker-credential-{helper}"
    try:
        proc = processes.credential_helper(helper, server_key(host), timeout=HELPER_TIMEOUT)
    except processes.ProgramMissing:
        raise WorkflowError(
            f"Docker's configuration ({config_path()}) names the credential helper {helper!r} for "
            f"{host}, but {program} is not on PATH: install it, or remove it from the "
            "configuration"
        ) from None
    except processes.CommandTimeout:
        raise WorkflowError(f"{program} get did not answer within {HELPER_TIMEOUT:.0f}s for {host}") from None
    out = (proc.stdout or "").strip()
    if proc.returncode != 0:
        if "credentials not found" in (out + proc.stderr).lower():
            return None
        reason = (proc.stderr or out).strip().splitlines()[-1:] or ["(no output)"]
        raise WorkflowError(f"{program} get failed for {host} (exit {proc.returncode}): {reason[0][:200]}")
    try:
        data = json.loads(out)
        username, secret = str(data.get("Username") or ""), str(data.get("Secret") or "")
    except (ValueError, AttributeError):
        raise WorkflowError(
            f"{program} get answered something that is not the helper protocol's JSON for {host}"
        ) from None
    if not secret:
        return None
    source = f"{program}"
    if username == TOKEN_USERNAME:
        return Credentials(username, "", source, identity_token=secret)
    return Credentials(username, secret, source)


def docker_credentials(host: str, environ: dict | None = None) -> Credentials | None:
    """The login Docker would use for ``host`` (None: anonymous); its secrets are masked under
    GitHub Actions before anything could print them."""
    from openwork_sandbox.core import gha

    config = read_config(environ)
    helpers = config.get("credHelpers") or {}
    helper = helpers.get(server_key(host)) or helpers.get(host)
    if helper:
        found = helper_get(helper, host)
    elif config.get("credsStore"):
        found = helper_get(config["credsStore"], host)
    else:
        found = _from_auths(config, host, config_path(environ))
    if found is not None:
        gha.mask(found.password, found.identity_token)
    return found


def certs_d_dir(host: str) -> Path:
    """``/etc/docker/certs.d/<host:port>``: where Docker looks for a registry's CA."""
    return CERTS_D / host


def certs_d_pems(host: str) -> list[tuple[Path, bytes]]:
    """The CA certificates Docker trusts for ``host`` (``*.crt`` in its certs.d folder), sorted."""
    folder = certs_d_dir(host)
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix == ".crt" and p.is_file())
    except OSError:
        return []
    out = []
    for path in files:
        try:
            out.append((path, path.read_bytes()))
        except OSError:
            continue
    return out
