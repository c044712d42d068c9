#!/usr/bin/env python3
"""STAND-IN for openwork-server, for tests only. It is not the real server and is never a default.

The real ``openwork-server`` cannot be downloaded on the machines these tests run on, so the test
image bakes this script through the same local-binary override a user would use for their own
build (``OPENWORK_SERVER_BIN``). It keeps the part of the contract in
``shared/docs/openwork-contract.md`` that ``openwork serve`` (orchestrator 0.18.x) and the smoke
test rely on:

- ``--version`` prints a bare version (``OPENWORK_STANDIN_VERSION``, else :data:`VERSION`);
- ``GET /health`` (no auth) -> ``{"ok": true, "version": ..., "uptimeMs": ...}``;
- ``GET /workspaces`` (Bearer client token) -> the one workspace, id ``ws_`` + sha256(path)[:12];
- ``GET /approvals`` and ``POST /tokens`` with the host token (``X-OpenWork-Host-Token``) or an
  owner-scope Bearer token;
- ``/w/<id>/opencode/<rest>``: proxied to the real opencode with Basic auth and
  ``x-opencode-directory``; status and body come back unchanged;
- tokens issued by ``POST /tokens`` are kept where the real server keeps them, and accepted again
  after a restart: ``$OPENWORK_TOKEN_STORE`` if set, else ``tokens.json`` beside the config file
  (``OPENWORK_SERVER_CONFIG`` or ``--config``), else ``$HOME/.config/openwork/tokens.json`` (it
  follows HOME, not XDG_CONFIG_HOME). The file is written atomically with mode 0600.

With ``OPENWORK_MANAGE_OPENCODE=1`` and no opencode base URL it starts opencode itself, as the real
server does (``managed-opencode.ts``; upstream's worker images start the server so): ``$OPENWORK_OPENCODE_BIN
serve --hostname 127.0.0.1 --port <a free port, not its own> --cors *`` in ``OPENWORK_MANAGED_OPENCODE_CWD``
(default: the workspace), with generated ``OPENCODE_SERVER_USERNAME``/``_PASSWORD`` wired into the
workspace and ``OPENWORK_SERVER_URL``, ``OPENWORK_SERVER_TOKEN`` (the client token) and ``OPENCODE_CONFIG``
(``runtime-opencode-config.json`` it writes beside its config) in opencode's environment; it reads
opencode's stdout until "opencode server listening on URL" (15 s, else it exits 1 with that output),
then drains it unread; when opencode dies later it serves on (so does the real one); a SIGTERM stops
opencode (SIGKILL after 1 s) and then the server.

It runs under ``python3-minimal`` (Debian), which has no ``http``, ``json``, ``socketserver``,
``secrets`` or ``uuid`` modules: HTTP and JSON are done by hand with ``socket`` and ``threading``.
Arguments and environment are the ones the orchestrator passes (``--host --port --workspace
--approval --approval-timeout --cors --opencode-base-url --opencode-directory [--read-only]
[--log-format]``; ``OPENWORK_TOKEN``, ``OPENWORK_HOST_TOKEN``, ``OPENWORK_OPENCODE_USERNAME``,
``OPENWORK_OPENCODE_PASSWORD``, ``OPENWORK_OPENCODE_BASE_URL``, ``OPENWORK_OPENCODE_DIRECTORY``).
"""

import argparse
import base64
import hashlib
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

VERSION = "0.18.1"  # what the stand-in reports; OPENWORK_STANDIN_VERSION overrides it
MAX_HEADER = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
STARTED = time.time()
_rng = random.SystemRandom()


# --- JSON by hand (python3-minimal has no json module) -------------------------------------------


