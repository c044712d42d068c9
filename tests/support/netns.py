"""A client beyond loopback, on this machine: a network namespace the test makes, joined to this one
by a veth pair (multi-host.md's way). This namespace's end gets an address only the test uses (a
connect host beyond loopback that never leaves the machine); the other end is the remote client."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

# what the peer runs: one request, everything the server sent until it closed, as repr(bytes)
_RAW_CLIENT = r"""
import socket, ssl, sys
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.create_connection((host, port), timeout=10)
if mode != "plain":
    sock = ssl.create_default_context(cafile=mode).wrap_socket(sock, server_hostname=host)
sock.sendall(b"GET /health HTTP/1.0\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n")
got = b""
try:
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
except (ConnectionResetError, ssl.SSLError):
    pass
print(repr(got))
"""


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"ip {' '.join(args)}: {proc.stderr}"


@dataclasses.dataclass
class RemotePeer:
    namespace: str
    host_address: str  # this namespace's end: the sandbox's connect host
    peer_address: str  # the client's own address

    def get(self, port: int, *, cafile: str | None = None) -> bytes:
        """``GET /health`` from the peer to ``host_address:port`` (https verified against ``cafile``
        when given, else plain HTTP); everything the server sent before it closed."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-c", _RAW_CLIENT, self.host_address, str(port)]
            + [cafile or "plain"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stderr
        return ast.literal_eval(proc.stdout.strip())


@contextlib.contextmanager
def remote_peer() -> Iterator[RemotePeer]:
    """A :class:`RemotePeer` for the test's length; skipped where namespaces cannot be made (not root, no ``ip``)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a client beyond loopback needs root and `ip` (network namespaces)")
    tag = f"{os.getpid() % 10000:04d}{random.randrange(16**3):03x}"
    namespace, link = f"owtls-{tag}", f"owt{tag}"
    third = random.randrange(1, 255)
    host_address, peer_address = f"10.237.{third}.1", f"10.237.{third}.2"
    _ip("netns", "add", namespace)
    try:
        _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("addr", "add", f"{host_address}/30", "dev", link)
        _ip("link", "set", link, "up")
        _ip("-n", namespace, "addr", "add", f"{peer_address}/30", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        yield RemotePeer(namespace, host_address, peer_address)
    finally:
        subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
