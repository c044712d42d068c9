"""Host ports: is one free, what holds it (``ss -ltnp``, else ``/proc/net/tcp`` and ``/proc/*/fd``), and
did the orchestrator move openwork-server off the port it was given."""

from __future__ import annotations

import errno
import os
import re
import socket
from pathlib import Path

from openwork_sandbox.core import processes


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when ``host:port`` can be bound for listening right now (nothing listens there)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _ss_holder(port: int) -> str | None:
    if processes.which("ss") is None:
        return None
    proc = processes.run(["ss", "-H", "-ltnp", f"sport = :{port}"], timeout=5, check=False)
    if proc.returncode != 0:
        return None
    for line in proc.stdout.splitlines():
        m = re.search(r'users:\(\("([^"]+)",pid=(\d+)', line)
        local = line.split()[3] if len(line.split()) > 3 else f":{port}"
        if m:
            return f"{m.group(1)} (pid {m.group(2)}) listening on {local}"
        if line.strip():
            return f"a process of another user listening on {local}"
    return None


def _proc_holder(port: int) -> str | None:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    if not inodes:
        return None
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    comm = (pid_dir / "comm").read_text().strip()
                    return f"{comm} (pid {pid_dir.name}) listening on port {port}"
        except OSError:
            continue
    return f"a process this user cannot see listening on port {port}"


def port_holder(port: int) -> str:
    """A short description of what listens on ``port``: program, pid and address when visible."""
    return _ss_holder(port) or _proc_holder(port) or f"something listening on port {port}"


# The orchestrator's ready line names the port openwork-server listens on. When the given port cannot
# be bound, the orchestrator takes a free one and says so only in this line.
_SERVER_LINE = re.compile(r"\bOpenWork server: https?://[^\s/]+:(\d+)(?![\d.])")


def moved_server_port(log_lines: list[str], port: int) -> int | None:
    """The port the orchestrator's log says openwork-server listens on, when it is not ``port``."""
    for line in reversed(log_lines):
        m = _SERVER_LINE.search(line)
        if m:
            return None if int(m.group(1)) == port else int(m.group(1))
    return None
