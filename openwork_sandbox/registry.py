"""The registry's HTTP API v2 (the only module here that talks to a registry over HTTP).

Used to prove a push is pullable: the manifest for the tag is served (``Docker-Content-Digest``
compared with what ``docker push`` reported) and every blob it names (config and layers, for each
platform of an index) exists.

- Plain HTTP for loopback registries, or anywhere with ``OPENWORK_REGISTRY_INSECURE=true``;
  HTTPS otherwise.
- Token auth (``WWW-Authenticate: Bearer realm=...``) and Basic auth with the credentials in the
  settings.
- 5xx answers and broken connections are retried a few times with backoff.
- Failures are one line naming the registry and the HTTP status or the connection error.
"""

from __future__ import annotations

import re
import time
from typing import Any

import requests

from .errors import UnreachableError, WorkflowError
from .settings import ImageRef, Settings

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = {MANIFEST_TYPES[0], MANIFEST_TYPES[2]}
RETRIES = 4  # attempts for 5xx and broken connections
BACKOFF = 0.25  # seconds, doubled per attempt


class Registry:
    def __init__(self, host: str, *, plain_http: bool, username: str | None = None, password: str | None = None,
                 timeout: float = 15.0, backoff: float = BACKOFF):
        self.host = host
        self.scheme = "http" if plain_http else "https"
        self.base = f"{self.scheme}://{host}"
        self.auth = (username, password) if username and password else None
        self.timeout = timeout
        self.backoff = backoff
        self.session = requests.Session()
        self._bearer: dict[str, str] = {}

    @classmethod
    def for_settings(cls, settings: Settings, ref: ImageRef | None = None) -> "Registry":
        ref = ref or settings.image_ref
        plain = ref.registry_is_loopback or settings.registry_insecure
        return cls(ref.registry_host, plain_http=plain, username=settings.registry_username,
                   password=settings.registry_password, timeout=settings.request_timeout)

    # --- HTTP with retries and auth --------------------------------------------------------------
    def _send(self, method: str, path: str, what: str, headers: dict | None = None,
              scope: str | None = None, attempts: int = RETRIES, timeout: float | None = None) -> requests.Response:
        url = self.base + path
        delay = self.backoff
        for attempt in range(1, attempts + 1):
            hdrs = dict(headers or {})
            if scope and scope in self._bearer:
                hdrs["Authorization"] = f"Bearer {self._bearer[scope]}"
            try:
                resp = self.session.request(method, url, headers=hdrs, timeout=timeout or self.timeout,
                                            auth=None if "Authorization" in hdrs else self.auth,
                                            allow_redirects=True)
            except requests.exceptions.SSLError as exc:
                hint = "; for a plain-HTTP registry set OPENWORK_REGISTRY_INSECURE=true" if self.scheme == "https" else ""
                raise UnreachableError(f"registry {self.host}: TLS failed ({_reason(exc)}){hint}") from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt < attempts and not _refused(exc):
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise UnreachableError(f"registry {self.host} does not answer at {self.base} ({_reason(exc)}) "
                                       f"while {what}; is it running (scripts/services start) and the address "
                                       "in OPENWORK_MICROSANDBOX_IMAGE right?") from None
            if resp.status_code == 401 and scope and scope not in self._bearer and self._authenticate(resp, scope):
                continue
            if resp.status_code >= 500 and attempt < attempts:
                time.sleep(delay)
                delay *= 2
                continue
            return resp
        return resp  # pragma: no cover  (loop always returns or raises)

    def _authenticate(self, resp: requests.Response, scope: str) -> bool:
        """Follow a ``Bearer realm=...`` challenge; returns True when a token was obtained."""
        challenge = resp.headers.get("WWW-Authenticate", "")
        if not challenge.lower().startswith("bearer "):
            return False
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.get("realm")
        if not realm:
            return False
        query = {"service": params.get("service", ""), "scope": params.get("scope", scope)}
        try:
            token_resp = self.session.get(realm, params=query, auth=self.auth, timeout=self.timeout)
        except requests.RequestException as exc:
            raise UnreachableError(f"registry {self.host}: token service {realm} does not answer ({_reason(exc)})") from None
        if token_resp.status_code != 200:
            raise WorkflowError(f"registry {self.host}: token service answered HTTP {token_resp.status_code}; check "
                                "OPENWORK_REGISTRY_USERNAME/OPENWORK_REGISTRY_PASSWORD")
        body = token_resp.json() if token_resp.content else {}
        token = body.get("token") or body.get("access_token")
        if not token:
            return False
        self._bearer[scope] = token
        return True

    def _fail(self, resp: requests.Response, what: str) -> WorkflowError:
        hint = ""
        if resp.status_code == 401:
            hint = "; set OPENWORK_REGISTRY_USERNAME and OPENWORK_REGISTRY_PASSWORD"
        elif resp.status_code == 404:
            hint = "; push it first (invoke push-image)"
        return WorkflowError(f"registry {self.host} answered HTTP {resp.status_code} {resp.reason or ''} for "
                             f"{what}{hint}".replace("  ", " "))

    # --- API ------------------------------------------------------------------------------------
    def ping(self, *, quick: bool = False) -> int:
        """``GET /v2/``: 200 (open) or 401 (needs login) means a registry answers.

        ``quick`` (doctor): one attempt of at most 5 s, no retries."""
        resp = self._send("GET", "/v2/", "checking the API (GET /v2/)", attempts=1 if quick else RETRIES,
                          timeout=min(self.timeout, 5.0) if quick else None)
        if resp.status_code not in (200, 401):
            raise self._fail(resp, "GET /v2/ (is this a registry?)")
        return resp.status_code

    def manifest(self, repository: str, reference: str, accept: tuple[str, ...] = MANIFEST_TYPES) -> tuple[str, str, dict]:
        """``(digest, media type, manifest)`` for a tag or digest."""
        scope = f"repository:{repository}:pull"
        what = f"manifest {repository}:{reference}" if not reference.startswith("sha256:") else \
            f"manifest {repository}@{reference}"
        resp = self._send("GET", f"/v2/{repository}/manifests/{reference}", what,
                          headers={"Accept": ", ".join(accept)}, scope=scope)
        if resp.status_code != 200:
            raise self._fail(resp, what)
        digest = resp.headers.get("Docker-Content-Digest", "")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            body = resp.json()
        except ValueError:
            raise WorkflowError(f"registry {self.host} sent a manifest for {what} that is not JSON") from None
        return digest, body.get("mediaType") or media_type, body

    def head_manifest(self, repository: str, reference: str) -> str:
        """The ``Docker-Content-Digest`` of a tag (HEAD, with the Accept header every type needs)."""
        what = f"manifest {repository}:{reference}"
        resp = self._send("HEAD", f"/v2/{repository}/manifests/{reference}", what,
                          headers={"Accept": ", ".join(MANIFEST_TYPES)}, scope=f"repository:{repository}:pull")
        if resp.status_code != 200:
            raise self._fail(resp, what)
        return resp.headers.get("Docker-Content-Digest", "")

    def blob_exists(self, repository: str, digest: str) -> bool:
        resp = self._send("HEAD", f"/v2/{repository}/blobs/{digest}", f"blob {digest[:19]}",
                          scope=f"repository:{repository}:pull")
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise self._fail(resp, f"blob {repository}@{digest[:19]}…")

    def verify_pullable(self, ref: ImageRef, expected_digest: str | None = None) -> dict[str, Any]:
        """Prove ``ref`` can be pulled: its manifest (every platform of an index) and every blob."""
        repo = ref.repository
        digest = self.head_manifest(repo, ref.reference)
        if expected_digest and digest and digest != expected_digest:
            raise WorkflowError(f"registry {self.host} serves {ref} as {digest}, but the push reported "
                                f"{expected_digest}: something else pushed to the tag; push again")
        _, media_type, body = self.manifest(repo, digest or ref.reference)
        manifests = [body]
        if media_type in INDEX_TYPES or "manifests" in body:
            manifests = [self.manifest(repo, m["digest"])[2] for m in body.get("manifests", [])]
        blobs: dict[str, int] = {}
        for m in manifests:
            for desc in [m.get("config", {})] + list(m.get("layers", [])):
                if desc.get("digest"):
                    blobs[desc["digest"]] = int(desc.get("size", 0))
        missing = [d for d in blobs if not self.blob_exists(repo, d)]
        if missing:
            raise WorkflowError(f"registry {self.host} serves the manifest of {ref} but not {len(missing)} of its "
                                f"{len(blobs)} blobs (first: {missing[0][:19]}…); push again")
        layers = [(d["digest"], int(d.get("size", 0))) for m in manifests for d in m.get("layers", [])]
        return {"digest": digest, "media_type": media_type, "platforms": len(manifests), "layers": layers,
                "blobs": len(blobs), "bytes": sum(blobs.values())}


def _refused(exc: Exception) -> bool:
    text = str(exc)
    return "Connection refused" in text or "Errno 111" in text or "NameResolutionError" in text \
        or "Name or service not known" in text


def _reason(exc: Exception) -> str:
    text = str(exc)
    for pattern in (r"\[Errno -?\d+\] ([^'\")\]]+)", r"(Connection refused)", r"(Connection reset by peer)",
                    r"(Read timed out)", r"(timed out)", r"(certificate verify failed[^')\]]*)",
                    r"(wrong version number)"):
        m = re.search(pattern, text)
        if m:
            return m.group(1).strip()
    return exc.__class__.__name__
