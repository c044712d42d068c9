# One module for now (over 400 lines): the one v2 API client (auth, retries, TLS, errors) and its few
# calls (ping, manifests, blobs, uploads); a split would be the transport (_send and auth) and the calls.
"""The registry's HTTP API v2 (the only module here that talks to a registry over HTTP).

Used to prove a push is pullable: the manifest for the tag is served (``Docker-Content-Digest``
compared with what ``docker push`` reported) and every blob it names (config and layers, for each
platform of an index) exists; and, before a push, that the login may push to the repository.

- Scheme as Docker chooses it: HTTPS first; plain HTTP only when the registry does not speak TLS
  and is on loopback or named insecure (``OPENWORK_REGISTRY_INSECURE=true``).
- Trust, login: see ``registry_access`` (system CAs + certs.d + ``OPENWORK_REGISTRY_CA``; the
  settings' login, else Docker's own).
- Auth follows the challenge (OCI distribution spec): ``401`` + ``WWW-Authenticate: Basic`` → the
  login as Basic; ``401`` + ``Bearer realm=…,service=…,scope=…`` → a token from the realm for that
  scope (``pull``, or ``pull,push``), fetched with the login (Basic, or an identity token as an
  OAuth2 refresh token), then the request again with the token.
- 5xx answers and broken connections are retried a few times with backoff.
- Failures are one line naming the registry and the cause: wrong username or password, token
  endpoint unreachable or refusing, a token the registry rejects (expired), a CA that is not
  trusted (with the certs.d path to use), no access for the scope (403), HTTP status otherwise.
  No secret is ever part of a message.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from openwork_sandbox.registry.docker_config import Credentials, config_path
from openwork_sandbox.core.errors import UnreachableError, WorkflowError
from openwork_sandbox.net.http import outside_session
from openwork_sandbox.registry import access as registry_access
from openwork_sandbox.registry.access import LOGIN_HINT, certs_hint
from openwork_sandbox.config import ImageRef, Settings

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = {MANIFEST_TYPES[0], MANIFEST_TYPES[2]}
RETRIES = 4  # attempts for 5xx and broken connections
BACKOFF = 0.25  # seconds, doubled per attempt
CLIENT_ID = "openwork-sandbox"


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``WWW-Authenticate: Bearer realm="…",service="…"`` → ``("bearer", {...})``."""
    scheme, _, rest = header.strip().partition(" ")
    # one scan from left to right, so a "k=v" inside a quoted value (a realm's query) is not a parameter
    params = {m[1].lower(): m[2] if m[2] is not None else m[3]
              for m in re.finditer(r'(\w+)=(?:"([^"]*)"|([^",\s]+))', rest)}
    return scheme.lower(), params


ACTION_ORDER = {"pull": 0, "push": 1, "delete": 2}  # how error messages list a scope's actions


def scope_for(repository: str, actions: str = "pull") -> str:
    return f"repository:{repository}:{actions}"


