"""Read-only questions to the Docker engine over its own socket, without starting the docker CLI.

:func:`engine_get` sends one ``GET`` to the Engine API on the local socket the docker CLI would use
and returns ``(status, decoded JSON)``; it returns None whenever that socket cannot be known or
used, and the caller then asks the CLI (``core.processes.docker``), which also owns every error the
user sees (the engine down, a socket this user may not use). So the CLI stays the one way to change
anything and the answer to everything it alone can reach; this module only makes the questions
asked while a sandbox boots cheaper.

The socket: ``DOCKER_HOST`` when it is ``unix://PATH``; none (the CLI) when ``DOCKER_HOST`` names
another transport (tcp, ssh), when ``DOCKER_CONTEXT`` or the CLI config's ``currentContext`` picks a
context other than ``default`` (Docker Desktop's, a remote engine's); else ``/var/run/docker.sock``.

Why not the CLI for these: each ``docker`` call is a Go program start, 15-30 ms and a share of a
core on a quiet host, far more on a loaded one; ``up`` asks four such questions before ``docker
run`` and about two a second while the sandbox boots, on the cores the boot needs. Over the socket
each is about a millisecond. Why not the Docker SDK: it pulls in ``requests`` (0.1 s to import) for
a few GETs; ``http.client`` over a Unix socket is enough. Why not ``net.http``: that is the client
for the sandbox's own port (TLS, proxies); proxies must never apply to the engine's socket.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import socket
import urllib.parse
from pathlib import Path

from openwork_sandbox.core import processes

DEFAULT_SOCKET = "/var/run/docker.sock"
TIMEOUT_S = 10.0  # one GET; a slower engine is the CLI's to report (it says how to start it)
_unusable: set[str] = set()  # sockets that failed once in this process: the CLI from then on


def socket_path(env=None, home: str | None = None) -> str | None:
    """The Unix socket the docker CLI would talk to, or None when it would use something else
    (another transport or context) or the choice cannot be read. ``env``: the environment
    (``os.environ``); ``home``: the user's home, for ``~/.docker/config.json``."""
    env = os.environ if env is None else env
    host = env.get("DOCKER_HOST", "")
    if host:
        path = host[len("unix://") :] if host.startswith("unix://") else ""
        return path or None
    if env.get("DOCKER_CONTEXT", "default") != "default":
        return None
    config_dir = env.get("DOCKER_CONFIG") or os.path.join(home or os.path.expanduser("~"), ".docker")
    try:
        config = json.loads(Path(config_dir, "config.json").read_text())
    except FileNotFoundError:
        config = {}
    except (OSError, ValueError):
        return None  # the CLI will read it (or say what is wrong with it)
    context = config.get("currentContext", "") if isinstance(config, dict) else None
    return DEFAULT_SOCKET if context in ("", "default") else None


class _UnixConnection(http.client.HTTPConnection):
    """``http.client`` to a Unix socket (the host part of each request is ignored by the engine)."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def engine_get(path: str, query: dict[str, str] | None = None, *, sock: str | None = None) -> tuple[int, object] | None:
    """``(HTTP status, the decoded JSON body or None)`` of ``GET path?query`` on the engine's socket
    (``sock``, else :func:`socket_path`); None when there is no usable socket, the engine does not
    answer it, or its answer is not JSON: the caller asks the CLI instead. ``path`` is already quoted
    (:func:`quoted`). A socket that failed once is not tried again in this process."""
    got = _get(path, query, sock)
    if got is None:
        return None
    try:
        return got[0], json.loads(got[1]) if got[1].strip() else None
    except ValueError:
        return None


def _get(path: str, query: dict[str, str] | None, sock: str | None) -> tuple[int, bytes] | None:
    """``(status, body)`` of one GET (see :func:`engine_get`), or None."""
    sock = sock or socket_path()
    if not sock or sock in _unusable:
        return None
    target = path + ("?" + urllib.parse.urlencode(query) if query else "")
    conn = _UnixConnection(sock, TIMEOUT_S)
    try:
        conn.request("GET", target, headers={"Host": "docker"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException):
        _unusable.add(sock)
        return None
    finally:
        conn.close()


def quoted(name: str) -> str:
    """``name`` (a container name or id, an image reference with its registry, tag or digest) as one
    path segment of the Engine API: its ``/``, ``:`` and ``@`` kept, as the engine's router expects."""
    return urllib.parse.quote(name, safe="/:@")


def container(name: str) -> tuple[bool, dict | None]:
    """``(answered, the container's inspect object or None when the engine has no such container)``
    for ``name``; ``answered`` is False when the engine could not be asked here (ask the CLI)."""
    return _inspect(f"/containers/{quoted(name)}/json")


def image(ref: str) -> tuple[bool, dict | None]:
    """As :func:`container`, for the image the engine holds under ``ref``."""
    return _inspect(f"/images/{quoted(ref)}/json")


def _inspect(path: str) -> tuple[bool, dict | None]:
    got = engine_get(path)
    if got is None or got[0] not in (200, 404) or (got[0] == 200 and not isinstance(got[1], dict)):
        return False, None
    return True, got[1] if got[0] == 200 else None


def log_lines(name: str, tail: int, *, tty: bool = False) -> list[str] | None:
    """The last ``tail`` lines the container ``name`` wrote (stdout and stderr, each stream in the
    order written, the two in the order the engine read them; ``tty``: it has a terminal, so the
    engine sends them as they are); None when it could not be asked here or the engine refused (ask
    the CLI, which says why)."""
    got = _get(f"/containers/{quoted(name)}/logs", {"stdout": "1", "stderr": "1", "tail": str(tail)}, None)
    if got is None or got[0] != 200:
        return None
    raw = got[1] if tty else _frames(got[1])
    return None if raw is None else raw.decode(errors="replace").splitlines()


def _frames(raw: bytes) -> bytes | None:
    """The payload of the engine's multiplexed log stream (frames of an 8-byte header, the stream's
    number then the size, and that many bytes); None when ``raw`` is not such a stream."""
    out, at = bytearray(), 0
    while at < len(raw):
        header = raw[at : at + 8]
        if len(header) < 8 or header[0] not in (0, 1, 2) or header[1:4] != b"\0\0\0":
            return None
        size = int.from_bytes(header[4:8], "big")
        out += raw[at + 8 : at + 8 + size]
        at += 8 + size
    return bytes(out)


def network_names(driver: str) -> list[str] | None:
    """The names of the engine's networks of ``driver``; None when it could not be asked here."""
    got = engine_get("/networks", {"filters": json.dumps({"driver": [driver]})})
    if got is None or got[0] != 200 or not isinstance(got[1], list):
        return None
    return [n.get("Name", "") for n in got[1] if isinstance(n, dict)]


@functools.cache
def engine_has_bridge() -> bool:
    """True when the engine has a bridge network (then ``-p`` publishing works)."""
    names = network_names("bridge")
    if names is None:
        proc = processes.docker("network", "ls", "--filter", "driver=bridge", "--format", "{{.Name}}", timeout=15)
        names = [line.strip() for line in proc.stdout.splitlines()]
    return "bridge" in names


@functools.cache
def engine_is_rootless() -> bool:
    """A rootless engine maps the container's root to the invoking user already."""
    got = engine_get("/info")
    if got is not None and got[0] == 200 and isinstance(got[1], dict):
        return "rootless" in json.dumps(got[1].get("SecurityOptions") or [])
    proc = processes.docker("info", "--format", "{{json .SecurityOptions}}", check=False, timeout=15)
    return "rootless" in (proc.stdout or "")
