"""Which traffic goes through HTTP(S)_PROXY: the npm registry and remote image registries do (and
NO_PROXY is honoured), the sandbox and loopback registries never do.

The proxy is a small recording HTTP proxy on 127.0.0.1 (a test double: it answers plain-HTTP
proxy requests itself, as a caching proxy would, instead of forwarding them); the registry on
127.0.0.1:5000 is the real one from scripts/services.
"""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from openwork_sandbox.net.ports import free_port
from tests.support.paths import REGISTRY

NPM_HOST = "npm.example.invalid"  # never resolved: a request for it can only reach the proxy


class _RecordingProxy(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):
        self.seen.append(self.path)  # a proxy request carries the absolute URL
        body = json.dumps(
            {
                "name": "pkg",
                "version": "1.0.0",
                "dist": {"tarball": f"http://{NPM_HOST}/pkg/-/pkg-1.0.0.tgz", "integrity": "sha512-" + "A" * 86 + "=="},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self):
        self.seen.append(f"CONNECT {self.path}")
        self.send_response(502)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingProxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    _RecordingProxy.seen = []
    yield _RecordingProxy.seen
    server.shutdown()
    server.server_close()


def _settings(tmp_path, **environ):
    from openwork_sandbox.config import load_settings

    (tmp_path / "empty.env").write_text("")
    return load_settings(
        environ={"OPENWORK_CACHE_DIR": str(tmp_path / "cache"), **environ},
        env_file=tmp_path / "empty.env",
        root=tmp_path,
    )


@pytest.fixture
def fresh_npm_session(monkeypatch):
    from openwork_sandbox.image import artifacts as npm_artifacts

    monkeypatch.setattr(npm_artifacts, "_SESSION", [])


def test_the_npm_registry_is_reached_through_the_proxy(proxy, fresh_npm_session, tmp_path):
    from openwork_sandbox.image.artifacts import version_doc

    settings = _settings(tmp_path, NPM_CONFIG_REGISTRY=f"http://{NPM_HOST}")
    doc = version_doc(settings, "pkg", "1.0.0")
    assert doc["version"] == "1.0.0"
    assert proxy == [f"http://{NPM_HOST}/pkg/1.0.0"]


def test_no_proxy_sends_the_npm_registry_direct(proxy, fresh_npm_session, tmp_path, monkeypatch):
    """NO_PROXY names this machine's host name (not a loopback *name*, so only NO_PROXY keeps it
    off the proxy); direct, nothing listens on that port, so the registry does not answer."""
    import socket

    from openwork_sandbox.core.errors import UnreachableError
    from openwork_sandbox.image.artifacts import version_doc

    host = socket.gethostname()
    try:
        if not socket.gethostbyname(host).startswith("127."):
            pytest.skip(f"this host's name {host} does not resolve to loopback")
    except OSError:
        pytest.skip("this host's name does not resolve")
    monkeypatch.setenv("NO_PROXY", host)
    registry = f"http://{host}:{free_port()}"
    settings = _settings(tmp_path, NPM_CONFIG_REGISTRY=registry)
    with pytest.raises(UnreachableError, match=f"npm registry {registry} did not answer"):
        version_doc(settings, "pkg", "1.0.0")
    assert proxy == []
    monkeypatch.delenv("NO_PROXY")
    version_doc(settings, "pkg", "1.0.0")  # without NO_PROXY the same registry goes through the proxy
    assert proxy == [f"{registry}/pkg/1.0.0"]


def test_a_loopback_registry_and_the_sandbox_never_go_through_a_proxy(services, proxy, tmp_path):
    from openwork_sandbox.net.health import health_once
    from openwork_sandbox.registry.client import Registry

    settings = _settings(tmp_path, OPENWORK_MICROSANDBOX_IMAGE=f"{REGISTRY}/nothing:here")
    assert Registry.for_settings(settings).ping() == 200  # the real registry, reached directly
    assert health_once(f"http://127.0.0.1:{free_port()}") is None  # refused directly, not answered by the proxy
    assert proxy == []


def test_a_remote_registry_goes_through_the_proxy(proxy, tmp_path):
    from openwork_sandbox.registry.client import Registry

    settings = _settings(
        tmp_path, OPENWORK_MICROSANDBOX_IMAGE="registry.example.invalid/team/app:1", OPENWORK_REGISTRY_INSECURE="true"
    )
    Registry.for_settings(settings).ping()  # the double answers 200 to anything
    # HTTPS first (a tunnel through the proxy, refused), then plain HTTP as the registry is insecure
    assert proxy == ["CONNECT registry.example.invalid:443", "http://registry.example.invalid/v2/"]