class Registry:
    def __init__(self, host: str, *, plain_http: bool | None = False, allow_http: bool = False,
                 credentials: Credentials | None = None, verify: bool | str = True, timeout: float = 15.0,
                 backoff: float = BACKOFF):
        """``plain_http``: True/False fixes the scheme; None tries HTTPS first and, with ``allow_http``,
        falls back to HTTP when the registry does not speak TLS."""
        self.host = host
        self.scheme = "http" if plain_http else "https"
        self._scheme_known = plain_http is not None
        self.allow_http = allow_http
        self.credentials = credentials
        self.timeout = timeout
        self.backoff = backoff
        self.session = outside_session(verify=verify)
        self._bearer: dict[str, str] = {}  # scope ("" for none) -> token
        self._basic = False  # the registry asked for Basic: send the login with every request

    @classmethod
    def for_settings(cls, settings: Settings, ref: ImageRef | None = None) -> "Registry":
        ref = ref or settings.image_ref
        host = ref.registry_host
        return cls(host, plain_http=None, allow_http=registry_access.http_allowed(settings, ref.registry_is_loopback),
                   credentials=registry_access.credentials(settings, host),
                   verify=registry_access.ca_bundle(settings, host), timeout=settings.request_timeout)

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def plain_http(self) -> bool:
        """True when the registry is spoken to over plain HTTP (known after the first answer)."""
        return self.scheme == "http"

    @property
    def _who(self) -> str:
        c = self.credentials
        return f"{c.username} (login from {c.source})" if c else "an anonymous client"

    # --- HTTP with retries and auth --------------------------------------------------------------
    def _send(self, method: str, path: str, what: str, headers: dict | None = None,
              scope: str | None = None, attempts: int = RETRIES, timeout: float | None = None,
              body: bytes | Path | None = None) -> requests.Response:
        """One request with retries and auth; ``body``: bytes, or a file sent again from its start on each try."""
        delay = self.backoff
        answered: set[str] = set()  # challenges answered for this request: each once
        attempt = 0
        while True:
            attempt += 1
            hdrs = dict(headers or {})
            token = self._bearer.get(scope or "")
            if token:
                hdrs["Authorization"] = f"Bearer {token}"
            basic = self.credentials is not None and self._basic and not token and bool(self.credentials.password)
            data = open(body, "rb") if isinstance(body, Path) else body
            try:
                resp = self.session.request(method, self.base + path, headers=hdrs, timeout=timeout or self.timeout,
                                            allow_redirects=True, data=data,
                                            auth=(self.credentials.username, self.credentials.password) if basic else None)
            except requests.exceptions.SSLError as exc:
                if not _cert_problem(exc) and self._http_instead():
                    continue  # a loopback/insecure registry without TLS
                raise self._tls_error(exc, self.host) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                if isinstance(exc, requests.exceptions.ProxyError) and self._http_instead():
                    continue  # the proxy would not tunnel HTTPS to an insecure registry: plain HTTP, as Docker
                if attempt < attempts and not _refused(exc):
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise UnreachableError(f"registry {self.host} does not answer at {self.base} ({_reason(exc)}) "
                                       f"while {what}; is it running (scripts/services start) and the address "
                                       "in OPENWORK_MICROSANDBOX_IMAGE right?") from None
            finally:
                if isinstance(body, Path) and data is not None:
                    data.close()
            self._scheme_known = True
            if resp.status_code == 401:
                kind = self._answer_challenge(resp, scope, answered)
                if kind:
                    answered.add(kind)
                    continue
            if resp.status_code >= 500 and attempt < attempts:
                time.sleep(delay)
                delay *= 2
                continue
            return resp

    def _http_instead(self) -> bool:
        """Switch to plain HTTP when HTTPS failed before any answer and plain HTTP is allowed here
        (a loopback registry, or OPENWORK_REGISTRY_INSECURE); the scheme is then settled."""
        if self.scheme != "https" or self._scheme_known or not self.allow_http:
            return False
        self.scheme, self._scheme_known = "http", True
        return True

    def _answer_challenge(self, resp: requests.Response, scope: str | None, answered: set[str]) -> str | None:
        """Answer a 401's challenge once per request (returns what was answered), or raise why not."""
        scheme, params = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            if self.credentials is None or not self.credentials.password:
                return None  # no login to give: the caller reports the 401
            if "basic" in answered or self._basic:
                raise WorkflowError(f"registry {self.host} rejects the login of {self._who}: wrong username or "
                                    f"password (HTTP 401); {LOGIN_HINT.format(host=self.host)}")
            self._basic = True
            return "basic"
        if scheme == "bearer" and params.get("realm"):
            key = scope or ""
            if "bearer" in answered:
                error = params.get("error", "")
                if error == "insufficient_scope":
                    raise self._denied(params.get("scope") or scope, "HTTP 401 insufficient_scope")
                if error == "invalid_token":
                    raise WorkflowError(f"registry {self.host} rejects the token from {params['realm']} (invalid_token: "
                                        "expired, or signed by a key the registry does not trust); check the token "
                                        "service's clock and keys")
                raise WorkflowError(f"registry {self.host} rejects the token from {params['realm']} for {self._who} "
                                    f"(HTTP 401{', ' + error if error else ''}); {LOGIN_HINT.format(host=self.host)}")
            self._bearer[key] = self._fetch_token(params, scope)
            return "bearer"
        return None

    def _fetch_token(self, params: dict[str, str], scope: str | None) -> str:
        realm = params["realm"]
        query: dict[str, str | list[str]] = {"service": params.get("service", "")}
        # The challenge's scope (what this request needs) and the caller's (what the cached token is kept
        # for) in one token, as Docker asks: a cancel's "delete" must not replace the "pull,push" token.
        scopes = list(dict.fromkeys(s for s in (params.get("scope"), scope) if s))
        wanted = scopes[0] if scopes else None
        if scopes:
            query["scope"] = scopes
        creds = self.credentials
        try:
            if creds and creds.identity_token:
                if scopes:
                    query["scope"] = " ".join(scopes)  # the OAuth2 form takes one space-separated scope
                token_resp = self.session.post(realm, data={**query, "grant_type": "refresh_token",
                                                            "refresh_token": creds.identity_token,
                                                            "client_id": CLIENT_ID},
                                               timeout=self.timeout)
            else:
                auth = (creds.username, creds.password) if creds and creds.password else None
                token_resp = self.session.get(realm, params=query, auth=auth, timeout=self.timeout)
        except requests.exceptions.SSLError as exc:
            raise self._tls_error(exc, urlsplit(realm).netloc, f"its token endpoint {realm}") from None
        except requests.RequestException as exc:
            raise WorkflowError(f"registry {self.host}: its token endpoint {realm} does not answer "
                                   f"({_reason(exc)}); check the registry's auth.token.realm and that the token "
                                   "service runs") from None
        status = token_resp.status_code
        if status == 401:
            who = self._who if creds else "an anonymous client (no login for this registry)"
            raise WorkflowError(f"registry {self.host}: its token endpoint {realm} rejects the login of {who}: wrong "
                                f"username or password (HTTP 401); {LOGIN_HINT.format(host=self.host)}")
        if status == 403:
            raise self._denied(wanted, f"HTTP 403 from the token endpoint {realm}")
        if status != 200:
            raise WorkflowError(f"registry {self.host}: its token endpoint {realm} answered HTTP {status} "
                                f"{token_resp.reason or ''}".rstrip())
        try:
            body = token_resp.json()
        except ValueError:
            body = {}
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not token:
            raise WorkflowError(f"registry {self.host}: its token endpoint {realm} answered without a token")
        return token

    def _denied(self, scope: str | None, why: str) -> WorkflowError:
        parts = (scope or "").split(":")
        if len(parts) == 3:  # registries name the actions in any order ("push,pull"): say them in one
            actions = sorted(parts[2].split(","), key=lambda a: (ACTION_ORDER.get(a, len(ACTION_ORDER)), a))
            what = f"{','.join(actions)} access to {parts[1]}"
        else:
            what = f"access ({scope or 'no scope'})"
        return WorkflowError(f"registry {self.host} denies {self._who} {what} ({why}); give that login "
                             "access to the repository, or use one that has it")

    def _tls_error(self, exc: Exception, host: str, what: str = "") -> WorkflowError:
        reason = _reason(exc)
        where = f"registry {self.host}" + (f": {what}" if what else "")
        if _cert_problem(exc):
            return WorkflowError(f"{where}: TLS certificate not trusted ({reason}); {certs_hint(host)}")
        hint = "; for a plain-HTTP registry set OPENWORK_REGISTRY_INSECURE=true" if not self.allow_http else ""
        return WorkflowError(f"{where}: TLS failed ({reason}){hint}")

    def _fail(self, resp: requests.Response, what: str, scope: str | None = None) -> WorkflowError:
        if resp.status_code == 403:
            return self._denied(scope, "HTTP 403")
        hint = ""
        if resp.status_code == 401 and self.credentials is None:
            return WorkflowError(f"registry {self.host} needs a login (HTTP 401 for {what}): none is set and Docker "
                                 f"saved none for it in {config_path()}; {LOGIN_HINT.format(host=self.host)}")
        if resp.status_code == 401:
            hint = f"; {LOGIN_HINT.format(host=self.host)}"
        elif resp.status_code == 404:
            hint = "; push it first (invoke push-image)"
        return WorkflowError(f"registry {self.host} answered HTTP {resp.status_code} {resp.reason or ''} for "
                             f"{what}{hint}".replace("  ", " "))

    # --- API ------------------------------------------------------------------------------------
    def ping(self, *, quick: bool = False) -> int:
        """``GET /v2/`` (with the login, as ``docker login`` checks it): 200, or 401 without a login.

        ``quick`` (doctor): one attempt of at most 5 s, no retries."""
        resp = self._send("GET", "/v2/", "checking the API (GET /v2/)", attempts=1 if quick else RETRIES,
                          timeout=min(self.timeout, 5.0) if quick else None)
        if resp.status_code not in (200, 401):
            raise self._fail(resp, "GET /v2/ (is this a registry?)")
        return resp.status_code

    def check_push(self, repository: str) -> None:
        """The login may push to ``repository``: start a blob upload (scope ``pull,push``) and cancel it."""
        scope = scope_for(repository, "pull,push")
        resp = self._send("POST", f"/v2/{repository}/blobs/uploads/", f"checking push access to {repository}",
                          scope=scope)
        if resp.status_code not in (201, 202):
            raise self._fail(resp, f"starting an upload to {repository}", scope)
        location = resp.headers.get("Location")
        if location:
            path = _location_path(location)
            try:
                self._send("DELETE", path, "cancelling the test upload", scope=scope)
            except WorkflowError:
                pass  # the registry drops unfinished uploads itself

    def manifest(self, repository: str, reference: str, accept: tuple[str, ...] = MANIFEST_TYPES) -> tuple[str, str, dict]:
        """``(digest, media type, manifest)`` for a tag or digest."""
        scope = scope_for(repository)
        what = f"manifest {repository}:{reference}" if not reference.startswith("sha256:") else \
            f"manifest {repository}@{reference}"
        resp = self._send("GET", f"/v2/{repository}/manifests/{reference}", what,
                          headers={"Accept": ", ".join(accept)}, scope=scope)
        if resp.status_code != 200:
            raise self._fail(resp, what, scope)
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
        scope = scope_for(repository)
        resp = self._send("HEAD", f"/v2/{repository}/manifests/{reference}", what,
                          headers={"Accept": ", ".join(MANIFEST_TYPES)}, scope=scope)
        if resp.status_code != 200:
            raise self._fail(resp, what, scope)
        return resp.headers.get("Docker-Content-Digest", "")

    def blob_exists(self, repository: str, digest: str) -> bool:
        scope = scope_for(repository)
        resp = self._send("HEAD", f"/v2/{repository}/blobs/{digest}", f"blob {digest[:19]}", scope=scope)
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise self._fail(resp, f"blob {repository}@{digest[:19]}…", scope)

    def blob(self, repository: str, digest: str) -> bytes:
        """A (small) blob's bytes, e.g. an image's config."""
        scope = scope_for(repository)
        resp = self._send("GET", f"/v2/{repository}/blobs/{digest}", f"blob {digest[:19]}", scope=scope)
        if resp.status_code != 200:
            raise self._fail(resp, f"blob {repository}@{digest[:19]}…", scope)
        return resp.content

    def upload_blob(self, repository: str, digest: str, path: Path) -> bool:
        """Send the file at ``path`` as blob ``digest`` unless the registry has it; True when sent."""
        if self.blob_exists(repository, digest):
            return False
        scope = scope_for(repository, "pull,push")
        resp = self._send("POST", f"/v2/{repository}/blobs/uploads/", f"starting an upload to {repository}", scope=scope)
        location = resp.headers.get("Location")
        if resp.status_code not in (201, 202) or not location:
            raise self._fail(resp, f"starting an upload to {repository}", scope)
        target = _location_path(location)
        target += ("&" if "?" in target else "?") + f"digest={digest}"
        resp = self._send("PUT", target, f"uploading blob {digest[:19]}", scope=scope, body=path,
                          headers={"Content-Type": "application/octet-stream"}, timeout=max(self.timeout, 600))
        if resp.status_code != 201:
            raise self._fail(resp, f"uploading blob {repository}@{digest[:19]}…", scope)
        return True

    def put_manifest(self, repository: str, reference: str, media_type: str, body: bytes) -> str:
        """PUT a manifest or an index under a tag or its digest; returns the digest the registry names."""
        scope = scope_for(repository, "pull,push")
        what = f"manifest {repository}:{reference}" if not reference.startswith("sha256:") else \
            f"manifest {repository}@{reference}"
        resp = self._send("PUT", f"/v2/{repository}/manifests/{reference}", f"pushing {what}", scope=scope,
                          body=body, headers={"Content-Type": media_type})
        if resp.status_code not in (200, 201):
            detail = resp.text.strip().replace("\n", " ")[:200]
            raise WorkflowError(f"registry {self.host} refused {what} (HTTP {resp.status_code}: {detail})") \
                if resp.status_code == 400 else self._fail(resp, f"pushing {what}", scope)
        return resp.headers.get("Docker-Content-Digest", "")

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


