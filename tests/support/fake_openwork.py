"""The OpenWork server a :class:`.fake_runtime.FakeRuntime` serves on the host's loopback once booted: a
tiny HTTP server answering ``GET /health`` and ``GET /workspaces`` as the OpenWork contract says
(docs: ``openwork-contract.md``). Kept apart so the fake runtime fits in a head."""

from __future__ import annotations

import http.server
import json
import threading
import time

WORKSPACE_ID = "ws_c52ddf65534b"  # the contract's id of the workspace at /workspace


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeOpenWork:
    """An OpenWork server's ``GET /health`` and ``GET /workspaces`` on ``host:port``, in a thread.

    ``/health`` answers 503 ``{"ok": false}`` to the first ``unhealthy`` requests (-1: always), then
    200 ``{"ok": true, "version": ..., "uptimeMs": ...}``; ``/workspaces`` answers 401 without the
    client token and 200 with the workspace at ``/workspace`` with it. ``requests`` lists
    ``(method, path, bearer token or None)``."""

    def __init__(self, host: str, port: int, token: str, *, unhealthy: int = 0, version: str = "0.0.0-fake"):
        self.token, self.unhealthy, self.version = token, unhealthy, version
        self.requests: list[tuple[str, str, str | None]] = []
        self.started = time.monotonic()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                auth = self.headers.get("Authorization") or ""
                bearer = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
                fake.requests.append(("GET", self.path, bearer))
                if self.path == "/health":
                    if fake.unhealthy:
                        fake.unhealthy -= 1 if fake.unhealthy > 0 else 0
                        return self._answer(503, {"ok": False})
                    return self._answer(
                        200,
                        {
                            "ok": True,
                            "version": fake.version,
                            "uptimeMs": int((time.monotonic() - fake.started) * 1000),
                        },
                    )
                if self.path == "/workspaces":
                    if bearer != fake.token:
                        return self._answer(401, {"code": "unauthorized", "message": "Invalid bearer token"})
                    ws = {
                        "id": WORKSPACE_ID,
                        "name": "workspace",
                        "path": "/workspace",
                        "preset": "starter",
                        "workspaceType": "local",
                    }
                    return self._answer(200, {"items": [ws], "workspaces": [ws], "activeId": WORKSPACE_ID})
                return self._answer(404, {"code": "not_found"})

            def _answer(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._server = _Server((host, port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
