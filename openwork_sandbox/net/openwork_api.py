"""A small HTTP client for the OpenWork server API (see docs: openwork-contract.md).

One :class:`OpenWorkClient` per server URL. Every call returns an :class:`ApiResponse` that keeps
what a report needs (method, URL, status, start of the body, time) and never raises for an HTTP
status; transport problems (nothing listening, reset, timeout) raise :class:`TransportError`.
Tokens travel in headers only, never in a URL, so a URL is always safe to print.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from openwork_sandbox.net.http import certificate_problem, sandbox_session

HOST_TOKEN_HEADER = "X-OpenWork-Host-Token"
BODY_START = 300  # characters of a body kept for reports


def workspace_id(path: str) -> str:
    """The server's workspace id rule: ``ws_`` + first 12 hex of sha256(absolute path)."""
    return "ws_" + hashlib.sha256(path.encode()).hexdigest()[:12]


def workspace_at(items, path: str = "/workspace") -> dict | None:
    """The workspace whose ``path`` is ``path`` (the sandbox's is /workspace) in a /workspaces list.

    ``up`` records its id and ``smoke`` checks it: both pick it with this, never the first listed."""
    return next((w for w in items or [] if isinstance(w, dict) and w.get("path") == path), None)


def join_url(base: str, path: str) -> str:
    """``base`` + ``path``, keeping a path prefix in ``base`` (``http://h/prefix/`` + ``/health`` is
    ``http://h/prefix/health``); works for ``http://[::1]:8787``. A query in ``path`` is kept."""
    parts = urlsplit(base)
    rel_path, _, query = path.partition("?")
    joined = parts.path.rstrip("/") + "/" + rel_path.lstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, joined, query, ""))


def body_start(text: str, limit: int = BODY_START) -> str:
    """The first ``limit`` characters of a body, whitespace folded, for a one-screen report."""
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit] + "…"


class TransportError(Exception):
    """No HTTP answer: ``kind`` is ``refused`` (nothing listening), ``timeout`` or ``broken``."""

    def __init__(self, kind: str, method: str, url: str, detail: str, seconds: float):
        self.kind, self.method, self.url, self.detail, self.seconds = kind, method, url, detail, seconds
        super().__init__(f"{method} {url}: {detail}")


@dataclasses.dataclass
class ApiResponse:
    """One answer: the request it answers, its status, its body as text, the seconds it took."""

    method: str
    url: str
    status: int
    text: str
    seconds: float

    @property
    def request(self) -> str:
        return f"{self.method} {self.url}"

    @property
    def body_start(self) -> str:
        return body_start(self.text)

    def json(self) -> Any:
        """The parsed body, or raises ValueError. The message does not quote the body: a report
        shows the body itself, redacted before it is cut (a token cut in half is not redacted)."""
        try:
            return json.loads(self.text)
        except ValueError:
            raise ValueError("the body is not JSON" if self.text.strip() else "the body is empty") from None


