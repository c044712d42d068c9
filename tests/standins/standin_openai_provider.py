"""STAND-IN for an OpenAI-compatible model provider, for tests only (never a default).

A real provider cannot be reached from the machines these tests run on, so the real opencode in
the real test image talks to this small server on 127.0.0.1 instead, configured as a provider with
``@ai-sdk/openai-compatible`` (bundled with opencode, no download) and ``baseURL``. It keeps the
part of the OpenAI chat-completions contract that SDK uses:

- ``GET /v1/models`` -> ``{"object": "list", "data": [{"id": ..., "object": "model"}]}``;
- ``POST /v1/chat/completions`` with ``"stream": true`` -> ``text/event-stream``: ``data: {chunk}``
  events (``object: chat.completion.chunk``, ``choices[0].delta.content`` pieces, a last chunk with
  ``finish_reason: "stop"`` and ``usage``), then ``data: [DONE]``; without ``stream`` one
  ``chat.completion`` object;
- a refusal as OpenAI sends one: the status (401, 429, 500, ...) and
  ``{"error": {"message", "type", "code"}}``.

Every request's method, path, ``Authorization`` header and body is recorded (``requests``), so a
test can see which key the provider was given. ``refuse(status, message)`` makes every later
completion fail with that status.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "standin-model"
REPLY = "Hello from the stand-in provider. The sandbox's agent answered your prompt."
ERROR_TYPES = {
    401: "invalid_request_error",
    403: "permission_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_error",
}


class StandinProvider:
    """The server, on 127.0.0.1:<port> (``start()``/``stop()``, or ``with``)."""

    def __init__(self, port: int = 0, reply: str = REPLY, chunk_delay: float = 0.02):
        self.reply, self.chunk_delay = reply, chunk_delay
        self.requests: list[dict] = []
        self.refusal: tuple[int, str] | None = None
        self._lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _record(self, body: bytes) -> dict:
                try:
                    parsed = json.loads(body) if body else None
                except ValueError:
                    parsed = None
                entry = {
                    "method": self.command,
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "json": parsed,
                }
                with provider._lock:
                    provider.requests.append(entry)
                return entry

            def end_headers(self):
                # one request per connection: once stop() closes the socket nothing answers, not even a
                # connection the client kept alive (as a provider that went away)
                self.send_header("Connection", "close")
                self.close_connection = True
                super().end_headers()

            def _json(self, status: int, obj) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._record(b"")
                if self.path.rstrip("/").endswith("/models"):
                    self._json(
                        200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "standin"}]}
                    )
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

            def do_POST(self):
                entry = self._record(self._body())
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
                    return
                if provider.refusal is not None:
                    status, message = provider.refusal
                    self._json(
                        status,
                        {"error": {"message": message, "type": ERROR_TYPES.get(status, "error"), "code": str(status)}},
                    )
                    return
                body = entry["json"] or {}
                if body.get("stream"):
                    self._stream(body)
                else:
                    self._json(
                        200,
                        {
                            "id": "chatcmpl-standin",
                            "object": "chat.completion",
                            "created": int(time.time()),
                            "model": body.get("model", MODEL),
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": provider.reply},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17},
                        },
                    )

            def _event(self, obj) -> None:
                data = ("data: " + (obj if isinstance(obj, str) else json.dumps(obj)) + "\n\n").encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _stream(self, body: dict) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                base = {
                    "id": "chatcmpl-standin",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": body.get("model", MODEL),
                }
                words = provider.reply.split(" ")
                self._event(
                    {
                        **base,
                        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                    }
                )
                for i, word in enumerate(words):
                    time.sleep(provider.chunk_delay)
                    piece = word if i == 0 else " " + word
                    self._event({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                self._event(
                    {
                        **base,
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)},
                    }
                )
                self._event("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread: threading.Thread | None = None

    def refuse(self, status: int | None, message: str = "") -> None:
        """Answer every later completion with ``status`` and an OpenAI error body (None: answer again)."""
        self.refusal = None if status is None else (status, message)

    def completions(self) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["path"].rstrip("/").endswith("/chat/completions")]

    def start(self) -> StandinProvider:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> StandinProvider:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":  # run it by hand: python3 tests/standins/standin_openai_provider.py [PORT]
    import sys

    p = StandinProvider(int(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
    print(f"stand-in provider at {p.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        p.stop()
