"""State that survives, end to end on the real Docker runtime with the test stack (the real
orchestrator and opencode, the stand-in openwork-server that keeps tokens where the real one does).

A session with a message is created through the proxy (opencode stores it in its real SQLite
database), a collaborator token is issued with the host token, and both must come back after
`up --replace`, after an image upgrade (a rebuilt image with another label: a new image id), and
after migrating a sandbox made with the old layout (state in /root), and after switching the
sandbox from one launch (OPENWORK_LAUNCH) to the other and back. A read-only data folder stops
`up` with one line and deletes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from openwork_sandbox.net.ports import free_port
from tests.support.lifecycle import container_id, docker_env, invoke, make_settings, unique_name
from tests.support.lifecycle import up_json as _up_json
from tests.support.openwork_client import WS, auth, issue_token, make_session, read_session, status_with
from tests.support.paths import REGISTRY, STACK_REPO, STANDINS
from tests.support.stack import StackContainer

pytestmark = pytest.mark.docker


# --- talking to the sandbox --------------------------------------------------------------------------


def wait_up(c: StackContainer, starts: int = 3) -> None:
    """Like `up`: a start that dies early (orchestrator 0.18 gives up when the machine is loaded) or
    hangs is tried again, up to ``starts`` starts in all."""
    for attempt in range(starts):
        try:
            c.wait_healthy(timeout=90)
            return
        except pytest.fail.Exception:
            if attempt == starts - 1:
                raise
        subprocess.run(["docker", "restart", "-t", "1", c.name], capture_output=True, timeout=60)


# --- one sandbox for the replace / upgrade tests -----------------------------------------------------


@pytest.fixture(scope="module")
def box(stack_image, tmp_path_factory):
    from openwork_sandbox.sandbox.reset import reset
    from openwork_sandbox.sandbox.up import up

    tmp = tmp_path_factory.mktemp("persist")
    env = docker_env(stack_image.ref, "keep")
    settings = make_settings(tmp, **env)
    try:
        ep = up(settings)
        sid = make_session(ep.url, ep.token, "remember me")
        issued = issue_token(ep.url, ep.host_token)
        yield {"settings": settings, "tmp": tmp, "env": env, "ep": ep, "sid": sid, "issued": issued}
    finally:
        reset(settings, yes=True)


def test_the_state_lives_under_the_data_folder(box):
    home = Path(box["settings"].data_dir) / "home"
    assert (home / ".local/share/opencode/opencode.db").is_file()  # opencode's real database
    # the server's token store: its private folder, not the data folder the agent writes in
    tokens = Path(box["settings"].sandbox_state_dir) / "server-store" / "tokens.json"
    assert tokens.is_file() and box["issued"] in tokens.read_text()
    assert not (home / ".config/openwork/tokens.json").exists()
    assert (home / ".config/opencode").is_dir()
    code = subprocess.run(
        [
            "docker",
            "exec",
            box["settings"].name,
            "sh",
            "-c",
            "test -z \"$(ls -A /root 2>/dev/null | grep -v '^\\.\\(bashrc\\|profile\\)$')\"",
        ]
    ).returncode
    assert code == 0, "the sandbox still writes into /root"


def test_sessions_and_issued_tokens_survive_replace(box, capsys):
    settings, ep = box["settings"], box["ep"]
    before = container_id(settings.name)
    result = _up_json(settings.with_overrides(replace=True), capsys)
    assert result["action"] == "recreated" and container_id(settings.name) != before
    session, texts = read_session(ep.url, ep.token, box["sid"])
    assert session["id"] == box["sid"] and session["title"] == "kept remember me"
    assert texts == ["remember me"]
    assert status_with(ep.url, box["issued"]) == 200
    assert status_with(ep.url, box["issued"] + "x") == 401
    assert "moved the state" not in result["stderr"]  # nothing in its home: nothing to migrate


def test_sessions_and_issued_tokens_survive_a_switch_of_launch(box, capsys):
    """orchestrator -> server -> orchestrator, each by `up --replace` with the other OPENWORK_LAUNCH: the
    session and the issued token made before are there after each switch, and status names the launch."""
    from openwork_sandbox.sandbox.status import status

    settings, ep = box["settings"], box["ep"]
    for launch in ("server", "orchestrator"):
        switched = settings.with_overrides(launch=launch, replace=True)
        result = _up_json(switched, capsys)
        assert result["action"] == "recreated", result["stderr"]
        top = subprocess.run(["docker", "top", settings.name], capture_output=True, text=True, check=True).stdout
        assert ("openwork serve" in top) == (launch == "orchestrator"), top
        session, texts = read_session(ep.url, ep.token, box["sid"])
        assert session["id"] == box["sid"] and texts == ["remember me"]
        assert status_with(ep.url, box["issued"]) == 200
        status(switched, as_json=True)
        assert json.loads(capsys.readouterr().out)["launch"] == launch


def kept_files(data: Path) -> list[str]:
    """The files under ``data``, but the running supervisor's record being written (``<record>.tmp.<pid>``,
    there for an instant while it replaces the record)."""
    return sorted(str(p.relative_to(data)) for p in data.rglob("*") if ".json.tmp." not in p.name)


def test_a_read_only_data_folder_stops_up_in_one_line_and_deletes_nothing(box):
    settings, tmp, env = box["settings"], box["tmp"], box["env"]
    data = Path(settings.data_dir)
    before = container_id(settings.name)
    files = kept_files(data)
    if subprocess.run(["mount", "--bind", str(data), str(data)], capture_output=True).returncode != 0:
        pytest.skip("needs root and bind mounts to make a read-only folder")
    try:
        assert subprocess.run(["mount", "-o", "remount,bind,ro", str(data)], capture_output=True).returncode == 0
        proc = invoke(tmp, "up", "--replace", **env)
    finally:
        subprocess.run(["umount", str(data)], check=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if str(data) in ln and "read-only" in ln]
    assert len(lines) == 1 and "OPENWORK_MICROSANDBOX_DATA_DIR" in lines[0], proc.stderr
    assert container_id(settings.name) == before  # not replaced
    assert kept_files(data) == files
    assert status_with(box["ep"].url, box["ep"].token) == 200


def test_when_only_the_sandbox_finds_data_unwritable_up_says_it_in_one_line(stack_image, tmp_path, monkeypatch):
    """The host check is skipped here (as if the host could write but the sandbox cannot): the
    entrypoint's exit 73 becomes the same one line, at once, without three starts."""
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.sandbox.reset import reset
    from openwork_sandbox.sandbox.up import up
    from openwork_sandbox.state import persist

    settings = make_settings(tmp_path, **docker_env(stack_image.ref, "ro-inside", "60"))
    data = Path(settings.data_dir)
    data.mkdir(parents=True)
    if subprocess.run(["mount", "--bind", str(data), str(data)], capture_output=True).returncode != 0:
        pytest.skip("needs root and bind mounts to make a read-only folder")
    monkeypatch.setattr(persist, "check_data_dir", lambda settings: None)
    try:
        assert subprocess.run(["mount", "-o", "remount,bind,ro", str(data)], capture_output=True).returncode == 0
        with pytest.raises(WorkflowError) as err:
            up(settings)
    finally:
        subprocess.run(["umount", str(data)], check=True)
        reset(settings, yes=True)
    assert "\n" not in err.value.message and str(data) in err.value.message
    assert "cannot write its data folder" in err.value.message


