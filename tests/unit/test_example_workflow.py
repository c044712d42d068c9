"""examples/github-actions.yml: valid YAML, the steps the README promises, and every
``openwork-sandbox``/``invoke`` command it runs parses against the real collection (tasks and flags)."""

from __future__ import annotations

import shlex

import pytest
import yaml
from invoke.parser import Parser

from openwork_sandbox.tasks import ns
from tests.support.paths import ROOT

EXAMPLE = ROOT / "examples" / "github-actions.yml"


@pytest.fixture(scope="module")
def job():
    workflow = yaml.safe_load(EXAMPLE.read_text())
    assert workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True
    (only,) = workflow["jobs"].values()
    return only


def _steps(job) -> dict[str, dict]:
    return {step["name"]: step for step in job["steps"]}


def _commands(job) -> list[list[str]]:
    """Each ``openwork-sandbox``/``invoke`` command line in the job's ``run`` scripts, split."""
    found = []
    for step in job["steps"]:
        for line in step.get("run", "").splitlines():
            if line.split()[:1] in (["openwork-sandbox"], ["invoke"]):
                found.append(shlex.split(line))
    return found


def test_the_steps_are_there_in_order(job):
    names = [step["name"] for step in job["steps"]]
    expected = [
        "Install openwork-sandbox",
        "Enable KVM",
        "Restore the download cache",
        "Log in to GHCR",
        "Build and push the image",
        "Boot the sandbox",
        "Smoke test remote connect",
        "Upload the smoke report",
        "Remove the sandbox",
    ]
    assert [n for n in names if n in expected] == expected
    steps = _steps(job)
    assert steps["Log in to GHCR"]["uses"].startswith("docker/login-action@")
    assert steps["Log in to GHCR"]["with"]["registry"] == "ghcr.io"
    assert job["env"]["OPENWORK_MICROSANDBOX_IMAGE"].startswith("ghcr.io/")
    assert job["env"]["OPENWORK_MICROSANDBOX_RUNTIME"] == "microsandbox"
    assert "kvm" in steps["Enable KVM"]["run"]


def test_the_cache_keeps_the_download_cache_dir(job):
    cache = _steps(job)["Restore the download cache"]
    assert cache["uses"].startswith("actions/cache@")
    assert cache["with"]["path"] == "${{ env.OPENWORK_CACHE_DIR }}" and job["env"]["OPENWORK_CACHE_DIR"]
    assert cache["with"]["restore-keys"] and cache["with"]["key"].startswith(cache["with"]["restore-keys"])


def test_the_report_is_uploaded_and_reset_always_runs(job):
    steps = _steps(job)
    smoke = shlex.split(steps["Smoke test remote connect"]["run"])
    report = smoke[smoke.index("--junit") + 1]
    upload = steps["Upload the smoke report"]
    assert upload["uses"].startswith("actions/upload-artifact@") and upload["with"]["path"] == report
    assert upload["if"] == "always()"
    assert steps["Remove the sandbox"]["if"] == "always()"
    assert shlex.split(steps["Remove the sandbox"]["run"]) == ["openwork-sandbox", "reset", "--yes"]
    assert "--github-output" in steps["Boot the sandbox"]["run"] and steps["Boot the sandbox"]["id"]


def test_every_command_exists_as_a_task_with_those_flags(job):
    commands = _commands(job)
    assert len(commands) >= 5
    parser = Parser(contexts=ns.to_contexts())
    ran = []
    for words in commands:
        for context in parser.parse_argv(words[1:]):  # ParseError: no such task or flag
            ran.append(context.name)
    assert {"doctor", "build-image", "push-image", "up", "smoke", "reset"} <= set(ran)


def test_the_readme_points_at_the_example():
    assert "examples/github-actions.yml" in (ROOT / "README.md").read_text()
