"""The server's TLS certificate: the user's own (checked before anything changes) or one made per
sandbox, the copy the sandbox reads, and what a client here verifies it against.

With TLS on (:attr:`Settings.tls_on <openwork_sandbox.config.settings.Settings.tls_on>`):

- ``OPENWORK_TLS_CERT``/``OPENWORK_TLS_KEY`` set: :func:`check` reads them; a file that cannot be
  read or parsed, an encrypted key, a key that is not the certificate's, a certificate that has
  expired or does not name ``OPENWORK_CONNECT_HOST``: a :class:`SettingsError` line each (exit 2);
- else :func:`ensure` keeps a certificate made for the sandbox in ``.state/<name>/tls/`` (0700):
  ``ca.crt`` (the sandbox's own CA, the file to give clients), ``tls.crt`` (the server's
  certificate, then the CA) and ``tls.key`` (0600). ECDSA P-256, valid :data:`VALID_DAYS` days,
  subjectAltName = the connect host, 127.0.0.1 and localhost. The CA's key signs once and is never
  written: no one can sign another name with it. Made again when the names or the key do not
  match, or fewer than :data:`RENEW_DAYS` days are left.

:func:`deliver` copies the certificate and key (0600) into the folder the runtime mounts read-only
for the server (``.state/<name>/server-secrets/``); the key never goes into an environment.
:func:`client_verify` is what a client here trusts: the made CA, else ``OPENWORK_TLS_CA``, else the
system CAs. ``cryptography`` is imported inside the functions that need it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from pathlib import Path

from openwork_sandbox.config import Settings
from openwork_sandbox.core.errors import SettingsError
from openwork_sandbox.core.files import private_dir, write_atomic
from openwork_sandbox.state.secrets import server_secrets_dir

TLS_DIR = "tls"  # under .state/<name>/: the made certificate
CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "tls.crt", "tls.key"
VALID_DAYS = 365
RENEW_DAYS = 30  # a made certificate with fewer days left is made again by `up`
LOCAL_NAMES = ("127.0.0.1", "localhost")  # in every made certificate besides the connect host


@dataclasses.dataclass(frozen=True)
class ServerCert:
    """The certificate the server presents (PEM, its chain after it) and its key (never print)."""

    cert_pem: bytes
    key_pem: bytes = dataclasses.field(repr=False)
    made: bool  # made here for the sandbox (else the user's own)
    fingerprint: str  # SHA-256 of the server's certificate, AA:BB:... as `openssl x509 -fingerprint` shows it
    not_after: dt.datetime

    def digest(self) -> str:
        """For the launch fingerprint: a new certificate or key makes a new sandbox."""
        from openwork_sandbox.state.store import secret_digest

        return secret_digest((self.cert_pem + self.key_pem).decode())


def cert_dir(settings: Settings) -> Path:
    """``.state/<name>/tls``: the certificate made for the sandbox."""
    return settings.sandbox_state_dir / TLS_DIR


def client_verify(settings: Settings) -> bool | str:
    """What a client here verifies the sandbox's certificate with: the made CA's file when the
    sandbox has no certificate of the user's, else ``OPENWORK_TLS_CA``, else True (the system CAs)."""
    if settings.tls_cert is None:
        return str(cert_dir(settings) / CA_FILE)
    return str(settings.tls_ca) if settings.tls_ca else True


def url_verify(settings: Settings) -> bool | str:
    """What ``smoke --url`` verifies a server's certificate with: ``OPENWORK_TLS_CA``, else the system CAs."""
    return str(settings.tls_ca) if settings.tls_ca else True


def wanted_names(connect_host: str) -> list[str]:
    """The subjectAltNames of a made certificate: the connect host, then :data:`LOCAL_NAMES`."""
    return list(dict.fromkeys([connect_host, *LOCAL_NAMES]))


# --- reading ----------------------------------------------------------------------------------------


def _read(path: Path, env: str, origin: str, problems: list[str]) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        problems.append(f"{env}={path} (from {origin}): cannot read it ({exc.strerror}); point {env} at a PEM file")
        return None


def _certs(data: bytes):
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        return []