# --- the entrypoint on its own ------------------------------------------------------------------------


def _docker_run(name: str, image: str, port: int, mounts: list[str], *extra: str, user: str | None = None) -> None:
    argv = [
        "docker",
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "-e",
        f"OPENWORK_PORT={port}",
        "-e",
        f"OPENWORK_OPENCODE_PORT={free_port()}",
        "-e",
        "OPENWORK_TOKEN=client-token-0123456789",
        "-e",
        "OPENWORK_HOST_TOKEN=host-token-0123456789",
        "-e",
        "OPENWORK_REMOTE_ACCESS=0",
        "-e",
        "OPENCODE_DISABLE_MODELS_FETCH=1",
        *extra,
    ]
    if user:
        argv += ["--user", user]
    for m in mounts:
        argv += ["--mount", m]
    subprocess.run([*argv, image], check=True, capture_output=True, timeout=120)


def test_the_entrypoint_refuses_a_read_only_data_with_exit_73(stack_image, tmp_path):
    from openwork_sandbox.state import persist

    name = unique_name("ro73")
    data = tmp_path / "data"
    data.mkdir()
    try:
        _docker_run(name, stack_image.ref, free_port(), [f"type=bind,source={data},target=/data,readonly"])
        code = subprocess.run(["docker", "wait", name], capture_output=True, text=True, timeout=60).stdout.strip()
        log = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert code == str(persist.EXIT_DATA_UNWRITABLE), log
    assert persist.UNWRITABLE_MARK in log and len(log.strip().splitlines()) == 1


