"""The layout of a `backup` archive and the rules its manifest and members meet before `restore`
writes anything (pure: nothing here reads or writes a file; :class:`BadArchive` says why not).

**The layout** (``backup`` writes it; ``restore`` accepts nothing else): ``manifest.json`` first,
then the folders ``data``, ``state`` and (with ``--workspace``) ``workspace``, then each entry the
manifest lists, every folder before what is in it. An entry is a ``file`` (``mode``, ``size``,
``sha256``), a ``dir`` (``mode``) or a ``symlink`` (``target``) under ``data/`` or ``workspace/``;
``state/`` holds the file ``tokens.json`` alone.

**Nothing leads out of its folder.** The restored ``data`` and ``workspace`` are bind-mounted into
the sandbox and written by the tool on the host, so: a top folder is a real folder (a link there
would mount the host folder it names); every member's folder came before it as a folder (no member
is written through a link); a link's target, followed through the archive's own links as the
kernel would, stays inside its top folder (``data/x -> ../workspace`` leaves ``data`` once the two
are moved apart); no hard links, devices or FIFOs (``backup`` never writes them); and modes lose
setuid, setgid, sticky and group/other write (the rule of ``tarfile``'s data filter).
"""

from __future__ import annotations

import posixpath
import re
import tarfile
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

FORMAT = "openwork-sandbox-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOPS = ("data", "server", "state", "workspace")  # server/: the server's private store (issued tokens)
TOKENS_ENTRY = "state/tokens.json"
TOKEN_SETTINGS = ("OPENWORK_TOKEN", "OPENWORK_HOST_TOKEN")  # what `tokens_from_settings` may name
KINDS = ("file", "dir", "symlink")
MAX_LINK_HOPS = 40  # as Linux's ELOOP: a longer chain (or a loop) is refused
SHA256 = re.compile(r"[0-9a-f]{64}")


class BadArchive(Exception):
    """Why an archive cannot be restored (the caller adds the path and "nothing was changed")."""


def shown(text: object) -> str:
    """``text`` as a one-line message may show it: itself when printable and short, else its repr
    cut to 200 characters (a crafted name cannot break or forge lines)."""
    text = str(text)
    return text if text.isprintable() and len(text) <= 200 else repr(text[:200])


def kind_of(member: tarfile.TarInfo) -> str:
    """What ``member`` is, in words: "a file", "a folder", "a symlink to T", "a hard link to T",
    "a character device", "a block device", "a FIFO"."""
    if member.isreg():
        return "a file"
    if member.isdir():
        return "a folder"
    if member.issym():
        return f"a symlink to {shown(member.linkname)}"
    if member.islnk():
        return f"a hard link to {shown(member.linkname)}"
    if member.ischr():
        return "a character device"
    if member.isblk():
        return "a block device"
    if member.isfifo():
        return "a FIFO"
    return f"a tar member of type {member.type!r}"


def path_problem(name: str) -> str | None:
    """Why ``name`` has no place in the layout (after "it holds NAME, "), or None: an absolute path,
    one that is not plain (``..``, ``.``, ``//``), one outside ``data/``, ``server/``,
    ``state/tokens.json`` and ``workspace/``, or a top folder itself (never an entry)."""
    if name.startswith("/"):
        return "an absolute path"
    if not name or posixpath.normpath(name) != name or ".." in name.split("/"):
        return "a path that is not plain (it could lead out of its folder)"
    if name in TOPS:
        return "a top folder listed as an entry"
    if name.split("/", 1)[0] not in TOPS or (name.startswith("state/") and name != TOKENS_ENTRY):
        return f"outside the backup's layout ({', '.join(t + '/' for t in TOPS)}: only {TOKENS_ENTRY} in state/)"
    return None


def restored_mode(path: str, kind: str, mode: int) -> int:
    """The mode ``restore`` gives the entry ``path``: ``mode`` without setuid, setgid, sticky and
    group/other write (``& 0o755``, tarfile's data filter's rule), owner-only under ``data/``,
    ``server/`` and ``state/`` (as ``backup`` writes them), and always usable by the owner (0700 for a folder, 0600
    at least for a file)."""
    mode &= 0o755
    if not path.startswith("workspace/"):
        mode &= 0o700
    return mode | (0o700 if kind == "dir" else 0o600)