def _key(data: bytes):
    """The private key in ``data``; ValueError when there is none it can use, TypeError when it is encrypted."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(data, password=None)
    except UnsupportedAlgorithm as exc:
        raise ValueError(str(exc)) from None


def _public_der(key_or_cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    public = key_or_cert.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def names_of(cert) -> list[str]:
    """The DNS names and IP addresses a certificate's subjectAltName holds, as text."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def names_host(names: list[str], host: str) -> bool:
    """``host`` is among ``names`` as a client checks it: an IP address exactly, a DNS name in any
    case or under a wildcard of one label (``*.example.com``)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for name in names:
        if ip is not None:
            try:
                if ipaddress.ip_address(name) == ip:
                    return True
            except ValueError:
                pass
            continue
        name, want = name.lower().rstrip("."), host.lower().rstrip(".")
        if name == want or (name.startswith("*.") and "." in want and want.split(".", 1)[1] == name[2:]):
            return True
    return False


def fingerprint_of(cert) -> str:
    from cryptography.hazmat.primitives import hashes

    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# --- the user's own -------------------------------------------------------------------------------


def own_cert(settings: Settings) -> ServerCert:
    """The user's certificate and key, checked (see the module doc); SettingsError listing each problem."""
    problems: list[str] = []
    cert_path, key_path = settings.tls_cert, settings.tls_key
    if cert_path is None or key_path is None:  # config.rules lets only both or neither through
        raise SettingsError(["OPENWORK_TLS_CERT and OPENWORK_TLS_KEY: give both, or neither"])
    cert_env = f"OPENWORK_TLS_CERT={cert_path} (from {settings.origin('tls_cert')})"
    key_env = f"OPENWORK_TLS_KEY={key_path} (from {settings.origin('tls_key')})"
    cert_pem = _read(cert_path, "OPENWORK_TLS_CERT", settings.origin("tls_cert"), problems)
    key_pem = _read(key_path, "OPENWORK_TLS_KEY", settings.origin("tls_key"), problems)
    certs = _certs(cert_pem) if cert_pem is not None else []
    if cert_pem is not None and not certs:
        problems.append(f"{cert_env} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    key = None
    if key_pem is not None:
        try:
            key = _key(key_pem)
        except TypeError:
            problems.append(
                f"{key_env} is encrypted: give the key without a passphrase (`openssl pkey -in KEY -out NEW`)"
            )
        except ValueError:
            problems.append(f"{key_env} holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    if certs and key is not None and _public_der(key) != _public_der(certs[0]):
        problems.append(
            f"{key_env} is not the private key of the certificate in OPENWORK_TLS_CERT: give the key that belongs to it"
        )
    if certs:
        leaf, now = certs[0], _now()
        if leaf.not_valid_after_utc <= now:
            problems.append(f"{cert_env} expired on {leaf.not_valid_after_utc:%Y-%m-%d}: renew it")
        elif leaf.not_valid_before_utc > now:
            problems.append(f"{cert_env} is valid only from {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
        names = names_of(leaf)
        if not names_host(names, settings.connect_host):
            problems.append(
                f"{cert_env} does not name OPENWORK_CONNECT_HOST={settings.connect_host} (its subjectAltName: "
                f"{', '.join(names) or 'none'}): clients would refuse it; use a certificate for "
                f"{settings.connect_host}, or set OPENWORK_CONNECT_HOST to a name it holds"
            )
    if problems:
        raise SettingsError(problems)
    return ServerCert(cert_pem, key_pem, False, fingerprint_of(certs[0]), certs[0].not_valid_after_utc)


def ca_problems(settings: Settings) -> list[str]:
    """``OPENWORK_TLS_CA`` that cannot be read or holds no PEM certificate: one line; [] when unset or fine."""
    if settings.tls_ca is None:
        return []
    problems: list[str] = []
    data = _read(settings.tls_ca, "OPENWORK_TLS_CA", settings.origin("tls_ca"), problems)
    if data is not None and not _certs(data):
        problems.append(
            f"OPENWORK_TLS_CA={settings.tls_ca} (from {settings.origin('tls_ca')}) holds no PEM certificate "
            "(-----BEGIN CERTIFICATE-----)"
        )
    return problems


def check(settings: Settings) -> None:
    """Before ``up`` changes anything: the user's certificate and key (when TLS is on and they are
    given) and ``OPENWORK_TLS_CA``; one SettingsError with every problem."""
    problems = ca_problems(settings) if settings.tls_on else []
    if settings.tls_on and settings.tls_cert is not None:
        try:
            own_cert(settings)
        except SettingsError as exc:
            problems += exc.problems
    if problems:
        raise SettingsError(problems)


# --- the made one ---------------------------------------------------------------------------------


def _key_usage(**set_bits: bool):
    from cryptography import x509

    bits = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
    bits += ("key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{b: set_bits.get(b, False) for b in bits})


def make_cert(connect_host: str, label: str, now: dt.datetime | None = None) -> tuple[bytes, bytes, bytes]:
    """``(server certificate + CA, server key, CA certificate)`` in PEM: a CA made for this one
    certificate (its key signs once and is dropped) and the server's, naming :func:`wanted_names`."""
    import secrets

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or _now()
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=VALID_DAYS)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "openwork-sandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"CA of {label} {secrets.token_hex(4)}"[:64]),
        ]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    alt: list[x509.GeneralName] = []
    for name in wanted_names(connect_host):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, connect_host[:64])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_pem = ca.public_bytes(pem)
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(pem) + ca_pem, key_pem, ca_pem


def made_cert(settings: Settings) -> tuple[ServerCert | None, str]:
    """The certificate made earlier for the sandbox, or None with why it must be made (again)."""
    folder = cert_dir(settings)
    try:
        cert_pem, key_pem = (folder / CERT_FILE).read_bytes(), (folder / KEY_FILE).read_bytes()
        ca_ok = bool(_certs((folder / CA_FILE).read_bytes()))
    except OSError:
        return None, "none made yet"
    certs = _certs(cert_pem)
    try:
        key = _key(key_pem)
    except (ValueError, TypeError):
        key = None
    if not certs or key is None or not ca_ok or _public_der(key) != _public_der(certs[0]):
        return None, "the one made earlier cannot be read"
    leaf = certs[0]
    if sorted(names_of(leaf)) != sorted(wanted_names(settings.connect_host)):
        return None, f"OPENWORK_CONNECT_HOST is now {settings.connect_host}"
    if leaf.not_valid_after_utc - _now() < dt.timedelta(days=RENEW_DAYS):
        return None, f"the one made earlier expires on {leaf.not_valid_after_utc:%Y-%m-%d}"
    return ServerCert(cert_pem, key_pem, True, fingerprint_of(leaf), leaf.not_valid_after_utc), ""


def ensure(settings: Settings) -> tuple[ServerCert | None, str | None]:
    """``(the certificate the server presents, a line saying it was made and why or None)``, making
    one for the sandbox when needed; ``(None, None)`` with TLS off. Call :func:`check` first."""
    if not settings.tls_on:
        return None, None
    if settings.tls_cert is not None:
        return own_cert(settings), None
    cert, why = made_cert(settings)
    if cert is not None:
        return cert, None
    cert_pem, key_pem, ca_pem = make_cert(settings.connect_host, settings.name)
    folder = cert_dir(settings)
    private_dir(folder, own=True)
    write_atomic(folder / KEY_FILE, key_pem, mode=0o600)
    write_atomic(folder / CERT_FILE, cert_pem, mode=0o644)
    write_atomic(folder / CA_FILE, ca_pem, mode=0o644)
    made, _ = made_cert(settings)
    assert made is not None, "a certificate just made must read back"
    return made, f"made a TLS certificate for {settings.name} ({why}; valid until {made.not_after:%Y-%m-%d})"


def current(settings: Settings) -> ServerCert | None:
    """The certificate ``up`` would deliver now, without making or failing (``status``' "settings
    current"): None with TLS off, or when there is none yet or it cannot be used."""
    if not settings.tls_on:
        return None
    if settings.tls_cert is None:
        return made_cert(settings)[0]
    try:
        return own_cert(settings)
    except SettingsError:
        return None


def deliver(settings: Settings, cert: ServerCert | None) -> Path:
    """Write the certificate and key (0600 each) into :func:`server_secrets_dir` (0700) for the
    server, or delete them there with TLS off; returns the folder."""
    folder = server_secrets_dir(settings)
    if cert is None:
        for name in (CERT_FILE, KEY_FILE):
            (folder / name).unlink(missing_ok=True)
        return folder
    private_dir(folder, own=True)
    write_atomic(folder / CERT_FILE, cert.cert_pem, mode=0o600)
    write_atomic(folder / KEY_FILE, cert.key_pem, mode=0o600)
    return folder