def to_json(value):
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            code = ord(ch)
            if ch == '"':
                out.append('\\"')
            elif ch == "\\":
                out.append("\\\\")
            elif code < 0x20 or code > 0x7E:
                if code > 0xFFFF:
                    code -= 0x10000
                    out.append("\\u%04x\\u%04x" % (0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)))
                else:
                    out.append("\\u%04x" % code)
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(value, dict):
        return "{" + ",".join(to_json(str(k)) + ":" + to_json(v) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    raise TypeError("cannot encode %r" % type(value))


_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def from_json(text):
    """Parse a JSON document; raises ValueError on anything malformed."""
    value, pos = _parse(text, _skip(text, 0))
    if _skip(text, pos) != len(text):
        raise ValueError("trailing data")
    return value


def _skip(text, pos):
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _parse(text, pos):
    if pos >= len(text):
        raise ValueError("unexpected end")
    ch = text[pos]
    if ch == "{":
        obj, pos = {}, _skip(text, pos + 1)
        if pos < len(text) and text[pos] == "}":
            return obj, pos + 1
        while True:
            if pos >= len(text) or text[pos] != '"':
                raise ValueError("expected a key")
            key, pos = _parse_string(text, pos)
            pos = _skip(text, pos)
            if pos >= len(text) or text[pos] != ":":
                raise ValueError("expected ':'")
            obj[key], pos = _parse(text, _skip(text, pos + 1))
            pos = _skip(text, pos)
            if pos < len(text) and text[pos] == ",":
                pos = _skip(text, pos + 1)
            elif pos < len(text) and text[pos] == "}":
                return obj, pos + 1
            else:
                raise ValueError("expected ',' or '}'")
    if ch == "[":
        arr, pos = [], _skip(text, pos + 1)
        if pos < len(text) and text[pos] == "]":
            return arr, pos + 1
        while True:
            item, pos = _parse(text, pos)
            arr.append(item)
            pos = _skip(text, pos)
            if pos < len(text) and text[pos] == ",":
                pos = _skip(text, pos + 1)
            elif pos < len(text) and text[pos] == "]":
                return arr, pos + 1
            else:
                raise ValueError("expected ',' or ']'")
    if ch == '"':
        return _parse_string(text, pos)
    for word, value in (("true", True), ("false", False), ("null", None)):
        if text.startswith(word, pos):
            return value, pos + len(word)
    m = _NUMBER.match(text, pos)
    if m:
        num = m.group(0)
        return (float(num) if any(c in num for c in ".eE") else int(num)), m.end()
    raise ValueError("unexpected character")


def _parse_string(text, pos):
    out, pos = [], pos + 1
    while pos < len(text):
        ch = text[pos]
        if ch == '"':
            return "".join(out), pos + 1
        if ch == "\\":
            esc = text[pos + 1 : pos + 2]
            if esc == "u":
                code = int(text[pos + 2 : pos + 6], 16)
                pos += 6
                if 0xD800 <= code < 0xDC00 and text[pos : pos + 2] == "\\u":
                    low = int(text[pos + 2 : pos + 6], 16)
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    pos += 6
                out.append(chr(code))
                continue
            if esc not in _ESCAPES:
                raise ValueError("bad escape")
            out.append(_ESCAPES[esc])
            pos += 2
            continue
        out.append(ch)
        pos += 1
    raise ValueError("unterminated string")


# --- configuration ---------------------------------------------------------------------------------


def workspace_id(path):
    return "ws_" + hashlib.sha256(path.encode()).hexdigest()[:12]


def new_token():
    return "owt_" + "".join(_rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(40))


def now_iso():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


class Config:
    def __init__(self, argv, env):
        parser = argparse.ArgumentParser(prog="openwork-server (stand-in)", add_help=True)
        parser.add_argument("--version", action="store_true")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8787)
        parser.add_argument("--workspace", action="append", default=[])
        parser.add_argument("--approval", default="manual")
        parser.add_argument("--approval-timeout", default=None)
        parser.add_argument("--cors", default="")
        parser.add_argument("--opencode-base-url", default=env.get("OPENWORK_OPENCODE_BASE_URL", ""))
        parser.add_argument("--opencode-directory", default=env.get("OPENWORK_OPENCODE_DIRECTORY", ""))
        parser.add_argument("--read-only", action="store_true")
        parser.add_argument("--log-format", default=env.get("OPENWORK_LOG_FORMAT", "pretty"))
        parser.add_argument("--config", default=env.get("OPENWORK_SERVER_CONFIG", ""))
        args, self.unknown = parser.parse_known_args(argv)
        self.version_only = args.version
        self.version = env.get("OPENWORK_STANDIN_VERSION") or VERSION
        self.host, self.port = args.host, args.port
        workspaces = args.workspace or [os.getcwd()]
        self.workspace = os.path.abspath(workspaces[0]).rstrip("/") or "/"
        self.approval, self.read_only = args.approval, args.read_only
        self.cors = [o.strip() for o in args.cors.split(",") if o.strip()]
        self.opencode_base_url = args.opencode_base_url.rstrip("/")
        self.opencode_directory = args.opencode_directory or self.workspace
        self.opencode_username = env.get("OPENWORK_OPENCODE_USERNAME", "")
        self.opencode_password = env.get("OPENWORK_OPENCODE_PASSWORD", "")
        self.client_token = env.get("OPENWORK_TOKEN") or new_token()
        self.host_token = env.get("OPENWORK_HOST_TOKEN") or new_token()
        self.workspace_id = workspace_id(self.workspace)
        # token -> record; the configured client token has collaborator scope
        self.tokens = {
            self.client_token: {"id": "tok_client", "scope": "collaborator", "label": "client", "createdAt": now_iso()}
        }
        self.lock = threading.Lock()
        self.config_path = args.config
        self.token_store = token_store_path(env, args.config)
        self.tokens.update(load_issued_tokens(self.token_store))

    def save_issued_tokens(self):
        """Write the issued tokens (not the configured client token) to the token store, atomically."""
        items = [dict(record, token=token) for token, record in self.tokens.items() if record.get("issued")]
        directory = os.path.dirname(self.token_store)
        os.makedirs(directory, exist_ok=True)
        tmp = "%s.%d.tmp" % (self.token_store, os.getpid())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(to_json({"version": 1, "tokens": items}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.token_store)

    def workspace_doc(self):
        return {
            "id": self.workspace_id,
            "name": os.path.basename(self.workspace) or self.workspace,
            "path": self.workspace,
            "preset": "starter",
            "workspaceType": "local",
            "opencode": {
                "baseUrl": self.opencode_base_url,
                "directory": self.opencode_directory,
                "username": self.opencode_username,
                "password": self.opencode_password,
            },
        }


def token_store_path(env, config_path=""):
    """Where the real openwork-server keeps issued tokens (see the module docstring)."""
    if env.get("OPENWORK_TOKEN_STORE"):
        return os.path.abspath(env["OPENWORK_TOKEN_STORE"])
    if config_path:
        return os.path.join(os.path.dirname(os.path.abspath(config_path)), "tokens.json")
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".config", "openwork", "tokens.json")


