"""A TEST DOUBLE of the OpenWork server's HTTP API, for failure injection in smoke tests only.

It answers the part of the contract (docs: openwork-contract.md) that ``smoke`` uses, on
127.0.0.1 or ::1, optionally under a path prefix. It can be told to break exactly one check:

- ``fail=(check, "status")``: the request(s) of that check get a wrong status code;
- ``fail=(check, "body")``: the right status, with a body of the wrong shape;
- ``die_on=check``: the server drops the connection at that check's first request and stops
  listening (a server killed mid-run);
- ``hang_on=check``: the server never answers that check's first request (a stuck server).

It is not the stand-in openwork-server baked into test images (that one lives with the image
tests); it exists because a real server cannot be made to misbehave one check at a time.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

WORKSPACE = "/workspace"


def ws_id(path: str) -> str:
    return "ws_" + hashlib.sha256(path.encode()).hexdigest()[:12]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):  # a dropped connection is the point, not news
        pass


class OpenWorkDouble:
    """Start with ``with OpenWorkDouble(token=..., host_token=...) as srv: srv.url``."""

    def __init__(
        self,
        *,
        token: str,
        host_token: str,
        host: str = "127.0.0.1",
        prefix: str = "",
        fail: tuple[str, str] | None = None,
        die_on: str | None = None,
        hang_on: str | None = None,
    ):
        self.token, self.host_token = token, host_token
        self.host, self.prefix = host, prefix.rstrip("/")
        self.fail, self.die_on, self.hang_on = fail, die_on, hang_on
        self.sessions: dict[str, dict] = {}
        self.seen: list[str] = []  # "check METHOD path" of every request, in order
        self.release = threading.Event()
        self.started = time.time()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                double._handle(self, "GET")

            def do_POST(self):
                double._handle(self, "POST")

            def do_DELETE(self):
                double._handle(self, "DELETE")

        server_cls = _Server
        if ":" in host:
            server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        self.server = server_cls((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._stopped = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.prefix}"

    def __enter__(self) -> OpenWorkDouble:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.release.set()
        if not self._stopped:
            self._stopped = True
            self.server.shutdown()
            self.server.server_close()

    # --- request handling ----------------------------------------------------------------------
    def _check_of(self, method: str, path: str, headers) -> str:
        auth = headers.get("Authorization", "")
        if path == "/health":
            return "health"
        if path == "/workspaces":
            return "auth-accepted" if auth == f"Bearer {self.token}" else "auth-required"
        if path == "/approvals":
            return "host-token"
        if path.endswith("/message"):
            return "messages-read"
        if method == "POST":
            return "session-create"
        if method == "DELETE":
            return "session-delete"
        return "session-read"

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        path = parts.path
        if self.prefix:
            if not path.startswith(self.prefix + "/"):
                return self._send(h, 404, {"code": "not_found", "message": f"outside {self.prefix}"})
            path = path[len(self.prefix) :]
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        check = self._check_of(method, path, h.headers)
        self.seen.append(f"{check} {method} {path}")
        if check == self.die_on:
            h.close_connection = True
            threading.Thread(target=self.stop, daemon=True).start()
            h.connection.shutdown(socket.SHUT_RDWR)  # no answer at all: the process "died"
            return
        if check == self.hang_on:
            self.release.wait(60)
            return
        broken = self.fail[1] if self.fail and self.fail[0] == check else None
        status, body = self._answer(check, method, path, h.headers, raw, broken)
        self._send(h, status, body)

    def _answer(self, check, method, path, headers, raw, broken):
        auth = headers.get("Authorization", "")
        client_ok = auth == f"Bearer {self.token}"
        unauthorized = {"code": "unauthorized", "message": "Invalid bearer token"}
        ws = {
            "id": ws_id(WORKSPACE),
            "name": "workspace",
            "path": WORKSPACE,
            "preset": "remote",
            "workspaceType": "local",
            "opencode": {
                "baseUrl": "http://127.0.0.1:4096",
                "directory": WORKSPACE,
                "username": "opencode",
                "password": "double-opencode-password",
            },
        }
        if check == "health":
            if broken == "status":
                return 503, {"ok": False}
            if broken == "body":
                return 200, {"ok": False, "version": "0.18.1"}
            return 200, {
                "ok": True,
                "version": "0.18.1",
                "opencodeVersion": "1.17.11",
                "uptimeMs": int((time.time() - self.started) * 1000),
            }
        if check == "auth-required":
            if broken == "status":
                return 200, {"items": [ws], "workspaces": [ws], "activeId": ws["id"]}
            if broken == "body":
                return 401, "unauthorized"
            return 401, unauthorized
        if check == "auth-accepted":
            if broken == "status":
                return 500, {"code": "internal", "message": "boom"}
            if broken == "body":
                ws = {**ws, "id": "ws_000000000000"}
            return 200, {"items": [ws], "workspaces": [ws], "activeId": ws["id"]}
        if check == "host-token":
            if headers.get("X-OpenWork-Host-Token") == self.host_token:
                if broken == "status":
                    return 500, {"code": "internal", "message": "boom"}
                if broken == "body":
                    return 200, {"approvals": "none"}
                return 200, {"items": []}
            return 401, unauthorized
        # the proxy: /w/<id>/opencode/session[/<sid>[/message]]
        if not client_ok:
            return 401, unauthorized
        bits = path.strip("/").split("/")
        if len(bits) < 4 or bits[0] != "w" or bits[2] != "opencode" or bits[3] != "session":
            return 404, {"code": "not_found", "message": path}
        if bits[1] != ws_id(WORKSPACE):
            return 404, {"code": "workspace_not_found", "message": bits[1]}
        if check == "session-create":
            title = json.loads(raw or b"{}").get("title", "")
            sid = "ses_" + uuid.uuid4().hex[:20]
            session = {
                "id": sid,
                "slug": sid[-6:],
                "projectID": "global",
                "directory": WORKSPACE,
                "title": title,
                "version": "1.17.11",
                "time": {"created": 1, "updated": 1},
            }
            self.sessions[sid] = session
            if broken == "status":
                return 500, {"name": "UnknownError", "data": {"message": "boom"}}
            if broken == "body":
                return 200, {**session, "title": "something else"}
            return 200, session
        sid = bits[4] if len(bits) > 4 else ""
        if sid not in self.sessions:
            return 404, {"name": "NotFoundError", "data": {"message": f"Session not found: {sid}"}}
        if check == "session-delete":  # opencode answers 200 true
            if broken == "status":
                return 500, {"name": "UnknownError", "data": {"message": "boom"}}
            del self.sessions[sid]
            return 200, True
        if check == "session-read":
            if broken == "status":
                return 404, {"name": "NotFoundError", "data": {"message": "gone"}}
            if broken == "body":
                return 200, {**self.sessions[sid], "id": "ses_other"}
            return 200, self.sessions[sid]
        if broken == "status":
            return 500, {"name": "UnknownError", "data": {"message": "boom"}}
        if broken == "body":
            return 200, {"items": []}
        return 200, []

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        h.send_response(status)
        h.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
