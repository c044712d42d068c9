"""Private registries as CI has them, all real but the token service: the Debian docker-registry
with TLS from a CA made here (trusted by Docker through /etc/docker/certs.d/localhost:PORT/) and
htpasswd login, and a second one with token auth whose tokens come from a test double.

After `docker login` only: build (the stack image, tagged), push, prove (v2 API + the microsandbox
SDK's pull with the login and the CA), boot the pushed digest with the Docker runtime. Then each
failure is its one line: wrong password, unknown CA, expired token, token endpoint down, no push
access for the scope.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from openwork_sandbox.net.ports import free_port
from tests.support.lifecycle import make_settings, prepared_spec, unique_name
from tests.support.paths import STACK_REPO, STANDINS
from tests.support.registries import CERTS_D, PrivateRegistry

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def docker_login(reg: PrivateRegistry, folder: Path, password: str | None = None) -> Path:
    """`docker login` into a fresh DOCKER_CONFIG folder (never root's own ~/.docker)."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["docker", "login", "--username", reg.user, "--password-stdin", reg.host],
        input=password or reg.password,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DOCKER_CONFIG": str(folder)},
    )
    assert proc.returncode == 0, proc.stderr
    return folder


def one_line_error(call, *args, **kw):
    from openwork_sandbox.core.errors import WorkflowError

    with pytest.raises(WorkflowError) as err:
        call(*args, **kw)
    message = err.value.message
    assert "\n" not in message and "Traceback" not in message
    return err.value


# --- the whole way, after `docker login` only ------------------------------------------------------


def test_docker_login_only_then_push_prove_and_boot_the_pushed_digest(
    stack_image, test_base_image, tls_registry, tmp_path, monkeypatch, short_msb_home, capsys
):
    from openwork_sandbox.image.push import push_image
    from openwork_sandbox.runtimes.probe import msb_path
    from openwork_sandbox.sandbox.status import status
    from openwork_sandbox.sandbox.up import up
    from openwork_sandbox.state.pin import pinned_image

    reg = tls_registry
    config = docker_login(reg, tmp_path / "docker")
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    ref = reg.ref()
    subprocess.run(["docker", "tag", stack_image.local, ref], check=True, capture_output=True)
    settings = make_settings(tmp_path, OPENWORK_MICROSANDBOX_IMAGE=ref)

    result = push_image(settings)
    digest = result["digest"]
    assert result["pinned"] == f"{reg.host}/{STACK_REPO}/private@{digest}"
    assert pinned_image(settings) == result["pinned"]
    # independent check: skopeo, with Docker's saved login and the CA where Docker keeps it
    skopeo = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--authfile",
            str(config / "config.json"),
            "--cert-dir",
            str(CERTS_D / reg.host),
            f"docker://{ref}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert skopeo.returncode == 0, skopeo.stderr
    assert json.loads(skopeo.stdout)["Digest"] == digest
    if msb_path():  # the SDK pulled it with the login and the CA (registry_auth, registry_ca_certs)
        assert result["msb_pull"] is True
        cached = subprocess.run([msb_path(), "image", "inspect", ref], capture_output=True, text=True, timeout=60)
        assert cached.returncode == 0 and digest in cached.stdout
    # nothing of the login was written anywhere new
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            assert reg.password not in path.read_text(errors="replace"), path

    box = make_settings(
        tmp_path,
        OPENWORK_MICROSANDBOX_IMAGE=ref,
        OPENWORK_MICROSANDBOX_RUNTIME="docker",
        OPENWORK_MICROSANDBOX_NAME=unique_name("priv"),
        OPENWORK_MICROSANDBOX_PORT=str(free_port()),
        OPENWORK_HEALTH_TIMEOUT="180",
    )
    try:
        up(box)
        booted = subprocess.run(
            ["docker", "inspect", "--format", "{{.Config.Image}} {{.Id}}", box.name], capture_output=True, text=True
        ).stdout.split()
        assert booted[0] == result["pinned"]
        capsys.readouterr()
        assert status(box, as_json=True) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["image"] == result["pinned"] and digest in shown["digest"]

        # another pipeline moves the tag: `up` in this checkout keeps the pushed digest
        subprocess.run(["docker", "tag", test_base_image, ref], check=True, capture_output=True)
        moved = subprocess.run(
            ["docker", "push", ref],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "DOCKER_CONFIG": str(config)},
        )
        assert moved.returncode == 0, moved.stderr
        up(box)
        again = subprocess.run(
            ["docker", "inspect", "--format", "{{.Config.Image}} {{.Id}}", box.name], capture_output=True, text=True
        ).stdout.split()
        assert again == booted
    finally:
        subprocess.run(["docker", "rm", "-f", box.name], capture_output=True)
        subprocess.run(["docker", "rmi", ref, result["pinned"]], capture_output=True)