def load_issued_tokens(path):
    """token -> record from the token store; an unreadable or malformed store is reported and ignored."""
    try:
        with open(path) as fh:
            doc = from_json(fh.read())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log("token store %s unreadable (%s): issued tokens from earlier runs are not accepted" % (path, exc))
        return {}
    out = {}
    for item in (doc.get("tokens") if isinstance(doc, dict) else None) or []:
        if isinstance(item, dict) and isinstance(item.get("token"), str) and item.get("scope") in SCOPES:
            record = {k: v for k, v in item.items() if k != "token"}
            record["issued"] = True
            out[item["token"]] = record
    return out


SCOPES = ("owner", "collaborator", "viewer")


# --- HTTP by hand (python3-minimal has no http package) ---------------------------------------------


class BadRequest(Exception):
    pass


class Request:
    def __init__(self, method, target, version, headers, body):
        self.method, self.target, self.version = method, target, version
        self.headers = headers  # list of (name, value), original case
        self.body = body
        split = urlsplit(target)
        self.path, self.query = split.path or "/", split.query

    def header(self, name, default=""):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default


class Conn:
    """A buffered reader over a socket."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def read_until(self, marker, limit):
        while marker not in self.buf:
            if len(self.buf) > limit:
                raise BadRequest("header too large")
            self._fill()
        head, _, self.buf = self.buf.partition(marker)
        return head

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_some(self):
        if not self.buf:
            self._fill()
        data, self.buf = self.buf, b""
        return data


def parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    first, headers = lines[0], []
    for line in lines[1:]:
        if ":" not in line:
            raise BadRequest("bad header line")
        k, v = line.split(":", 1)
        headers.append((k.strip(), v.strip()))
    return first, headers


def read_chunked(conn):
    body = b""
    while True:
        size = int(conn.read_until(b"\r\n", 1024).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            conn.read_until(b"\r\n", MAX_HEADER)  # (no trailers expected) the final CRLF
            return body
        body += conn.read_exact(size)
        conn.read_exact(2)
        if len(body) > MAX_BODY:
            raise BadRequest("body too large")


def read_request(conn):
    first, headers = parse_head(conn.read_until(b"\r\n\r\n", MAX_HEADER))
    parts = first.split(" ")
    if len(parts) != 3:
        raise BadRequest("bad request line")
    req = Request(parts[0].upper(), parts[1], parts[2], headers, b"")
    if "chunked" in req.header("transfer-encoding").lower():
        req.body = read_chunked(conn)
    else:
        length = int(req.header("content-length", "0") or "0")
        if length > MAX_BODY:
            raise BadRequest("body too large")
        req.body = conn.read_exact(length) if length else b""
    return req


REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    502: "Bad Gateway",
}


class Handler:
    def __init__(self, cfg, sock, peer):
        self.cfg, self.sock, self.conn, self.peer = cfg, sock, Conn(sock), peer

    # responses
    def cors_headers(self, req):
        origin = req.header("origin")
        if not self.cfg.cors or not origin:
            return []
        if "*" in self.cfg.cors:
            allow = "*"
        elif origin in self.cfg.cors:
            allow = origin
        else:
            return []
        return [
            ("Access-Control-Allow-Origin", allow),
            (
                "Access-Control-Allow-Headers",
                "Authorization, Content-Type, X-OpenWork-Host-Token, x-opencode-directory",
            ),
            ("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS"),
        ]

    def send(self, req, status, body=b"", content_type="application/json", extra=(), close=False):
        if not isinstance(body, bytes):
            body = to_json(body).encode()
        head = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status"))]
        head.append("Content-Type: %s" % content_type) if body else None
        head.append("Content-Length: %d" % len(body))
        head.append("Connection: %s" % ("close" if close else "keep-alive"))
        for k, v in list(self.cors_headers(req)) + list(extra):
            head.append("%s: %s" % (k, v))
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if req.method == "HEAD" else body))

    def error(self, req, status, code, message):
        self.send(req, status, {"code": code, "message": message})

    # auth
    def bearer_scope(self, req):
        auth = req.header("authorization")
        if not auth.lower().startswith("bearer "):
            return None
        with self.cfg.lock:
            record = self.cfg.tokens.get(auth[7:].strip())
        return record["scope"] if record else None

    def is_host(self, req):
        if req.header("x-openwork-host-token") == self.cfg.host_token:
            return True
        return self.bearer_scope(req) == "owner"

    # main loop
    def serve(self):
        try:
            while True:
                try:
                    req = read_request(self.conn)
                except EOFError:
                    return
                except (BadRequest, ValueError):
                    self.sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                keep = self.route(req)
                log("%s %s" % (req.method, req.path))
                if not keep or req.header("connection").lower() == "close":
                    return
        except (OSError, EOFError):
            return
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    def route(self, req):
        """Answer one request; return False when the connection must close."""
        cfg, path = self.cfg, req.path
        if req.method == "OPTIONS":
            self.send(req, 204)
            return True
        if path == "/health" and req.method in ("GET", "HEAD"):
            self.send(req, 200, {"ok": True, "version": cfg.version, "uptimeMs": int((time.time() - STARTED) * 1000)})
            return True
        m = re.match(r"^/w/([^/]+)/opencode(/.*)?$", path)
        if m:
            if self.bearer_scope(req) is None and not self.is_host(req):
                self.error(req, 401, "unauthorized", "Invalid bearer token")
                return True
            if m.group(1) != cfg.workspace_id:
                self.error(req, 404, "workspace_not_found", "Workspace not found")
                return True
            return self.proxy(req, m.group(2) or "/")
        if path in ("/workspaces", "/workspace") or path.startswith("/workspace/"):
            if self.bearer_scope(req) is None and not self.is_host(req):
                self.error(req, 401, "unauthorized", "Invalid bearer token")
                return True
            if path == "/workspaces" and req.method == "GET":
                doc = cfg.workspace_doc()
                self.send(req, 200, {"items": [doc], "workspaces": [doc], "activeId": doc["id"]})
                return True
            m = re.match(r"^/workspace/([^/]+)/config$", path)
            if m and req.method == "GET":
                if m.group(1) != cfg.workspace_id:
                    self.error(req, 404, "workspace_not_found", "Workspace not found")
                else:
                    self.send(req, 200, {"workspaceId": cfg.workspace_id, "opencode": {}, "openwork": {}})
                return True
            self.error(req, 404, "not_found", "Not found")
            return True
        if path == "/approvals" and req.method == "GET":
            if not self.is_host(req):
                self.error(req, 401, "unauthorized", "Invalid host token")
                return True
            self.send(req, 200, {"items": [], "mode": cfg.approval})
            return True
        if path == "/tokens":
            if not self.is_host(req):
                self.error(req, 401, "unauthorized", "Invalid host token")
                return True
            if req.method == "GET":
                with cfg.lock:
                    items = [{k: v for k, v in r.items() if k != "issued"} for r in cfg.tokens.values()]
                self.send(req, 200, {"items": items})
                return True
            if req.method == "POST":
                try:
                    body = from_json(req.body.decode("utf-8")) if req.body.strip() else {}
                except (ValueError, UnicodeDecodeError):
                    self.error(req, 400, "invalid_json", "Request body is not JSON")
                    return True
                scope = body.get("scope", "collaborator") if isinstance(body, dict) else None
                if scope not in SCOPES:
                    self.error(req, 400, "invalid_scope", "scope must be owner, collaborator or viewer")
                    return True
                token = new_token()
                record = {
                    "id": "tok_" + token[4:16],
                    "scope": scope,
                    "createdAt": now_iso(),
                    "label": body.get("label") if isinstance(body.get("label"), str) else None,
                }
                with cfg.lock:
                    cfg.tokens[token] = dict(record, issued=True)
                    try:
                        cfg.save_issued_tokens()
                    except OSError as exc:
                        del cfg.tokens[token]
                        self.error(
                            req,
                            500,
                            "token_store_unwritable",
                            "cannot write the token store %s: %s" % (cfg.token_store, exc.strerror),
                        )
                        return True
                self.send(req, 201, dict(record, token=token))
                return True
            self.error(req, 405, "method_not_allowed", "Method not allowed")
            return True
        self.error(req, 404, "not_found", "Not found")
        return True

    def proxy(self, req, rest):
        """Forward to opencode; relay its status, headers and body unchanged; then close."""
        cfg = self.cfg
        base = urlsplit(cfg.opencode_base_url or "http://127.0.0.1:4096")
        host, port = base.hostname or "127.0.0.1", base.port or 80
        target = (base.path.rstrip("/") + rest) + ("?" + req.query if req.query else "")
        drop = {
            "authorization",
            "x-openwork-host-token",
            "host",
            "origin",
            "connection",
            "keep-alive",
            "content-length",
            "transfer-encoding",
            "proxy-authorization",
            "proxy-connection",
            "upgrade",
            "x-opencode-directory",
        }
        headers = [(k, v) for k, v in req.headers if k.lower() not in drop]
        basic = base64.b64encode(("%s:%s" % (cfg.opencode_username, cfg.opencode_password)).encode()).decode()
        headers += [
            ("Host", "%s:%d" % (host, port)),
            ("Authorization", "Basic " + basic),
            ("x-opencode-directory", cfg.opencode_directory),
            ("Connection", "close"),
        ]
        if req.body or req.method in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", str(len(req.body))))
        head = "%s %s HTTP/1.1\r\n" % (req.method, target) + "".join("%s: %s\r\n" % kv for kv in headers) + "\r\n"
        try:
            upstream = socket.create_connection((host, port), timeout=30)
        except OSError as exc:
            self.send(
                req, 502, {"code": "opencode_unreachable", "message": "opencode is unreachable: %s" % exc}, close=True
            )
            return False
        try:
            upstream.settimeout(None)  # event streams stay open as long as the client wants
            upstream.sendall(head.encode("latin-1") + req.body)
            up = Conn(upstream)
            first, up_headers = parse_head(up.read_until(b"\r\n\r\n", MAX_HEADER))
            hop = {"connection", "keep-alive"}
            out = [first] + ["%s: %s" % (k, v) for k, v in up_headers if k.lower() not in hop]
            out += ["%s: %s" % kv for kv in self.cors_headers(req)] + ["Connection: close"]
            self.sock.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
            status = int(first.split(" ")[1])
            names = {k.lower(): v for k, v in up_headers}
            if req.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                return False
            if "content-length" in names:
                remaining = int(names["content-length"])
                while remaining > 0:
                    data = up.read_exact(min(remaining, 65536))
                    self.sock.sendall(data)
                    remaining -= len(data)
            elif "chunked" in names.get("transfer-encoding", "").lower():
                while True:  # relay chunks as they are, stop after the last one
                    line = up.read_until(b"\r\n", 1024)
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:  # last chunk, then trailer lines up to an empty one
                        tail = b""
                        while True:
                            trailer = up.read_until(b"\r\n", MAX_HEADER)
                            tail += trailer + b"\r\n"
                            if not trailer:
                                break
                        self.sock.sendall(line + b"\r\n" + tail)
                        break
                    self.sock.sendall(line + b"\r\n" + up.read_exact(size + 2))
            else:
                while True:
                    try:
                        self.sock.sendall(up.read_some())
                    except EOFError:
                        break
        except (OSError, EOFError, ValueError, BadRequest) as exc:
            log("proxy %s %s: %s" % (req.method, rest, exc.__class__.__name__))
        finally:
            upstream.close()
        return False


def manage_opencode(cfg, env):
    """Start opencode as the real server does with OPENWORK_MANAGE_OPENCODE=1 (see the module doc) and
    wire it into ``cfg``; its process, or None when not asked to. Exits 1 when it never says where it listens."""
    import subprocess

    if cfg.opencode_base_url or env.get("OPENWORK_MANAGE_OPENCODE") != "1":
        return None
    cwd = env.get("OPENWORK_MANAGED_OPENCODE_CWD", "").strip() or cfg.workspace
    os.makedirs(cwd, exist_ok=True)
    port = cfg.port
    while port == cfg.port:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
    runtime_db = env.get("OPENWORK_RUNTIME_DB", "").strip()
    config_dir = os.path.dirname(runtime_db or cfg.config_path) or os.path.join(env["HOME"], ".config", "openwork")
    os.makedirs(config_dir, exist_ok=True)
    runtime_config = os.path.join(config_dir, "runtime-opencode-config.json")
    agent = {"openwork": {"description": "OpenWork default agent (stand-in)", "mode": "primary"}}
    with open(runtime_config, "w") as fh:
        fh.write(to_json({"agent": agent}) + "\n")
    cfg.opencode_username, cfg.opencode_password = new_token(), new_token()
    child_env = dict(
        env, OPENCODE_SERVER_USERNAME=cfg.opencode_username, OPENCODE_SERVER_PASSWORD=cfg.opencode_password
    )
    child_env.update(
        OPENWORK_SERVER_URL="http://%s:%d" % ("127.0.0.1" if cfg.host == "0.0.0.0" else cfg.host, cfg.port),
        OPENWORK_SERVER_TOKEN=cfg.client_token,
        OPENCODE_CONFIG=runtime_config,
    )
    args = [env.get("OPENWORK_OPENCODE_BIN") or "opencode", "serve", "--hostname", "127.0.0.1", "--port", str(port)]
    child = subprocess.Popen(
        args + ["--cors", "*"], cwd=cwd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    said, found = [], []

    def read(stream, listen):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if not found:
                said.append(line)
                url = (
                    re.search(r"on\s+(https?://\S+)", line)
                    if listen and line.startswith("opencode server listening")
                    else None
                )
                if url:
                    found.append(url.group(1))

    for stream, listen in ((child.stdout, True), (child.stderr, False)):
        threading.Thread(target=read, args=(stream, listen), daemon=True).start()
    deadline = time.monotonic() + 15
    while not found and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not found:
        stop_opencode(child)
        how = "exited with code %s" % child.returncode if child.returncode is not None else "did not start in 15000ms"
        sys.stderr.write("error: OpenCode server %s\n%s\n" % (how, "\n".join(said[-20:])))
        sys.exit(1)
    cfg.opencode_base_url = found[0].rstrip("/")
    log("Managed OpenCode listening on %s" % cfg.opencode_base_url)
    return child


def stop_opencode(child):
    """SIGTERM, then SIGKILL after 1 s (the real server's close())."""
    if child is None or child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(1)
    except Exception:
        child.kill()
        child.wait()


def log(message):
    sys.stdout.write("[standin-openwork-server] %s\n" % message)
    sys.stdout.flush()


def main(argv=None):
    cfg = Config(sys.argv[1:] if argv is None else argv, os.environ)
    if cfg.version_only:
        print(cfg.version)
        return 0
    opencode = manage_opencode(cfg, os.environ)
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((cfg.host, cfg.port))
    server.listen(128)
    signal.signal(signal.SIGTERM, lambda *_: (stop_opencode(opencode), os._exit(0)))
    log(
        "stand-in openwork-server %s listening on %s:%d, workspace %s (%s), opencode %s, token store %s%s"
        % (
            cfg.version,
            cfg.host,
            cfg.port,
            cfg.workspace,
            cfg.workspace_id,
            cfg.opencode_base_url or "(unset)",
            cfg.token_store,
            ", ignored args: %s" % " ".join(cfg.unknown) if cfg.unknown else "",
        )
    )
    while True:
        try:
            sock, peer = server.accept()
        except InterruptedError:
            continue
        except KeyboardInterrupt:
            return 0
        threading.Thread(target=Handler(cfg, sock, peer).serve, daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