def _location_path(location: str) -> str:
    """An upload's ``Location`` (absolute or not) as a path on this registry."""
    return location if location.startswith("/") else "/" + location.split("/", 3)[-1]


def _cert_problem(exc: Exception) -> bool:
    """The server speaks TLS but its certificate is not trusted (as opposed to no TLS at all)."""
    text = str(exc)
    return "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text or "Hostname mismatch" in text


def _refused(exc: Exception) -> bool:
    text = str(exc)
    return "Connection refused" in text or "Errno 111" in text or "NameResolutionError" in text \
        or "Name or service not known" in text


def _reason(exc: Exception) -> str:
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(exc))
    for pattern in (r"(certificate verify failed[^')\]]*)", r"(Hostname mismatch[^')\]]*)",
                    r"\[Errno -?\d+\] ([^'\")\]]+)", r"(Connection refused)", r"(Connection reset by peer)",
                    r"(Read timed out)", r"(timed out)", r"(wrong version number)", r"(record layer failure)"):
        m = re.search(pattern, text)
        if m:
            return m.group(1).strip()
    return exc.__class__.__name__


def pull_access_for_image(settings: Settings, image: str) -> registry_access.PullAccess:
    """The :class:`~.registry_access.PullAccess` for ``up``'s pull of ``image``: the scheme the
    registry speaks (asked once), its login and CAs.

    A registry that does not answer is not an error here: the image may be cached, and the pull
    itself then says what is wrong."""
    ref = ImageRef.parse(image)
    plain = registry_access.http_allowed(settings, ref.registry_is_loopback)
    registry = Registry.for_settings(settings, ref)
    login_required = False
    try:
        login_required = registry.ping() == 401
        plain = registry.plain_http
    except UnreachableError:
        pass
    access = registry_access.pull_access(settings, ref.registry_host, plain, registry.credentials)
    return dataclasses.replace(access, login_required=login_required)