def test_as_root_with_a_users_data_folder_the_entrypoint_hands_files_back(stack_image, tmp_path):
    """What a runtime that cannot run as the user (microsandbox) relies on: root in the sandbox,
    /data owned by uid 4321 -> earlier root files are chowned and the server runs as 4321."""
    name, port = unique_name("handback"), free_port()
    data, ws = tmp_path / "data", tmp_path / "ws"
    for d in (data, ws):
        d.mkdir()
        os.chown(d, 4321, 4321)
    (data / "left-by-root.txt").write_text("x")  # owned by root (this test runs as root)
    if os.stat(data / "left-by-root.txt").st_uid != 0:
        pytest.skip("needs root to make root-owned files")
    try:
        _docker_run(
            name,
            stack_image.ref,
            port,
            [f"type=bind,source={data},target=/data", f"type=bind,source={ws},target=/workspace"],
        )
        c = StackContainer(
            name, f"http://127.0.0.1:{port}", port, 0, "client-token-0123456789", "host-token-0123456789"
        )
        wait_up(c)
        make_session(c.url, c.token, "mine")
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    owners = {p: p.lstat().st_uid for p in [*data.rglob("*"), *ws.rglob("*")]}
    assert (data / "home/.local/share/opencode/opencode.db") in owners
    assert {p: u for p, u in owners.items() if u != 4321} == {}


# --- migration from the old layout --------------------------------------------------------------------


@pytest.fixture(scope="module")
def legacy_image(stack_image, tmp_path_factory):
    """The stack image with the entrypoint as it was before this layout (state in /root)."""
    ctx = tmp_path_factory.mktemp("legacy")
    shutil.copy(STANDINS / "legacy_entrypoint.sh", ctx / "entrypoint.sh")
    (ctx / "Dockerfile").write_text(
        f"FROM {stack_image.ref}\nCOPY entrypoint.sh /usr/local/bin/microsandbox-entrypoint.sh\n"
    )
    ref = f"{REGISTRY}/{STACK_REPO}:legacy"
    subprocess.run(["docker", "build", "-q", "-t", ref, str(ctx)], check=True, capture_output=True, timeout=300)
    yield ref
    subprocess.run(["docker", "rmi", ref], capture_output=True)


def _start_like_the_old_version(settings, image: str) -> StackContainer:
    """What `up` did before this layout: the container as root, no HOME passed, labels, env file."""
    from openwork_sandbox.state.store import SandboxState

    state = SandboxState(settings)
    state.ensure()
    token, host_token = state.tokens()
    port = settings.port
    env = {
        "OPENWORK_TOKEN": token,
        "OPENWORK_HOST_TOKEN": host_token,
        "OPENWORK_APPROVAL_MODE": "auto",
        "OPENWORK_CONNECT_HOST": "127.0.0.1",
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENWORK_PORT": str(port),
        "OPENWORK_OPENCODE_PORT": str(free_port()),
        "OPENWORK_REMOTE_ACCESS": "0",
    }
    env_file = state.write_private("container.env", "".join(f"{k}={v}\n" for k, v in env.items()))
    argv = [
        "docker",
        "run",
        "-d",
        "--init",
        "--name",
        settings.name,
        "--label",
        "org.openwork-sandbox.managed=1",
        "--label",
        "org.openwork-sandbox.fingerprint=before-data-home",
        "--env-file",
        str(env_file),
        "--network",
        "host",
        "--mount",
        f"type=bind,source={Path(settings.workspace_dir).resolve()},target=/workspace",
        "--mount",
        f"type=bind,source={Path(settings.data_dir).resolve()},target=/data",
        image,
    ]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    state.save_record(runtime="docker", image=image, fingerprint="before-data-home", port=port, url=settings.url)
    c = StackContainer(settings.name, settings.url, port, 0, token, host_token)
    wait_up(c)
    return c


