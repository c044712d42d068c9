"""One request to a registry: the scheme, retries, auth per the challenge, and one-line failures.

- Scheme as Docker chooses it: HTTPS first; plain HTTP only when the registry does not speak TLS
  and plain HTTP is allowed (``allow_http``: a loopback registry, or ``OPENWORK_REGISTRY_INSECURE``).
- Auth follows the challenge (OCI distribution spec): ``401`` + ``WWW-Authenticate: Basic`` → the
  login as Basic; ``401`` + ``Bearer realm=…,service=…,scope=…`` → a token from the realm for that
  scope, fetched with the login (Basic, or an identity token as an OAuth2 refresh token), then the
  request again with the token. Each challenge is answered once per request.
- 5xx answers and broken connections are tried :data:`RETRIES` times in all, with backoff.
- Failures are one :class:`~openwork_sandbox.core.errors.WorkflowError` line naming the registry and
  the cause (an :class:`~openwork_sandbox.core.errors.UnreachableError` when nothing answers); no
  secret is ever part of a message.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from openwork_sandbox.core.errors import UnreachableError, WorkflowError
from openwork_sandbox.net.http import outside_session
from openwork_sandbox.registry.access import LOGIN_HINT, certs_hint
from openwork_sandbox.registry.docker_config import Credentials, config_path

if TYPE_CHECKING:  # requests is imported where a request is sent: `up` of a local image never needs it
    import requests

RETRIES = 4  # attempts for 5xx and broken connections
BACKOFF = 0.25  # seconds, doubled per attempt
CLIENT_ID = "openwork-sandbox"


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``WWW-Authenticate: Bearer realm="…",service="…"`` → ``("bearer", {...})``."""
    scheme, _, rest = header.strip().partition(" ")
    # one scan from left to right, so a "k=v" inside a quoted value (a realm's query) is not a parameter
    params = {
        m[1].lower(): m[2] if m[2] is not None else m[3] for m in re.finditer(r'(\w+)=(?:"([^"]*)"|([^",\s]+))', rest)
    }
    return scheme.lower(), params


ACTION_ORDER = {"pull": 0, "push": 1, "delete": 2}  # how error messages list a scope's actions


def scope_for(repository: str, actions: str = "pull") -> str:
    """The token scope for ``actions`` (``pull``, ``pull,push``) on ``repository``."""
    return f"repository:{repository}:{actions}"