def test_docker_runtime_pulls_with_the_settings_login_where_docker_has_none(
    tls_registry, test_base_image, tmp_path, monkeypatch
):
    """A CI job that did not push (no docker login) but has OPENWORK_REGISTRY_USERNAME/_PASSWORD:
    the Docker runtime's pull is refused, gets the settings' login, and pulls; with no login at all
    the refusal is one line with the way out."""
    from openwork_sandbox.registry.client import pull_access_for_image
    from openwork_sandbox.runtimes.docker import DockerRuntime

    reg = tls_registry
    ref = reg.ref("settings-login")
    pusher = docker_login(reg, tmp_path / "pusher")
    subprocess.run(["docker", "tag", test_base_image, ref], check=True, capture_output=True)
    pushed = subprocess.run(
        ["docker", "push", ref],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DOCKER_CONFIG": str(pusher)},
    )
    assert pushed.returncode == 0, pushed.stderr
    subprocess.run(["docker", "rmi", ref], check=True, capture_output=True)
    runtime = DockerRuntime(unique_name("pull"), tmp_path / "sandbox-state")
    try:
        (tmp_path / "nobody").mkdir()
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nobody"))
        anonymous = make_settings(tmp_path, OPENWORK_MICROSANDBOX_IMAGE=ref)
        err = one_line_error(runtime.pull, ref, lambda: pull_access_for_image(anonymous, ref))
        assert f"docker pull {ref} failed" in err.message and f"docker login {reg.host}" in err.message
        assert not (tmp_path / "nobody" / "config.json").exists()  # nothing to hand Docker: nothing written

        (tmp_path / "ci-job").mkdir()
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "ci-job"))
        settings = make_settings(
            tmp_path,
            OPENWORK_MICROSANDBOX_IMAGE=ref,
            OPENWORK_REGISTRY_USERNAME=reg.user,
            OPENWORK_REGISTRY_PASSWORD=reg.password,
        )
        runtime.pull(ref, lambda: pull_access_for_image(settings, ref))
        present = subprocess.run(["docker", "image", "inspect", ref], capture_output=True)
        assert present.returncode == 0
        saved = json.loads((tmp_path / "ci-job" / "config.json").read_text())
        assert reg.host in saved["auths"]  # Docker has the login now, as after push-image's docker login
    finally:
        subprocess.run(["docker", "rmi", ref], capture_output=True)


# --- failures: one line naming the registry and the cause ------------------------------------------


