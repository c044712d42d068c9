"""Unit tests: OPENWORK_SANDBOX_ENV and OPENWORK_OPENCODE_CONFIG parsing and checks, the 0600 folder
and its shell quoting (run by the real sh), what `up` says changed, and reading opencode's reply.

The reply shapes below are literal copies of what the real opencode 1.17.11 answered
(``GET /session/<id>/message``, ``GET /session/status``) against tests/standins/standin_openai_provider.py.
"""

from __future__ import annotations

import json
import stat
import subprocess

import pytest

from openwork_sandbox.config import load_settings
from openwork_sandbox.config.opencode import load
from openwork_sandbox.core.errors import SettingsError
from openwork_sandbox.runtimes.base import ABSENT, RUNNING, RuntimeStatus
from openwork_sandbox.sandbox.decision import RECREATE, Observed, decide_up
from openwork_sandbox.smoke.agent_reply import describe_error, read_reply, scrub
from openwork_sandbox.state import secrets as sandbox_secrets


def settings(tmp_path, environ=None, dotenv="", **flags):
    env_file = tmp_path / "test.env"
    env_file.write_text(dotenv)
    return load_settings(
        flags,
        environ={"OPENWORK_STATE_DIR": str(tmp_path / "state"), **(environ or {})},
        env_file=env_file,
        root=tmp_path,
    )


# --- OPENWORK_SANDBOX_ENV ------------------------------------------------------------------------


def test_names_are_parsed_trimmed_and_deduplicated(tmp_path):
    s = settings(
        tmp_path,
        {
            "OPENWORK_SANDBOX_ENV": " ANTHROPIC_API_KEY, OPENAI_API_KEY,,ANTHROPIC_API_KEY ",
            "ANTHROPIC_API_KEY": "a-value",
            "OPENAI_API_KEY": "o-value",
        },
    )
    assert s.sandbox_env == ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")
    assert s.sandbox_env_values == {"ANTHROPIC_API_KEY": "a-value", "OPENAI_API_KEY": "o-value"}
    assert s.public_dict()["OPENWORK_SANDBOX_ENV"] == "ANTHROPIC_API_KEY,OPENAI_API_KEY"
    assert "a-value" not in repr(s) and "a-value" not in json.dumps(s.public_dict(), default=str)


def test_unset_by_default(tmp_path):
    s = settings(tmp_path)
    assert s.sandbox_env == () and s.sandbox_env_values == {} and s.opencode_config is None
    assert sandbox_secrets.gather(s).empty


@pytest.mark.parametrize(
    "raw, words",
    [
        ("NOT-A-NAME", "'NOT-A-NAME' is not a variable name"),
        ("1ABC", "'1ABC' is not a variable name"),
        ("OPENWORK_TOKEN", "OPENWORK_TOKEN is set by the sandbox itself"),
        ("GOOD,HOME", "HOME is set by the sandbox itself"),
        ("OPENCODE_CONFIG", "OPENCODE_CONFIG is set by the sandbox itself"),
    ],
)
def test_bad_names_are_one_line_naming_the_setting(tmp_path, raw, words):
    with pytest.raises(SettingsError) as caught:
        settings(tmp_path, {"OPENWORK_SANDBOX_ENV": raw})
    assert len(caught.value.problems) == 1
    line = caught.value.problems[0]
    assert line.startswith(f'OPENWORK_SANDBOX_ENV="{raw}" (from environment): ') and words in line


def test_values_come_from_the_environment_before_the_env_file(tmp_path):
    s = settings(
        tmp_path,
        {"A_KEY": "from-environment"},
        dotenv="OPENWORK_SANDBOX_ENV=A_KEY,B_KEY\nA_KEY=from-file\nB_KEY=file-only\n",
    )
    assert s.sandbox_env_values == {"A_KEY": "from-environment", "B_KEY": "file-only"}


def test_an_unset_or_empty_variable_is_one_line_naming_it(tmp_path):
    s = settings(tmp_path, {"OPENWORK_SANDBOX_ENV": "SET_KEY,UNSET_KEY,EMPTY_KEY", "SET_KEY": "v", "EMPTY_KEY": ""})
    with pytest.raises(SettingsError) as caught:
        sandbox_secrets.gather(s)
    assert caught.value.exit_code == 2
    assert caught.value.problems == [
        "UNSET_KEY and EMPTY_KEY are named in OPENWORK_SANDBOX_ENV (from environment) but are not set (or empty): "
        "export it, add it to .env, or drop it from OPENWORK_SANDBOX_ENV"
    ]


