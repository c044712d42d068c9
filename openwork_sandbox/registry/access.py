"""How this tool reaches the image's registry: whose login, which CAs, whether plain HTTP is allowed.

One answer for every client of the registry: the v2 API (:mod:`openwork_sandbox.registry.client`)
and a runtime's own pull, which gets it as a runtime-neutral :class:`PullAccess`.

- **Login**: ``OPENWORK_REGISTRY_USERNAME``/``_PASSWORD`` when both are set, else what Docker
  saved for the host (:mod:`openwork_sandbox.registry.docker_config`), else none.
- **Trust**: the system CAs, plus Docker's ``/etc/docker/certs.d/<host:port>/*.crt``, plus the PEM
  file in ``OPENWORK_REGISTRY_CA``. With extra CAs the HTTP client gets one combined bundle file,
  ``<cache dir>/ca-bundles/<sha256>.pem`` (a file, not an ``SSLContext``: ``verify=path`` also holds
  through an HTTPS proxy and for a token endpoint on another host; content-addressed, so parallel
  runs share it and never see half of one). A runtime's pull gets the PEMs themselves.
- **Scheme**: HTTPS first, as Docker does; plain HTTP only for a loopback registry or one named
  insecure (``OPENWORK_REGISTRY_INSECURE=true``) that does not speak TLS.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from pathlib import Path

from openwork_sandbox.config import Settings
from openwork_sandbox.core import console, processes
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, WorkflowError
from openwork_sandbox.core.files import write_atomic
from openwork_sandbox.registry import docker_config
from openwork_sandbox.registry.docker_config import Credentials

SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")
PEM_MARK = b"-----BEGIN CERTIFICATE-----"
# the way out of a missing or wrong login, in every registry client's messages
LOGIN_HINT = "run docker login {host} (or set OPENWORK_REGISTRY_USERNAME and OPENWORK_REGISTRY_PASSWORD)"
# what a runtime's failed pull says (Docker's words or the SDK's) when the registry wants a login it lacks
LOGIN_REFUSED = re.compile(
    r"\b401\b|unauthorized|authentication required|no basic auth credentials|denied|"
    r"docker login",
    re.IGNORECASE,
)


def settings_credentials(settings: Settings) -> Credentials | None:
    """The login from OPENWORK_REGISTRY_USERNAME/_PASSWORD (both, or a one-line error for one)."""
    user, password = settings.registry_username, settings.registry_password
    if user and password:
        return Credentials(user, password, "OPENWORK_REGISTRY_USERNAME/_PASSWORD")
    if user or password:
        missing = "OPENWORK_REGISTRY_PASSWORD" if user else "OPENWORK_REGISTRY_USERNAME"
        raise WorkflowError(
            f"{missing} is not set: registry login needs both OPENWORK_REGISTRY_USERNAME and "
            "OPENWORK_REGISTRY_PASSWORD",
            exit_code=EXIT_BAD_SETTINGS,
        )
    return None


def credentials(settings: Settings, host: str) -> Credentials | None:
    """Whose login to use for ``host``: the settings' first, then Docker's own; None: anonymous."""
    return settings_credentials(settings) or docker_config.docker_credentials(host)


def system_bundle() -> str:
    """The system CA bundle Python's HTTP client would use (the environment's choice first)."""
    for var in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        path = os.environ.get(var)
        if path and Path(path).is_file():
            return path
    for path in SYSTEM_BUNDLES:
        if Path(path).is_file():
            return path
    import certifi

    return certifi.where()


def extra_cas(settings: Settings, host: str) -> list[tuple[str, bytes]]:
    """``(where, PEM)`` of every CA trusted for ``host`` beyond the system's: certs.d, then OPENWORK_REGISTRY_CA."""
    out = [(str(path), pem) for path, pem in docker_config.certs_d_pems(host)]
    if settings.registry_ca:
        path = Path(settings.registry_ca).expanduser()
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise WorkflowError(
                f"OPENWORK_REGISTRY_CA={path}: cannot read it ({exc.strerror or exc}); point it at the "
                "registry's CA certificate (a PEM file)",
                exit_code=EXIT_BAD_SETTINGS,
            ) from None
        if PEM_MARK not in pem:
            raise WorkflowError(
                f"OPENWORK_REGISTRY_CA={path}: no PEM certificate in it (no '-----BEGIN "
                "CERTIFICATE-----'); point it at the registry's CA certificate",
                exit_code=EXIT_BAD_SETTINGS,
            )
        out.append((f"OPENWORK_REGISTRY_CA={path}", pem))
    return out


