"""TEST DOUBLE of a registry token service (the ``auth.token`` realm of a Docker registry).

The registry in the tests is the real Debian ``docker-registry``; only the service that hands out
its tokens is this double, because no real one can be installed here. It keeps the contract of
Docker's token authentication (distribution's ``docs/spec/auth/token.md``):

- ``GET /token?service=…&scope=repository:NAME:ACTIONS`` with HTTP Basic credentials (an
  anonymous request gets 401 here), or ``POST /token`` with ``grant_type=refresh_token`` and a
  ``refresh_token`` (an identity token);
- answers ``{"token": JWT, "access_token": JWT, "expires_in": …, "issued_at": …}``; the JWT is
  RS256-signed, carries ``x5c`` (the signing certificate, which the registry's
  ``rootcertbundle`` trusts), and the claims ``iss``, ``sub``, ``aud`` (the service), ``exp``,
  ``nbf``, ``iat``, ``jti`` and ``access`` (only the actions the user is allowed);
- wrong credentials: 401.

Knobs for the tests: ``users`` (name → (password, allowed actions)), ``expired`` (issue tokens
that expired an hour ago), ``forbidden`` (users answered 403 for any scope), ``requests`` (what
was asked, without secrets).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuerDouble:
    """A token service on 127.0.0.1 (plain HTTP) that signs registry tokens; ``start()``/``stop()``."""

    def __init__(self, folder: Path, *, issuer: str = "openwork-test-issuer", service: str = "openwork-test-registry"):
        self.issuer, self.service = issuer, service
        self.users: dict[str, tuple[str, set[str]]] = {}
        self.refresh_tokens: dict[str, str] = {}  # identity token -> user
        self.expired = False
        self.forbidden: set[str] = set()  # users who get 403 instead of a token (as some token services answer)
        self.requests: list[dict] = []
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = _dt.datetime.now(_dt.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openwork test token issuer (double)")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(days=1))
            .not_valid_after(now + _dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        folder.mkdir(parents=True, exist_ok=True)
        self.cert_path = folder / "token-issuer.crt"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    # --- tokens ---------------------------------------------------------------------------------
    def sign(self, user: str, access: list[dict]) -> str:
        now = int(time.time()) - (3600 if self.expired else 0)
        header = {
            "alg": "RS256",
            "typ": "JWT",
            "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()],
        }
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    def grant(self, user: str, scopes: list[str]) -> list[dict]:
        allowed = self.users[user][1]
        access = []
        for scope in scopes:
            for one in scope.split(" "):
                parts = one.split(":")
                if len(parts) != 3 or parts[0] != "repository":
                    continue
                actions = [a for a in parts[2].split(",") if a in allowed]
                access.append({"type": "repository", "name": parts[1], "actions": actions})
        return access

    # --- HTTP -----------------------------------------------------------------------------------
    def start(self, port: int = 0) -> TokenIssuerDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _issue(self, user: str | None, query: dict) -> None:
                scopes = query.get("scope", [])
                double.requests.append(
                    {"user": user, "service": query.get("service", [""])[0], "scope": scopes, "method": self.command}
                )
                if user is None:
                    self._answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "wrong credentials"}]})
                    return
                if user in double.forbidden and scopes:
                    self._answer(403, {"errors": [{"code": "DENIED", "message": "requested access is denied"}]})
                    return
                token = double.sign(user, double.grant(user, scopes))
                self._answer(
                    200,
                    {
                        "token": token,
                        "access_token": token,
                        "expires_in": 300,
                        "issued_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                    },
                )

            def do_GET(self):
                url = urlsplit(self.path)
                user = None
                header = self.headers.get("Authorization", "")
                if header.lower().startswith("basic "):
                    name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if name in double.users and secrets.compare_digest(double.users[name][0], password):
                        user = name
                self._issue(user, parse_qs(url.query))

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                user = (
                    double.refresh_tokens.get(form.get("refresh_token", [""])[0])
                    if form.get("grant_type") == ["refresh_token"]
                    else None
                )
                self._issue(user, form)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