def test_wrong_saved_password_is_one_line_before_anything_is_pushed(tls_registry, tmp_path, monkeypatch):
    from openwork_sandbox.image.push import push_image

    reg = tls_registry
    config = tmp_path / "docker"
    config.mkdir()
    wrong = "wrong-" + secrets.token_hex(6)
    (config / "config.json").write_text(
        json.dumps({"auths": {reg.host: {"auth": base64.b64encode(f"{reg.user}:{wrong}".encode()).decode()}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    err = one_line_error(push_image, make_settings(tmp_path, OPENWORK_MICROSANDBOX_IMAGE=reg.ref("wrong")))
    assert err.exit_code == 1
    assert f"registry {reg.host} rejects the login of {reg.user}" in err.message
    assert "wrong username or password" in err.message and str(config / "config.json") in err.message
    assert wrong not in err.message and reg.password not in err.message


def test_unknown_ca_names_the_certs_d_path_and_the_setting_fixes_it(tls_registry, tmp_path, monkeypatch):
    """127.0.0.1:PORT is the same registry, but Docker's certs.d trusts its CA only as localhost:PORT."""
    from openwork_sandbox.image.push import push_image
    from openwork_sandbox.registry.client import Registry

    reg = tls_registry
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-login"))
    login = {"OPENWORK_REGISTRY_USERNAME": reg.user, "OPENWORK_REGISTRY_PASSWORD": reg.password}
    ref = f"127.0.0.1:{reg.port}/{STACK_REPO}/private:ca"
    err = one_line_error(push_image, make_settings(tmp_path, OPENWORK_MICROSANDBOX_IMAGE=ref, **login))
    assert err.exit_code == 1
    assert f"registry 127.0.0.1:{reg.port}: TLS certificate not trusted" in err.message  # no fall back to HTTP
    assert f"/etc/docker/certs.d/127.0.0.1:{reg.port}/ca.crt" in err.message and "OPENWORK_REGISTRY_CA" in err.message
    assert reg.password not in err.message

    # the setting's CA is trusted even where REQUESTS_CA_BUNDLE names the system bundle (requests #3829)
    from openwork_sandbox.registry.access import system_bundle

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", system_bundle())
    trusted = make_settings(tmp_path, OPENWORK_MICROSANDBOX_IMAGE=ref, OPENWORK_REGISTRY_CA=str(reg.ca), **login)
    registry = Registry.for_settings(trusted)
    assert registry.ping() == 200 and registry.scheme == "https"


def test_a_credential_helper_gives_the_login(tls_registry, tmp_path, monkeypatch):
    """credHelpers → docker-credential-<name> get, run as Docker runs it (a helper double on PATH)."""
    from openwork_sandbox.registry.client import Registry

    reg = tls_registry
    config, store, log = tmp_path / "docker", tmp_path / "store.json", tmp_path / "helper.log"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"credHelpers": {reg.host: "owtest-double"}}))
    store.write_text(json.dumps({reg.host: {"Username": reg.user, "Secret": reg.password}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    monkeypatch.setenv("PATH", f"{STANDINS}:{os.environ['PATH']}")
    monkeypatch.setenv("OWTEST_HELPER_STORE", str(store))
    monkeypatch.setenv("OWTEST_HELPER_LOG", str(log))
    registry = Registry.for_settings(make_settings(tmp_path, OPENWORK_MICROSANDBOX_IMAGE=reg.ref("helper")))
    assert registry.ping() == 200
    registry.check_push(f"{STACK_REPO}/private")  # the helper's login may push
    assert {json.dumps(json.loads(line)) for line in log.read_text().splitlines()} == {
        json.dumps({"argv": ["get"], "stdin": reg.host})
    }

    store.write_text("{}")  # the helper has nothing for it: anonymous, and the 401 says how to log in
    err = one_line_error(
        Registry.for_settings(make_settings(tmp_path, OPENWORK_MICROSANDBOX_IMAGE=reg.ref())).check_push,
        f"{STACK_REPO}/private",
    )
    assert f"registry {reg.host} needs a login" in err.message and f"docker login {reg.host}" in err.message


# --- token auth --------------------------------------------------------------------------------------


def test_token_auth_push_and_prove_with_the_settings_login(token_registry, tmp_path, monkeypatch, short_msb_home):
    """docker login (from the settings), push, v2 proof and the SDK pull, all through Bearer tokens."""
    from openwork_sandbox.image.push import push_image
    from openwork_sandbox.runtimes.probe import msb_path

    reg = token_registry
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "hello.txt").write_text("a tiny image for the token registry\n")
    (tmp_path / "ctx" / "Dockerfile").write_text('FROM scratch\nCOPY hello.txt /hello.txt\nCMD ["/hello.txt"]\n')
    ref = reg.ref("token")
    subprocess.run(["docker", "build", "-q", "-t", ref, str(tmp_path / "ctx")], check=True, capture_output=True)
    try:
        settings = make_settings(
            tmp_path,
            OPENWORK_MICROSANDBOX_IMAGE=ref,
            OPENWORK_REGISTRY_USERNAME=reg.user,
            OPENWORK_REGISTRY_PASSWORD=reg.password,
        )
        result = push_image(settings)
    finally:
        subprocess.run(["docker", "rmi", ref], capture_output=True)
    assert result["manifest_ok"] and result["blobs_ok"]
    if msb_path():
        assert result["msb_pull"] is True
    # The registry names a scope's actions in either order ("push,pull" or "pull,push"): compare sets.
    asked = [
        {_actions(one) for s in r["scope"] for one in s.split()} for r in reg.issuer.requests if r["user"] == reg.user
    ]
    repo = f"{STACK_REPO}/private"
    assert (repo, frozenset({"pull", "push"})) in set().union(*asked)
    assert (repo, frozenset({"pull"})) in set().union(*asked)
    # A token asked for another action (cancelling the test upload needs "delete") also keeps the
    # caller's scope, so the cached pull,push token is never replaced by a narrower one.
    for scopes in asked:
        if (repo, frozenset({"delete"})) in scopes:
            assert (repo, frozenset({"pull", "push"})) in scopes, scopes


def _actions(scope: str) -> tuple[str, frozenset[str]]:
    """``repository:NAME:a,b`` as ``(NAME, {a, b})``."""
    _, name, actions = scope.split(":")
    return name, frozenset(actions.split(","))


def test_token_auth_failures_are_one_line_each(token_registry, tmp_path, monkeypatch):
    from openwork_sandbox.registry.client import Registry

    reg = token_registry
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    repo = f"{STACK_REPO}/private"

    def registry(user: str, password: str) -> Registry:
        return Registry.for_settings(
            make_settings(
                tmp_path,
                OPENWORK_MICROSANDBOX_IMAGE=reg.ref(),
                OPENWORK_REGISTRY_USERNAME=user,
                OPENWORK_REGISTRY_PASSWORD=password,
            )
        )

    wrong = one_line_error(registry(reg.user, "not-the-password").ping)
    assert (
        f"registry {reg.host}: its token endpoint {reg.issuer.realm} rejects the login of {reg.user}" in wrong.message
    )
    assert "wrong username or password" in wrong.message and "not-the-password" not in wrong.message

    denied = one_line_error(registry("reader", "reader-pass").check_push, repo)
    assert f"registry {reg.host} denies reader" in denied.message and f"pull,push access to {repo}" in denied.message
    assert registry("reader", "reader-pass").ping() == 200  # the login itself is fine: only the scope is refused
    reg.issuer.forbidden.add("reader")
    try:
        forbidden = one_line_error(registry("reader", "reader-pass").head_manifest, repo, "ci")
    finally:
        reg.issuer.forbidden.discard("reader")
    assert f"registry {reg.host} denies reader" in forbidden.message and f"pull access to {repo}" in forbidden.message
    assert "HTTP 403" in forbidden.message

    reg.issuer.expired = True
    try:
        expired = one_line_error(registry(reg.user, reg.password).check_push, repo)
    finally:
        reg.issuer.expired = False
    assert f"registry {reg.host} rejects the token from {reg.issuer.realm} (invalid_token: expired" in expired.message

    port = reg.issuer.port
    reg.issuer.stop()
    try:
        down = one_line_error(registry(reg.user, reg.password).ping)
    finally:
        reg.issuer.start(port)
    assert (
        f"registry {reg.host}: its token endpoint {reg.issuer.realm} does not answer (Connection refused)"
        in down.message
    )
    assert down.exit_code == 1 and reg.password not in down.message
    assert registry(reg.user, reg.password).ping() == 200  # and back


def test_identity_token_saved_by_docker_is_used_as_a_refresh_token(token_registry, tmp_path, monkeypatch):
    from openwork_sandbox.registry.client import Registry

    reg = token_registry
    reg.issuer.refresh_tokens["owtest-identity-" + reg.password] = reg.user
    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(
        json.dumps({"auths": {reg.host: {"auth": "", "identitytoken": "owtest-identity-" + reg.password}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    registry = Registry.for_settings(make_settings(tmp_path, OPENWORK_MICROSANDBOX_IMAGE=reg.ref()))
    registry.check_push(f"{STACK_REPO}/private")
    assert reg.issuer.requests[-1]["method"] == "POST" and reg.issuer.requests[-1]["user"] == reg.user


# --- the command line: push-image --image REF builds REF; a failure is one line, exit 1 -------------


def test_push_image_flag_builds_and_pushes_that_reference(stack_image, tls_registry, tmp_path, short_msb_home):
    from tests.support.lifecycle import invoke
    from tests.support.paths import STACK_CACHE_DIR, STANDIN_SERVER, TEST_BASE_IMAGE

    reg = tls_registry
    config = docker_login(reg, tmp_path / "docker")
    ref, default = reg.ref("cli"), f"127.0.0.1:5000/{STACK_REPO}:cli-default"
    env = {
        "OPENWORK_BASE_IMAGE": TEST_BASE_IMAGE,
        "OPENWORK_SERVER_BIN": str(STANDIN_SERVER),
        "OPENWORK_CACHE_DIR": str(STACK_CACHE_DIR),
        "OPENWORK_MICROSANDBOX_IMAGE": default,
        "DOCKER_CONFIG": str(config),
        "MSB_HOME": short_msb_home,
    }
    try:
        wrong = invoke(
            tmp_path,
            "push-image",
            "--image",
            ref,
            timeout=900,
            **env,
            OPENWORK_REGISTRY_USERNAME=reg.user,
            OPENWORK_REGISTRY_PASSWORD="not-" + reg.password,
        )
        assert wrong.returncode == 1, wrong.stderr
        last = wrong.stderr.strip().splitlines()[-1]
        assert f"registry {reg.host} rejects the login of {reg.user}" in last and "Traceback" not in wrong.stderr
        assert reg.password not in wrong.stderr + wrong.stdout

        ok = invoke(tmp_path, "push-image", "--image", ref, "--json", timeout=900, **env)
        assert ok.returncode == 0, ok.stderr
        result = json.loads(ok.stdout)
        assert result["image"] == ref and result["pinned"] == f"{reg.host}/{STACK_REPO}/private@{result['digest']}"
        last_build = json.loads((tmp_path / "state" / "last-build.json").read_text())
        assert last_build["image"] == ref  # built as REF, not only tagged from the default build
        pushes = json.loads((tmp_path / "state" / "last-push.json").read_text())
        assert pushes[ref]["digest"] == result["digest"] and default not in pushes
    finally:
        subprocess.run(["docker", "rmi", ref, default], capture_output=True)


# --- up's microsandbox pull: the same login and CA through the SDK --------------------------------


def test_microsandbox_up_pulls_the_pushed_digest_with_login_and_ca(
    prod_base_image, tls_registry, tmp_path, monkeypatch
):
    """Here the VM cannot boot, so the boot-failure message proves the pull before it went through."""
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.image.push import push_image
    from openwork_sandbox.registry.access import PullAccess
    from openwork_sandbox.runtimes.microsandbox.runtime import MicrosandboxRuntime
    from openwork_sandbox.runtimes.microsandbox.spec import create_kwargs
    from openwork_sandbox.runtimes.probe import microvm_support
    from openwork_sandbox.state.store import SandboxState

    if microvm_support()[0]:
        pytest.skip("microVMs boot on this host: the booted path is test_lifecycle_microsandbox's")
    reg = tls_registry
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_login(reg, tmp_path / "docker")))
    ref = reg.ref("msb")
    subprocess.run(["docker", "tag", prod_base_image, ref], check=True, capture_output=True)
    name = unique_name("privmsb")
    settings = make_settings(
        tmp_path,
        OPENWORK_MICROSANDBOX_IMAGE=ref,
        OPENWORK_MICROSANDBOX_NAME=name,
        OPENWORK_MICROSANDBOX_RUNTIME="microsandbox",
        OPENWORK_MICROSANDBOX_PORT=str(free_port()),
        OPENWORK_MICROSANDBOX_MEMORY="512",
        OPENWORK_MICROSANDBOX_CPUS="1",
    )
    try:
        pinned = push_image(settings)["pinned"]
        state = SandboxState(settings.with_overrides(replace=True))
        state.ensure()
        spec = prepared_spec(settings.with_overrides(replace=True), "microsandbox", *state.tokens())
        assert spec.image == pinned
        access = spec.pull_access()
        assert access.insecure is False and access.username == reg.user and access.ca_pems == (reg.ca.read_bytes(),)
        assert reg.password not in repr(access)
        options = create_kwargs(spec)
        assert options["registry_insecure"] is False and options["registry_auth"].username == reg.user
        assert options["registry_ca_certs"] == [reg.ca.read_bytes()]
        # without the CA and the login the SDK cannot pull it: what the test below would catch
        bare = dataclasses.replace(spec, pull_access=lambda: PullAccess(insecure=False))
        with pytest.raises(WorkflowError) as err:
            MicrosandboxRuntime(name, settings.sandbox_state_dir).create(bare)
        assert "could not pull" in err.value.message and f"/etc/docker/certs.d/{reg.host}/ca.crt" in err.value.message
        with pytest.raises(WorkflowError) as err:
            MicrosandboxRuntime(name, settings.sandbox_state_dir).create(spec)
        assert "this host cannot run microVMs" in err.value.message, err.value.message  # pulled, then the boot failed
        assert reg.password not in err.value.message
    finally:
        MicrosandboxRuntime(name, settings.sandbox_state_dir).remove()
        subprocess.run(["docker", "rmi", ref], capture_output=True)
