"""Which socket the engine's questions go to, and that every way the socket can fail leaves the
question to the CLI (None) instead of an answer that is not the engine's.

Real sockets: a Unix socket nobody listens on, one that closes at once, and one that answers with
something other than JSON (a small server thread of this test's own, not an engine).
"""

from __future__ import annotations

import json
import socket
import threading

import pytest

from openwork_sandbox.runtimes import docker_engine


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(docker_engine, "_unusable", set())


def test_the_default_socket_without_host_context_or_config(tmp_path):
    assert docker_engine.socket_path({}, home=str(tmp_path)) == "/var/run/docker.sock"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DOCKER_HOST": "unix:///run/user/1000/docker.sock"}, "/run/user/1000/docker.sock"),
        ({"DOCKER_HOST": "tcp://10.0.0.5:2376"}, None),
        ({"DOCKER_HOST": "ssh://me@host"}, None),
        ({"DOCKER_HOST": "unix://"}, None),
        ({"DOCKER_CONTEXT": "desktop-linux"}, None),
        ({"DOCKER_CONTEXT": "default"}, "/var/run/docker.sock"),
    ],
)
def test_docker_host_and_context_decide(tmp_path, env, expected):
    assert docker_engine.socket_path(env, home=str(tmp_path)) == expected


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ('{"currentContext": "desktop-linux"}', None),
        ('{"currentContext": "default"}', "/var/run/docker.sock"),
        ('{"auths": {}}', "/var/run/docker.sock"),
        ("{not json", None),
    ],
)
def test_the_cli_configs_current_context_decides(tmp_path, config, expected):
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text(config)
    assert docker_engine.socket_path({}, home=str(tmp_path)) == expected
    elsewhere = tmp_path / "cfg"
    elsewhere.mkdir()
    # DOCKER_CONFIG names the folder instead of ~/.docker
    assert docker_engine.socket_path({"DOCKER_CONFIG": str(elsewhere)}, home=str(tmp_path)) == "/var/run/docker.sock"


def _serve_once(path: str, reply: bytes | None) -> threading.Thread:
    """A Unix socket at ``path`` that answers one connection with ``reply`` (None: closes at once)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def run():
        conn, _ = server.accept()
        if reply is not None:
            conn.recv(65536)
            conn.sendall(reply)
        conn.close()
        server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _http(body: bytes, status: str = "200 OK") -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\nContent-Length: %d\r\nContent-Type: application/json\r\n\r\n" % len(body)
        + body
    )


def test_nobody_listening_leaves_it_to_the_cli_and_is_not_tried_again(tmp_path):
    path = str(tmp_path / "none.sock")
    assert docker_engine.engine_get("/info", sock=path) is None
    assert path in docker_engine._unusable
    _serve_once(path, _http(b"{}"))
    assert docker_engine.engine_get("/info", sock=path) is None  # not asked again in this process


def test_a_socket_that_closes_at_once_leaves_it_to_the_cli(tmp_path):
    path = str(tmp_path / "closes.sock")
    _serve_once(path, None)
    assert docker_engine.engine_get("/info", sock=path) is None


def test_an_answer_that_is_not_json_leaves_it_to_the_cli(tmp_path):
    path = str(tmp_path / "html.sock")
    _serve_once(path, _http(b"<html>proxy says hi</html>"))
    assert docker_engine.engine_get("/info", sock=path) is None


def test_a_json_answer_is_returned_with_its_status(tmp_path):
    path = str(tmp_path / "engine.sock")
    _serve_once(path, _http(json.dumps({"message": "No such container: x"}).encode(), "404 Not Found"))
    assert docker_engine.engine_get("/containers/x/json", sock=path) == (404, {"message": "No such container: x"})


def test_names_keep_their_registry_tag_and_digest_in_the_path():
    assert docker_engine.quoted("127.0.0.1:5000/team/img:dev") == "127.0.0.1:5000/team/img:dev"
    assert docker_engine.quoted("reg/img@sha256:ab12") == "reg/img@sha256:ab12"
    assert docker_engine.quoted("a b?c#d") == "a%20b%3Fc%23d"
