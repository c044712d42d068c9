"""The state folder: tokens, record, lock, fingerprint, and the safe-delete rules of `reset`."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.state.store import SandboxState, deletion_problem, safe_remove
from tests.support.lifecycle import make_settings, unique_name
from tests.support.paths import ROOT

UPSTREAM_FIXED_TOKENS = {"microsandbox-token", "microsandbox-host-token", "openwork-token", "owt_dev", "dev-token"}


def test_tokens_are_generated_once_private_and_reused(tmp_path):
    settings = make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=unique_name())
    state = SandboxState(settings)
    token, host_token = state.tokens()
    assert token != host_token
    assert len(token) >= 40 and len(host_token) >= 40
    assert not {token, host_token} & UPSTREAM_FIXED_TOKENS
    mode = stat.S_IMODE(state.tokens_path.stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert stat.S_IMODE(state.dir.stat().st_mode) == 0o700
    # a later process (a fresh SandboxState) gets the same tokens
    assert SandboxState(make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=settings.name)).tokens() == (
        token,
        host_token,
    )
    # another sandbox gets its own
    other = SandboxState(make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=unique_name())).tokens()
    assert other[0] != token and other[1] != host_token


def test_tokens_from_settings_win_and_are_not_stored(tmp_path):
    settings = make_settings(
        tmp_path, OPENWORK_MICROSANDBOX_NAME=unique_name(), OPENWORK_TOKEN="a" * 30, OPENWORK_HOST_TOKEN="b" * 30
    )
    state = SandboxState(settings)
    assert state.tokens() == ("a" * 30, "b" * 30)
    assert not state.tokens_path.exists()


def test_tokens_without_create_do_not_invent_any(tmp_path):
    state = SandboxState(make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=unique_name()))
    assert state.tokens(create=False) == (None, None)
    assert not state.dir.exists()


def test_fingerprint_follows_image_and_settings_not_order(tmp_path):
    from openwork_sandbox.sandbox.launch import launch_spec

    name = unique_name()
    base = launch_spec(make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=name), "docker", "t" * 40, "h" * 40)
    same = launch_spec(make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=name), "docker", "t" * 40, "h" * 40)
    assert base.fingerprint == same.fingerprint
    changes = [
        (dict(OPENWORK_MICROSANDBOX_IMAGE="127.0.0.1:5000/other:1"), "docker", "t" * 40),
        (dict(OPENWORK_MICROSANDBOX_PORT="18999"), "docker", "t" * 40),
        (dict(OPENWORK_MICROSANDBOX_MEMORY="1024"), "docker", "t" * 40),
        (dict(OPENWORK_APPROVAL_MODE="manual"), "docker", "t" * 40),
        ({}, "microsandbox", "t" * 40),
        ({}, "docker", "u" * 40),
    ]
    for env, kind, token in changes:
        spec = launch_spec(make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=name, **env), kind, token, "h" * 40)
        assert spec.fingerprint != base.fingerprint, (env, kind)
    assert "t" * 40 not in repr(base)  # the spec never shows its tokens


def test_record_merges_and_drops_keys(tmp_path):
    state = SandboxState(make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=unique_name()))
    state.save_record(runtime="docker", job_id="job_1")
    state.save_record(image="x", job_id=None)
    assert state.record() == {"runtime": "docker", "image": "x"}
    assert stat.S_IMODE(state.record_path.stat().st_mode) == 0o600


LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from tests.support.lifecycle import make_settings
    from pathlib import Path
    from openwork_sandbox.state.store import SandboxState
    state = SandboxState(make_settings(Path(sys.argv[2]), OPENWORK_MICROSANDBOX_NAME=sys.argv[3]))
    with state.lock(action="up"):
        print("locked", flush=True)
        time.sleep(float(sys.argv[4]))
""")


def test_lock_second_up_for_one_name_waits_then_fails_clearly(tmp_path):
    name = unique_name()
    root = ROOT
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(root), str(tmp_path), name, "30"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        state = SandboxState(make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=name))
        with pytest.raises(WorkflowError) as err:
            with state.lock(wait=0.3, action="up"):
                pytest.fail("got a lock another process holds")
        assert f"pid {holder.pid}" in err.value.message and name in err.value.message
        # a different name is not blocked
        with SandboxState(make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=unique_name())).lock(wait=0.3):
            pass
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its process: now it is free
    with state.lock(wait=2):
        pass


