"""``up`` driven end to end against the in-memory runtime (tests/support/fake_runtime.py): one test per
row of ``decide_up``'s table, the start watch's ways out, and what ``up`` leaves behind (what the
runtime was asked, ``.state/<name>/sandbox.json``, what it prints). No engine; the fake's server is a
real HTTP server on loopback; the start watch's pacing is shortened to milliseconds."""

from __future__ import annotations

import json
import os
import socket

import pytest

from openwork_sandbox.core.errors import UnreachableError, WorkflowError
from openwork_sandbox.runtimes import ABSENT, RUNNING, STOPPED
from openwork_sandbox.sandbox.up import up
from openwork_sandbox.state.store import SandboxState
from tests.support.fake_runtime import IMAGE, NAME, FakeOpenWork, flow_settings

WS_ID = "ws_c52ddf65534b"  # the contract's id of the workspace at /workspace
LEFT = "(the sandbox is left as it is for inspection; `invoke reset` removes it)"


def docker_fake(fake_engine, settings):
    return fake_engine.runtime_for("docker", settings)


def up_json(settings, capsys, **kw) -> dict:
    """`up --json`: its one JSON object from stdout, and what it said on stderr under "stderr"."""
    capsys.readouterr()
    up(settings, as_json=True, **kw)
    out = capsys.readouterr()
    return {**json.loads(out.out), "stderr": out.err}


def record(settings) -> dict:
    return json.loads((settings.sandbox_state_dir / "sandbox.json").read_text())


def tokens(settings) -> dict:
    return json.loads((settings.sandbox_state_dir / "tokens.json").read_text())


# --- the decision table, one row each -------------------------------------------------------------------


def test_create_boots_a_new_sandbox_records_it_and_reports_it(fake_engine, tmp_path, capsys):
    settings = flow_settings(tmp_path)
    done = up_json(settings, capsys)
    fake = docker_fake(fake_engine, settings)
    assert fake.actions() == ["create", "keep_running"]
    spec = fake.calls[[name for name, _ in fake.calls].index("create")][1][0]
    assert (spec.name, spec.image, spec.host_port, spec.bind_address) == (NAME, IMAGE, settings.port, "127.0.0.1")
    assert spec.env["HOME"] == "/data/home"
    url = f"http://127.0.0.1:{settings.port}"
    kept = tokens(settings)
    # the tokens are files in the server's read-only mount, named by path; no value is in the environment
    assert spec.env["OPENWORK_TOKEN_FILE"] == "/srv/openwork/secrets/openwork-token"
    assert spec.env["OPENWORK_HOST_TOKEN_FILE"] == "/srv/openwork/secrets/openwork-host-token"
    assert not {v for v in spec.env.values() if kept["token"] in v or kept["host_token"] in v}
    secrets_dir = spec.readonly_mounts["/srv/openwork/secrets"]
    assert secrets_dir == settings.sandbox_state_dir / "server-secrets"
    assert (secrets_dir / "openwork-token").read_text() == kept["token"] + "\n"
    assert (secrets_dir / "openwork-host-token").read_text() == kept["host_token"] + "\n"
    for private in (secrets_dir, secrets_dir / "openwork-token", spec.mounts["/srv/openwork/store"]):
        assert private.stat().st_mode & 0o077 == 0, private
    assert {k: done[k] for k in ("name", "runtime", "action", "url", "workspace_id", "image", "server_version")} == {
        "name": NAME,
        "runtime": "docker",
        "action": "created",
        "url": url,
        "workspace_id": WS_ID,
        "image": IMAGE,
        "server_version": "0.0.0-fake",
    }
    assert done["token"] == f"{kept['token'][:4]}…({len(kept['token'])} chars)"  # masked
    assert kept["token"] not in done["stderr"] and kept["host_token"] not in json.dumps(done)
    assert done["state_dir"] == str(tmp_path / "state" / NAME)
    saved = record(settings)
    assert {k: saved[k] for k in ("runtime", "image", "port", "url", "workspace_id")} == {
        "runtime": "docker",
        "image": IMAGE,
        "port": settings.port,
        "url": url,
        "workspace_id": WS_ID,
    }
    assert saved["fingerprint"] == spec.fingerprint and saved["healthy_at"] >= saved["created_at"]
    assert oct(os.stat(settings.sandbox_state_dir / "tokens.json").st_mode & 0o777) == "0o600"
    # the /workspaces check: refused without the client token, answered with it
    asked = [(path, bearer) for _, path, bearer in fake.server.requests if path == "/workspaces"]
    assert asked == [("/workspaces", None), ("/workspaces", kept["token"])]
    assert "no sandbox fake-sb in docker" not in done["stderr"]  # create is one of the quiet actions