def _leaves(path: str, target: str, links: Mapping[str, str]) -> bool:
    """Whether the link ``path`` -> ``target`` leads out of its top folder: ``target`` followed from
    the link's folder component by component, through ``links`` (path -> target) as the kernel
    would; absolute targets, and chains longer than :data:`MAX_LINK_HOPS`, leave."""
    where = path.split("/")[:-1]
    pending, hops = deque(target.split("/")), 0
    if target.startswith("/"):
        return True
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if len(where) <= 1:  # above the top folder
                return True
            where.pop()
            continue
        where.append(part)
        inner = links.get("/".join(where))
        if inner is not None:
            hops += 1
            if hops > MAX_LINK_HOPS or inner.startswith("/"):
                return True
            where.pop()
            pending.extendleft(reversed(inner.split("/")))
    return False


def leaving_links(entries: Iterable[Mapping[str, Any]]) -> list[str]:
    """The symlink entries whose target leads out of their top folder (see :func:`_leaves`), each
    followed through the other links among ``entries``."""
    links = {e["path"]: e["target"] for e in entries if e.get("type") == "symlink"}
    return [path for path, target in links.items() if _leaves(path, target, links)]


def _field(value: Any, where: str, kind: type | tuple[type, ...], what: str) -> Any:
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise BadArchive(f"its {MANIFEST} is malformed: {where} is {shown(repr(value))}, not {what}")
    return value


def _text(value: Any, where: str) -> str:
    _field(value, where, str, "a text")
    if not value.isprintable() or len(value) > 200:
        raise BadArchive(f"its {MANIFEST} is malformed: {where} is not a printable text of at most 200 characters")
    return value


def _check_entry(entry: Any, i: int) -> dict:
    where = f"entries[{i}]"
    _field(entry, where, dict, "an object")
    for key in ("path", "type"):
        if key not in entry:
            raise BadArchive(f"its {MANIFEST} is malformed: {where} has no {key}")
    path = _field(entry["path"], f"{where}.path", str, "a path")
    problem = path_problem(path)
    if problem:
        raise BadArchive(f"its {MANIFEST} lists {shown(path)}, {problem}")
    kind = entry["type"]
    if kind not in KINDS:
        raise BadArchive(f"its {MANIFEST} is malformed: {where}.type is {shown(repr(kind))}, not one of {KINDS}")
    needs = {"file": ("mode", "size", "sha256"), "dir": ("mode",), "symlink": ("target",)}[kind]
    for key in needs:
        if key not in entry:
            raise BadArchive(f"its {MANIFEST} is malformed: {where} ({shown(path)}) has no {key}")
    if "mode" in needs:
        mode = _field(entry["mode"], f"{where}.mode", int, "a file mode")
        if not 0 <= mode <= 0o7777:
            raise BadArchive(f"its {MANIFEST} is malformed: {where}.mode is {mode}, not a file mode")
    if kind == "file":
        if _field(entry["size"], f"{where}.size", int, "a size") < 0:
            raise BadArchive(f"its {MANIFEST} is malformed: {where}.size is negative")
        if not SHA256.fullmatch(_field(entry["sha256"], f"{where}.sha256", str, "a sha256")):
            raise BadArchive(f"its {MANIFEST} is malformed: {where}.sha256 is not 64 hex digits")
    if kind == "symlink" and (not _field(entry["target"], f"{where}.target", str, "a path") or "\0" in entry["target"]):
        raise BadArchive(f"its {MANIFEST} is malformed: {where}.target is not a path")
    if path.startswith("state/") and kind != "file":
        raise BadArchive(f"its {MANIFEST} lists {TOKENS_ENTRY} as a {kind}, not a file")
    return entry


