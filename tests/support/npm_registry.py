"""A tiny npm registry over real HTTP on 127.0.0.1 for tests: packages made in the test from bytes it
chooses (real gzipped tar files), their version documents with ``dist.integrity`` computed here with
hashlib, the tarballs, and every request it answered recorded (method-less: the path). And
``forge_records``: a cached file rewritten as an attacker who can write the download cache would."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Published:
    package: str
    version: str
    tgz: bytes  # the tarball's bytes
    integrity: str  # sha512-<base64> of tgz
    program: bytes  # the program's bytes in it

    @property
    def tarball_path(self) -> str:
        return f"/{self.package}/-/{self.package.rsplit('/', 1)[-1]}-{self.version}.tgz"

    @property
    def program_sha256(self) -> str:
        return hashlib.sha256(self.program).hexdigest()


def make_tgz(members: dict[str, bytes]) -> bytes:
    """A gzipped tar file holding ``members`` (name → bytes) as regular files, mode 0755."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 1700000000
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def forge_records(path: Path, data: bytes, algorithm: str) -> None:
    """Rewrite ``path`` with ``data`` and every digest record the download cache ever kept for it:
    the ``<file>.<algorithm>`` record with the rewritten file's size, mtime, inode and ctime, and (for
    a program) its folder's ``sha256`` record."""
    path.write_bytes(data)
    digest = hashlib.new(algorithm, data).hexdigest()
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    path.with_name(path.name + f".{algorithm}").write_text(json.dumps({"hex": digest, "stat": stamp}))
    if algorithm == "sha256":
        (path.parent / "sha256").write_text(digest + "\n")


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


class FakeNpm:
    """``FakeNpm()`` listens on 127.0.0.1 at once; ``url`` is its address, ``seen`` the paths asked,
    ``close()`` stops it. ``publish`` adds a package version; ``tarball_base`` makes its document name
    another host for the tarball (as a mirror that keeps upstream's URLs does)."""

    def __init__(self) -> None:
        self.docs: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
        self.seen: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                fake.seen.append(self.path)
                status, body, kind = 200, fake.files.get(self.path), "application/octet-stream"
                if body is None and self.path in fake.docs:
                    body, kind = json.dumps(fake.docs[self.path]).encode(), "application/json"
                if body is None:
                    status, body, kind = 404, b'{"error":"Not found"}', "application/json"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(
        self, package: str, version: str, member: str, program: bytes, *, tarball_base: str | None = None
    ) -> Published:
        """``package@version`` holding ``program`` at ``member`` (and a package.json)."""
        meta = json.dumps({"name": package, "version": version}).encode()
        tgz = make_tgz({"package/package.json": meta, member: program})
        out = Published(package, version, tgz, integrity_of(tgz), program)
        self.files[out.tarball_path] = tgz
        self.docs[f"/{package}/{version}"] = {
            "name": package,
            "version": version,
            "dist": {"integrity": out.integrity, "tarball": (tarball_base or self.url) + out.tarball_path},
        }
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def fresh_process(monkeypatch) -> None:
    """The download code as a new process finds it: no version document or session kept in memory,
    no proxy between it and the fake registry on 127.0.0.1."""
    from openwork_sandbox.image import artifacts

    monkeypatch.setattr(artifacts, "_FRESH_DOCS", {})
    monkeypatch.setattr(artifacts, "_SESSION", [])
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
