"""Rules across settings, checked once every value is parsed: tokens that would hurt the sandbox,
folders that cannot work or would leak, and TLS settings that contradict each other. Each returns one line per problem, naming the settings and
where their values came from (``origins``: field -> origin; a field missing there is a default).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from openwork_sandbox.config.specs import SPEC_BY_FIELD

# upstream's example publishes these; anyone who read it can use a sandbox that keeps them
UPSTREAM_DEFAULT_TOKENS = ("microsandbox-token", "microsandbox-host-token")


def _from(origins: Mapping[str, str], field: str) -> str:
    return origins.get(field, "default")


def token_problems(
    token: str | None, host_token: str | None, allow_default: bool, origins: Mapping[str, str] | None = None
) -> list[str]:
    """The one rule for tokens that would hurt the sandbox: the client token equal to the host
    token (every client would be the owner), and upstream's published default tokens (unless
    ``OPENWORK_ALLOW_DEFAULT_TOKENS``). One line per problem; no token is shown."""
    origins = origins or {}
    problems = []
    if token and host_token and token == host_token:
        problems.append(
            f"OPENWORK_TOKEN and OPENWORK_HOST_TOKEN are the same token (from {_from(origins, 'token')} and "
            f"{_from(origins, 'host_token')}): every client would have the host's owner rights; give the "
            "client a token of its own, or unset OPENWORK_TOKEN to have one generated"
        )
    if not allow_default:
        for field, env, value in (
            ("token", "OPENWORK_TOKEN", token),
            ("host_token", "OPENWORK_HOST_TOKEN", host_token),
        ):
            if value in UPSTREAM_DEFAULT_TOKENS:
                problems.append(
                    f"{env} (from {_from(origins, field)}) is upstream's published default token "
                    f"{value!r}, which anyone can guess: unset it to have a strong one generated, or set "
                    "OPENWORK_ALLOW_DEFAULT_TOKENS=true to keep it anyway"
                )
    return problems


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _not_a_folder(path: Path) -> Path | None:
    """What keeps ``path`` from being made a folder: the first of it and its parents that exists and
    is not a folder, or is a dangling link; None when nothing does."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
        if candidate.is_symlink():  # exists() is false for a dangling link, and mkdir fails on it
            return candidate
    return None


def _reach_problems(values: Mapping[str, Any], origins: Mapping[str, str], project_root: Path, home: Path) -> list[str]:
    """A workspace or data folder (symlinks resolved) that is or contains ``/``, ``home``, the project
    folder or the state folder, or that lies inside the state folder anywhere but at its own place
    (``<state>/<name>/workspace`` or ``data``): the agent and every collaborator would read and change
    what the tool keeps there (every sandbox's tokens and backups, the project's ``.env``)."""
    state = Path(os.path.realpath(values["state_dir"]))
    protected = (
        ("the root folder /", Path("/")),
        (f"your home folder {home}", Path(os.path.realpath(home))),
        (f"the project folder {project_root}", Path(os.path.realpath(project_root))),
        (f"the state folder {values['state_dir']} (every sandbox's tokens and backups)", state),
    )
    problems = []
    for field, place in (("workspace_dir", "workspace"), ("data_dir", "data")):
        spec, folder = SPEC_BY_FIELD[field], Path(os.path.realpath(values[field]))
        said = f"{spec.env}={values[field]} (from {_from(origins, field)})"
        reached = [(label, path) for label, path in protected if _is_within(path, folder)]
        if reached:
            label, path = reached[0]
            problems.append(
                f"{said} {'is' if path == folder else 'contains'} {label}: the agent and every collaborator "
                f"could read and change all of it; point {spec.env} at a folder of its own"
            )
        elif _is_within(folder, state) and not _is_within(folder, state / values["name"] / place):
            problems.append(
                f"{said} is inside the state folder {values['state_dir']} but not at its own place "
                f"{Path(values['state_dir']) / values['name'] / place}: the agent and every collaborator could "
                f"read the tool's files there (tokens, backups, other sandboxes); unset {spec.env} or point it "
                "outside the state folder"
            )
    return problems


