"""A user's own CA and a server certificate signed by it, made with the real ``openssl`` CLI (not the
code under test), and a small HTTPS server on 127.0.0.1 for client-side checks."""

from __future__ import annotations

import dataclasses
import http.server
import ssl
import subprocess
import threading
from pathlib import Path


def openssl(*args: str, cwd: Path) -> str:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@dataclasses.dataclass
class UserCA:
    ca: Path  # the CA's certificate (PEM): what OPENWORK_TLS_CA names
    cert: Path  # the server's certificate, signed by the CA (CA:FALSE, the names in subjectAltName)
    key: Path  # the server's key (PEM, unencrypted)


def user_ca(folder: Path, san: str, *, days: int = 30, label: str = "test") -> UserCA:
    """A CA (``CA:TRUE``) and a server certificate it signs with subjectAltName ``san``
    (``IP:10.0.0.1,DNS:x``): what a user with a private CA has; ECDSA P-256."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        folder / f"{label}-{n}" for n in ("ca.key", "ca.crt", "srv.key", "srv.csr", "srv.crt")
    )
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(ca_key),
        "-out", str(ca), "-days", str(days), "-subj", f"/CN={label} user CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
        "-out", str(csr), "-subj", f"/CN={label} server", cwd=folder,
    )  # fmt: skip
    ext = folder / f"{label}-ext.cnf"
    ext.write_text(
        f"basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={san}\n"
    )
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", str(days), "-out", str(cert), "-extfile", str(ext), cwd=folder,
    )  # fmt: skip
    key.chmod(0o600)
    return UserCA(ca, cert, key)


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"ok": true, "version": "tls-test"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class HttpsServer:
    """``GET <anything>`` answers 200 ``{"ok": true, ...}`` over TLS with ``cert``/``key``, on 127.0.0.1."""

    def __init__(self, cert: Path, key: Path):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HttpsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