def test_reuse_asks_the_runtime_nothing_more(fake_engine, tmp_path, capsys):
    settings = flow_settings(tmp_path)
    up(settings)
    fake = docker_fake(fake_engine, settings)
    before = fake.actions()
    done = up_json(settings, capsys)
    assert done["action"] == "reused" and done["workspace_id"] == WS_ID
    assert "already running and healthy with the same image and settings: nothing to do" in done["stderr"]
    assert fake.actions() == before + ["keep_running"]


def test_start_starts_a_stopped_sandbox(fake_engine, tmp_path, capsys):
    settings = flow_settings(tmp_path)
    up(settings)
    fake = docker_fake(fake_engine, settings)
    assert fake.stop() is True
    done = up_json(settings, capsys)
    assert done["action"] == "started"
    assert "fake-sb is stopped: starting it" in done["stderr"]
    assert fake.actions()[-2:] == ["start", "keep_running"] and fake.actions().count("create") == 1
    assert fake.state == RUNNING


def test_relaunch_starts_the_server_of_a_running_sandbox_again(fake_engine, tmp_path, capsys):
    settings = flow_settings(tmp_path)
    up(settings)
    fake = docker_fake(fake_engine, settings)
    fake.server_dies()
    done = up_json(settings, capsys)
    assert done["action"] == "relaunched"
    assert "fake-sb runs but its server does not (running, server job exited): relaunching the server" in done["stderr"]
    assert fake.actions()[-2:] == ["start", "keep_running"]


def test_recreate_with_replace_keeps_the_state_folder_and_its_tokens(fake_engine, tmp_path, capsys):
    settings = flow_settings(tmp_path)
    up(settings)
    kept = tokens(settings)
    done = up_json(
        flow_settings(tmp_path, OPENWORK_MICROSANDBOX_PORT=str(settings.port), OPENWORK_MICROSANDBOX_REPLACE="true"),
        capsys,
    )
    fake = docker_fake(fake_engine, settings)
    assert done["action"] == "recreated"
    assert "replacing fake-sb (--replace); state folders are kept" in done["stderr"]
    assert fake.actions() == ["create", "keep_running", "remove", "create", "keep_running"]
    assert tokens(settings) == kept  # the same tokens: clients keep working


def test_recreate_when_the_settings_changed(fake_engine, tmp_path, capsys):
    """The running sandbox holds the port itself: a recreate does not count it as taken."""
    settings = flow_settings(tmp_path)
    up(settings)
    first = record(settings)["fingerprint"]
    changed = flow_settings(tmp_path, OPENWORK_MICROSANDBOX_PORT=str(settings.port), OPENWORK_MICROSANDBOX_CPUS="1")
    done = up_json(changed, capsys)
    fake = docker_fake(fake_engine, settings)
    assert done["action"] == "recreated"
    assert (
        "fake-sb was created with another image or settings: recreating it so the change takes effect "
        "(state folders kept)"
    ) in done["stderr"]
    assert fake.actions()[-3:] == ["remove", "create", "keep_running"]
    assert fake.spec.cpus == 1 and record(settings)["fingerprint"] == fake.spec.fingerprint != first


def test_recreate_names_the_secret_setting_that_changed(fake_engine, tmp_path, capsys):
    settings = flow_settings(tmp_path, OPENWORK_SANDBOX_ENV="FAKE_KEY", FAKE_KEY="one")
    up(settings)
    again = flow_settings(
        tmp_path, OPENWORK_MICROSANDBOX_PORT=str(settings.port), OPENWORK_SANDBOX_ENV="FAKE_KEY", FAKE_KEY="two"
    )
    done = up_json(again, capsys)
    assert done["action"] == "recreated"
    assert "fake-sb was created with another OPENWORK_SANDBOX_ENV (names or values): recreating it" in done["stderr"]
    assert "two" not in json.dumps(
        docker_fake(fake_engine, settings).spec.env
    )  # delivered as a file, not the environment


def test_wait_waits_for_a_server_that_is_still_starting(fake_engine, tmp_path, capsys):
    settings = flow_settings(tmp_path)
    up(settings)
    fake = docker_fake(fake_engine, settings)
    fake.server.unhealthy = 3  # `up`'s one probe and the first polls get 503
    done = up_json(settings, capsys)
    assert done["action"] == "waited"
    assert "waiting for it" not in done["stderr"]  # wait is one of the quiet actions
    assert fake.actions()[-1:] == ["keep_running"] and fake.actions().count("create") == 1
    assert fake.server.unhealthy == 0


