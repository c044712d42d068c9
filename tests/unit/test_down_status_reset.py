"""``down``, ``status``, ``logs`` and ``reset`` against the in-memory runtime (tests/support/fake_runtime.py):
each state the sandbox can be in, what the runtime is asked, what is printed and what is left on disk.
No engine; a booted fake serves a real HTTP server on loopback."""

from __future__ import annotations

import builtins
import json
import sys

import pytest

from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes import ABSENT, RUNNING, STOPPED, probe
from openwork_sandbox.sandbox.down import down
from openwork_sandbox.sandbox.logs import logs
from openwork_sandbox.sandbox.reset import reset
from openwork_sandbox.sandbox.status import status
from openwork_sandbox.sandbox.up import up
from tests.support.fake_runtime import IMAGE, NAME, flow_settings

WS_ID = "ws_c52ddf65534b"


@pytest.fixture
def booted(fake_engine, tmp_path, capsys):
    """A sandbox `up` made (running, healthy), its settings and its fake; the output so far dropped."""
    settings = flow_settings(tmp_path)
    up(settings)
    capsys.readouterr()
    return settings, fake_engine.runtime_for("docker", settings)


def status_json(settings, capsys) -> tuple[int, dict]:
    code = status(settings, as_json=True)
    return code, json.loads(capsys.readouterr().out)


class Terminal:
    """A stdin that is a terminal (reset asks on it)."""

    def isatty(self) -> bool:
        return True


# --- down ---------------------------------------------------------------------------------------------------


def test_down_stops_a_running_sandbox_and_keeps_its_state(booted, capsys):
    settings, fake = booted
    down(settings)
    assert fake.actions()[-1] == "stop" and fake.state == STOPPED
    assert capsys.readouterr().err == f"✓ stopped fake-sb (docker); state kept in {settings.sandbox_state_dir}\n"
    assert (settings.sandbox_state_dir / "tokens.json").exists()


def test_down_of_a_stopped_sandbox_has_nothing_to_do(booted, capsys):
    settings, fake = booted
    fake.stop()
    down(settings)
    assert capsys.readouterr().err == "fake-sb (docker) is not running; nothing to stop\n"
    assert fake.state == STOPPED


def test_down_without_any_sandbox_of_that_name_has_nothing_to_do(fake_engine, tmp_path, capsys, monkeypatch):
    """Nothing recorded and no runtime set: both runtimes are asked, neither has it."""
    monkeypatch.setattr(probe, "docker_support", lambda timeout=15: (True, "Docker engine 0.0 answers"))
    settings = flow_settings(tmp_path, OPENWORK_MICROSANDBOX_RUNTIME="auto")
    down(settings)
    assert capsys.readouterr().err == "fake-sb: no sandbox of that name; nothing to stop\n"
    assert sorted(kind for kind, _ in fake_engine.fakes) == ["docker", "microsandbox"]
    assert all(fake.actions() == [] for fake in fake_engine.fakes.values())
    assert not settings.sandbox_state_dir.exists()


# --- status ---------------------------------------------------------------------------------------------------


def test_status_of_a_running_healthy_sandbox_is_0(booted, capsys):
    settings, _ = booted
    code, info = status_json(settings, capsys)
    assert code == 0
    assert {
        k: info[k]
        for k in (
            "name",
            "runtime",
            "state",
            "image",
            "platform",
            "url",
            "healthy",
            "server_version",
            "workspace_id",
            "settings_current",
            "state_dir",
            "supervisor",
        )
    } == {
        "name": NAME,
        "runtime": "docker",
        "state": "running",
        "image": IMAGE,
        "platform": "linux/fake",
        "url": f"http://127.0.0.1:{settings.port}",
        "healthy": True,
        "server_version": "0.0.0-fake",
        "workspace_id": WS_ID,
        "settings_current": True,
        "state_dir": str(settings.sandbox_state_dir),
        "supervisor": None,
    }
    assert info["uptime_seconds"] >= 0


def test_status_of_a_running_sandbox_that_does_not_answer_healthy_is_1(booted, capsys):
    settings, fake = booted
    fake.server.unhealthy = -1
    code, info = status_json(settings, capsys)
    assert code == 1 and info["state"] == "running" and info["healthy"] is False


def test_status_of_a_stopped_sandbox_is_1_and_asks_no_health(booted, capsys):
    settings, fake = booted
    fake.stop()
    code, info = status_json(settings, capsys)
    assert code == 1
    assert (info["state"], info["healthy"], info["uptime_seconds"], info["detail"]) == (
        "stopped",
        False,
        None,
        "exited (0)",
    )


def test_status_of_an_absent_sandbox_is_1(fake_engine, tmp_path, capsys):
    settings = flow_settings(tmp_path)
    code, info = status_json(settings, capsys)
    assert code == 1
    assert (info["state"], info["runtime"], info["image"], info["platform"], info["settings_current"]) == (
        "absent",
        "docker",
        None,
        None,
        None,
    )
    assert not settings.sandbox_state_dir.exists()  # status reads only


