"""CI-native behaviour: GitHub Actions workflow commands and files, proxies, progress off a TTY.

Real parts: `invoke up`/`smoke`/`build-image`/`push-image` in a subprocess (no TTY: pipes), the
Docker runtime with the test stack image, the local registry; GitHub Actions is what the runner
gives a step: ``GITHUB_ACTIONS=true`` and the paths of ``GITHUB_STEP_SUMMARY``/``GITHUB_OUTPUT``/
``GITHUB_ENV`` (temporary files here). The proxy is a loopback port nothing listens on.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openwork_sandbox.net.ports import free_port
from tests.support.lifecycle import OFFLINE, ROOT, unique_name
from tests.support.paths import REGISTRY, STACK_CACHE_DIR, STACK_REPO, STANDIN_SERVER, TEST_BASE_IMAGE

pytestmark = pytest.mark.docker


def _dead_proxy() -> dict[str, str]:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: any request through it fails
    return {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url}


def _env(**values: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENWORK", "OPENCODE_VERSION", "GITHUB_"))
        and k.lower() not in ("no_proxy", "http_proxy", "https_proxy")
    }
    env.update(values)
    return env


def _gha_files(folder: Path) -> dict[str, str]:
    files = {}
    for name in ("GITHUB_STEP_SUMMARY", "GITHUB_OUTPUT", "GITHUB_ENV"):
        path = folder / name.lower()
        path.write_text("")
        files[name] = str(path)
    return {"GITHUB_ACTIONS": "true", **files}


def _invoke(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """``invoke ARGS`` with stderr merged into stdout, so the order of all lines is kept."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def _masked_before_use(output: str, secret: str) -> None:
    mask_line = f"::add-mask::{secret}"
    first_mask = output.find(mask_line)
    assert first_mask >= 0, f"no {mask_line[:16]}… line"
    uses = [m.start() for m in re.finditer(re.escape(secret), output) if m.start() != first_mask + len("::add-mask::")]
    assert uses, "the secret never appears after its mask (the test would prove nothing)"
    assert all(pos > first_mask for pos in uses), "the secret appears before its ::add-mask:: line"


@pytest.fixture(scope="module")
def gha_sandbox(stack_image, tmp_path_factory):
    """`invoke up --show-tokens --github-output` under GitHub Actions, with a dead HTTP(S)_PROXY and
    no NO_PROXY: the sandbox, its output (stdout+stderr in order) and the files the runner reads."""
    tmp = tmp_path_factory.mktemp("gha")
    name = unique_name("gha")
    env = _env(
        OPENWORK_MICROSANDBOX_NAME=name,
        OPENWORK_MICROSANDBOX_PORT=str(free_port()),
        OPENWORK_MICROSANDBOX_IMAGE=stack_image.ref,
        OPENWORK_MICROSANDBOX_RUNTIME="docker",
        OPENWORK_STATE_DIR=str(tmp / "state"),
        OPENWORK_HEALTH_TIMEOUT="90",
        OPENWORK_ENV_FILE=str(tmp / "empty.env"),
        **OFFLINE,
        **_dead_proxy(),
        **_gha_files(tmp),
    )
    (tmp / "empty.env").write_text("")
    up = _invoke(["up", "--show-tokens", "--github-output"], env, timeout=400)
    tokens = json.loads((tmp / "state" / name / "tokens.json").read_text()) if up.returncode == 0 else {}
    yield {"env": env, "up": up, "tmp": tmp, "name": name, "tokens": tokens}
    _invoke(["reset", "--yes"], env, timeout=120)
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_up_passes_with_a_dead_proxy_and_masks_tokens_first(gha_sandbox):
    up = gha_sandbox["up"]
    assert up.returncode == 0, up.stdout[-3000:]
    for key in ("token", "host_token"):
        _masked_before_use(up.stdout, gha_sandbox["tokens"][key])  # --show-tokens prints them, after the mask