def test_a_sandbox_with_the_old_layout_keeps_its_history_after_the_upgrade(
    stack_image, legacy_image, tmp_path, capsys, monkeypatch
):
    """First a copy that does not verify (the disk gives back other bytes): `up` stops, the old
    sandbox runs on as it was. Then the real upgrade: copied, verified, said in one line, replaced."""
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.sandbox.reset import reset
    from openwork_sandbox.sandbox.up import up
    from openwork_sandbox.state import persist

    settings = make_settings(tmp_path, **docker_env(stack_image.ref, "legacy", "90"))
    real_verify = persist.verify

    def corrupting_verify(stage, copied):
        (stage / copied[0].rel).write_bytes(b"not what the sandbox sent")
        return real_verify(stage, copied)

    try:
        old = _start_like_the_old_version(settings, legacy_image)
        sid = make_session(old.url, old.token, "from the old days")
        issued = issue_token(old.url, old.host_token)
        in_root = subprocess.run(
            ["docker", "exec", settings.name, "ls", "/root/.local/share/opencode", "/root/.config/openwork"],
            capture_output=True,
            text=True,
        ).stdout
        assert "opencode.db" in in_root and "tokens.json" in in_root  # the old layout indeed
        home = Path(settings.data_dir) / "home"
        assert not home.exists()

        # a copy that fails verification changes nothing
        before = container_id(settings.name)
        monkeypatch.setattr(persist, "verify", corrupting_verify)
        with pytest.raises(WorkflowError) as err:
            up(settings)
        monkeypatch.setattr(persist, "verify", real_verify)
        assert "does not match" in err.value.message and "was not replaced" in err.value.message
        assert container_id(settings.name) == before and not home.exists()
        wait_up(old)  # started again as it was
        assert read_session(old.url, old.token, sid)[1] == ["from the old days"]

        # the upgrade: the new version and image recreate it, migrating first
        result = _up_json(settings, capsys)
        assert result["action"] == "recreated" and container_id(settings.name) != before
        said = [ln for ln in result["stderr"].splitlines() if "moved the state" in ln]
        assert len(said) == 1 and "/root" in said[0] and "sha256 verified" in said[0] and str(home) in said[0]
        session, texts = read_session(old.url, old.token, sid)
        assert session["id"] == sid and texts == ["from the old days"]
        assert status_with(old.url, issued) == 200
        assert (home / ".local/share/opencode/opencode.db").is_file()
        record = json.loads((home / ".migrated.json").read_text())
        assert record["files"] > 0 and ".local/share/opencode" in record["moved"]
        env = subprocess.run(
            ["docker", "inspect", "--format", "{{json .Config.Env}}", settings.name], capture_output=True, text=True
        ).stdout
        assert '"HOME=/data/home"' in env  # the next replace has nothing to migrate
    finally:
        reset(settings, yes=True)


def test_smoke_deletes_its_session_on_the_real_opencode(box, capsys):
    from openwork_sandbox.smoke.modes import run_smoke

    settings, ep = box["settings"], box["ep"]

    def smoke(**kw) -> str:
        capsys.readouterr()
        assert run_smoke(settings, as_json=True, **kw) == 0
        report = json.loads(capsys.readouterr().out)
        return next(c["detail"] for c in report["checks"] if c["name"] == "session-create")

    def exists(sid: str) -> int:
        return requests.get(f"{ep.url}/w/{WS}/opencode/session/{sid}", headers=auth(ep.token), timeout=20).status_code

    deleted, kept = smoke(), smoke(keep_session=True)
    assert deleted.startswith("ses_") and kept.startswith("ses_")
    assert exists(deleted) == 404 and exists(kept) == 200
    assert exists(box["sid"]) == 200  # the user's own session is untouched


def test_state_survives_an_image_upgrade(box, stack_image, capsys, tmp_path):
    """A rebuilt image (another label: a new image id, as a version bump gives) under another tag.
    The last test of the module's sandbox: it leaves it on the upgraded image."""
    settings, ep = box["settings"], box["ep"]
    ref = f"{REGISTRY}/{STACK_REPO}:upgraded"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {stack_image.ref}\nLABEL org.opencontainers.image.revision=upgraded-{os.getpid()}\n"
    )
    subprocess.run(["docker", "build", "-q", "-t", ref, str(tmp_path)], check=True, capture_output=True, timeout=300)
    subprocess.run(["docker", "push", ref], check=True, capture_output=True, timeout=300)
    new_id = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True
    ).stdout.strip()
    assert new_id and new_id != stack_image.image_id
    assert _up_json(settings.with_overrides(image=ref), capsys)["action"] == "recreated"
    running = subprocess.run(
        ["docker", "inspect", "--format", "{{.Image}}", settings.name], capture_output=True, text=True
    ).stdout.strip()
    assert running == new_id
    session, texts = read_session(ep.url, ep.token, box["sid"])
    assert session["id"] == box["sid"] and texts == ["remember me"]
    assert status_with(ep.url, box["issued"]) == 200