class OpenWorkClient:
    """The OpenWork server's HTTP API, with a timeout on every request."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        host_token: str | None = None,
        timeout: float = 15.0,
        verify: bool | str = True,
    ):
        self.base_url = base_url
        self.token = token
        self.host_token = host_token
        self.timeout = timeout
        self.verify = verify  # over https: the CA bundle (or True: the system CAs) the certificate is checked with
        self.session = sandbox_session(verify=verify, user_agent="openwork-sandbox-smoke")  # never through a proxy

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> OpenWorkClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def url(self, path: str) -> str:
        return join_url(self.base_url, path)

    # --- the one place requests are sent ---------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        bearer: str | None = None,
        host_token: str | None = None,
        json_body: Any = None,
        timeout: float | None = None,
    ) -> ApiResponse:
        import requests  # here, not at the top: workspace_at and friends serve every warm `up` without it

        url = join_url(self.base_url, path)
        headers = {"Accept": "application/json"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        if host_token is not None:
            headers[HOST_TOKEN_HEADER] = host_token
        limit = self.timeout if timeout is None else max(0.05, min(timeout, self.timeout))
        start = time.perf_counter()
        try:
            resp = self.session.request(
                method, url, headers=headers, json=json_body, timeout=limit, allow_redirects=False
            )
            text = resp.text
        except requests.exceptions.SSLError as exc:
            detail = certificate_problem(exc, url, self.verify) or _describe("broken", exc, limit)
            raise TransportError("broken", method, url, detail, time.perf_counter() - start) from None
        except requests.exceptions.ConnectionError as exc:
            kind = "timeout" if isinstance(exc, requests.exceptions.ConnectTimeout) else _connection_kind(exc)
            raise TransportError(kind, method, url, _describe(kind, exc, limit), time.perf_counter() - start) from None
        except requests.exceptions.Timeout as exc:
            raise TransportError(
                "timeout", method, url, _describe("timeout", exc, limit), time.perf_counter() - start
            ) from None
        except requests.exceptions.RequestException as exc:
            raise TransportError(
                "broken", method, url, _describe("broken", exc, limit), time.perf_counter() - start
            ) from None
        return ApiResponse(method, url, resp.status_code, text, time.perf_counter() - start)

    # --- the API ----------------------------------------------------------------------------
    def health(self, timeout: float | None = None) -> ApiResponse:
        return self.request("GET", "/health", timeout=timeout)

    def workspaces(self, bearer: str | None) -> ApiResponse:
        return self.request("GET", "/workspaces", bearer=bearer)

    def approvals(self, *, host_token: str | None = None, bearer: str | None = None) -> ApiResponse:
        return self.request("GET", "/approvals", host_token=host_token, bearer=bearer)

    def create_session(self, ws_id: str, title: str) -> ApiResponse:
        return self.request(
            "POST", f"/w/{quote(ws_id, safe='')}/opencode/session", bearer=self.token, json_body={"title": title}
        )

    def get_session(self, ws_id: str, session_id: str) -> ApiResponse:
        return self.request(
            "GET", f"/w/{quote(ws_id, safe='')}/opencode/session/{quote(session_id, safe='')}", bearer=self.token
        )

    def delete_session(self, ws_id: str, session_id: str) -> ApiResponse:
        """opencode's ``DELETE /session/<id>`` through the proxy (200 ``true`` when it existed)."""
        return self.request(
            "DELETE", f"/w/{quote(ws_id, safe='')}/opencode/session/{quote(session_id, safe='')}", bearer=self.token
        )

    def prompt_async(self, ws_id: str, session_id: str, text: str, model: dict | None = None) -> ApiResponse:
        """opencode's ``POST /session/<id>/prompt_async`` (204 at once; the reply is written as it comes)
        with one text part, ``{"parts": [{"type": "text", "text": ...}]}`` (and ``model``:
        ``{"providerID", "modelID"}`` when given; else opencode's default model)."""
        body: dict[str, Any] = {"parts": [{"type": "text", "text": text}]}
        if model:
            body["model"] = model
        return self.request(
            "POST",
            f"/w/{quote(ws_id, safe='')}/opencode/session/{quote(session_id, safe='')}/prompt_async",
            bearer=self.token,
            json_body=body,
        )

    def session_status(self, ws_id: str) -> ApiResponse:
        """opencode's ``GET /session/status``: ``{session id: {"type": "busy"|"retry"|..., ...}}``."""
        return self.request("GET", f"/w/{quote(ws_id, safe='')}/opencode/session/status", bearer=self.token)

    def abort_session(self, ws_id: str, session_id: str) -> ApiResponse:
        """opencode's ``POST /session/<id>/abort``: stop what the agent is doing (and retrying)."""
        return self.request(
            "POST", f"/w/{quote(ws_id, safe='')}/opencode/session/{quote(session_id, safe='')}/abort", bearer=self.token
        )

    def session_messages(self, ws_id: str, session_id: str, limit: int = 10) -> ApiResponse:
        """opencode's ``GET /session/<id>/message?limit=N``: the session's last messages."""
        return self.request(
            "GET",
            f"/w/{quote(ws_id, safe='')}/opencode/session/{quote(session_id, safe='')}/message?limit={limit}",
            bearer=self.token,
        )


def _connection_kind(exc: Exception) -> str:
    """``refused`` (nothing listening, or the host does not resolve) or ``broken``, from requests' error."""
    text = repr(exc).lower()
    if (
        "refused" in text
        or "errno 111" in text
        or "errno 61" in text
        or "failed to establish" in text
        or "cannot assign requested address" in text
        or "name or service not known" in text
        or "nodename nor servname" in text
    ):
        return "refused"
    return "broken"


def _describe(kind: str, exc: Exception, limit: float) -> str:
    """The one-line reason a :class:`TransportError` gives for ``kind``."""
    if kind == "refused":
        text = repr(exc).lower()
        if "name or service not known" in text or "nodename nor servname" in text:
            return "the host name does not resolve"
        return "connection refused (nothing listening)"
    if kind == "timeout":
        return f"no answer within {limit:g}s (OPENWORK_REQUEST_TIMEOUT)"
    text = repr(exc)
    for marker in (
        "SSLError",
        "RemoteDisconnected",
        "ConnectionResetError",
        "BrokenPipeError",
        "IncompleteRead",
        "ChunkedEncodingError",
        "ProtocolError",
    ):
        if marker in text:
            return f"the connection broke ({marker})"
    return f"the connection broke ({exc.__class__.__name__})"