class Transport:
    """Requests to one registry host with its login and CAs; :class:`~openwork_sandbox.registry.client.Registry`
    adds the v2 calls."""

    def __init__(
        self,
        host: str,
        *,
        plain_http: bool | None = False,
        allow_http: bool = False,
        credentials: Credentials | None = None,
        verify: bool | str = True,
        timeout: float = 15.0,
        backoff: float = BACKOFF,
    ):
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
    def _send(
        self,
        method: str,
        path: str,
        what: str,
        headers: dict | None = None,
        scope: str | None = None,
        attempts: int = RETRIES,
        timeout: float | None = None,
        body: bytes | Path | None = None,
    ) -> requests.Response:
        """One request with retries and auth; ``body``: bytes, or a file sent again from its start on each try."""
        import requests

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
            data = open(body, "rb") if isinstance(body, Path) else body  # noqa: SIM115 - closed in the finally below
            try:
                resp = self.session.request(
                    method,
                    self.base + path,
                    headers=hdrs,
                    timeout=timeout or self.timeout,
                    allow_redirects=True,
                    data=data,
                    auth=(self.credentials.username, self.credentials.password) if basic else None,
                )
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
                raise UnreachableError(
                    f"registry {self.host} does not answer at {self.base} ({_reason(exc)}) "
                    f"while {what}; is it running (scripts/services start) and the address "
                    "in OPENWORK_MICROSANDBOX_IMAGE right?"
                ) from None
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
                raise WorkflowError(
                    f"registry {self.host} rejects the login of {self._who}: wrong username or "
                    f"password (HTTP 401); {LOGIN_HINT.format(host=self.host)}"
                )
            self._basic = True
            return "basic"
        if scheme == "bearer" and params.get("realm"):
            key = scope or ""
            if "bearer" in answered:
                error = params.get("error", "")
                if error == "insufficient_scope":
                    raise self._denied(params.get("scope") or scope, "HTTP 401 insufficient_scope")
                if error == "invalid_token":
                    raise WorkflowError(
                        f"registry {self.host} rejects the token from {params['realm']} (invalid_token: "
                        "expired, or signed by a key the registry does not trust); check the token "
                        "service's clock and keys"
                    )
                raise WorkflowError(
                    f"registry {self.host} rejects the token from {params['realm']} for {self._who} "
                    f"(HTTP 401{', ' + error if error else ''}); {LOGIN_HINT.format(host=self.host)}"
                )
            self._bearer[key] = self._fetch_token(params, scope)
            return "bearer"
        return None

    def _fetch_token(self, params: dict[str, str], scope: str | None) -> str:
        import requests

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
                token_resp = self.session.post(
                    realm,
                    data={
                        **query,
                        "grant_type": "refresh_token",
                        "refresh_token": creds.identity_token,
                        "client_id": CLIENT_ID,
                    },
                    timeout=self.timeout,
                )
            else:
                auth = (creds.username, creds.password) if creds and creds.password else None
                token_resp = self.session.get(realm, params=query, auth=auth, timeout=self.timeout)
        except requests.exceptions.SSLError as exc:
            raise self._tls_error(exc, urlsplit(realm).netloc, f"its token endpoint {realm}") from None
        except requests.RequestException as exc:
            raise WorkflowError(
                f"registry {self.host}: its token endpoint {realm} does not answer "
                f"({_reason(exc)}); check the registry's auth.token.realm and that the token "
                "service runs"
            ) from None
        status = token_resp.status_code
        if status == 401:
            who = self._who if creds else "an anonymous client (no login for this registry)"
            raise WorkflowError(
                f"registry {self.host}: its token endpoint {realm} rejects the login of {who}: wrong "
                f"username or password (HTTP 401); {LOGIN_HINT.format(host=self.host)}"
            )
        if status == 403:
            raise self._denied(wanted, f"HTTP 403 from the token endpoint {realm}")
        if status != 200:
            raise WorkflowError(
                f"registry {self.host}: its token endpoint {realm} answered HTTP {status} "
                f"{token_resp.reason or ''}".rstrip()
            )
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
        return WorkflowError(
            f"registry {self.host} denies {self._who} {what} ({why}); give that login "
            "access to the repository, or use one that has it"
        )

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
            return WorkflowError(
                f"registry {self.host} needs a login (HTTP 401 for {what}): none is set and Docker "
                f"saved none for it in {config_path()}; {LOGIN_HINT.format(host=self.host)}"
            )
        if resp.status_code == 401:
            hint = f"; {LOGIN_HINT.format(host=self.host)}"
        elif resp.status_code == 404:
            hint = "; push it first (invoke push-image)"
        return WorkflowError(
            f"registry {self.host} answered HTTP {resp.status_code} {resp.reason or ''} for {what}{hint}".replace(
                "  ", " "
            )
        )


def _cert_problem(exc: Exception) -> bool:
    """The server speaks TLS but its certificate is not trusted (as opposed to no TLS at all)."""
    text = str(exc)
    return "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text or "Hostname mismatch" in text


def _refused(exc: Exception) -> bool:
    text = str(exc)
    return (
        "Connection refused" in text
        or "Errno 111" in text
        or "NameResolutionError" in text
        or "Name or service not known" in text
    )


def _reason(exc: Exception) -> str:
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(exc))
    for pattern in (
        r"(certificate verify failed[^')\]]*)",
        r"(Hostname mismatch[^')\]]*)",
        r"\[Errno -?\d+\] ([^'\")\]]+)",
        r"(Connection refused)",
        r"(Connection reset by peer)",
        r"(Read timed out)",
        r"(timed out)",
        r"(wrong version number)",
        r"(record layer failure)",
    ):
        m = re.search(pattern, text)
        if m:
            return m.group(1).strip()
    return exc.__class__.__name__