def test_a_bad_env_line_hides_a_secret_looking_value(tmp_path):
    with pytest.raises(SettingsError) as caught:
        settings(tmp_path, dotenv='OPENAI_API_KEY="sk-abcdefghijklmnop\n')
    assert "sk-abc" not in caught.value.message and "OPENAI_API_KEY" in caught.value.message


def test_github_actions_masks_every_value(tmp_path, monkeypatch, capsys):
    from openwork_sandbox.core import gha
    from openwork_sandbox.state import store as state

    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setattr(gha, "_MASKED", set())
    state.mask_settings(settings(tmp_path, {"OPENWORK_SANDBOX_ENV": "P_KEY", "P_KEY": "sk-very-secret-value-1"}))
    assert "::add-mask::sk-very-secret-value-1" in capsys.readouterr().err


# --- the folder and its shell quoting ------------------------------------------------------------

TRICKY = {"QUOTES": 'it\'s "quoted" $(echo no) `echo no` $HOME \\ end', "LINES": "one\ntwo\n", "SPACE": " a b "}


def test_the_env_script_round_trips_through_sh(tmp_path):
    script = tmp_path / "sandbox.env"
    script.write_text(sandbox_secrets.SandboxSecrets(TRICKY).env_script())
    for name, value in TRICKY.items():  # the value is never on the command line: sh reads the file
        proc = subprocess.run(
            ["sh", "-c", f'. "$0"; printf %s "${name}"', str(script)],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin"},
        )
        assert proc.returncode == 0 and proc.stdout == value, (name, proc.stdout, proc.stderr)


