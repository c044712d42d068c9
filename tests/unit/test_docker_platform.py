"""Which image the Docker runtime boots (issue 31): the host platform's, another platform's refused."""

from __future__ import annotations

import pytest

from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes import docker_platform

IDX = "127.0.0.1:5000/app@sha256:" + "1" * 64
AMD = "127.0.0.1:5000/app@sha256:" + "a" * 64
ARM = "127.0.0.1:5000/app@sha256:" + "b" * 64


@pytest.fixture
def engine(monkeypatch):
    """An engine holding ``held`` (reference -> os/arch); ``pulled`` lists what was pulled."""
    held: dict[str, str] = {}
    pulled: list[str] = []

    def pull(ref):
        pulled.append(ref)
        held[ref] = {AMD: "linux/amd64", ARM: "linux/arm64"}[ref]

    monkeypatch.setattr(docker_platform, "image_platform", held.get)
    return held, pulled, pull


def test_the_hosts_image_is_booted_as_it_is_and_the_registry_is_not_asked(engine):
    held, pulled, pull = engine
    held[IDX] = "linux/amd64"
    asked = []
    got = docker_platform.host_image(IDX, "linux/amd64", lambda: asked.append(1) or {}, held.__contains__, pull)
    assert (got, pulled, asked) == (IDX, [], [])


def test_another_platforms_image_under_an_index_digest_gives_way_to_the_hosts_manifest(engine):
    held, pulled, pull = engine
    held[IDX] = "linux/arm64"  # docker pull --platform linux/arm64 IDX
    index = {"linux/amd64": AMD, "linux/arm64": ARM}
    got = docker_platform.host_image(IDX, "linux/amd64", lambda: index, held.__contains__, pull)
    assert (got, pulled) == (AMD, [AMD])


def test_an_image_of_another_platform_without_an_index_is_refused_in_one_line(engine):
    held, pulled, pull = engine
    held[ARM] = "linux/arm64"
    with pytest.raises(WorkflowError) as err:
        docker_platform.host_image(ARM, "linux/amd64", lambda: {}, held.__contains__, pull)
    assert err.value.message == (
        f"the image {ARM} is for linux/arm64 and this host is linux/amd64, so Docker cannot run it; "
        f"run `docker pull --platform linux/amd64 {ARM}`, or build and push an image for linux/amd64"
    )
    assert pulled == []


def test_an_index_without_the_hosts_platform_names_the_push_that_adds_it(engine):
    held, pulled, pull = engine
    held[IDX] = "linux/arm64"
    with pytest.raises(WorkflowError) as err:
        docker_platform.host_image(IDX, "linux/amd64", lambda: {"linux/arm64": ARM}, held.__contains__, pull)
    assert err.value.message == (
        f"the image {IDX} is for linux/arm64 and this host is linux/amd64, so Docker cannot run it; "
        "its index holds linux/arm64, none for linux/amd64: build and push one for linux/amd64 "
        "(invoke push-image --platform linux/amd64,linux/arm64)"
    )


def test_a_registry_that_cannot_be_asked_still_refuses_in_one_line(engine):
    held, pulled, pull = engine
    held[IDX] = "linux/arm64"

    def unreachable():
        raise WorkflowError("registry 127.0.0.1:5000 does not answer")

    with pytest.raises(WorkflowError) as err:
        docker_platform.host_image(IDX, "linux/amd64", unreachable, held.__contains__, pull)
    assert err.value.message.startswith(f"the image {IDX} is for linux/arm64 and this host is linux/amd64")
    assert "docker pull --platform linux/amd64" in err.value.message


def test_an_image_whose_platform_the_engine_does_not_say_is_booted_as_it_is(engine):
    held, pulled, pull = engine
    assert docker_platform.host_image(IDX, "linux/amd64", None, held.__contains__, pull) == IDX
