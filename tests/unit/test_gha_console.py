"""GitHub Actions workflow commands (gha.py), the task boundary's annotation, progress off a TTY."""

from __future__ import annotations

import re
import time

import pytest
from invoke.exceptions import Exit

from openwork_sandbox.core import console, gha
from openwork_sandbox.core.boundary import task_boundary
from openwork_sandbox.core.errors import SettingsError, WorkflowError


@pytest.fixture
def actions(monkeypatch, tmp_path):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    for name in ("GITHUB_STEP_SUMMARY", "GITHUB_OUTPUT", "GITHUB_ENV"):
        (tmp_path / name).write_text("")
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setattr(gha, "_MASKED", set())
    return tmp_path


def test_annotation_escapes_its_title_and_keeps_the_lines_of_its_text(actions, capsys, monkeypatch):
    gha.annotate("smoke a:b,c", "request: GET /x\nstatus:  500")
    assert capsys.readouterr().err.splitlines() == ["::error title=smoke a%3Ab%2Cc::request: GET /x%0Astatus:  500"]
    monkeypatch.delenv("GITHUB_ACTIONS")
    gha.annotate("smoke", "x")
    assert capsys.readouterr().err == ""


def test_masks_once_per_value_and_only_under_actions(actions, capsys, monkeypatch):
    gha.mask("tok-1", None, "", "tok-1", "tok%2")
    assert capsys.readouterr().err.splitlines() == ["::add-mask::tok-1", "::add-mask::tok%252"]
    monkeypatch.delenv("GITHUB_ACTIONS")
    gha.mask("tok-3")
    assert capsys.readouterr().err == ""


def test_mask_settings_covers_tokens_and_the_registry_password(actions, capsys, tmp_path):
    from openwork_sandbox.config import load_settings
    from openwork_sandbox.state.store import mask_settings

    settings = load_settings(
        environ={
            "OPENWORK_TOKEN": "client-token-1234",
            "OPENWORK_HOST_TOKEN": "host-token-5678",
            "OPENWORK_REGISTRY_PASSWORD": "registry-pw-90",
        },
        env_file=None,
        root=tmp_path,
    )
    mask_settings(settings)
    assert set(capsys.readouterr().err.splitlines()) == {
        "::add-mask::client-token-1234",
        "::add-mask::host-token-5678",
        "::add-mask::registry-pw-90",
    }


def test_generated_tokens_are_masked_when_the_state_hands_them_out(actions, capsys, tmp_path):
    from openwork_sandbox.config import load_settings
    from openwork_sandbox.state.store import SandboxState

    settings = load_settings(environ={"OPENWORK_STATE_DIR": str(tmp_path / "state")}, root=tmp_path)
    token, host_token = SandboxState(settings).tokens()
    assert capsys.readouterr().err.splitlines() == [f"::add-mask::{token}", f"::add-mask::{host_token}"]


def test_a_failure_ends_with_one_error_annotation(actions, capsys):
    with pytest.raises(Exit) as caught:
        with task_boundary("build-image"):
            raise WorkflowError("docker build of x failed: COPY failed: no such file")
    assert caught.value.code == 1 and not caught.value.message
    assert capsys.readouterr().err.splitlines() == [
        "docker build of x failed: COPY failed: no such file",
        "::error title=build-image::docker build of x failed: COPY failed: no such file",
    ]

    with pytest.raises(Exit) as caught:
        with task_boundary("up"):
            raise SettingsError(["OPENWORK_A=1: bad", "OPENWORK_B=2: worse"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "::error title=up::OPENWORK_A=1: bad; OPENWORK_B=2: worse"

    with pytest.raises(Exit):
        with task_boundary("smoke"):
            exc = Exit(code=1)
            exc.reason = "the smoke checks failed"
            raise exc
    assert capsys.readouterr().err.splitlines() == ["::error title=smoke::the smoke checks failed"]


def test_outside_actions_the_boundary_is_unchanged(monkeypatch, capsys):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    with pytest.raises(Exit) as caught:
        with task_boundary("up"):
            raise WorkflowError("port 8787 is already in use")
    assert caught.value.message == "port 8787 is already in use" and caught.value.code == 1
    assert capsys.readouterr().err == ""


def test_export_writes_delimited_values_and_masks_first(actions, capsys):
    from openwork_sandbox.sandbox.endpoint import Endpoint

    ep = Endpoint("http://127.0.0.1:8787", "client-tok-abcdef", "host-tok-abcdef", "docker", "box", None)
    gha.export_sandbox(ep)
    err = capsys.readouterr().err
    assert err.index("::add-mask::client-tok-abcdef") < err.index("exported")
    out = (actions / "GITHUB_OUTPUT").read_text()
    assert re.fullmatch(r"(?:[\w-]+<<(ghadelimiter_[0-9a-f]{32})\n[^\n]*\n\1\n){4}", out), out
    assert "url<<" in out and "http://127.0.0.1:8787" in out and "client-tok" not in out
    assert "OPENWORK_TOKEN<<" in (actions / "GITHUB_ENV").read_text()


def test_export_outside_actions_is_refused(monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    assert "only under GitHub Actions" in gha.export_problem()


def test_summary_sections_are_appended(actions):
    gha.append_summary(
        gha.push_summary(
            {
                "image": "r/x:1",
                "digest": "sha256:" + "a" * 64,
                "pinned": "r/x@sha256:" + "a" * 64,
                "layers": 6,
                "layers_pushed": 1,
                "bytes_pushed": 1000,
                "image_bytes": 5000,
                "msb_pull_detail": "pulled in 1.0s",
                "seconds": 2.5,
            }
        )
    )
    gha.append_summary("### second\n")
    text = (actions / "GITHUB_STEP_SUMMARY").read_text()
    assert text.startswith("### OpenWork image pushed: `r/x:1`\n") and "| layers sent | 1 of 6 " in text
    assert text.endswith("### second\n")


def test_progress_off_a_tty_prints_plain_lines(monkeypatch, capsys):
    monkeypatch.setattr(console, "PLAIN_EVERY", 0.05)
    with console.Progress("opencode@1.17.11", 3000) as bar:  # capsys: not a TTY
        for _ in range(3):
            time.sleep(0.06)
            bar.advance(1000)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "opencode@1.17.11: started (3.0 kB)"
    assert any(re.match(r"opencode@1\.17\.11: 2\.0 kB of 3\.0 kB \(66%\)", ln) for ln in lines[1:-1]), lines
    assert lines[-1].startswith("opencode@1.17.11: done, 3.0 kB of 3.0 kB (100%)")


def test_heartbeat_fills_silences_only(capsys):
    with console.heartbeat(lambda: "waiting for http://127.0.0.1:1/health", every=0.3):
        time.sleep(1.5)
    silent = capsys.readouterr().err.splitlines()
    assert len(silent) >= 2 and all(
        re.fullmatch(r"… waiting for http://127\.0\.0\.1:1/health \(\d+s\)", ln) for ln in silent
    ), silent
    with console.heartbeat("quiet", every=0.5):
        for _ in range(8):
            console.info("busy")
            time.sleep(0.1)
    assert "quiet" not in capsys.readouterr().err