def test_up_writes_its_summary_outputs_and_env(gha_sandbox):
    env = gha_sandbox["env"]
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    port = env["OPENWORK_MICROSANDBOX_PORT"]
    assert f"### OpenWork sandbox up: `{gha_sandbox['name']}`" in summary
    assert f"| URL | http://127.0.0.1:{port} |" in summary and "| runtime | docker |" in summary
    assert re.search(r"\| seconds \| \d+\.\d \|", summary)

    def parse(path: str) -> dict[str, str]:  # GitHub's NAME<<DELIMITER multi-line form
        text, values = Path(path).read_text(), {}
        for m in re.finditer(r"^([\w-]+)<<(\S+)\n(.*?)\n\2$", text, re.M | re.S):
            values[m.group(1)] = m.group(3)
        return values

    outputs = parse(env["GITHUB_OUTPUT"])
    assert outputs == {
        "url": f"http://127.0.0.1:{port}",
        "name": gha_sandbox["name"],
        "runtime": "docker",
        "workspace-id": "ws_c52ddf65534b",
    }
    exported = parse(env["GITHUB_ENV"])
    assert exported == {
        "OPENWORK_TOKEN": gha_sandbox["tokens"]["token"],
        "OPENWORK_HOST_TOKEN": gha_sandbox["tokens"]["host_token"],
    }
    assert gha_sandbox["tokens"]["token"] not in Path(env["GITHUB_OUTPUT"]).read_text()


def test_smoke_passes_with_a_dead_proxy_and_writes_its_summary(gha_sandbox):
    assert gha_sandbox["up"].returncode == 0
    smoke = _invoke(["smoke"], gha_sandbox["env"], timeout=300)
    assert smoke.returncode == 0, smoke.stdout[-3000:]
    assert "::add-mask::" + gha_sandbox["tokens"]["token"] in smoke.stdout  # read from the state: masked
    assert "### OpenWork smoke: passed" in Path(gha_sandbox["env"]["GITHUB_STEP_SUMMARY"]).read_text()


