"""No AVX on the real engine: `doctor` names this host's AVX, and `up` of an image whose orchestrator crashes without AVX ends in one line."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.support.lifecycle import build_and_push, docker_env, invoke
from tests.support.paths import DATA, REGISTRY, ROOT

CRASH = DATA / "bun-crash-no-avx.txt"
LINE = "this CPU has no AVX: openwork-orchestrator 0.18.1 cannot run here"


@pytest.mark.docker
def test_doctor_reports_this_hosts_avx(services, tmp_path):
    from openwork_sandbox.runtimes.probe import cpu_flags

    proc = invoke(tmp_path, "doctor", "--json")
    rows = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert rows["cpu avx"]["ok"] is ("avx" in (cpu_flags() or ())), rows["cpu avx"]


@pytest.fixture(scope="module")
def crashing_image(prod_base_image, tmp_path_factory):
    ctx = tmp_path_factory.mktemp("noavx")
    shutil.copy(CRASH, ctx / "crash.txt")
    return build_and_push(
        ctx,
        f"FROM {prod_base_image}\nCOPY crash.txt /crash.txt\n"
        'CMD ["sh", "-c", "echo [openwork-orchestrator] starting; sleep 1; cat /crash.txt; exit 132"]\n',
        f"{REGISTRY}/owtest-noavx:bun-crash",
    )


@pytest.mark.docker
def test_up_ends_with_one_line_naming_the_missing_avx(crashing_image, tmp_path):
    env = docker_env(crashing_image, "noavx", health_timeout="60")
    try:
        proc = invoke(tmp_path, "up", **env)
        assert proc.returncode == 1, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert LINE in last and "OPENWORK_ORCHESTRATOR_BIN_PATH" in last, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "panic(main thread)" not in proc.stderr  # the cause, not Bun's report
        assert "start 2 of" not in proc.stderr  # a CPU does not grow AVX on a retry
    finally:
        invoke(tmp_path, "reset", "--yes", **env)


@pytest.fixture(scope="module")
def supervised_crashing_image(prod_base_image, tmp_path_factory):
    """The same crash under the image's real supervisor, as the real entrypoint runs `openwork serve`:
    it starts the dead orchestrator again and again, so the sandbox itself never stops."""
    ctx = tmp_path_factory.mktemp("noavx-supervised")
    shutil.copy(CRASH, ctx / "crash.txt")
    shutil.copy(ROOT / "openwork_sandbox" / "image" / "context" / "openwork-supervise", ctx / "openwork-supervise")
    return build_and_push(
        ctx,
        f"FROM {prod_base_image}\nCOPY crash.txt /crash.txt\n"
        "COPY openwork-supervise /usr/local/bin/openwork-supervise\n"
        'CMD ["/usr/local/bin/openwork-supervise", "sh", "-c", '
        '"echo [openwork-orchestrator] starting; sleep 1; cat /crash.txt; exit 132"]\n',
        f"{REGISTRY}/owtest-noavx:bun-crash-supervised",
    )


@pytest.mark.docker
def test_a_supervised_orchestrator_without_avx_ends_up_at_once_with_the_one_line(supervised_crashing_image, tmp_path):
    """Found by the real orchestrator in a microVM without AVX: `up` waited out its whole deadline
    ("not healthy within 900s ... openwork-supervise: starting openwork again (restart 41)")."""
    env = docker_env(supervised_crashing_image, "noavx-sup", health_timeout="600")
    try:
        proc = invoke(tmp_path, "up", timeout=300, **env)
        assert proc.returncode == 1, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert LINE in last and "OPENWORK_ORCHESTRATOR_BIN_PATH" in last, proc.stderr
        assert "not healthy within" not in proc.stderr and "panic(main thread)" not in proc.stderr
    finally:
        invoke(tmp_path, "reset", "--yes", **env)
