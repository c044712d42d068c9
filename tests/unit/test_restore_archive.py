"""`invoke restore` of crafted archives: nothing in an archive escapes its folder.

Each archive is a real gzip'd tar made here with ``tarfile`` (a manifest and members written by
hand, as an attacker would), restored by the real `invoke restore --force` in another process
over a sandbox that already holds data. A refusal is one line on stderr, exit 1, and the whole
state folder (every path's type, mode, bytes and link target) is as it was. The one archive that
is accepted (modes 0o6777 and 0o7777) is restored without setuid, setgid, sticky or group/other write.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from tests.support.lifecycle import invoke

NAME = "owtest-arc"
BODY = b"hello\n"
SHA = hashlib.sha256(BODY).hexdigest()


def manifest(entries: list[dict] | None = None, **fields) -> dict:
    """A manifest as `backup` writes one (version 1), with ``entries`` and ``fields`` over its defaults."""
    return {
        "format": "openwork-sandbox-backup",
        "version": 1,
        "tool_version": "0.1.0",
        "created": "2026-12-06T10:00:00Z",
        "sandbox": {"name": "elsewhere", "runtime": "docker", "state": "missing", "image": None},
        "workspace": False,
        "databases": [],
        "not_backed_up": [],
        "tokens_from_settings": [],
        "entries": entries or [],
        **fields,
    }


def member(name: str, kind: bytes = tarfile.REGTYPE, body: bytes | None = None, mode: int = 0o600, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    if body is not None:
        info.size = len(body)
    return info, body


def folder(name: str, mode: int = 0o700):
    return member(name, tarfile.DIRTYPE, mode=mode)


def craft(path: Path, the_manifest, members: list, *, raw: bytes | None = None, tops=("data", "state")) -> Path:
    """A gzip'd tar at ``path``: ``manifest.json`` (``the_manifest`` as JSON, or ``raw`` bytes), the
    folders ``tops``, then ``members`` (``(TarInfo, body or None)``)."""
    blob = raw if raw is not None else json.dumps(the_manifest).encode()
    with tarfile.open(path, "w:gz") as tar:
        for info, body in [member("manifest.json", body=blob), *map(folder, tops), *members]:
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    return path


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: its type, mode, and content's sha256 or link target."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath, name)
            st = path.lstat()
            what = (
                os.readlink(path)
                if stat.S_ISLNK(st.st_mode)
                else hashlib.sha256(path.read_bytes()).hexdigest()
                if stat.S_ISREG(st.st_mode)
                else None
            )
            out[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), what)
    return out


@pytest.fixture
def target(tmp_path):
    """The sandbox restored into: a data folder and tokens already there (so `--force` would move them aside)."""
    data = tmp_path / "state" / NAME / "data"
    (data / "home").mkdir(parents=True)
    (data / "home" / "mine.txt").write_text("keep me")
    tokens = tmp_path / "state" / NAME / "tokens.json"
    tokens.write_text(json.dumps({"token": "t" * 43, "host_token": "h" * 43}) + "\n")
    os.chmod(tokens, 0o600)
    return tmp_path


def restore(tmp_path: Path, archive: Path):
    return invoke(
        tmp_path,
        "restore",
        "--force",
        str(archive),
        OPENWORK_MICROSANDBOX_NAME=NAME,
        OPENWORK_MICROSANDBOX_RUNTIME="docker",
    )


def refused(tmp_path: Path, archive: Path) -> str:
    """`invoke restore --force ARCHIVE`: exit 1, one line, the state folder as it was; the reason
    (what follows "cannot be restored: " and precedes "; nothing was changed")."""
    before = snapshot(tmp_path / "state")
    proc = restore(tmp_path, archive)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert snapshot(tmp_path / "state") == before, "a refused restore changed the state folder"
    prefix, suffix = f"{archive} cannot be restored: ", "; nothing was changed"
    assert lines[0].startswith(prefix) and lines[0].endswith(suffix), lines[0]
    return lines[0][len(prefix) : -len(suffix)]


def file_entry(path: str, mode: int = 0o600) -> dict:
    return {"path": path, "type": "file", "mode": mode, "size": len(BODY), "sha256": SHA}


def test_a_top_level_data_that_is_a_symlink_to_a_host_folder_is_refused(target):
    archive = craft(target / "a.tar.gz", manifest([]), [member("data", tarfile.SYMTYPE, link="/etc")], tops=())
    assert refused(target, archive) == "its top-level data is a symlink to /etc, not a folder"


@pytest.mark.parametrize(
    "top, expected",
    [
        (member("workspace", tarfile.LNKTYPE, link="/etc/passwd"), "a hard link to /etc/passwd"),
        (member("workspace", body=BODY), "a file"),
    ],
)
def test_a_top_level_workspace_that_is_no_folder_is_refused(target, top, expected):
    archive = craft(target / "w.tar.gz", manifest([], workspace=True), [top])
    assert refused(target, archive) == f"its top-level workspace is {expected}, not a folder"


def test_a_manifest_that_lists_a_top_folder_as_a_link_is_refused(target):
    entries = [{"path": "data", "type": "symlink", "target": "/etc"}]
    archive = craft(target / "m.tar.gz", manifest(entries), [])
    assert refused(target, archive) == "its manifest.json lists data, a top folder listed as an entry"


def test_a_member_through_a_symlink_is_refused(target):
    entries = [
        {"path": "data/inner", "type": "dir", "mode": 0o700},
        {"path": "data/home", "type": "symlink", "target": "inner"},
        file_entry("data/home/x"),
    ]
    members = [
        folder("data/inner"),
        member("data/home", tarfile.SYMTYPE, link="inner"),
        member("data/home/x", body=BODY),
    ]
    archive = craft(target / "through.tar.gz", manifest(entries), members)
    assert refused(target, archive) == (
        "its manifest.json lists data/home/x inside data/home, a symlink, not a folder (nothing is written "
        "through a link)"
    )


def test_a_link_the_manifest_calls_a_folder_is_refused(target):
    entries = [{"path": "data/home", "type": "dir", "mode": 0o700}, file_entry("data/home/x")]
    members = [member("data/home", tarfile.SYMTYPE, link="/root"), member("data/home/x", body=BODY)]
    archive = craft(target / "hidden.tar.gz", manifest(entries), members)
    assert refused(target, archive) == "data/home is a symlink to /root in the archive but a folder in its manifest"


@pytest.mark.parametrize(
    "path, link, out_of",
    [
        ("data/etc", "/etc", "data"),  # absolute
        ("data/up", "../../..", "data"),  # up past the top folder
        ("data/sub/ws", "../../workspace", "data"),  # inside the archive, outside data/ once moved
        ("data/sub/here", "../x/../../y", "data"),
    ],
)
def test_a_symlink_that_leads_outside_its_folder_is_refused(target, path, link, out_of):
    entries = [{"path": "data/sub", "type": "dir", "mode": 0o700}, {"path": path, "type": "symlink", "target": link}]
    members = [folder("data/sub"), member(path, tarfile.SYMTYPE, link=link)]
    archive = craft(target / "link.tar.gz", manifest(entries), members)
    assert refused(target, archive) == (
        f"{path} is a symlink to {link}, which leads outside {out_of}/ (a restored link may only point "
        "inside its own folder)"
    )


def test_a_symlink_that_leaves_through_another_link_is_refused(target):
    """data/c -> "." stays in data/, and "c/../x" looks as if it did too; followed as the kernel
    does, c/.. is the folder above data/."""
    entries = [
        {"path": "data/c", "type": "symlink", "target": "."},
        {"path": "data/a", "type": "symlink", "target": "c/../x"},
    ]
    members = [member("data/c", tarfile.SYMTYPE, link="."), member("data/a", tarfile.SYMTYPE, link="c/../x")]
    archive = craft(target / "chain.tar.gz", manifest(entries), members)
    assert refused(target, archive) == (
        "data/a is a symlink to c/../x, which leads outside data/ (a restored link may only point inside its own folder)"
    )


@pytest.mark.parametrize(
    "name, reason",
    [
        ("data/../../escaped.txt", "a path that is not plain (it could lead out of its folder)"),
        ("/etc/cron.d/evil", "an absolute path"),
        ("data/./x", "a path that is not plain (it could lead out of its folder)"),
        (
            "etc/passwd",
            "outside the backup's layout (data/, server/, state/, workspace/: only state/tokens.json in state/)",
        ),
        (
            "state/sandbox.json",
            "outside the backup's layout (data/, server/, state/, workspace/: only state/tokens.json in state/)",
        ),
    ],
)
def test_a_member_outside_the_layout_is_refused(target, name, reason):
    archive = craft(target / "path.tar.gz", manifest([]), [member(name, body=BODY)])
    assert refused(target, archive) == f"it holds {name}, {reason}"
    assert not (target / "escaped.txt").exists()


@pytest.mark.parametrize(
    "info, kind",
    [
        (member("data/x", tarfile.LNKTYPE, link="/etc/shadow")[0], "a hard link to /etc/shadow"),
        (member("data/x", tarfile.LNKTYPE, link="data/y")[0], "a hard link to data/y"),
        (member("data/x", tarfile.CHRTYPE)[0], "a character device"),
        (member("data/x", tarfile.BLKTYPE)[0], "a block device"),
        (member("data/x", tarfile.FIFOTYPE)[0], "a FIFO"),
    ],
)
def test_hard_links_devices_and_fifos_are_refused_by_their_names(target, info, kind):
    the_manifest = manifest([file_entry("data/y"), file_entry("data/x")])
    archive = craft(target / "special.tar.gz", the_manifest, [member("data/y", body=BODY), (info, None)])
    assert refused(target, archive) == f"it holds data/x, {kind}: a backup holds only files, folders and symlinks"


def test_a_member_before_its_folder_is_refused(target):
    entries = [{"path": "data/d", "type": "dir", "mode": 0o700}, file_entry("data/d/x")]
    archive = craft(target / "order.tar.gz", manifest(entries), [member("data/d/x", body=BODY), folder("data/d")])
    assert refused(target, archive) == "it holds data/d/x before its folder data/d"


BAD_MANIFESTS = [
    (
        {"entries": [{"path": "data/x", "type": "file", "mode": "abc", "size": 6, "sha256": SHA}]},
        "its manifest.json is malformed: entries[0].mode is 'abc', not a file mode",
    ),
    (
        {"entries": [{"path": "data/x", "type": "file", "mode": 0o10000, "size": 6, "sha256": SHA}]},
        "its manifest.json is malformed: entries[0].mode is 4096, not a file mode",
    ),
    (
        {"entries": [{"path": "data/x", "type": "file", "mode": True, "size": 6, "sha256": SHA}]},
        "its manifest.json is malformed: entries[0].mode is True, not a file mode",
    ),
    ({"sandbox": "x"}, "its manifest.json is malformed: sandbox is 'x', not an object"),
    (
        {"sandbox": {"name": "a\nb"}},
        "its manifest.json is malformed: sandbox.name is not a printable text of at most 200 characters",
    ),
    ({"created": 12}, "its manifest.json is malformed: created is 12, not a text"),
    ({"workspace": "yes"}, "its manifest.json is malformed: workspace is 'yes', not true or false"),
    (
        {"tokens_from_settings": ["PATH"]},
        "its manifest.json is malformed: tokens_from_settings[0] is 'PATH', not one of OPENWORK_TOKEN, OPENWORK_HOST_TOKEN",
    ),
    ({"entries": {"data/x": {}}}, "its manifest.json is malformed: entries is {'data/x': {}}, not a list"),
    ({"entries": ["data/x"]}, "its manifest.json is malformed: entries[0] is 'data/x', not an object"),
    ({"entries": [{"path": "data/x"}]}, "its manifest.json is malformed: entries[0] has no type"),
    (
        {"entries": [{"path": "data/x", "type": "fifo"}]},
        "its manifest.json is malformed: entries[0].type is 'fifo', not one of ('file', 'dir', 'symlink')",
    ),
    (
        {"entries": [{"path": "data/x", "type": "file", "mode": 384}]},
        "its manifest.json is malformed: entries[0] (data/x) has no size",
    ),
    (
        {"entries": [{"path": "data/x", "type": "file", "mode": 384, "size": "6", "sha256": SHA}]},
        "its manifest.json is malformed: entries[0].size is '6', not a size",
    ),
    (
        {"entries": [{"path": "data/x", "type": "file", "mode": 384, "size": 6, "sha256": "abc"}]},
        "its manifest.json is malformed: entries[0].sha256 is not 64 hex digits",
    ),
    ({"entries": [{"path": 7, "type": "file"}]}, "its manifest.json is malformed: entries[0].path is 7, not a path"),
    (
        {"entries": [{"path": "state/tokens.json", "type": "symlink", "target": "x"}]},
        "its manifest.json lists state/tokens.json as a symlink, not a file",
    ),
    (
        {"version": "1\nfake line"},
        "it has format version '1\\nfake line'; this tool reads version 1 (use the openwork-sandbox that made it)",
    ),
    ({"format": "something else"}, "its manifest.json is not an openwork-sandbox-backup manifest"),
]


@pytest.mark.parametrize("fields, reason", BAD_MANIFESTS, ids=[r for _f, r in BAD_MANIFESTS])
def test_a_malformed_manifest_is_refused_in_one_line(target, fields, reason):
    archive = craft(target / "bad.tar.gz", manifest(**fields), [])
    assert refused(target, archive) == reason


def test_a_manifest_missing_a_key_is_refused(target):
    the_manifest = manifest([])
    del the_manifest["sandbox"]
    assert refused(target, craft(target / "nokey.tar.gz", the_manifest, [])) == (
        "its manifest.json is malformed: it has no sandbox"
    )


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{not json", "its manifest.json does not parse"),
        (b"\xff\xfe", "its manifest.json does not parse"),
        (b"[" * 100_000 + b"]" * 100_000, "its manifest.json does not parse"),  # deeper than the parser recurses
        (b"[1, 2]", "its manifest.json is not an openwork-sandbox-backup manifest"),
        (b'"a text"', "its manifest.json is not an openwork-sandbox-backup manifest"),
    ],
    ids=["not-json", "not-utf8", "too-deep", "a-list", "a-string"],
)
def test_a_manifest_that_is_not_a_json_object_is_refused(target, raw, reason):
    assert refused(target, craft(target / "raw.tar.gz", None, [], raw=raw)) == reason


def test_setuid_setgid_sticky_and_group_world_write_are_dropped(target):
    """The one accepted archive: a file 0o6777 and a folder 0o7777 in data/ and in workspace/."""
    entries = [
        {"path": "data/d", "type": "dir", "mode": 0o7777},
        file_entry("data/d/suid", mode=0o6777),
        {"path": "workspace/d", "type": "dir", "mode": 0o7777},
        file_entry("workspace/d/suid", mode=0o6777),
        file_entry("workspace/plain", mode=0o666),
        {"path": "workspace/d/ok", "type": "symlink", "target": "../plain"},
    ]
    members = [
        folder("data/d", 0o7777),
        member("data/d/suid", body=BODY, mode=0o6777),
        folder("workspace"),
        folder("workspace/d", 0o7777),
        member("workspace/d/suid", body=BODY, mode=0o6777),
        member("workspace/plain", body=BODY, mode=0o666),
        member("workspace/d/ok", tarfile.SYMTYPE, link="../plain"),
    ]
    archive = craft(target / "modes.tar.gz", manifest(entries, workspace=True), members)
    proc = restore(target, archive)
    assert proc.returncode == 0, proc.stderr
    data, ws = target / "state" / NAME / "data", target / "state" / NAME / "workspace"
    modes = {
        str(p.relative_to(target / "state" / NAME)): stat.S_IMODE(p.lstat().st_mode)
        for p in (data, data / "d", data / "d/suid", ws, ws / "d", ws / "d/suid", ws / "plain")
    }
    assert modes == {
        "data": 0o700,
        "data/d": 0o700,  # data/ is owner-only, as backup writes it
        "data/d/suid": 0o700,
        "workspace": 0o700,
        "workspace/d": 0o755,  # the workspace keeps its modes, less the special bits and group/world write
        "workspace/d/suid": 0o755,
        "workspace/plain": 0o644,
    }
    assert (ws / "d/ok").read_bytes() == BODY  # a link inside its folder is restored as a link