def test_up_on_a_taken_port_ends_with_an_error_annotation(stack_image, tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        env = _env(
            OPENWORK_MICROSANDBOX_NAME=unique_name("gha"),
            OPENWORK_MICROSANDBOX_PORT=str(port),
            OPENWORK_MICROSANDBOX_IMAGE=stack_image.ref,
            OPENWORK_MICROSANDBOX_RUNTIME="docker",
            OPENWORK_STATE_DIR=str(tmp_path / "state"),
            **_gha_files(tmp_path),
        )
        up = _invoke(["up"], env, timeout=120)
    finally:
        holder.close()
    assert up.returncode == 1
    last = up.stdout.strip().splitlines()[-1]
    assert last.startswith("::error title=up::port ") and "already in use" in last, up.stdout[-2000:]
    assert "Traceback" not in up.stdout


def test_bad_settings_end_with_one_annotation_and_exit_2(tmp_path):
    env = _env(OPENWORK_MICROSANDBOX_PORT="ten", OPENWORK_STATE_DIR=str(tmp_path / "state"), **_gha_files(tmp_path))
    proc = _invoke(["status"], env, timeout=60)
    assert proc.returncode == 2
    assert (
        proc.stdout.strip()
        .splitlines()[-1]
        .startswith('::error title=status::OPENWORK_MICROSANDBOX_PORT="ten" (from environment)')
    )


def test_github_output_outside_github_actions_is_refused_before_booting(tmp_path):
    env = _env(OPENWORK_STATE_DIR=str(tmp_path / "state"), OPENWORK_MICROSANDBOX_NAME=unique_name("gha"))
    proc = _invoke(["up", "--github-output"], env, timeout=60)
    assert proc.returncode == 2
    assert "--github-output works only under GitHub Actions" in proc.stdout
    assert not (tmp_path / "state").exists()


def test_push_image_under_github_actions_groups_layers_and_writes_summaries(stack_image, tmp_path):
    env = _env(
        OPENWORK_BASE_IMAGE=TEST_BASE_IMAGE,
        OPENWORK_SERVER_BIN=str(STANDIN_SERVER),
        OPENWORK_CACHE_DIR=str(STACK_CACHE_DIR),
        OPENWORK_STATE_DIR=str(stack_image.settings.state_dir),
        OPENWORK_MICROSANDBOX_IMAGE=stack_image.ref,
        **_gha_files(tmp_path),
    )
    proc = _invoke(["push-image"], env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    out = proc.stdout
    build_group = out.index(f"::group::docker build {stack_image.ref}")
    assert out.index("Step 1/", build_group) < out.index("::endgroup::", build_group)
    push_group = out.index(f"::group::docker push {stack_image.ref}")
    assert out.index("layer already exists", push_group) < out.index("::endgroup::", push_group)
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert f"### OpenWork image built: `{stack_image.ref}`" in summary
    assert f"| image id | `{stack_image.image_id}` |" in summary
    assert f"### OpenWork image pushed: `{stack_image.ref}`" in summary
    assert f"| digest | `{stack_image.push['digest']}` |" in summary


def test_off_a_tty_a_cold_build_is_never_silent_for_10s(test_base_image, stack_image, tmp_path):
    """A build on a base no layer was cached for (every COPY and the version check run again):
    stdout+stderr lines, time-stamped as they arrive, never more than 10 s apart."""
    base = f"{STACK_REPO}-base:gaps-{os.getpid()}"
    made = subprocess.run(
        ["docker", "build", "-q", "-t", base, "-"],
        input=f"FROM {test_base_image}\nLABEL gap={time.time()}\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    image = f"{REGISTRY}/{STACK_REPO}:gaps"
    env = _env(
        OPENWORK_BASE_IMAGE=base,
        OPENWORK_SERVER_BIN=str(STANDIN_SERVER),
        OPENWORK_CACHE_DIR=str(STACK_CACHE_DIR),
        OPENWORK_STATE_DIR=str(tmp_path / "state"),
        OPENWORK_MICROSANDBOX_IMAGE=image,
    )
    started = time.monotonic()
    stamps, lines = [started], []
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "build-image", "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in proc.stdout:
            stamps.append(time.monotonic())
            lines.append(line.rstrip("\n"))
        assert proc.wait(timeout=900) == 0, "\n".join(lines[-30:])
    finally:
        if proc.poll() is None:
            proc.kill()
        built = re.search(r'"image_id": "(sha256:[0-9a-f]+)"', "\n".join(lines))
        subprocess.run(["docker", "rmi", "-f", image, base] + ([built.group(1)] if built else []), capture_output=True)
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    print(
        f"cold build: {stamps[-1] - started:.1f}s, {len(lines)} lines, longest silence {gaps[worst]:.1f}s "
        f"(before: {lines[worst][:80]!r})"
    )
    assert any(line.startswith("  Step ") and "COPY" in line for line in lines)  # Docker's step lines, streamed
    assert not any("Using cache" in line for line in lines)  # a new base: every step ran again
    assert gaps[worst] <= 10, f"{gaps[worst]:.1f}s without a line before {lines[worst]!r}"


def _pullable(ref: str) -> bool:
    if subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0:
        return True
    return subprocess.run(["docker", "pull", "-q", ref], capture_output=True, timeout=300).returncode == 0


def test_build_falls_back_to_the_base_setup_made_when_the_default_cannot_be_pulled(prod_base_image, tmp_path, capsys):
    from openwork_sandbox.config import load_settings
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.image.build import DEFAULT_BASE, SETUP_BASE, ensure_base_image

    if _pullable(DEFAULT_BASE):
        pytest.skip(f"{DEFAULT_BASE} can be pulled here: there is nothing to fall back from")
    assert prod_base_image == SETUP_BASE
    (tmp_path / "empty.env").write_text("")
    settings = load_settings(environ={}, env_file=tmp_path / "empty.env", root=tmp_path)  # the default base
    capsys.readouterr()
    base = ensure_base_image(settings)
    expected_id = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", SETUP_BASE], capture_output=True, text=True
    ).stdout.strip()
    assert base["ref"] == SETUP_BASE and base["id"] == expected_id
    said = [line for line in capsys.readouterr().err.splitlines() if SETUP_BASE in line]
    assert said == [
        f"{DEFAULT_BASE} cannot be pulled here: building on {SETUP_BASE}, the base scripts/setup made "
        "(set OPENWORK_BASE_IMAGE to choose another)"
    ]

    chosen = load_settings(
        environ={"OPENWORK_BASE_IMAGE": DEFAULT_BASE}, env_file=tmp_path / "empty.env", root=tmp_path
    )
    with pytest.raises(WorkflowError, match=f"base image {DEFAULT_BASE} is not available"):
        ensure_base_image(chosen)  # asked for by name: no silent substitute
