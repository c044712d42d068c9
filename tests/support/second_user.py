"""Running the tool as another local user: a readable copy of the project and its dependencies, and
``invoke`` as that user through ``setpriv``.

This interpreter and the checkout may live where another user cannot read (``/root`` is 0700), so
that user runs the system ``/usr/bin/python3`` with a copy of the project and of the tool's
dependencies (their files, taken from this interpreter's distributions) in a folder it can read.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import stat
import subprocess
from pathlib import Path

from tests.support.paths import ROOT

SYSTEM_PYTHON = Path("/usr/bin/python3")
DEPENDENCIES = ("invoke", "requests", "urllib3", "idna", "charset-normalizer", "certifi", "python-dotenv", "packaging")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def readable_copy(base: Path) -> tuple[Path, Path]:
    """(project, site): the checkout and the tool's dependencies, copied under ``base`` where any user can read."""
    project = base / "project"
    shutil.copytree(
        ROOT,
        project,
        symlinks=True,
        ignore=shutil.ignore_patterns(".git", ".state", "__pycache__", ".pytest_cache", "reports"),
    )
    site = base / "site"
    for name in DEPENDENCIES:
        dist = importlib.metadata.distribution(name)
        for rel in dist.files or ():
            if ".." in Path(rel).parts:
                continue  # scripts outside site-packages
            src = Path(dist.locate_file(rel))
            if src.is_file():
                (site / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, site / rel)
    for root, dirs, files in os.walk(base):
        for n in dirs + files:
            p = os.path.join(root, n)
            if not os.path.islink(p):
                os.chmod(
                    p,
                    os.stat(p).st_mode
                    | stat.S_IRUSR
                    | stat.S_IRGRP
                    | stat.S_IROTH
                    | (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH if os.path.isdir(p) else 0),
                )
    return project, site


def user_folders(base: Path, uid: int, gid: int) -> tuple[Path, Path, Path]:
    """``(home, state folder, empty settings file)`` under ``base`` for the user ``uid:gid``: the two
    folders theirs, the file readable by them (their ``--env-file``, so no project ``.env`` is read)."""
    home, state = base / "home", base / "state"
    for folder in (home, state):
        folder.mkdir()
        os.chown(folder, uid, gid)
    env_file = base / "empty.env"
    env_file.write_text("")
    os.chmod(env_file, 0o644)
    return home, state, env_file


def invoke_as(
    uid: int, gid: int, project: Path, site: Path, *args: str, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python3 -m invoke ARGS`` in ``project`` as the user ``uid``/``gid`` (with that user's own
    groups), with ``env`` as its environment beside ``PATH`` and ``PYTHONPATH``."""
    argv = [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--init-groups",
        "--",
        str(SYSTEM_PYTHON),
        "-m",
        "invoke",
        *args,
    ]
    full = {"PATH": PATH, "PYTHONPATH": f"{site}:{project}", **env}
    return subprocess.run(argv, cwd=project, env=full, capture_output=True, text=True, timeout=timeout)