def ca_bundle(settings: Settings, host: str) -> bool | str:
    """``verify`` for the HTTP client: True (system CAs) or the path of a combined bundle."""
    extras = extra_cas(settings, host)
    if not extras:
        return True
    base = system_bundle()
    return _combined_bundle(base, tuple(pem for _, pem in extras), str(settings.cache_dir / "ca-bundles"))


@functools.lru_cache(maxsize=8)
def _combined_bundle(base: str, pems: tuple[bytes, ...], folder: str) -> str:
    """The path of the bundle ``base`` + ``pems`` in ``folder``, named by its sha256, written once."""
    content = Path(base).read_bytes().rstrip(b"\n") + b"\n"
    for pem in pems:
        content += pem.strip() + b"\n"
    path = Path(folder) / f"{hashlib.sha256(content).hexdigest()[:32]}.pem"
    if not path.is_file() or path.read_bytes() != content:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, content, mode=0o644)
    return str(path)


def http_allowed(settings: Settings, host_is_loopback: bool) -> bool:
    """Plain HTTP may be tried (after HTTPS) for loopback registries and insecure ones only."""
    return host_is_loopback or settings.registry_insecure


def certs_hint(host: str) -> str:
    """The way out of an untrusted certificate, for every registry client's messages."""
    return (
        f"put its CA certificate in {docker_config.certs_d_dir(host) / 'ca.crt'} (where Docker reads it) or "
        "set OPENWORK_REGISTRY_CA to a PEM file"
    )


@dataclasses.dataclass(frozen=True)
class PullAccess:
    """What any runtime's pull of the image needs, runtime-neutral: plain HTTP or not, the login
    (or None), the extra CA PEMs. Each runtime turns it into its own arguments."""

    insecure: bool
    username: str | None = None
    password: str | None = None
    ca_pems: tuple[bytes, ...] = ()
    settings_login: bool = False  # the login is OPENWORK_REGISTRY_USERNAME/_PASSWORD: Docker has not seen it
    login_required: bool = False  # the registry answered 401 to no login (known once it was asked)

    def __repr__(self) -> str:  # the password stays out of tracebacks and logs
        return f"PullAccess(insecure={self.insecure}, username={self.username!r}, ca_pems={len(self.ca_pems)})"


def pull_access(settings: Settings, host: str, plain_http: bool, creds: Credentials | None) -> PullAccess:
    """The :class:`PullAccess` for ``host``, spoken over ``plain_http`` or TLS.

    ``creds``: the login the caller's ``Registry`` already holds (:func:`credentials` runs a
    credential helper, so it is asked once)."""
    login = creds is not None and bool(creds.password)
    return PullAccess(
        insecure=plain_http,
        username=creds.username if login else None,
        password=creds.password if login else None,
        ca_pems=() if plain_http else tuple(pem for _, pem in extra_cas(settings, host)),
        settings_login=login and creds == settings_credentials(settings),
    )


def login_refused(pull_error: str) -> bool:
    """A runtime's pull failed because the registry wants a login (none, or the wrong one)."""
    return LOGIN_REFUSED.search(pull_error) is not None


def docker_login(host: str, username: str, password: str) -> None:
    """``docker login`` (the password on stdin), so Docker's own push and pull have the settings' login;
    a one-line WorkflowError when the registry refuses it."""
    proc = processes.docker(
        "login", "--username", username, "--password-stdin", host, input=password, check=False, timeout=120
    )
    if proc.returncode != 0:
        raise WorkflowError(
            f"docker login to {host} as {username} failed: "
            f"{processes.last_line(proc.stderr)}; check OPENWORK_REGISTRY_USERNAME/PASSWORD"
        )
    console.info(f"{console.OK} logged in to {host} as {username}")
