"""The sandbox's state folder ``.state/<name>/`` on the host.

Layout (all owned by the user; every folder 0700, made by :func:`files.private_dir`; secrets are
mode 0600)::

    .state/               ``.gitignore`` of ``*`` when the tool made it (files.private_dir, git_ignored)
    .state/<name>/
        workspace/        bind-mounted at /workspace (default; OPENWORK_MICROSANDBOX_WORKSPACE_DIR moves it)
        data/             bind-mounted at /data      (default; OPENWORK_MICROSANDBOX_DATA_DIR moves it)
          home/           the sandbox's HOME: opencode's sessions, the server's issued tokens (state.persist)
        tokens.json       generated client and host tokens (0600), reused by every later `up`
        sandbox.json      what runs: runtime, image, settings fingerprint, job id, ports, times
        container.env     environment for `docker run --env-file` (0600: it holds the tokens)
        sandbox-secrets/  (0700) sandbox.env and opencode.jsonc (0600), mounted read-only at
                          /etc/openwork-sandbox: OPENWORK_SANDBOX_ENV's values (state.secrets)
        lock              fcntl lock: one `up`/`down`/`reset` per name at a time

:func:`safe_remove` deletes a state folder only when it is inside the configured state folder,
is not (and does not contain) ``/``, the home folder or the project root, and is not a symlink;
it never follows a symlink out of the folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openwork_sandbox.config import SPECS, Settings, token_problems
from openwork_sandbox.core import gha
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, SettingsError, WorkflowError
from openwork_sandbox.core.files import private_dir, write_atomic

TOKEN_BYTES = 32  # secrets.token_urlsafe(32): 43 characters, 256 bits
MIN_PUBLIC_TOKEN_LEN = 24  # a port published beyond loopback needs at least this much token
TOKENS_FILE = "tokens.json"
RECORD_FILE = "sandbox.json"
LOCK_FILE = "lock"


def new_token() -> str:
    """A fresh random token (:data:`TOKEN_BYTES` bytes, URL-safe)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def write_private_file(path: Path, text: str) -> None:
    """Write a file readable by the owner only, atomically (no window with wider permissions); a
    disk that takes nothing (full, read-only) fails in one line (:func:`unwritable`), the old file kept."""
    try:
        write_atomic(path, text, mode=0o600)
    except OSError as exc:
        raise unwritable(exc, path) from None


def unwritable(exc: OSError, path: Path) -> WorkflowError:
    """The one line for a file of the state folder that cannot be written (``exc``: a full or
    read-only disk, a folder others own)."""
    return WorkflowError(
        f"cannot write {path} ({exc.strerror or exc}): free space on that disk or make it "
        "writable, or set OPENWORK_STATE_DIR to a folder that is"
    )


