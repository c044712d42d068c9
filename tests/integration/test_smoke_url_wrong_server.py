"""`invoke smoke --url` at something that is not an OpenWork server ends as soon as the answer is
clear, in one line saying what answered, not at OPENWORK_HEALTH_TIMEOUT as "not ready" or "nothing
listening". Real servers on 127.0.0.1, made here: a plain HTTP server (404 on /health, or a page),
a socket that accepts and never answers, and https:// at that plain HTTP server.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from tests.support.lifecycle import invoke

TOKENS = ("--token", "client-token-0123456789abcdef", "--host-token", "host-token-0123456789abcdef")
DEADLINE = "10m"  # far beyond what any of these may take


class _Plain(http.server.BaseHTTPRequestHandler):
    """Not OpenWork: /health is a 404, /page/health a page that is not JSON, /busy/health a 503."""

    def do_GET(self):
        status, body = {"/page/health": (200, b"<html>hello</html>"), "/busy/health": (503, b"busy")}.get(
            self.path, (404, b"not found")
        )
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def plain():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Plain)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def silent():
    """A port that accepts every connection and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held, stop = [], threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    for conn in held:
        conn.close()
    sock.close()


def _smoke(tmp_path, url: str, **env: str):
    start = time.monotonic()
    done = invoke(tmp_path, "smoke", "--url", url, *TOKENS, OPENWORK_HEALTH_TIMEOUT=DEADLINE, **env)
    health = [line for line in done.stderr.splitlines() if line.startswith("✗ health:")]
    assert len(health) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return done, health[0], time.monotonic() - start


@pytest.mark.parametrize(
    ("path", "answered"), [("", "answered 404"), ("/page", "answered 200 with a body that is not a JSON object")]
)
def test_a_plain_http_server_is_not_openwork(tmp_path, plain, path, answered):
    done, line, took = _smoke(tmp_path, f"http://{plain}{path}")
    assert done.returncode == 1, done.stderr
    assert f"GET http://{plain}{path}/health {answered}" in line and "not an OpenWork server" in line, line
    assert "not ready" not in done.stderr and took < 60


def test_a_port_that_accepts_and_never_answers(tmp_path, silent):
    done, line, took = _smoke(tmp_path, f"http://{silent}", OPENWORK_REQUEST_TIMEOUT="3")
    assert done.returncode == 1, done.stderr
    assert f"{silent} accepted the connection and did not answer within 3s" in line, line
    assert "OPENWORK_REQUEST_TIMEOUT" in line and "nothing listening" not in done.stderr
    assert took < 60


def test_https_at_a_plain_http_port_says_use_http(tmp_path, plain):
    done, line, took = _smoke(tmp_path, f"https://{plain}")
    assert done.returncode == 1, done.stderr
    assert line == f"✗ health: {plain} speaks plain HTTP, not TLS (the https handshake failed): use http://{plain}"
    assert took < 60


def test_an_answer_that_may_still_change_is_waited_for(tmp_path, plain):
    """A 503 (a proxy whose server is starting) is not taken for another server: the deadline holds."""
    start = time.monotonic()
    done = invoke(tmp_path, "smoke", "--url", f"http://{plain}/busy", *TOKENS, OPENWORK_HEALTH_TIMEOUT="5")
    assert done.returncode == 1, done.stderr
    assert "not healthy within 5s (HTTP 503" in done.stderr
    assert time.monotonic() - start >= 5