def test_a_sandbox_under_the_old_runtime_is_removed_first_and_may_hold_the_port(fake_engine, tmp_path, capsys):
    settings = flow_settings(tmp_path)
    old = fake_engine.runtime_for("microsandbox", settings)
    old.state, old.home = RUNNING, "/data/home"
    old.server = FakeOpenWork("127.0.0.1", settings.port, "t" * 32)  # the old sandbox holds the port
    SandboxState(settings).save_record(runtime="microsandbox")
    done = up_json(settings, capsys)
    assert done["action"] == "created" and done["runtime"] == "docker"
    assert old.actions() == ["remove"] and old.state == ABSENT
    assert docker_fake(fake_engine, settings).actions() == ["create", "keep_running"]
    assert "removed the microsandbox sandbox fake-sb (runtime changed to docker; state kept)" in done["stderr"]
    assert record(settings)["runtime"] == "docker"


def test_a_port_taken_by_another_program_fails_before_anything_is_made(fake_engine, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        settings = flow_settings(tmp_path, OPENWORK_MICROSANDBOX_PORT=str(port))
        with pytest.raises(WorkflowError) as err:
            up(settings)
    assert err.value.message.startswith(f"port {port} is already in use by ")
    assert f"(pid {os.getpid()})" in err.value.message
    assert docker_fake(fake_engine, settings).actions() == []
    assert not (tmp_path / "state").exists()


def test_a_port_taken_while_the_sandbox_was_stopped_fails_before_it_is_started(fake_engine, tmp_path):
    settings = flow_settings(tmp_path)
    up(settings)
    fake = docker_fake(fake_engine, settings)
    fake.stop()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", settings.port))
        sock.listen()
        with pytest.raises(WorkflowError) as err:
            up(settings)
    assert f"port {settings.port} is already in use by " in err.value.message
    assert fake.actions()[-1] == "stop" and fake.state == STOPPED


# --- the start watch's ways out ----------------------------------------------------------------------------


def test_a_stalled_start_is_restarted(fake_engine, tmp_path, capsys):
    settings = flow_settings(tmp_path)
    docker_fake(fake_engine, settings).boots = ["stall", "healthy"]
    done = up_json(settings, capsys)
    assert done["action"] == "created"
    assert (
        "the server made no progress for 0s (last line: [opencode] opencode server listening); restarting it, "
        "start 2 of 3"
    ) in done["stderr"]
    assert docker_fake(fake_engine, settings).actions() == ["create", "restart_server", "keep_running"]


def test_a_start_that_prints_nothing_is_not_restarted_but_runs_into_the_deadline(fake_engine, tmp_path, capsys):
    settings = flow_settings(tmp_path, OPENWORK_HEALTH_TIMEOUT="0.6")  # longer than the stall limit (0.4 s)
    docker_fake(fake_engine, settings).boots = ["silent"]
    with pytest.raises(WorkflowError) as err:
        up(settings)
    assert "not healthy within 0.6s (connection refused" in err.value.message and err.value.message.endswith(LEFT)
    assert docker_fake(fake_engine, settings).actions() == ["create"]
    assert "made no progress" not in capsys.readouterr().err


def test_a_server_that_dies_early_is_started_again(fake_engine, tmp_path, capsys):
    settings = flow_settings(tmp_path)
    docker_fake(fake_engine, settings).boots = ["die", "healthy"]
    done = up_json(settings, capsys)
    assert (
        "the server exited during start-up (last line: [openwork-orchestrator] ERROR Run failed); start 2 of 3"
        in done["stderr"]
    )
    assert docker_fake(fake_engine, settings).actions() == ["create", "restart_server", "keep_running"]


def test_a_machine_fault_boots_the_machine_again(fake_engine, tmp_path, capsys):
    settings = flow_settings(tmp_path)
    docker_fake(fake_engine, settings).boots = ["machine_fault", "healthy"]
    done = up_json(settings, capsys)
    assert (
        "the fake machine itself stopped (KVM_EXIT_SHUTDOWN) during start-up; starting it again, start 2 of 3"
        in done["stderr"]
    )
    assert done["action"] == "created"


def test_a_server_that_dies_at_every_start_ends_up_with_its_log_and_is_left_for_inspection(
    fake_engine, tmp_path, capsys
):
    settings = flow_settings(tmp_path)
    fake = docker_fake(fake_engine, settings)
    fake.boots = ["die", "die", "die"]
    with pytest.raises(WorkflowError) as err:
        up(settings)
    assert err.value.message.startswith("the server stopped before http://127.0.0.1:")
    assert err.value.message.endswith(LEFT)
    assert fake.actions() == ["create", "restart_server", "restart_server"]  # three starts in all, nothing removed
    assert "ERROR Run failed" in capsys.readouterr().err  # the log's tail
    assert record(settings)["runtime"] == "docker"  # status, logs and reset find it


def test_no_avx_ends_at_once_in_one_line(fake_engine, tmp_path):
    settings = flow_settings(tmp_path)
    fake = docker_fake(fake_engine, settings)
    fake.boots = ["no_avx"]
    with pytest.raises(WorkflowError) as err:
        up(settings)
    assert err.value.message == (
        "this CPU has no AVX: openwork-orchestrator 0.18.1 cannot run here; run it on a host "
        "whose CPU has AVX (a microVM gets its host's CPU features; one nested in an emulated "
        "host gets none), or bake an orchestrator built for Bun's baseline target with "
        "OPENWORK_ORCHESTRATOR_BIN_PATH (Bun's crash report: the fake log of fake-sb)"
    )
    assert fake.actions() == ["create"]


def test_a_data_folder_the_sandbox_cannot_write_is_named(fake_engine, tmp_path):
    settings = flow_settings(tmp_path)
    docker_fake(fake_engine, settings).boots = ["unwritable"]
    with pytest.raises(WorkflowError) as err:
        up(settings)
    assert err.value.message.startswith(
        f"the sandbox cannot write its data folder {settings.data_dir} (mounted at /data)"
    )
    assert docker_fake(fake_engine, settings).actions() == ["create"]


def test_a_start_killed_for_lack_of_memory_names_the_setting_and_stops_the_sandbox(fake_engine, tmp_path):
    """Issue 31: the supervisor restarts what the kernel killed, so the sandbox never dies by itself."""
    settings = flow_settings(tmp_path, OPENWORK_MICROSANDBOX_MEMORY="512")
    fake = docker_fake(fake_engine, settings)
    fake.boots = ["oom"]
    with pytest.raises(WorkflowError) as err:
        up(settings)
    assert err.value.message == (
        "the sandbox ran out of memory while it started: the kernel killed its programs 1 time(s) at "
        "OPENWORK_MICROSANDBOX_MEMORY=512 MiB; raise OPENWORK_MICROSANDBOX_MEMORY (default 2048) and run "
        "`invoke up` again (stopped it; `invoke reset` removes it)"
    )
    assert "HEALTH_TIMEOUT" not in err.value.message
    assert fake.actions() == ["create", "stop"] and fake.state == "stopped"


def test_a_data_folder_that_fills_up_during_the_start_is_named_and_the_sandbox_stopped(
    fake_engine, tmp_path, monkeypatch
):
    """Room when `up` checked (the first look), none once the sandbox writes: the start's look says so."""
    from openwork_sandbox.state import persist

    settings = flow_settings(tmp_path)
    fake = docker_fake(fake_engine, settings)
    fake.boots = ["stall"]
    looks = []
    full = f"the data folder {settings.data_dir} is nearly full (12.0 kB free; a start needs 4.0 MB): free it"

    def data_full_problem(path):
        looks.append(path)
        return full if len(looks) > 1 else None

    monkeypatch.setattr(persist, "data_full_problem", data_full_problem)
    with pytest.raises(WorkflowError) as err:
        up(settings)
    assert err.value.message == f"{full}; then run `invoke up` again (stopped it; `invoke reset` removes it)"
    assert fake.actions() == ["create", "stop"]


def test_a_server_moved_off_its_port_ends_up_at_once_naming_both_ports(fake_engine, tmp_path):
    settings = flow_settings(tmp_path)
    fake = docker_fake(fake_engine, settings)
    fake.boots = ["move_port"]
    with pytest.raises(WorkflowError) as err:
        up(settings)
    moved = fake.server.port
    assert err.value.message.startswith(f"port {settings.port} was taken by ")
    assert f"so the orchestrator moved it to port {moved}, where clients do not look" in err.value.message
    assert err.value.message.endswith(LEFT) and moved != settings.port


def test_a_server_never_healthy_is_restarted_then_times_out_with_its_log(fake_engine, tmp_path, capsys):
    """Two starts stall (their log stops); the third and last has no stall limit, only the deadline."""
    settings = flow_settings(tmp_path, OPENWORK_HEALTH_TIMEOUT="0.6")
    fake = docker_fake(fake_engine, settings)
    fake.boots = ["unhealthy"] * 3
    with pytest.raises(WorkflowError) as err:
        up(settings)
    assert not isinstance(err.value, UnreachableError)
    assert "not healthy within 0.6s (HTTP 503; sandbox state: running)" in err.value.message
    assert fake.actions() == ["create", "restart_server", "restart_server"]
    said = capsys.readouterr().err
    assert "lines of the server log" in said and "full log: the fake log of fake-sb" in said


def test_an_interrupted_boot_stops_what_it_started_and_keeps_the_state(fake_engine, tmp_path, capsys):
    settings = flow_settings(tmp_path)
    fake = docker_fake(fake_engine, settings)
    fake.boots = ["silent"]
    fake.fail["is_alive"] = KeyboardInterrupt()  # Ctrl+C while waiting for health
    with pytest.raises(KeyboardInterrupt):
        up(settings)
    assert fake.actions() == ["create", "stop"] and fake.state == STOPPED
    assert (
        f"interrupted before fake-sb was healthy: stopped it (state kept in {settings.sandbox_state_dir})"
        in capsys.readouterr().err
    )
    assert (settings.sandbox_state_dir / "tokens.json").exists()


# --- before anything is asked, and after -----------------------------------------------------------------------


def test_a_short_token_published_beyond_loopback_is_bad_settings_and_nothing_is_asked(fake_engine, tmp_path):
    settings = flow_settings(
        tmp_path, OPENWORK_CONNECT_HOST="0.0.0.0", OPENWORK_TOKEN="short-token", OPENWORK_HOST_TOKEN="h" * 30
    )
    with pytest.raises(WorkflowError) as err:
        up(settings)
    assert err.value.exit_code == 2 and "OPENWORK_TOKEN has 11 characters" in err.value.message
    assert fake_engine.fakes == {}
    assert not (tmp_path / "state").exists()


def test_the_human_report_shows_the_url_and_masks_the_tokens_unless_asked(fake_engine, tmp_path, capsys):
    settings = flow_settings(tmp_path, OPENWORK_TOKEN="c" * 30, OPENWORK_HOST_TOKEN="d" * 30)
    up(settings)
    said = capsys.readouterr()
    assert said.out == ""
    assert "✓ fake-sb is up (created, docker, " in said.err and f"http://127.0.0.1:{settings.port}" in said.err
    assert "cccc…(30 chars)" in said.err and "c" * 30 not in said.err
    assert "tokens are masked: --show-tokens prints them" in said.err
    up(settings, show_tokens=True)
    assert "c" * 30 in capsys.readouterr().err


def test_follow_streams_the_server_log_after_the_report(fake_engine, tmp_path, capsys):
    """The fake's log ends while it still runs: that is said, never a silent end."""
    settings = flow_settings(tmp_path)
    with pytest.raises(WorkflowError) as ended:
        up(settings, follow=True)
    assert ended.value.message == "the log of fake-sb ended while it runs: `invoke logs --follow` follows it again"
    fake = docker_fake(fake_engine, settings)
    assert ("stream_logs", (True, 20, None, False)) in fake.calls
    assert "[opencode] Healthy" in capsys.readouterr().out.splitlines()


def test_follow_ends_with_one_line_when_the_sandbox_stops_under_it(fake_engine, tmp_path, monkeypatch):
    settings = flow_settings(tmp_path)
    up(settings)
    fake = docker_fake(fake_engine, settings)
    streamed = fake.stream_logs

    def then_stop(**kwargs):
        yield from streamed(**kwargs)
        fake.stop()

    monkeypatch.setattr(fake, "stream_logs", then_stop)
    with pytest.raises(WorkflowError) as ended:
        up(settings, follow=True)
    assert ended.value.message == (
        "fake-sb stopped (exited (0)) while its log was followed: `invoke up` starts it again "
        "(`invoke logs --system` shows why it stopped)"
    )


def test_recreating_a_sandbox_of_the_old_layout_moves_its_state_into_the_data_folder_first(
    fake_engine, tmp_path, capsys
):
    settings = flow_settings(tmp_path)
    up(settings)
    fake = docker_fake(fake_engine, settings)
    fake.home = "/root"  # made before the state lived under /data
    fake.files = {"/root/.local/share/opencode/opencode.db": b"sessions"}
    up(flow_settings(tmp_path, OPENWORK_MICROSANDBOX_PORT=str(settings.port), OPENWORK_MICROSANDBOX_REPLACE="true"))
    assert (settings.data_dir / "home" / ".local" / "share" / "opencode" / "opencode.db").read_bytes() == b"sessions"
    asked = fake.actions()
    assert asked.index("open_for_copy") < asked.index("copy_out") < asked.index("remove") < len(asked) - 2
    assert asked[-2:] == ["create", "keep_running"]
    assert "moved the state the docker sandbox fake-sb kept in /root (1 files" in capsys.readouterr().err
