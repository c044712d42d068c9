"""Runtime probe, port-in-use detection and the health wait, against real sockets and HTTP."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import pytest

from openwork_sandbox.core.errors import UnreachableError, WorkflowError
from openwork_sandbox.net.ports import free_port
from openwork_sandbox.runtimes import probe
from tests.support.lifecycle import make_settings, unique_name

# --- probe ---------------------------------------------------------------------------------------


def test_cpu_flag_read_from_cpuinfo(tmp_path):
    intel = tmp_path / "intel"
    intel.write_text("processor\t: 0\nflags\t\t: fpu vme vmx sse\n")
    amd = tmp_path / "amd"
    amd.write_text("flags\t\t: fpu svm\n")
    none = tmp_path / "none"
    none.write_text("flags\t\t: fpu vme sse hypervisor\n")
    assert probe.cpu_virtualization_flag(intel) == "vmx"
    assert probe.cpu_virtualization_flag(amd) == "svm"
    assert probe.cpu_virtualization_flag(none) is None
    assert probe.cpu_virtualization_flag(tmp_path / "missing") is None


def test_microvm_support_agrees_with_this_host():
    ok, why = probe.microvm_support()
    flag = probe.cpu_virtualization_flag()
    if flag is None:
        assert not ok and "vmx/svm" in why
    else:
        assert ok == (probe.msb_path() is not None), why


def test_docker_support_answers(services):
    ok, why = probe.docker_support()
    assert ok, why
    assert "answers" in why


def test_auto_runtime_says_what_it_chose_and_why(tmp_path, services):
    from openwork_sandbox.sandbox.launch import choose_runtime

    kind, why = choose_runtime(make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=unique_name()))
    if probe.microvm_support()[0]:
        assert kind == "microsandbox" and "microVMs can boot" in why
    else:
        assert kind == "docker" and "microVMs cannot boot here" in why


# --- port in use ------------------------------------------------------------------------------------


def test_port_in_use_names_port_and_holder_and_creates_nothing(tmp_path):
    from openwork_sandbox.sandbox.up import up

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        settings = make_settings(
            tmp_path,
            OPENWORK_MICROSANDBOX_NAME=unique_name(),
            OPENWORK_MICROSANDBOX_PORT=str(port),
            OPENWORK_MICROSANDBOX_RUNTIME="docker",
        )
        with pytest.raises(WorkflowError) as err:
            up(settings)
    message = err.value.message
    assert f"port {port}" in message
    import os

    assert f"pid {os.getpid()}" in message  # what holds it: this very test process
    assert "\n" not in message
    assert not (tmp_path / "state").exists()  # nothing created


def test_port_is_free_and_holder(tmp_path):
    from openwork_sandbox.net.ports import port_holder, port_is_free

    port = free_port()
    assert port_is_free(port)
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", port))
        sock.listen()
        assert not port_is_free(port, "127.0.0.1")
        assert "python" in port_holder(port)


def test_the_orchestrators_ready_line_tells_a_moved_server_port():
    from openwork_sandbox.net.ports import moved_server_port

    ready = [
        "OpenWork orchestrator running",
        "OpenCode: http://127.0.0.1:47247",
        "OpenWork server: http://127.0.0.1:36605",
        "OpenWork connect URL: http://127.0.0.1:36605",
    ]
    assert moved_server_port(ready, 46047) == 36605
    assert moved_server_port(ready, 36605) is None  # where it was asked to be
    assert moved_server_port(["[opencode] listening on 127.0.0.1:4096"], 8787) is None  # not ready yet
    assert moved_server_port(["OpenWork server: ok (http://127.0.0.1:1234)"], 8787) is None  # `openwork status`
    # the last ready line counts (a restart that got its port back)
    assert (
        moved_server_port(["OpenWork server: http://127.0.0.1:36605", "OpenWork server: http://0.0.0.0:8787"], 8787)
        is None
    )
    assert moved_server_port(["OpenWork server: http://[::1]:9000/"], 8787) == 9000


# --- health wait against a real HTTP server -----------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def _serve(handler_cls) -> tuple[_Server, str]:
    server = _Server(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _handler(ready_at: float, token: str = "tok"):
    class Handler(http.server.BaseHTTPRequestHandler):
        hits = 0

        def log_message(self, *args):
            pass

        def _json(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            type(self).hits += 1
            if self.path == "/health":
                if time.monotonic() < ready_at:
                    return self._json(503, {"ok": False})
                return self._json(200, {"ok": True, "version": "9.9.9", "uptimeMs": 1})
            if self.path == "/workspaces":
                if self.headers.get("Authorization") != f"Bearer {token}":
                    return self._json(401, {"code": "unauthorized", "message": "Invalid bearer token"})
                # another workspace listed first: up must record the /workspace one, as smoke checks it
                return self._json(
                    200,
                    {
                        "items": [
                            {"id": "ws_0a1b2c3d4e5f", "path": "/tmp/other"},
                            {"id": "ws_c52ddf65534b", "path": "/workspace"},
                        ],
                        "workspaces": [],
                        "activeId": "ws_0a1b2c3d4e5f",
                    },
                )
            self._json(404, {})

    return Handler


def test_wait_for_health_returns_the_body_once_healthy():
    from openwork_sandbox.net.health import wait_for_health

    handler = _handler(time.monotonic() + 0.4)
    server, url = _serve(handler)
    try:
        body = wait_for_health(url, 10, is_alive=lambda: True)
    finally:
        server.shutdown()
    assert body["version"] == "9.9.9"
    assert handler.hits >= 3  # it polled more than once while the server said 503


def test_wait_for_health_timeout_names_endpoint_deadline_state_log_and_hint():
    from openwork_sandbox.net.health import HealthTimeout, wait_for_health

    server, url = _serve(_handler(time.monotonic() + 3600))
    try:
        with pytest.raises(HealthTimeout) as err:
            wait_for_health(url, 0.5, describe=lambda: ("running", ["booting", "still booting"], "docker logs x"))
    finally:
        server.shutdown()
    message = err.value.message
    assert not isinstance(err.value, UnreachableError)  # it answered, just not healthily: exit 1
    assert err.value.exit_code == 1
    for part in (f"{url}/health", "0.5s", "HTTP 503", "running", "still booting", "docker logs x"):
        assert part in message, (part, message)
    assert err.value.log_lines == ["booting", "still booting"]


def test_wait_for_health_gives_up_on_a_request_that_is_never_answered_and_asks_again():
    """A just-started server may read a request and never answer it (opencode's start race): the
    wait asks again instead of spending its whole request timeout (here longer than the deadline)."""
    import socket
    import threading

    from openwork_sandbox.net.health import wait_for_health

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    held = []

    def serve():
        first = True
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(4096)
            if first:  # read and never answered, connection kept open
                first = False
                held.append(conn)
                continue
            body = b'{"ok": true, "version": "9.9.9"}'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        body = wait_for_health(f"http://127.0.0.1:{port}", 8, timeout_s=60)
    finally:
        listener.close()
        for conn in held:
            conn.close()
    assert body["version"] == "9.9.9" and len(held) == 1


def test_a_poll_held_by_the_orchestrators_port_check_is_let_go_at_once():
    """`openwork serve` checks that its port is free by listening on it for a moment, and waits for
    every connection made then to end before it starts anything: a poll that lands there must close
    its connection within a tenth of a second, not after a whole request timeout (it used to take 1 s,
    a 1 s stall in about one start in four)."""
    from openwork_sandbox.net.health import wait_for_health

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    held_for: list[float] = []

    def port_check_then_server():
        conn, _ = listener.accept()  # the port check: accepted, never answered, waited on until closed
        began = time.monotonic()
        conn.settimeout(5)
        while conn.recv(4096):  # b"" once the client closes its end
            pass
        held_for.append(time.monotonic() - began)
        conn.close()
        conn, _ = listener.accept()  # then the server itself
        conn.recv(4096)
        body = b'{"ok": true, "version": "9.9.9"}'
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        conn.close()

    threading.Thread(target=port_check_then_server, daemon=True).start()
    try:
        assert wait_for_health(f"http://127.0.0.1:{port}", 8, timeout_s=2)["version"] == "9.9.9"
    finally:
        listener.close()
    assert held_for and held_for[0] < 0.5, held_for


def test_wait_for_health_with_nothing_listening_is_unreachable():
    from openwork_sandbox.net.health import HealthTimeout, NothingListening, wait_for_health

    with pytest.raises(NothingListening) as err:
        wait_for_health(f"http://127.0.0.1:{free_port()}", 0.3)
    assert isinstance(err.value, UnreachableError) and isinstance(err.value, HealthTimeout)
    assert err.value.exit_code == 3 and "connection refused" in err.value.message


def test_wait_for_health_fails_fast_when_the_sandbox_died():
    from openwork_sandbox.net.health import SandboxDied, wait_for_health

    port = free_port()  # nothing listens here
    # SandboxDied (not HealthTimeout, which only comes at the 60 s deadline) proves it did not wait
    with pytest.raises(SandboxDied) as err:
        wait_for_health(
            f"http://127.0.0.1:{port}",
            60,
            is_alive=lambda: False,
            describe=lambda: ("stopped, exit code 64", ["OPENWORK_TOKEN not set"], "docker logs x"),
        )
    assert "exit code 64" in err.value.message and "OPENWORK_TOKEN not set" in err.value.message


def test_check_workspaces_wants_401_then_200():
    from openwork_sandbox.net.health import check_workspaces

    server, url = _serve(_handler(0, token="right"))
    try:
        assert check_workspaces(url, "right") == "ws_c52ddf65534b"
        with pytest.raises(WorkflowError) as err:
            check_workspaces(url, "wrong")
        assert "401" in err.value.message and "expected 200" in err.value.message
    finally:
        server.shutdown()


def test_exposure_beyond_loopback_needs_long_tokens(tmp_path):
    from openwork_sandbox.sandbox.launch import check_exposure

    short = make_settings(
        tmp_path, OPENWORK_CONNECT_HOST="192.0.2.10", OPENWORK_TOKEN="short-token-123", OPENWORK_HOST_TOKEN="x" * 30
    )
    with pytest.raises(WorkflowError) as err:
        check_exposure(short)
    assert "OPENWORK_TOKEN" in err.value.message and "24" in err.value.message
    assert "short-token-123" not in err.value.message
    check_exposure(make_settings(tmp_path, OPENWORK_CONNECT_HOST="192.0.2.10"))  # generated tokens are long
    check_exposure(make_settings(tmp_path, OPENWORK_TOKEN="short"))  # loopback: allowed


def test_since_and_tail_parsing():
    from openwork_sandbox.sandbox.logs import parse_since, parse_tail

    assert parse_since("30") == 30 and parse_since("5m") == 300 and parse_since("2h") == 7200
    assert parse_since(None) is None
    with pytest.raises(WorkflowError):
        parse_since("yesterday")
    assert parse_tail("10") == 10 and parse_tail(None) is None
    with pytest.raises(WorkflowError):
        parse_tail("-3")


def test_docker_publishing_with_a_bridge_network(tmp_path, monkeypatch):
    """STAND-IN for a bridge network, which this engine (dockerd --bridge=none) cannot have:
    ``engine_has_bridge`` is forced to True to check the argv `up` would use there."""
    from openwork_sandbox.runtimes import docker
    from openwork_sandbox.sandbox.launch import launch_spec

    settings = make_settings(tmp_path, OPENWORK_MICROSANDBOX_PORT="18080")
    spec = launch_spec(settings, "docker", "t" * 40, "h" * 40)
    runtime = docker.DockerRuntime(settings.name, settings.sandbox_state_dir)
    monkeypatch.setattr(docker, "engine_has_bridge", lambda: True)
    # the host's services are host.docker.internal there (as on Docker Desktop; Linux needs --add-host)
    assert runtime._network_args(spec) == (
        ["-p", "127.0.0.1:18080:8787", "--add-host", "host.docker.internal:host-gateway"],
        {"OPENWORK_HOST_ADDRESS": "host.docker.internal"},
    )
    monkeypatch.setattr(docker, "engine_has_bridge", lambda: False)
    args, env = runtime._network_args(spec)
    assert args == ["--network", "host"]
    assert env["OPENWORK_PORT"] == "18080" and env["OPENWORK_REMOTE_ACCESS"] == "0"
    assert env["OPENWORK_HOST_ADDRESS"] == "127.0.0.1"  # host networking: the host's loopback is the container's
    assert env["OPENWORK_OPENCODE_PORT"] != "18080"


def test_endpoint_and_log_tail_without_any_sandbox(tmp_path):
    from openwork_sandbox.sandbox.endpoint import endpoint, server_log_tail

    settings = make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=unique_name(), OPENWORK_MICROSANDBOX_RUNTIME="docker")
    with pytest.raises(WorkflowError) as err:
        endpoint(settings)
    assert "invoke up" in err.value.message and "\n" not in err.value.message
    lines, hint = server_log_tail(settings)
    assert lines == [] and hint
    preset = make_settings(
        tmp_path, OPENWORK_MICROSANDBOX_NAME=unique_name(), OPENWORK_TOKEN="c" * 30, OPENWORK_HOST_TOKEN="d" * 30
    )
    ep = endpoint(preset)
    assert (ep.token, ep.host_token, ep.workspace_id) == ("c" * 30, "d" * 30, None)
    assert "c" * 30 not in repr(ep)


def test_offline_turns_off_opencodes_models_fetch_and_changes_the_fingerprint(tmp_path):
    from openwork_sandbox.sandbox.launch import launch_spec

    online = launch_spec(make_settings(tmp_path, OPENWORK_OFFLINE="false"), "docker", "t" * 30, "h" * 30)
    offline = launch_spec(make_settings(tmp_path, OPENWORK_OFFLINE="true"), "docker", "t" * 30, "h" * 30)
    assert "OPENCODE_DISABLE_MODELS_FETCH" not in online.env
    assert offline.env["OPENCODE_DISABLE_MODELS_FETCH"] == "1"
    assert online.fingerprint != offline.fingerprint  # switching it recreates the sandbox