def test_lock_waits_for_a_short_holder(tmp_path):
    name = unique_name()
    root = ROOT
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(root), str(tmp_path), name, "0.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        state = SandboxState(make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=name))
        with state.lock(wait=20):  # raises if it gave up instead of waiting
            assert f"pid {os.getpid()}" in (state.dir / "lock").read_text()
    finally:
        holder.kill()
        holder.wait()


# --- reset's safe-delete rules ---------------------------------------------------------------------


def test_safe_remove_deletes_inside_and_never_follows_symlinks_out(tmp_path):
    state_root = tmp_path / "state"
    target = state_root / "box"
    (target / "workspace" / "sub").mkdir(parents=True)
    (target / "workspace" / "sub" / "f.txt").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (target / "workspace" / "link-to-dir").symlink_to(outside)
    (target / "workspace" / "link-to-file").symlink_to(outside / "keep.txt")
    assert safe_remove(target, state_root, tmp_path / "project")
    assert not target.exists()
    assert (outside / "keep.txt").read_text() == "keep"
    assert state_root.is_dir()  # only the sandbox's folder goes
    assert safe_remove(target, state_root, tmp_path / "project") is False  # nothing left: nothing to do


@pytest.mark.parametrize("case", ["root", "home", "project"])
def test_reset_refuses_state_folder_resolving_to_protected_places(tmp_path, case):
    project = tmp_path / "project"
    project.mkdir()
    state_root = {"root": Path("/"), "home": Path.home(), "project": project}[case]
    problem = deletion_problem(state_root / "openwork-microsandbox", state_root, project)
    assert problem and "resolves to" in problem


def test_reset_refuses_a_state_folder_that_is_a_symlink_to_a_protected_place(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    link = tmp_path / "state-link"
    link.symlink_to(project)
    assert "the project root" in deletion_problem(link / "box", link, project)


def test_reset_refuses_a_sandbox_folder_that_is_a_symlink(tmp_path):
    state_root = tmp_path / "state"
    state_root.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("x")
    (state_root / "box").symlink_to(victim)
    with pytest.raises(WorkflowError) as err:
        safe_remove(state_root / "box", state_root, tmp_path / "project")
    assert "symlink" in err.value.message
    assert (victim / "precious").exists() and (state_root / "box").is_symlink()


def test_reset_refuses_a_folder_that_contains_home_or_escapes(tmp_path):
    home = Path.home().resolve()
    assert deletion_problem(home.parent, home.parent.parent, tmp_path) is not None  # contains home
    assert "outside the state folder" in deletion_problem(
        tmp_path / "state" / ".." / "x", tmp_path / "state", tmp_path / "p"
    )


def test_reset_task_refuses_dangerous_state_dir_and_deletes_nothing(tmp_path):
    """Through `reset`: OPENWORK_STATE_DIR pointing at the project root is refused."""
    from openwork_sandbox.sandbox.reset import reset

    project = tmp_path / "project"
    project.mkdir()
    name = unique_name()
    settings = make_settings(
        tmp_path,
        OPENWORK_STATE_DIR=str(project),
        OPENWORK_MICROSANDBOX_NAME=name,
        OPENWORK_MICROSANDBOX_RUNTIME="docker",
    )
    (project / name).mkdir()
    (project / name / "file").write_text("x")
    with pytest.raises(WorkflowError) as err:
        reset(settings, yes=True)
    assert "refused" in err.value.message and "project root" in err.value.message
    assert (project / name / "file").exists()


def test_reset_without_yes_and_without_terminal_asks_for_yes(tmp_path):
    from openwork_sandbox.sandbox.reset import reset

    settings = make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME=unique_name(), OPENWORK_MICROSANDBOX_RUNTIME="docker")
    SandboxState(settings).ensure()
    with pytest.raises(WorkflowError) as err:
        reset(settings, yes=False)  # pytest's stdin is not a terminal
    assert "--yes" in err.value.message
    assert settings.sandbox_state_dir.exists()