def test_write_makes_a_0700_folder_of_0600_files_and_cleans_up(tmp_path):
    s = settings(tmp_path)
    folder = sandbox_secrets.write(s, sandbox_secrets.SandboxSecrets({"K": "v"}, '{"model": "a/b"}'))
    assert folder == s.sandbox_state_dir / "sandbox-secrets"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == ["opencode.jsonc", "sandbox.env"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
    assert (folder / "opencode.jsonc").read_text() == '{"model": "a/b"}'
    sandbox_secrets.write(s, sandbox_secrets.SandboxSecrets({"K": "v"}))  # the config dropped
    assert [p.name for p in folder.iterdir()] == ["sandbox.env"]
    assert sandbox_secrets.write(s, sandbox_secrets.SandboxSecrets()) is None and not folder.exists()


def test_what_changed_is_named():
    a = sandbox_secrets.SandboxSecrets({"K": "v1"}, "{}")
    b = sandbox_secrets.SandboxSecrets({"K": "v2"}, "{}")
    c = sandbox_secrets.SandboxSecrets({"K": "v1"})
    assert sandbox_secrets.changed_parts(a.digests(), a.digests()) == ()
    assert sandbox_secrets.changed_parts(a.digests(), b.digests()) == ("OPENWORK_SANDBOX_ENV (names or values)",)
    assert sandbox_secrets.changed_parts(a.digests(), c.digests()) == ("OPENWORK_OPENCODE_CONFIG",)
    assert sandbox_secrets.changed_parts(None, {}) == ()
    assert "v1" not in json.dumps(a.digests())


def test_up_says_which_secret_setting_made_it_recreate():
    seen = Observed(
        name="sb",
        kind="docker",
        recorded="docker",
        status=RuntimeStatus(RUNNING, fingerprint="old"),
        fingerprint="new",
        replace=False,
        health={"ok": True},
        port_free=False,
        changed=("OPENWORK_SANDBOX_ENV (names or values)",),
    )
    decision = decide_up(seen)
    assert decision.action == RECREATE
    assert decision.reason == (
        "sb was created with another OPENWORK_SANDBOX_ENV (names or values): recreating it so "
        "the change takes effect (state folders kept)"
    )
    absent = Observed(
        name="sb",
        kind="docker",
        recorded=None,
        status=RuntimeStatus(ABSENT),
        fingerprint="new",
        replace=False,
        health=None,
        port_free=True,
        changed=("OPENWORK_OPENCODE_CONFIG",),
    )
    assert decide_up(absent).action == "create"


def test_the_launch_spec_mounts_the_folder_read_only_and_keeps_values_out_of_the_env(tmp_path):
    from openwork_sandbox.sandbox.launch import launch_spec

    s = settings(tmp_path, {"OPENWORK_SANDBOX_ENV": "P_KEY", "P_KEY": "sk-launch-secret-000"})
    spec = launch_spec(s, "docker", "t" * 40, "h" * 40, sandbox_secrets.gather(s))
    server_secrets = {"/srv/openwork/secrets": (s.sandbox_state_dir / "server-secrets").resolve()}
    agent_secrets = {"/etc/openwork-sandbox": (s.sandbox_state_dir / "sandbox-secrets").resolve()}
    assert spec.readonly_mounts == {**server_secrets, **agent_secrets}
    assert "sk-launch-secret-000" not in json.dumps(spec.env) and "P_KEY" not in spec.env
    assert "t" * 40 not in json.dumps(spec.env) and "h" * 40 not in json.dumps(spec.env)
    bare = launch_spec(s.with_overrides(sandbox_env=(), sandbox_env_values={}), "docker", "t" * 40, "h" * 40)
    assert bare.readonly_mounts == server_secrets and bare.fingerprint != spec.fingerprint


def test_the_microvm_mounts_the_folder_read_only(tmp_path):
    pytest.importorskip("microsandbox")
    from openwork_sandbox.runtimes.microsandbox.spec import create_kwargs
    from openwork_sandbox.sandbox.launch import launch_spec

    s = settings(tmp_path, {"OPENWORK_SANDBOX_ENV": "P_KEY", "P_KEY": "sk-launch-secret-000"})
    spec = launch_spec(s, "microsandbox", "t" * 40, "h" * 40, sandbox_secrets.gather(s))
    spec.mounts["/workspace"].mkdir(parents=True, exist_ok=True)
    kwargs = create_kwargs(spec)
    volume = kwargs["volumes"]["/etc/openwork-sandbox"]
    assert volume.readonly is True and volume.bind == str((s.sandbox_state_dir / "sandbox-secrets").resolve())
    assert kwargs["volumes"]["/workspace"].readonly is False
    assert kwargs["env"]["OPENWORK_HOST_ADDRESS"] == "host.microsandbox.internal"
    assert "sk-launch-secret-000" not in json.dumps(kwargs["env"])


# --- OPENWORK_OPENCODE_CONFIG --------------------------------------------------------------------


def test_a_jsonc_config_is_read_with_its_providers_and_model(tmp_path):
    path = tmp_path / "opencode.jsonc"
    path.write_text(
        '{\n  // comment, "with quotes"\n  "provider": {"standin": {"options": {"apiKey": "{env:S_KEY}",'
        ' "baseURL": "http://a/*not a comment*/"},},}, /* block */\n  "model": "standin/m",\n}\n'
    )
    config = load(path)
    assert config.providers == ("standin",) and config.model == "standin/m"
    assert config.env_refs == ("S_KEY",) and config.base_urls() == {"standin": "http://a/*not a comment*/"}
    assert config.literal_keys() == ()


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"model": "x/y",', "not valid JSON/JSONC at line 1, column"),
        ("[1, 2]", "expected a JSON object at the top, got list"),
        ('{"provider": []}', '"provider" must be an object of providers'),
        ('{"provider": {"a": 1}}', '"provider.a" must be an object'),
        ('{"model": "claude"}', '"model" must be written provider/model'),
        ('{"disabled_providers": "openai"}', '"disabled_providers" must be a list of provider names'),
        ("/* never closed", "a /* comment is never closed"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_file(tmp_path, text, problem):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(SettingsError) as caught:
        load(path, "environment")
    (line,) = caught.value.problems
    assert line.startswith(f"OPENWORK_OPENCODE_CONFIG={path} (from environment): ") and problem in line


def test_a_missing_config_stops_up_before_anything_starts(tmp_path):
    s = settings(tmp_path, {"OPENWORK_OPENCODE_CONFIG": str(tmp_path / "nope.json")})
    with pytest.raises(SettingsError) as caught:
        sandbox_secrets.gather(s)
    assert caught.value.problems == [
        f"OPENWORK_OPENCODE_CONFIG={tmp_path / 'nope.json'} (from environment): no such "
        "file; point it at opencode's config (JSON or JSONC)"
    ]


def test_doctor_lists_providers_model_and_which_variables_are_set(tmp_path):
    from openwork_sandbox.sandbox.doctor import agent_summary, check_opencode_config, check_sandbox_env

    path = tmp_path / "c.json"
    path.write_text(
        '{"provider": {"local": {"options": {"baseURL": "http://127.0.0.1:11434/v1", '
        '"apiKey": "{env:LOCAL_KEY}"}}}, "model": "local/llama"}'
    )
    s = settings(
        tmp_path,
        {
            "OPENWORK_SANDBOX_ENV": "LOCAL_KEY,OTHER_KEY",
            "LOCAL_KEY": "sk-doctor-secret",
            "OPENWORK_OPENCODE_CONFIG": str(path),
        },
    )
    env_check = check_sandbox_env(s)
    assert not env_check.ok and env_check.detail == "LOCAL_KEY set, OTHER_KEY UNSET"
    config_check = check_opencode_config(s, "microsandbox")
    assert config_check.ok and "providers local; default model local/llama; keys from LOCAL_KEY" in config_check.detail
    assert "host.microsandbox.internal" in config_check.detail  # 127.0.0.1 in a microVM is the microVM
    assert "host.microsandbox.internal" not in check_opencode_config(s, "docker").detail
    summary = agent_summary(s)
    assert summary["providers"] == ["local"] and summary["model"] == "local/llama"
    assert summary["sandbox_env"] == {"LOCAL_KEY": True, "OTHER_KEY": False}
    assert "sk-doctor-secret" not in json.dumps(summary) + env_check.detail + config_check.detail


# --- opencode's reply, as the real opencode 1.17.11 wrote it -----------------------------------------

USER = {
    "info": {"id": "msg_u", "role": "user", "time": {"created": 1796117924339}},
    "parts": [{"type": "text", "text": "Say hello"}],
}
DONE = {
    "info": {
        "id": "msg_a",
        "parentID": "msg_u",
        "role": "assistant",
        "providerID": "standin",
        "modelID": "standin-model",
        "time": {"created": 1796117924525, "completed": 1796117925874},
    },
    "parts": [
        {"type": "step-start"},
        {
            "type": "text",
            "text": "Hello from the stand-in provider. The sandbox's agent answered.",
            "time": {"start": 1796117924764, "end": 1796117924863},
        },
        {"type": "step-finish", "reason": "stop"},
    ],
}
REFUSED = {
    "info": {
        "id": "msg_a",
        "parentID": "msg_u",
        "role": "assistant",
        "time": {"created": 1796117924525},
        "error": {
            "name": "APIError",
            "data": {"message": "Incorrect API key provided: sk-te****23", "statusCode": 401, "isRetryable": False},
        },
    },
    "parts": [],
}
OPEN = {
    "info": {"id": "msg_a", "parentID": "msg_u", "role": "assistant", "time": {"created": 1796117924525}},
    "parts": [],
}
RETRY = {"ses_1": {"type": "retry", "attempt": 1, "message": "Rate limit reached for requests", "next": 1}}


def test_a_complete_reply():
    reply = read_reply([USER, DONE], {}, "ses_1")
    assert reply.done and reply.error is None and reply.retrying is None
    assert reply.text.startswith("Hello from the stand-in provider.")
    assert reply.first_token_s == pytest.approx(0.425) and reply.model == "standin/standin-model"


def test_a_refusal_a_retry_and_a_reply_not_yet_begun():
    refused = read_reply([USER, REFUSED], {}, "ses_1")
    assert refused.done and refused.error == "401 Incorrect API key provided: sk-te****23"
    retrying = read_reply([USER, OPEN], RETRY, "ses_1")
    assert not retrying.done and retrying.retrying == "Rate limit reached for requests (attempt 1)"
    waiting = read_reply([USER], {"ses_1": {"type": "busy"}}, "ses_1")
    assert not waiting.done and waiting.retrying is None and waiting.text == ""


def test_errors_are_one_line_and_key_shaped_words_are_masked():
    assert describe_error({"name": "ProviderAuthError", "data": {"message": "no\nkey"}}) == "no key (ProviderAuthError)"
    assert scrub("Incorrect API key provided: sk-proj-abcdefghijkl") == "Incorrect API key provided: sk-****"


# --- the prompt-answered check's own paths (a client stub that answers as opencode did) -------------


class _Stub:
    """STAND-IN for OpenWorkClient's three calls the check makes, answering with literal opencode
    bodies (above); everything else is the real check code."""

    def __init__(self, prompt_status=204, messages=(USER, DONE), status=None):
        from openwork_sandbox.net.openwork_api import ApiResponse

        self.r = lambda code, body: ApiResponse("GET", "http://127.0.0.1:9/x", code, json.dumps(body), 0.01)
        self.prompt_status, self.messages, self.status, self.aborted = prompt_status, list(messages), status, 0

    def prompt_async(self, ws, sid, text):
        return self.r(self.prompt_status, {"name": "BadRequest"} if self.prompt_status != 204 else None)

    def session_messages(self, ws, sid, limit=10):
        return self.r(200, self.messages)

    def session_status(self, ws):
        return self.r(200, self.status or {})

    def abort_session(self, ws, sid):
        self.aborted += 1
        return self.r(200, True)


def _run_check(stub, timeout=0.3):
    from openwork_sandbox.smoke.checks import prompt_answered

    class R:
        client, prompt, prompt_timeout, ws_id, session_id, metrics = stub, "Say hello", timeout, "ws_1", "ses_1", {}

    return R, prompt_answered


@pytest.mark.parametrize(
    "stub, words, aborted",
    [
        (_Stub(), None, 0),
        (_Stub(prompt_status=400), "POST /w/ws_1/opencode/session/ses_1/prompt_async answered 400, expected 204", 0),
        (_Stub(messages=(USER, REFUSED)), "the provider refused: 401 Incorrect API key provided: sk-te****23", 0),
        (_Stub(messages=(USER, OPEN), status=RETRY), "the provider failed and opencode is retrying: Rate limit", 1),
        (_Stub(messages=(USER, OPEN)), "no complete reply within 0.3s (OPENWORK_PROMPT_TIMEOUT)", 1),
    ],
)
def test_the_check_passes_fails_and_aborts_as_opencode_answers(stub, words, aborted):
    from openwork_sandbox.smoke.checks import CheckFailed

    r, check = _run_check(stub)
    if words is None:
        detail = check(r)
        assert detail.startswith('"Hello from the stand-in provider.') and "standin/standin-model" in detail
        assert r.metrics["prompt-answered"]["first_token_seconds"] == pytest.approx(0.425)
    else:
        with pytest.raises(CheckFailed) as caught:
            check(r)
        assert caught.value.message.startswith(words) and "\n" not in caught.value.message
    assert stub.aborted == aborted


def test_invoke_up_stops_with_one_line_before_anything_starts(tmp_path):
    """The real `invoke up` (a separate process): an unset variable, then a bad config; exit 2, one
    line each, no traceback, and no state folder made."""
    import os
    import sys

    from tests.support.lifecycle import ROOT

    bad = tmp_path / "bad.jsonc"
    bad.write_text('{"model": "no-slash"}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENWORK")}
    env.update(
        OPENWORK_STATE_DIR=str(tmp_path / "state"),
        OPENWORK_MICROSANDBOX_RUNTIME="docker",
        OPENWORK_SANDBOX_ENV="NOT_SET_ANYWHERE_KEY",
    )
    (tmp_path / "empty.env").write_text("")
    argv = [sys.executable, "-m", "invoke", "up", "--env-file", str(tmp_path / "empty.env")]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "NOT_SET_ANYWHERE_KEY is named in OPENWORK_SANDBOX_ENV (from environment) but is not set (or empty): "
        "export it, add it to .env, or drop it from OPENWORK_SANDBOX_ENV"
    ]
    env.update(OPENWORK_SANDBOX_ENV="", OPENWORK_OPENCODE_CONFIG=str(bad))
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f'OPENWORK_OPENCODE_CONFIG={bad} (from environment): "model" must be written provider/model, '
        'e.g. "anthropic/claude-sonnet-4-5"'
    ], proc.stderr
    assert not (tmp_path / "state").exists()
