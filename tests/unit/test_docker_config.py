"""Docker's own configuration as this tool reads it: the saved logins (auths, credHelpers,
credsStore with the helper protocol) and the CAs of /etc/docker/certs.d, plus OPENWORK_REGISTRY_CA.
No registry is needed here; the registries themselves are in test_private_registry.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.support.paths import STANDINS

HELPER_DIR = STANDINS
PEM = b"-----BEGIN CERTIFICATE-----\nMIIBdouble\n-----END CERTIFICATE-----\n"


@pytest.fixture
def docker_cfg(tmp_path, monkeypatch):
    """A temporary DOCKER_CONFIG folder; ``write(dict)`` writes its config.json."""
    folder = tmp_path / "docker"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))

    def write(config: dict) -> Path:
        (folder / "config.json").write_text(json.dumps(config))
        return folder / "config.json"

    return write


@pytest.fixture
def helper(tmp_path, monkeypatch):
    """The credential-helper double on PATH; ``store(dict)`` sets what it knows; ``calls()`` how it was run."""
    monkeypatch.setenv("PATH", f"{HELPER_DIR}:{__import__('os').environ['PATH']}")
    store, log = tmp_path / "helper-store.json", tmp_path / "helper-log.jsonl"
    monkeypatch.setenv("OWTEST_HELPER_STORE", str(store))
    monkeypatch.setenv("OWTEST_HELPER_LOG", str(log))
    store.write_text("{}")

    class Helper:
        def store(self, data: dict) -> None:
            store.write_text(json.dumps(data))

        def calls(self) -> list[dict]:
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return Helper()


def test_auths_base64_login_as_docker_login_saves_it(docker_cfg):
    from openwork_sandbox.registry.docker_config import docker_credentials

    path = docker_cfg({"auths": {"localhost:5443": {"auth": base64.b64encode(b"ci-user:pa:ss").decode()}}})
    creds = docker_credentials("localhost:5443")
    assert (creds.username, creds.password, creds.identity_token) == ("ci-user", "pa:ss", None)
    assert str(path) in creds.source and "pa:ss" not in repr(creds)
    assert docker_credentials("localhost:5444") is None


def test_auths_keys_match_as_docker_matches_them(docker_cfg):
    from openwork_sandbox.registry.docker_config import docker_credentials

    docker_cfg(
        {
            "auths": {
                "https://registry.example:8443/v2/": {"username": "u", "password": "p"},
                "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:hp").decode()},
            }
        }
    )
    assert docker_credentials("registry.example:8443").password == "p"
    assert docker_credentials("docker.io").username == "hub"


def test_identity_token_is_kept_apart_from_a_password(docker_cfg):
    from openwork_sandbox.registry.docker_config import docker_credentials

    docker_cfg({"auths": {"ghcr.example": {"identitytoken": "refresh-me"}}})
    creds = docker_credentials("ghcr.example")
    assert creds.identity_token == "refresh-me" and creds.password == ""
    assert "refresh-me" not in repr(creds)


def test_a_broken_saved_login_is_one_line(docker_cfg):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.registry.docker_config import docker_credentials

    docker_cfg({"auths": {"localhost:5443": {"auth": "%%%not-base64"}}})
    with pytest.raises(WorkflowError) as err:
        docker_credentials("localhost:5443")
    assert "docker login localhost:5443 again" in err.value.message and "\n" not in err.value.message


def test_cred_helper_is_run_as_docker_runs_it(docker_cfg, helper):
    """credHelpers[host] wins over auths; the server address goes on stdin, only `get` on argv."""
    from openwork_sandbox.registry.docker_config import docker_credentials

    docker_cfg(
        {
            "credHelpers": {"localhost:5443": "owtest-double"},
            "auths": {"localhost:5443": {"auth": base64.b64encode(b"stale:old").decode()}},
        }
    )
    helper.store({"localhost:5443": {"Username": "helper-user", "Secret": "helper-secret"}})
    creds = docker_credentials("localhost:5443")
    assert (creds.username, creds.password) == ("helper-user", "helper-secret")
    assert creds.source == "docker-credential-owtest-double"
    assert helper.calls() == [{"argv": ["get"], "stdin": "localhost:5443"}]


def test_creds_store_answers_for_every_registry_and_not_found_is_anonymous(docker_cfg, helper):
    from openwork_sandbox.registry.docker_config import docker_credentials

    docker_cfg({"credsStore": "owtest-double"})
    helper.store({"localhost:5443": {"Username": "<token>", "Secret": "an-identity-token"}})
    creds = docker_credentials("localhost:5443")
    assert creds.identity_token == "an-identity-token" and not creds.password
    assert docker_credentials("localhost:5999") is None  # "credentials not found": anonymous, as Docker


def test_a_missing_helper_is_one_line(docker_cfg):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.registry.docker_config import docker_credentials

    docker_cfg({"credHelpers": {"localhost:5443": "owtest-absent"}})
    with pytest.raises(WorkflowError) as err:
        docker_credentials("localhost:5443")
    assert "docker-credential-owtest-absent is not on PATH" in err.value.message


def test_settings_login_comes_before_dockers(docker_cfg, tmp_path):
    from openwork_sandbox.registry.access import credentials
    from tests.support.lifecycle import make_settings

    docker_cfg({"auths": {"localhost:5443": {"auth": base64.b64encode(b"docker-user:dp").decode()}}})
    settings = make_settings(tmp_path, OPENWORK_REGISTRY_USERNAME="env-user", OPENWORK_REGISTRY_PASSWORD="ep")
    assert credentials(settings, "localhost:5443").username == "env-user"
    assert credentials(make_settings(tmp_path), "localhost:5443").username == "docker-user"


def test_trust_is_system_cas_plus_certs_d_plus_the_setting(tmp_path, monkeypatch):
    from openwork_sandbox.registry import docker_config
    from openwork_sandbox.registry.access import ca_bundle, system_bundle
    from tests.support.lifecycle import make_settings

    certs_d = tmp_path / "certs.d"
    (certs_d / "localhost:5443").mkdir(parents=True)
    (certs_d / "localhost:5443" / "ca.crt").write_bytes(PEM.replace(b"double", b"certsd"))
    (certs_d / "localhost:5443" / "client.key").write_bytes(b"not a CA")
    monkeypatch.setattr(docker_config, "CERTS_D", certs_d)
    own = tmp_path / "own-ca.pem"
    own.write_bytes(PEM.replace(b"double", b"setting"))
    settings = make_settings(tmp_path, OPENWORK_REGISTRY_CA=str(own), OPENWORK_CACHE_DIR=str(tmp_path / "cache"))

    bundle = Path(ca_bundle(settings, "localhost:5443"))
    content = bundle.read_bytes()
    assert content.startswith(Path(system_bundle()).read_bytes().rstrip(b"\n"))
    assert b"MIIBcertsd" in content and b"MIIBsetting" in content and b"not a CA" not in content
    assert bundle.parent == tmp_path / "cache" / "ca-bundles"
    assert ca_bundle(make_settings(tmp_path), "localhost:5999") is True  # nothing extra: the system CAs


def test_a_registry_ca_setting_that_is_not_a_pem_is_one_line(tmp_path):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.registry.access import ca_bundle
    from tests.support.lifecycle import make_settings

    bad = tmp_path / "ca.txt"
    bad.write_text("hello")
    with pytest.raises(WorkflowError) as err:
        ca_bundle(make_settings(tmp_path, OPENWORK_REGISTRY_CA=str(bad)), "localhost:5443")
    assert err.value.exit_code == 2 and f"OPENWORK_REGISTRY_CA={bad}" in err.value.message


def test_pinned_image_follows_the_last_push_of_that_tag(tmp_path):
    from openwork_sandbox.state.pin import pinned_image, record_push
    from tests.support.lifecycle import make_settings

    digest = "sha256:" + "ab" * 32
    settings = make_settings(tmp_path, OPENWORK_MICROSANDBOX_IMAGE="localhost:5443/team/box:ci")
    assert pinned_image(settings) == "localhost:5443/team/box:ci"
    record_push(settings, digest)
    assert pinned_image(settings) == f"localhost:5443/team/box@{digest}"
    other = make_settings(tmp_path, OPENWORK_MICROSANDBOX_IMAGE="localhost:5443/team/box:other")
    assert pinned_image(other) == "localhost:5443/team/box:other"
    by_digest = make_settings(tmp_path, OPENWORK_MICROSANDBOX_IMAGE="localhost:5443/team/box@sha256:" + "cd" * 32)
    assert pinned_image(by_digest) == by_digest.image


def test_a_challenge_is_read_as_quoted_and_bare_parameters_left_to_right():
    from openwork_sandbox.registry.transport import parse_challenge

    assert parse_challenge(
        'Bearer realm="https://auth.example/token?service=other",service="registry.example",'
        'scope="repository:team/app:pull,push",error=insufficient_scope'
    ) == (
        "bearer",
        {
            "realm": "https://auth.example/token?service=other",
            "service": "registry.example",
            "scope": "repository:team/app:pull,push",
            "error": "insufficient_scope",
        },
    )
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})


@pytest.mark.parametrize("scope", ["repository:team/app:push,pull", "repository:team/app:pull,push"])
def test_a_denied_scope_names_its_actions_in_one_order_whatever_order_the_registry_used(scope):
    """The registry's challenge lists a scope's actions in any order; the one-line error does not."""
    from openwork_sandbox.registry.client import Registry

    message = Registry("registry.example:5000")._denied(scope, "HTTP 403").message
    assert message.startswith(
        "registry registry.example:5000 denies an anonymous client pull,push access to team/app (HTTP 403)"
    )


@pytest.mark.parametrize(
    "text, refused",
    [
        (
            'Error response from daemon: Head "https://localhost:5443/v2/team/app/manifests/1": no basic auth credentials',
            True,
        ),
        (
            "Error response from daemon: pull access denied for team/app, repository does not exist or may require "
            "'docker login': denied: requested access to the resource is denied",
            True,
        ),
        ("Error response from daemon: unauthorized: authentication required", True),
        ("registry error: unexpected status code 401 Unauthorized", True),
        ("Error response from daemon: manifest for localhost:5000/team/app:1 not found: manifest unknown", False),
        ("image error: digest sha256:0401aa4010 does not match", False),
        (
            'Error response from daemon: Get "https://localhost:5443/v2/": x509: certificate signed by unknown authority',
            False,
        ),
    ],
)
def test_a_pull_refused_for_a_login_is_told_from_other_pull_failures(text, refused):
    """Docker's and the SDK's words for a missing login (literal examples), and failures that are not one."""
    from openwork_sandbox.registry.access import login_refused

    assert login_refused(text) is refused