def check_manifest(manifest: Any) -> dict:
    """``manifest`` when this tool can restore from it, else :class:`BadArchive` naming the first
    field that is wrong: every field ``restore`` reads has its type, every entry its place in the
    layout (:func:`path_problem`) with its folder listed before it, and no link leads out of its
    top folder (:func:`leaving_links`)."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadArchive(f"its {MANIFEST} is not an {FORMAT} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise BadArchive(
            f"it has format version {shown(manifest.get('version'))}; this tool reads version {FORMAT_VERSION} "
            "(use the openwork-sandbox that made it)"
        )
    for key in ("entries", "sandbox", "workspace", "created", "tokens_from_settings"):
        if key not in manifest:
            raise BadArchive(f"its {MANIFEST} is malformed: it has no {key}")
    sandbox = _field(manifest["sandbox"], "sandbox", dict, "an object")
    _text(sandbox.get("name"), "sandbox.name")
    _text(manifest["created"], "created")
    _field(manifest["workspace"], "workspace", bool, "true or false")
    for i, env in enumerate(_field(manifest["tokens_from_settings"], "tokens_from_settings", list, "a list")):
        if env not in TOKEN_SETTINGS:
            raise BadArchive(
                f"its {MANIFEST} is malformed: tokens_from_settings[{i}] is {shown(repr(env))}, not one of "
                f"{', '.join(TOKEN_SETTINGS)}"
            )
    kinds: dict[str, str] = {}
    for i, entry in enumerate(_field(manifest["entries"], "entries", list, "a list")):
        path = _check_entry(entry, i)["path"]
        if path in kinds:
            raise BadArchive(f"its {MANIFEST} lists {shown(path)} twice")
        parent = posixpath.dirname(path)
        if parent not in TOPS and kinds.get(parent) != "dir":
            what = kinds.get(parent)
            raise BadArchive(
                f"its {MANIFEST} lists {shown(path)} inside {shown(parent)}, a {what}, not a folder (nothing is "
                "written through a link)"
                if what
                else f"its {MANIFEST} lists {shown(path)} but not its folder {shown(parent)} before it"
            )
        kinds[path] = entry["type"]
    leaving = leaving_links(manifest["entries"])
    if leaving:
        entry = next(e for e in manifest["entries"] if e["path"] == leaving[0])
        top = leaving[0].split("/", 1)[0]
        raise BadArchive(
            f"{shown(leaving[0])} is a symlink to {shown(entry['target'])}, which leads outside {top}/ "
            "(a restored link may only point inside its own folder)"
        )
    return manifest


def check_member(
    member: tarfile.TarInfo, expected: Mapping[str, dict], folders: set[str], seen: set[str]
) -> dict | None:
    """The manifest's entry for ``member`` (None for a top folder), or :class:`BadArchive`:
    ``member`` is a file, folder or symlink, has its place in the layout, is what the manifest says
    (a file of the listed size, a link to the listed target), comes once, and its folder is in
    ``folders`` (the folders already written, tops included). The caller adds ``member.name`` to
    ``seen`` (and to ``folders`` for a folder) once written."""
    name, kind = member.name, kind_of(member)
    if name in seen:
        raise BadArchive(f"it holds {shown(name)} twice")
    if name in TOPS:
        if not member.isdir():
            raise BadArchive(f"its top-level {name} is {kind}, not a folder")
        return None
    if not (member.isreg() or member.isdir() or member.issym()):
        raise BadArchive(f"it holds {shown(name)}, {kind}: a backup holds only files, folders and symlinks")
    problem = path_problem(name)
    if problem:
        raise BadArchive(f"it holds {shown(name)}, {problem}")
    entry = expected.get(name)
    if entry is None:
        raise BadArchive(f"it holds {shown(name)}, which its manifest does not list")
    listed = {"file": "a file", "dir": "a folder", "symlink": f"a symlink to {shown(entry.get('target'))}"}
    if kind != listed[entry["type"]]:
        raise BadArchive(f"{shown(name)} is {kind} in the archive but {listed[entry['type']]} in its manifest")
    if member.isreg() and member.size != entry["size"]:
        raise BadArchive(
            f"{shown(name)} does not match its manifest ({member.size} bytes; expected {entry['size']} bytes)"
        )
    parent = posixpath.dirname(name)
    if parent not in folders:
        raise BadArchive(f"it holds {shown(name)} before its folder {shown(parent)}")
    return entry
