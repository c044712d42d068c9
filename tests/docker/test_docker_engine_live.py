"""The engine's socket answers what the docker CLI answers: a container's inspect object, an
image's platform, the bridge network, a name the engine does not know; and with the socket
unusable the Docker runtime still answers, through the CLI, the same.

A real engine and real containers of the test base image (``sleep``); expected values come from
the docker CLI, never from the module under test.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from openwork_sandbox.runtimes import docker_engine
from openwork_sandbox.runtimes.docker import DockerRuntime
from openwork_sandbox.runtimes.docker_platform import held_image
from tests.support.lifecycle import unique_name

pytestmark = pytest.mark.docker


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def sleeper(test_base_image):
    name = unique_name("engine")
    _docker("run", "-d", "--name", name, "--memory", "64m", test_base_image, "sleep", "300")
    yield name
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@pytest.fixture
def runtime_of(monkeypatch, tmp_path):
    monkeypatch.setattr(docker_engine, "_unusable", set())
    return lambda name: DockerRuntime(name, tmp_path / "state")


def test_a_container_is_the_object_the_cli_shows(sleeper):
    answered, info = docker_engine.container(sleeper)
    cli = json.loads(_docker("container", "inspect", sleeper))[0]
    assert answered is True
    for key in ("Id", "Name", "Image", "Created"):
        assert info[key] == cli[key]
    assert info["State"]["Running"] is True and cli["State"]["Running"] is True
    assert info["HostConfig"]["Memory"] == cli["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert info["Config"]["Cmd"] == cli["Config"]["Cmd"] == ["sleep", "300"]


def test_a_name_the_engine_does_not_know_is_none_not_a_failure():
    name = unique_name("absent")
    assert subprocess.run(["docker", "container", "inspect", name], capture_output=True).returncode != 0
    assert docker_engine.container(name) == (True, None)
    assert docker_engine.image(f"127.0.0.1:5000/{name}:nope") == (True, None)
    assert held_image(f"127.0.0.1:5000/{name}:nope") == (False, None)


def test_an_images_platform_is_the_one_the_cli_shows(test_base_image):
    cli = _docker("image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", test_base_image).strip()
    assert held_image(test_base_image) == (True, cli)


def test_the_bridge_network_is_seen_as_the_cli_sees_it():
    cli = _docker("network", "ls", "--filter", "driver=bridge", "--format", "{{.Name}}").split()
    assert sorted(docker_engine.network_names("bridge")) == sorted(cli)
    docker_engine.engine_has_bridge.cache_clear()
    assert docker_engine.engine_has_bridge() is ("bridge" in cli)


def test_alive_and_inspect_through_the_cli_when_the_socket_is_unusable(sleeper, runtime_of, monkeypatch, tmp_path):
    rt = runtime_of(sleeper)
    by_socket = (rt.is_alive(), rt._inspect()["Id"])
    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")  # the CLI still reaches the engine...
    monkeypatch.setattr(docker_engine, "socket_path", lambda env=None, home=None: str(tmp_path / "gone.sock"))
    by_cli = (rt.is_alive(), rt._inspect()["Id"])  # ...while the module's own socket is not there
    assert str(tmp_path / "gone.sock") in docker_engine._unusable
    assert by_socket == by_cli == (True, json.loads(_docker("container", "inspect", sleeper))[0]["Id"])
    _docker("stop", "-t", "0", sleeper)
    assert rt.is_alive() is False


def test_a_stopped_container_is_not_alive_by_socket(sleeper, runtime_of):
    rt = runtime_of(sleeper)
    assert rt.is_alive() is True
    _docker("stop", "-t", "0", sleeper)
    assert rt.is_alive() is False
    assert rt._inspect()["State"]["Running"] is False


@pytest.mark.parametrize("tty", [False, True])
def test_the_log_tail_is_the_lines_the_cli_shows(test_base_image, runtime_of, tty):
    name = unique_name("enginelog")
    script = "for i in $(seq 1 60); do echo out-$i; echo err-$i >&2; done; sleep 300"
    _docker("run", "-d", *(["-t"] if tty else []), "--name", name, test_base_image, "sh", "-c", script)
    try:

        def cli_tail(n: int) -> list[str]:
            proc = subprocess.run(["docker", "logs", "--tail", str(n), name], capture_output=True, text=True)
            return (proc.stdout + proc.stderr).replace("\r", "").splitlines()

        for _ in range(100):  # until the engine has both streams' last lines (each stream is its own pipe)
            if {"out-60", "err-60"} <= set(cli_tail(200)):
                break
            time.sleep(0.05)
        cli = cli_tail(30)
        got = [line.rstrip("\r") for line in runtime_of(name).log_tail(30)]
        assert len(got) == 30
        assert sorted(got) == sorted(cli)  # the same lines (the CLI's two pipes may interleave otherwise)
        for stream in ("out", "err"):  # each stream in the order written (between the two the engine may reorder)
            mine = [line for line in got if line.startswith(stream)]
            assert mine == sorted(mine, key=lambda line: int(line.split("-")[1]))
        assert {"out-60", "err-60"} & set(got)  # the end of the log, not its start
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_the_restart_policy_is_set_once_and_then_left_alone(sleeper, runtime_of):
    since = _docker("inspect", "-f", "{{.Created}}", sleeper).strip()
    assert _docker("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", sleeper).strip() in ("", "no")
    rt = runtime_of(sleeper)
    rt.keep_running()
    assert _docker("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", sleeper).strip() == "unless-stopped"
    rt.keep_running()  # a running sandbox's `up`: nothing to change, so nothing is sent
    until = subprocess.run(["date", "-u", "+%Y-%m-%dT%H:%M:%S.%NZ"], capture_output=True, text=True).stdout.strip()
    events = _docker(
        "events", "--since", since, "--until", until, "--filter", f"container={sleeper}", "--format", "{{.Action}}"
    ).split()
    assert events.count("update") == 1, events