def test_status_says_when_the_settings_changed_since_the_sandbox_was_made(booted, tmp_path, capsys):
    settings, _ = booted
    changed = flow_settings(
        tmp_path, OPENWORK_MICROSANDBOX_PORT=str(settings.port), OPENWORK_MICROSANDBOX_MEMORY="1024"
    )
    assert status(changed) == 0
    said = capsys.readouterr().err
    assert said.startswith("✓ fake-sb: running\n")
    assert "settings changed since this sandbox was created: `invoke up` recreates it (state kept)" in said
    assert status(changed, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["settings_current"] is False


def test_status_of_a_server_in_a_crash_loop_is_1(booted, capsys):
    settings, _ = booted
    (settings.data_dir / "supervisor.json").write_text(
        json.dumps(
            {"restarts": 7, "crash_loop": True, "state": "backoff", "consecutive_failures": 5, "backoff_seconds": 30}
        )
    )
    assert status(settings) == 1
    said = capsys.readouterr().err
    assert said.startswith("✗ fake-sb: running\n")
    assert "CRASH LOOP: 5 starts in a row died before they stayed healthy; retrying every 30s; 7" in said
    assert "the server is in a crash loop: `invoke logs --tail 100` shows why it keeps dying" in said


# --- logs -------------------------------------------------------------------------------------------------------


def test_logs_prints_the_server_log_and_its_tail(booted, capsys):
    settings, fake = booted
    logs(settings)
    assert capsys.readouterr().out.splitlines() == fake.log
    logs(settings, tail="1", system=True)
    assert capsys.readouterr().out == "[fake] machine booted\n"
    assert ("stream_logs", (False, 1, None, True)) in fake.calls


# --- reset -------------------------------------------------------------------------------------------------------


def test_reset_with_yes_removes_the_sandbox_and_deletes_its_state_folder(booted, capsys):
    settings, fake = booted
    reset(settings, yes=True)
    assert fake.actions()[-2:] == ["remove", "remove_state"] and fake.state == ABSENT
    assert not settings.sandbox_state_dir.exists() and settings.state_dir.exists()
    assert capsys.readouterr().err == (
        f"✓ removed the docker sandbox fake-sb\n✓ deleted {settings.sandbox_state_dir}\n"
    )


def test_reset_empties_the_state_a_remote_runtime_keeps_before_the_folder_that_says_where(booted, capsys):
    settings, fake = booted
    fake.placed_at = "10.213.0.12"  # a swarm node: the volumes are there
    reset(settings, yes=True)
    assert fake.actions()[-2:] == ["remove", "remove_state"]
    assert "emptied the fake's volumes\n" in capsys.readouterr().err


def test_reset_without_yes_and_without_a_terminal_removes_nothing(booted, monkeypatch):
    settings, fake = booted
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(WorkflowError) as err:
        reset(settings)
    assert err.value.message == (
        f"reset would remove the sandbox fake-sb and delete {settings.sandbox_state_dir}: "
        "pass --yes to confirm (there is no terminal to ask on)"
    )
    assert fake.state == RUNNING and settings.sandbox_state_dir.exists()


@pytest.mark.parametrize("answer, removed", [("n", False), ("", False), ("yes", True)])
def test_reset_asks_on_a_terminal(booted, monkeypatch, capsys, answer, removed):
    settings, fake = booted
    asked = []
    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(builtins, "input", lambda question: asked.append(question) or answer)
    reset(settings)
    assert asked == [f"Remove the sandbox fake-sb and delete {settings.sandbox_state_dir}? [y/N] "]
    assert (fake.state == ABSENT) is removed and settings.sandbox_state_dir.exists() is not removed
    if not removed:
        assert capsys.readouterr().err == "nothing removed\n"


def test_reset_keep_data_removes_the_sandbox_and_keeps_its_folders(booted, capsys):
    settings, fake = booted
    tokens = (settings.sandbox_state_dir / "tokens.json").read_text()
    reset(settings, yes=True, keep_data=True)
    assert fake.state == ABSENT
    assert (settings.sandbox_state_dir / "tokens.json").read_text() == tokens
    kept = json.loads((settings.sandbox_state_dir / "sandbox.json").read_text())
    assert "fingerprint" not in kept and kept["runtime"] == "docker"  # what ran is forgotten, where it ran is not
    assert capsys.readouterr().err.endswith(f"state folders kept (--keep-data): {settings.sandbox_state_dir}\n")


def test_reset_refuses_a_state_folder_that_leads_outside_the_state_root(fake_engine, tmp_path):
    settings = flow_settings(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep me")
    settings.state_dir.mkdir(parents=True)
    settings.sandbox_state_dir.symlink_to(elsewhere)
    with pytest.raises(WorkflowError) as err:
        reset(settings, yes=True)
    assert err.value.message.startswith(f"reset refused: {settings.sandbox_state_dir} is a symlink (to {elsewhere})")
    assert (elsewhere / "precious").read_text() == "keep me"
    assert fake_engine.fakes == {}  # refused before any runtime was asked


def test_reset_keeps_folders_set_outside_the_state_folder(fake_engine, tmp_path, capsys):
    workspace = tmp_path / "my-project"
    settings = flow_settings(tmp_path, OPENWORK_MICROSANDBOX_WORKSPACE_DIR=str(workspace))
    up(settings)
    (workspace / "notes.txt").write_text("mine")
    reset(settings, yes=True)
    assert (workspace / "notes.txt").read_text() == "mine" and not settings.sandbox_state_dir.exists()
    assert (
        f"kept the workspace folder {workspace}: it is outside the state folder (delete it yourself)"
        in capsys.readouterr().err
    )


def test_reset_of_a_sandbox_that_is_gone_still_deletes_its_state(booted, capsys):
    settings, fake = booted
    fake.remove()
    reset(settings, yes=True)
    said = capsys.readouterr().err
    assert said.startswith("fake-sb: no docker sandbox to remove\n") and not settings.sandbox_state_dir.exists()