class SandboxState:
    """One sandbox's folder: tokens, the record of what runs, the lock."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dir = settings.sandbox_state_dir

    # --- folders -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.dir.is_dir()

    def ensure(self) -> None:
        """Create the state folder, ``.state/<name>/`` and the two bind-mounted folders, each 0700
        (:func:`files.private_dir`). The tool's own folders (``.state/<name>/``, and those at their
        default place) are set to 0700 when they are wider; one the settings point at is left as it
        is, with a warning when others can enter it."""
        settings = self.settings
        for path, setting, field in (
            (settings.state_dir, "OPENWORK_STATE_DIR", "state_dir"),
            (self.dir, "OPENWORK_STATE_DIR", None),
            (settings.workspace_dir, "OPENWORK_MICROSANDBOX_WORKSPACE_DIR", "workspace_dir"),
            (settings.data_dir, "OPENWORK_MICROSANDBOX_DATA_DIR", "data_dir"),
        ):
            if path.is_symlink() and path == self.dir:
                raise WorkflowError(f"{path} is a symlink; the state folder must be a real folder: remove the link")
            try:
                private_dir(
                    path,
                    own=field is None or settings.origin(field) == "default",
                    git_ignored=field in (None, "state_dir"),
                )
            except OSError as exc:
                raise WorkflowError(
                    f"cannot create {path} ({exc.strerror}): check {setting} and the permissions of its folders"
                ) from None

    # --- tokens ------------------------------------------------------------------------------
    @property
    def tokens_path(self) -> Path:
        return self.dir / TOKENS_FILE

    def stored_tokens(self, *, strict: bool = False) -> dict[str, str]:
        """The tokens kept in ``tokens.json``; with ``strict`` a file that is there but does not parse
        raises :class:`StateFileError` (it is never replaced), else it reads as empty (for masking)."""
        try:
            data = read_state_json(self.tokens_path, TOKENS_FIX)
        except StateFileError:
            if strict:
                raise
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str) and v}

    def tokens(self, *, create: bool = True) -> tuple[str | None, str | None]:
        """The client and host tokens: from the settings when set, else generated once and kept.

        Generated tokens live in ``tokens.json`` (0600) and are reused by every later call.
        Returns ``(None, None)`` parts when nothing is set and ``create`` is False.
        """
        token, host_token = self.settings.token, self.settings.host_token
        if token and host_token:
            return token, host_token
        stored = self.stored_tokens(strict=True)  # a broken file stops here: it is kept, never replaced
        changed = False
        if not token:
            token = stored.get("token")
            if not token and create:
                token = stored["token"] = new_token()
                changed = True
        if not host_token:
            host_token = stored.get("host_token")
            if not host_token and create:
                host_token = stored["host_token"] = new_token()
                changed = True
        kept = str(self.tokens_path)  # the same rule for tokens set by hand in tokens.json
        origins = {f: self.settings.origin(f) if getattr(self.settings, f) else kept for f in ("token", "host_token")}
        problems = token_problems(token, host_token, self.settings.allow_default_tokens, origins)
        if problems:
            raise SettingsError(problems)
        if changed:
            self.ensure()
            write_private_file(self.tokens_path, json.dumps(stored, indent=2) + "\n")
        gha.mask(token, host_token)  # under GitHub Actions: hidden in the log before anyone can print them
        return token, host_token

    # --- the record of what runs ---------------------------------------------------------------
    @property
    def record_path(self) -> Path:
        return self.dir / RECORD_FILE

    def record(self, *, strict: bool = True) -> dict[str, Any]:
        """``sandbox.json`` as a dict (see :func:`read_record`)."""
        return read_record(self.dir, strict=strict)

    def save_record(self, **values: Any) -> dict[str, Any]:
        """Merge ``values`` into ``sandbox.json`` (0600; it names the job but holds no secret)."""
        self.ensure()
        return update_record(self.dir, **values)

    def write_private(self, filename: str, text: str) -> Path:
        """Write ``text`` to ``filename`` in the folder, mode 0600, atomically; returns its path."""
        self.ensure()
        path = self.dir / filename
        write_private_file(path, text)
        return path

    # --- lock ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, *, wait: float = 5.0, action: str = "up") -> Iterator[None]:
        """Hold ``.state/<name>/lock`` (fcntl, released when the process dies).

        A second holder waits up to ``wait`` seconds, then fails with a message naming the
        process that holds it. A folder or lock that cannot be written (a full or read-only disk)
        fails in one line naming it and ``OPENWORK_STATE_DIR``.
        """
        path = self.dir / LOCK_FILE
        try:
            private_dir(self.dir, own=True, git_ignored=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise unwritable(exc, path) from None
        try:
            deadline = time.monotonic() + wait
            delay = 0.05
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                        raise WorkflowError(
                            f"sandbox {self.settings.name} is busy: {holder} holds {path}; wait for it to finish "
                            f"and run `invoke {action}` again"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"`invoke {action}` (pid {os.getpid()})".encode(), 0)
            except OSError as exc:
                raise unwritable(exc, path) from None
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing releases the flock


def mask_settings(settings: Settings) -> None:
    """Mask (under GitHub Actions, :func:`gha.mask`) every secret setting (tokens, registry password)
    the moment the settings are read, and the sandbox's stored tokens (a server log that `logs`
    prints could hold them)."""
    if not gha.active():
        return
    gha.mask(*(getattr(settings, spec.field) for spec in SPECS if spec.secret))
    # OPENWORK_SANDBOX_ENV: the provider keys passed in (a multi-line value line by line too, as GitHub asks)
    gha.mask(*(part for value in settings.sandbox_env_values.values() for part in (value, *value.splitlines())))
    gha.mask(*SandboxState(settings).stored_tokens().values())


class StateFileError(WorkflowError):
    """A file of ``.state/<name>/`` is there but does not parse: it is kept, and the task stops (exit 2)."""

    exit_code = EXIT_BAD_SETTINGS


# the two ways out, per file (after "fix it, or")
TOKENS_FIX = (
    "move it aside (`mv {path} {path}.broken`) to have new tokens generated (clients configured with the old "
    "ones then need the new ones), or `invoke reset`"
)
RECORD_FIX = "move it aside (`mv {path} {path}.broken`; the next `invoke up` writes a new one), or `invoke reset`"


def read_state_json(path: Path, fix: str) -> dict[str, Any]:
    """A JSON object kept in ``.state/<name>/``: ``{}`` when the file is missing; a file that cannot
    be read or does not hold a JSON object raises :class:`StateFileError` naming it and the two ways
    out (``fix``), and is left as it is."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc.__class__.__name__
        raise StateFileError(
            f"{path} cannot be read ({why}); it is kept as it is: fix it, or {fix.format(path=path)}"
        ) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        why = (
            f"{exc.msg} at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        )
        data, problem = None, why
    else:
        problem = None if isinstance(data, dict) else f"a JSON {type(data).__name__}, not an object"
    if problem:
        raise StateFileError(
            f"{path} does not parse ({problem}); it is kept as it is: fix it, or {fix.format(path=path)}"
        )
    return data


def read_record(state_dir: Path, *, strict: bool = True) -> dict[str, Any]:
    """``<state_dir>/sandbox.json`` as a dict (empty when missing). One that does not parse raises
    :class:`StateFileError` (kept as it is), or reads as empty with ``strict=False``."""
    try:
        return read_state_json(state_dir / RECORD_FILE, RECORD_FIX)
    except StateFileError:
        if strict:
            raise
        return {}


def update_record(state_dir: Path, **values: Any) -> dict[str, Any]:
    """Merge ``values`` into ``<state_dir>/sandbox.json``; a value of None removes the key. A record
    that does not parse is never overwritten (:class:`StateFileError`)."""
    data = read_record(state_dir)
    for key, value in values.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    private_dir(state_dir, own=True, git_ignored=True)
    write_private_file(state_dir / RECORD_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


# --- settings fingerprint ------------------------------------------------------------------------


def fingerprint(values: dict[str, Any]) -> str:
    """A short stable hash of what a sandbox was created with (secrets hashed, never stored)."""
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def secret_digest(secret: str | None) -> str:
    """A short sha256 of a secret, for a fingerprint or a record; the secret itself is never stored."""
    return hashlib.sha256((secret or "").encode()).hexdigest()[:12]


# --- safe deletion -------------------------------------------------------------------------------


def _is_same_or_ancestor(path: Path, other: Path) -> bool:
    """``path`` is ``other`` or one of its parents (deleting ``path`` would delete ``other``)."""
    return path == other or path in other.parents


def deletion_problem(target: Path, state_root: Path, project_root: Path) -> str | None:
    """Why ``target`` must not be deleted, or None when it is safe.

    Safe means: ``target`` is not a symlink, lies strictly inside ``state_root`` (resolved), and
    neither ``state_root`` nor ``target`` is (or contains) ``/``, the home folder or the project root.
    """
    home = Path.home().resolve()
    root = Path(target.anchor or "/")
    try:
        state_real = state_root.resolve()
    except (OSError, RuntimeError) as exc:
        return f"cannot resolve the state folder {state_root}: {exc}"
    protected = {"/": root, "the home folder": home, "the project root": project_root.resolve()}
    for label, path in protected.items():
        if state_real == path:
            return f"the state folder {state_root} resolves to {label} ({path}); set OPENWORK_STATE_DIR to a folder of its own"
    if target.is_symlink():
        return (
            f"{target} is a symlink (to {os.readlink(target)}); remove the link yourself, nothing is deleted through it"
        )
    try:
        target_real = target.resolve()
    except (OSError, RuntimeError) as exc:
        return f"cannot resolve {target}: {exc}"
    if state_real not in target_real.parents:
        return f"{target} resolves to {target_real}, outside the state folder {state_real}; nothing deleted"
    for label, path in protected.items():
        if _is_same_or_ancestor(target_real, path):
            return f"{target} resolves to {target_real}, which is or contains {label}; nothing deleted"
    return None


def safe_remove(target: Path, state_root: Path, project_root: Path) -> bool:
    """Delete ``target`` (a sandbox's state folder) after :func:`deletion_problem` allows it.

    Symlinks inside are removed as links; their targets are never touched (``shutil.rmtree`` on
    Linux works on file descriptors and does not follow links). Returns False when nothing existed.
    """
    if not target.exists() and not target.is_symlink():
        return False
    problem = deletion_problem(target, state_root, project_root)
    if problem:
        raise WorkflowError(problem)
    st = target.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise WorkflowError(f"{target} is not a folder; nothing deleted")

    def onerror(func, path, exc_info):
        exc = exc_info[1]
        raise WorkflowError(
            f"cannot delete {path} ({getattr(exc, 'strerror', exc)}): files made inside the sandbox may belong "
            f"to another user; remove {target} with sudo"
        )

    shutil.rmtree(target, onerror=onerror)
    return True