def folder_problems(
    values: Mapping[str, Any], origins: Mapping[str, str], *, project_root: Path, home: Path
) -> list[str]:
    """Folders that cannot work or would leak, over the absolute paths in ``values``: a workspace or
    data path that is (or is under) a file, except a default one under a state folder that is itself
    blocked (``doctor`` and ``up`` name ``OPENWORK_STATE_DIR`` for that); then, if both can be
    folders, one that reaches what the tool keeps (:func:`_reach_problems`: ``/``, ``home``,
    ``project_root``, the state folder); then a data folder equal to, inside or containing the
    workspace (the token store and opencode's database would be readable by the agent and every
    collaborator)."""
    problems = []
    state_blocked = _not_a_folder(Path(values["state_dir"])) is not None
    for field in ("workspace_dir", "data_dir"):
        spec = SPEC_BY_FIELD[field]
        blocker = _not_a_folder(Path(values[field]))
        if blocker is None or (state_blocked and field not in origins):
            continue
        what = (
            "is a file, not a folder" if blocker == Path(values[field]) else f"cannot be a folder: {blocker} is a file"
        )
        fresh = (  # the default place: `reset` deletes it with the state folder
            ""
            if field in origins
            else f", or `invoke reset --name {values['name']}` (deletes {Path(values['state_dir']) / values['name']})"
        )
        problems.append(
            f"{spec.env}={values[field]} (from {_from(origins, field)}) {what}; point {spec.env} at a "
            f"folder, or move the file away{fresh}"
        )
    if problems:
        return problems
    problems = _reach_problems(values, origins, project_root, home)
    if problems:  # a data folder inside such a workspace is one more sign of the same mistake
        return problems
    workspace, data = (Path(os.path.realpath(values[f])) for f in ("workspace_dir", "data_dir"))
    if _is_within(data, workspace) or _is_within(workspace, data):
        relation = (
            "is the workspace folder"
            if data == workspace
            else "is inside the workspace folder"
            if _is_within(data, workspace)
            else "contains the workspace folder"
        )
        problems.append(
            f"OPENWORK_MICROSANDBOX_DATA_DIR={values['data_dir']} (from {_from(origins, 'data_dir')}) "
            f"{relation} OPENWORK_MICROSANDBOX_WORKSPACE_DIR={values['workspace_dir']} (from "
            f"{_from(origins, 'workspace_dir')}): the token store and opencode's database would be readable "
            "by the agent and every collaborator; point the two settings at separate folders"
        )
    return problems


def tls_problems(values: Mapping[str, Any], origins: Mapping[str, str]) -> list[str]:
    """OPENWORK_TLS_CERT and OPENWORK_TLS_KEY come together or not at all, and not with
    OPENWORK_TLS=false (a certificate given and then not used is a mistake to say, not to guess
    about). Whether the files can be used is :mod:`openwork_sandbox.state.tls`'s to check, at ``up``."""
    cert, key = values["tls_cert"], values["tls_key"]
    if bool(cert) != bool(key):
        given, missing = ("tls_cert", "OPENWORK_TLS_KEY") if cert else ("tls_key", "OPENWORK_TLS_CERT")
        return [
            f"{SPEC_BY_FIELD[given].env} (from {_from(origins, given)}) is set without {missing}: give both "
            "(your certificate and its private key, PEM), or neither to have a certificate made for the sandbox"
        ]
    if cert and values["tls"] == "false":
        return [
            f"OPENWORK_TLS=false (from {_from(origins, 'tls')}) but OPENWORK_TLS_CERT and OPENWORK_TLS_KEY are set "
            f"(from {_from(origins, 'tls_cert')}): unset them, or set OPENWORK_TLS to auto or true to use them"
        ]
    return []
