"""Settings and state that would hurt a sandbox are refused: one line, exit 2, nothing changed.

Each case runs the real `invoke up` (and, for the state files, `invoke status` and `smoke`) in a
separate process, as a user would, and compares the whole of stderr with the expected line, then
checks that the state folder holds exactly what it held before (no folder made, no file replaced).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.support.lifecycle import invoke

NAME = "owtest-refuse"


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content's sha256 (folders as "dir")."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def refused(tmp_path: Path, *args: str, **env: str) -> str:
    """Run ``invoke ARGS`` with ``env``; assert exit 2 and exactly one line on stderr, return it."""
    (tmp_path / "empty.env").write_text("")  # the settings file `invoke` gets (written by the helper too)
    before = snapshot(tmp_path)
    proc = invoke(
        tmp_path, *args, timeout=120, OPENWORK_MICROSANDBOX_NAME=NAME, OPENWORK_MICROSANDBOX_RUNTIME="docker", **env
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert snapshot(tmp_path) == before, "a refused task changed the state folder"
    return lines[0]


def in_state(tmp_path: Path, filename: str, text: str) -> Path:
    """``state/<NAME>/<filename>`` holding ``text``, the folders made."""
    path = tmp_path / "state" / NAME / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_client_token_equal_to_host_token(tmp_path):
    same = "s" * 40
    line = refused(tmp_path, "up", OPENWORK_TOKEN=same, OPENWORK_HOST_TOKEN=same)
    assert line == (
        "OPENWORK_TOKEN and OPENWORK_HOST_TOKEN are the same token (from environment and environment): "
        "every client would have the host's owner rights; give the client a token of its own, or unset "
        "OPENWORK_TOKEN to have one generated"
    )
    assert same not in line


@pytest.mark.parametrize(
    "env, value", [("OPENWORK_TOKEN", "microsandbox-token"), ("OPENWORK_HOST_TOKEN", "microsandbox-host-token")]
)
def test_upstreams_published_default_tokens(tmp_path, env, value):
    line = refused(tmp_path, "up", **{env: value})
    assert line == (
        f"{env} (from environment) is upstream's published default token '{value}', which anyone can "
        "guess: unset it to have a strong one generated, or set OPENWORK_ALLOW_DEFAULT_TOKENS=true to keep "
        "it anyway"
    )


def test_default_tokens_are_accepted_when_allowed(tmp_path):
    from openwork_sandbox.config import load_settings

    env = {
        "OPENWORK_TOKEN": "microsandbox-token",
        "OPENWORK_HOST_TOKEN": "microsandbox-host-token",
        "OPENWORK_ALLOW_DEFAULT_TOKENS": "true",
    }
    settings = load_settings(environ=env, root=tmp_path)
    assert (settings.token, settings.host_token, settings.allow_default_tokens) == (
        "microsandbox-token",
        "microsandbox-host-token",
        True,
    )


def test_default_token_kept_by_hand_in_tokens_json_is_refused_too(tmp_path):
    kept = in_state(tmp_path, "tokens.json", '{"token": "microsandbox-token", "host_token": "%s"}\n' % ("h" * 43))
    line = refused(tmp_path, "up")
    assert line == (
        f"OPENWORK_TOKEN (from {kept}) is upstream's published default token "
        "'microsandbox-token', which anyone can guess: unset it to have a strong one generated, or set "
        "OPENWORK_ALLOW_DEFAULT_TOKENS=true to keep it anyway"
    )


@pytest.mark.parametrize(
    "relation", ["is the workspace folder", "is inside the workspace folder", "contains the workspace folder"]
)
def test_data_folder_and_workspace_must_be_apart(tmp_path, relation):
    workspace = tmp_path / "box" / "ws"
    data = {
        "is the workspace folder": workspace,
        "is inside the workspace folder": workspace / "data",
        "contains the workspace folder": workspace.parent,
    }[relation]
    line = refused(
        tmp_path, "up", OPENWORK_MICROSANDBOX_WORKSPACE_DIR=str(workspace), OPENWORK_MICROSANDBOX_DATA_DIR=str(data)
    )
    assert line == (
        f"OPENWORK_MICROSANDBOX_DATA_DIR={data} (from environment) {relation} "
        f"OPENWORK_MICROSANDBOX_WORKSPACE_DIR={workspace} (from environment): the token store and "
        "opencode's database would be readable by the agent and every collaborator; point the two "
        "settings at separate folders"
    )


def test_the_default_data_folder_inside_a_workspace_is_refused_too(tmp_path):
    """A workspace that holds .state/<name>/data (the default data folder) is refused too."""
    workspace = tmp_path / "state" / NAME
    line = refused(tmp_path, "up", OPENWORK_MICROSANDBOX_WORKSPACE_DIR=str(workspace))
    assert line == (
        f"OPENWORK_MICROSANDBOX_WORKSPACE_DIR={workspace} (from environment) is inside the state folder "
        f"{tmp_path / 'state'} but not at its own place {workspace / 'workspace'}: the agent and every "
        "collaborator could read the tool's files there (tokens, backups, other sandboxes); unset "
        "OPENWORK_MICROSANDBOX_WORKSPACE_DIR or point it outside the state folder"
    )


def test_a_workspace_set_to_the_state_folder_is_refused(tmp_path):
    workspace = tmp_path / "state"
    line = refused(tmp_path, "up", OPENWORK_MICROSANDBOX_WORKSPACE_DIR=str(workspace))
    assert line == (
        f"OPENWORK_MICROSANDBOX_WORKSPACE_DIR={workspace} (from environment) is the state folder {workspace} "
        "(every sandbox's tokens and backups): the agent and every collaborator could read and change all of "
        "it; point OPENWORK_MICROSANDBOX_WORKSPACE_DIR at a folder of its own"
    )


def test_a_workspace_set_to_the_project_folder_is_refused(tmp_path):
    """The project folder `invoke` runs in (this checkout): its .env, and .state/ by default."""
    from tests.support.paths import ROOT

    line = refused(tmp_path, "up", OPENWORK_MICROSANDBOX_WORKSPACE_DIR=str(ROOT))
    assert line == (
        f"OPENWORK_MICROSANDBOX_WORKSPACE_DIR={ROOT} (from environment) is the project folder {ROOT}: the "
        "agent and every collaborator could read and change all of it; point "
        "OPENWORK_MICROSANDBOX_WORKSPACE_DIR at a folder of its own"
    )


def test_a_data_folder_that_contains_the_home_folder_is_refused(tmp_path):
    home = tmp_path / "users" / "me"
    home.mkdir(parents=True)
    line = refused(tmp_path, "up", HOME=str(home), OPENWORK_MICROSANDBOX_DATA_DIR=str(home.parent))
    assert line == (
        f"OPENWORK_MICROSANDBOX_DATA_DIR={home.parent} (from environment) contains your home folder {home}: "
        "the agent and every collaborator could read and change all of it; point "
        "OPENWORK_MICROSANDBOX_DATA_DIR at a folder of its own"
    )


WS, DATA = "OPENWORK_MICROSANDBOX_WORKSPACE_DIR", "OPENWORK_MICROSANDBOX_DATA_DIR"


def reach_settings(tmp_path: Path, **env: str):
    """``load_settings`` with the state folder tmp/state, HOME tmp/home, the project tmp/project."""
    from openwork_sandbox.config import load_settings

    for folder in ("home", "project", "state"):
        (tmp_path / folder).mkdir(exist_ok=True)
    (tmp_path / "empty.env").write_text("")
    environ = {"OPENWORK_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path / "home"), **env}
    return load_settings(environ=environ, env_file=tmp_path / "empty.env", root=tmp_path / "project")


@pytest.mark.parametrize("setting", [WS, DATA])
@pytest.mark.parametrize(
    "where, relation, what",
    [
        ("/", "is", "the root folder /"),
        ("home", "is", "your home folder {tmp}/home"),
        ("project", "is", "the project folder {tmp}/project"),
        ("state", "is", "the state folder {tmp}/state (every sandbox's tokens and backups)"),
        ("", "contains", "your home folder {tmp}/home"),  # tmp itself: home comes first of what it holds
    ],
)
def test_a_folder_that_is_or_contains_what_the_tool_keeps_is_refused(tmp_path, setting, where, relation, what):
    from openwork_sandbox.core.errors import SettingsError

    value = "/" if where == "/" else str(tmp_path / where) if where else str(tmp_path)
    with pytest.raises(SettingsError) as info:
        reach_settings(tmp_path, **{setting: value})
    assert info.value.problems == [
        f"{setting}={value} (from environment) {relation} {what.format(tmp=tmp_path)}: the agent and every "
        f"collaborator could read and change all of it; point {setting} at a folder of its own"
    ]


def test_a_link_to_the_home_folder_is_seen_through(tmp_path):
    from openwork_sandbox.core.errors import SettingsError

    link = tmp_path / "looks-harmless"
    (tmp_path / "home").mkdir()
    link.symlink_to(tmp_path / "home")
    with pytest.raises(SettingsError) as info:
        reach_settings(tmp_path, **{WS: str(link)})
    assert info.value.problems == [
        f"{WS}={link} (from environment) is your home folder {tmp_path / 'home'}: the agent and every "
        f"collaborator could read and change all of it; point {WS} at a folder of its own"
    ]


@pytest.mark.parametrize("inside", ["backups", "other-sandbox/data", NAME, f"{NAME}/sandbox-secrets", f"{NAME}/data"])
def test_a_workspace_inside_the_state_folder_but_not_its_own_is_refused(tmp_path, inside):
    from openwork_sandbox.core.errors import SettingsError

    value = tmp_path / "state" / inside
    with pytest.raises(SettingsError) as info:
        reach_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=NAME, **{WS: str(value)})
    assert info.value.problems == [
        f"{WS}={value} (from environment) is inside the state folder {tmp_path / 'state'} but not at its own "
        f"place {tmp_path / 'state' / NAME / 'workspace'}: the agent and every collaborator could read the "
        f"tool's files there (tokens, backups, other sandboxes); unset {WS} or point it outside the state folder"
    ]


def test_folders_of_their_own_beside_what_the_tool_keeps_are_accepted(tmp_path):
    """The defaults, and folders next to (not over) home, project and state: no problem."""
    reach_settings(tmp_path)
    settings = reach_settings(
        tmp_path, **{WS: str(tmp_path / "home" / "code" / "ws"), DATA: str(tmp_path / "sandbox-data")}
    )
    assert settings.workspace_dir == tmp_path / "home" / "code" / "ws"
    reach_settings(
        tmp_path, OPENWORK_MICROSANDBOX_NAME=NAME, **{WS: str(tmp_path / "state" / NAME / "workspace" / "sub")}
    )


def test_a_symlinked_data_folder_into_the_workspace_is_seen_through(tmp_path):
    workspace = tmp_path / "ws"
    (workspace / "inner").mkdir(parents=True)
    link = tmp_path / "data-link"
    link.symlink_to(workspace / "inner")
    line = refused(
        tmp_path, "up", OPENWORK_MICROSANDBOX_WORKSPACE_DIR=str(workspace), OPENWORK_MICROSANDBOX_DATA_DIR=str(link)
    )
    assert line.startswith(f"OPENWORK_MICROSANDBOX_DATA_DIR={link} (from environment) is inside the workspace folder")


@pytest.mark.parametrize("setting", ["OPENWORK_MICROSANDBOX_WORKSPACE_DIR", "OPENWORK_MICROSANDBOX_DATA_DIR"])
def test_a_folder_setting_that_is_a_file_names_that_setting(tmp_path, setting):
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    line = refused(tmp_path, "up", **{setting: str(a_file)})
    assert line == (
        f"{setting}={a_file} (from environment) is a file, not a folder; point {setting} at a folder, or "
        "move the file away"
    )


def test_a_default_workspace_that_is_a_file_names_the_workspace_setting(tmp_path):
    workspace = in_state(tmp_path, "workspace", "x")
    line = refused(tmp_path, "up")
    assert line == (
        f"OPENWORK_MICROSANDBOX_WORKSPACE_DIR={workspace} (from default) is a file, not a "
        "folder; point OPENWORK_MICROSANDBOX_WORKSPACE_DIR at a folder, or move the file away, or "
        f"`invoke reset --name {NAME}` (deletes {tmp_path / 'state' / NAME})"
    )
    assert "OPENWORK_STATE_DIR" not in line


def test_a_folder_below_a_file_names_the_file(tmp_path):
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    line = refused(tmp_path, "up", OPENWORK_MICROSANDBOX_DATA_DIR=str(a_file / "data"))
    assert line == (
        f"OPENWORK_MICROSANDBOX_DATA_DIR={a_file / 'data'} (from environment) cannot be a folder: {a_file} "
        "is a file; point OPENWORK_MICROSANDBOX_DATA_DIR at a folder, or move the file away"
    )


TOKENS_WAYS_OUT = (
    "move it aside (`mv {p} {p}.broken`) to have new tokens generated (clients configured with the old "
    "ones then need the new ones), or `invoke reset`"
)
RECORD_WAYS_OUT = "move it aside (`mv {p} {p}.broken`; the next `invoke up` writes a new one), or `invoke reset`"


@pytest.mark.parametrize("task", ["up", "status", "smoke"])
def test_a_tokens_json_that_does_not_parse_is_kept_and_named(tmp_path, task):
    broken = in_state(
        tmp_path, "tokens.json", '{"token": "abc", "host_token": \n'
    )  # cut short, as a full disk leaves it
    line = refused(tmp_path, task)
    assert line == (
        f"{broken} does not parse (Expecting value at line 2 column 1); it is kept as it is: fix it, or "
        + TOKENS_WAYS_OUT.format(p=broken)
    )
    assert broken.read_text() == '{"token": "abc", "host_token": \n'


def test_a_tokens_json_that_is_not_an_object_is_refused(tmp_path):
    kept = in_state(tmp_path, "tokens.json", '["a", "b"]\n')
    line = refused(tmp_path, "up")
    assert line == (
        f"{kept} does not parse (a JSON list, not an object); it is kept as it is: fix it, "
        "or " + TOKENS_WAYS_OUT.format(p=kept)
    )


@pytest.mark.parametrize("task", ["up", "status", "down"])
def test_a_sandbox_json_that_does_not_parse_is_kept_and_named(tmp_path, task):
    record = in_state(tmp_path, "sandbox.json", "{not json")
    line = refused(tmp_path, task)
    assert line == (
        f"{record} does not parse (Expecting property name enclosed in double quotes at line 1 column 2); "
        "it is kept as it is: fix it, or " + RECORD_WAYS_OUT.format(p=record)
    )
    assert record.read_text() == "{not json"


def test_reset_is_a_way_out_of_a_broken_record(tmp_path):
    state = in_state(tmp_path, "sandbox.json", "{not json").parent
    proc = invoke(
        tmp_path, "reset", "--yes", timeout=120, OPENWORK_MICROSANDBOX_NAME=NAME, OPENWORK_MICROSANDBOX_RUNTIME="docker"
    )
    assert proc.returncode == 0, proc.stderr
    assert not state.exists()


def test_moving_the_broken_tokens_aside_gives_new_tokens(tmp_path):
    """The other way out: with the file moved aside, new tokens are generated (and the old file stays)."""
    from openwork_sandbox.config import load_settings
    from openwork_sandbox.state.store import SandboxState

    state_dir = tmp_path / "state"
    (state_dir / NAME).mkdir(parents=True)
    broken = state_dir / NAME / "tokens.json"
    broken.write_text("{")
    settings = load_settings(
        environ={"OPENWORK_STATE_DIR": str(state_dir), "OPENWORK_MICROSANDBOX_NAME": NAME}, root=tmp_path
    )
    os.rename(broken, str(broken) + ".broken")
    token, host_token = SandboxState(settings).tokens()
    assert token and host_token and token != host_token
    assert Path(str(broken) + ".broken").read_text() == "{"


@pytest.mark.parametrize("name", ["OPENWORK_TOKEN", "OPENWORK_HOST_TOKEN"])
def test_a_token_http_headers_cannot_carry_is_refused_before_anything_is_made(tmp_path, name):
    secret = "Ünïcode-token-" + "x" * 30
    line = refused(tmp_path, "up", **{name: secret})
    assert line == (
        f'{name}="Ünïc…(44 chars)" (from environment): contains a character HTTP headers cannot carry '
        "(non-ASCII or a control character): use ASCII letters, digits and punctuation only"
    )


@pytest.mark.parametrize("memory", ["256", "383"])
def test_memory_below_the_least_a_sandbox_starts_in_is_refused_when_read(tmp_path, memory):
    line = refused(tmp_path, "up", OPENWORK_MICROSANDBOX_MEMORY=memory)
    assert line == (
        f'OPENWORK_MICROSANDBOX_MEMORY="{memory}" (from environment): is below 384 MiB, the least a sandbox starts '
        "in (the kernel kills opencode for lack of memory at every start): set 384 or more, e.g. 2048"
    )
