"""smoke against a test double of the OpenWork API (real HTTP on loopback, failure injection).

The real stack (stand-in server image, Docker runtime) is exercised in tests/docker/test_smoke_stack.py.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from openwork_sandbox.config import load_settings
from openwork_sandbox.net.openwork_api import join_url, workspace_id
from openwork_sandbox.smoke.modes import run_smoke
from openwork_sandbox.smoke.runner import CHECKS, PREREQUISITES
from tests.standins.openwork_double import OpenWorkDouble
from tests.support.paths import ROOT

TOKEN = "client-token-0123456789abcdef"
HOST_TOKEN = "host-token-0123456789abcdef"
OPT_IN = ("persistence", "prompt-answered")  # run only when asked (--persistence, --prompt)
HTTP_CHECKS = [c for c in CHECKS if c not in OPT_IN]


def settings_for(tmp_path, **flags):
    values = {
        "token": TOKEN,
        "host_token": HOST_TOKEN,
        "request_timeout": "1",
        "health_timeout": "1.5",
        "state_dir": str(tmp_path / "state"),
    }
    values.update(flags)
    return load_settings(values, environ={}, root=tmp_path)


def smoke_json(capsys, settings, url, **kw):
    code = run_smoke(settings, url=url, as_json=True, **kw)
    out = capsys.readouterr()
    report = json.loads(out.out)  # --json: the object alone on stdout
    return code, report, out.err


def results(report):
    return {c["name"]: c["result"] for c in report["checks"]}


def dependents(check):
    """Every check that needs ``check``, directly or not."""
    out = set()
    for name, pres in PREREQUISITES.items():
        if check in pres:
            out |= {name} | dependents(name)
    return out


# --- the pure parts -------------------------------------------------------------------------------


def test_workspace_id_rule():
    assert workspace_id("/workspace") == "ws_c52ddf65534b"


@pytest.mark.parametrize(
    "base, expected",
    [
        ("http://127.0.0.1:8787", "http://127.0.0.1:8787/health"),
        ("http://127.0.0.1:8787/", "http://127.0.0.1:8787/health"),
        ("http://h:1/api", "http://h:1/api/health"),
        ("http://h:1/api/", "http://h:1/api/health"),
        ("http://[::1]:8787", "http://[::1]:8787/health"),
    ],
)
def test_join_url(base, expected):
    assert join_url(base, "/health") == expected
    assert join_url(base, "/x?limit=10").endswith("/x?limit=10")


# --- against the double ---------------------------------------------------------------------------


def test_good_server_passes_every_check(tmp_path, capsys):
    with OpenWorkDouble(token=TOKEN, host_token=HOST_TOKEN) as srv:
        code, report, err = smoke_json(capsys, settings_for(tmp_path), srv.url)
    assert code == 0, err
    assert results(report) == {
        **{c: "passed" for c in HTTP_CHECKS},
        "persistence": "skipped",
        "prompt-answered": "skipped",
    }
    skipped = {c["name"]: c["message"] for c in report["checks"] if c["result"] == "skipped"}
    assert skipped["prompt-answered"] == "not requested (--prompt TEXT)"
    assert report["ok"] is True and report["exit_code"] == 0
    assert report["server"] == {"version": "0.18.1", "opencodeVersion": "1.17.11"}
    assert report["workspace_id"] == "ws_c52ddf65534b"
    assert [c["name"] for c in report["checks"]] == list(CHECKS)
    assert all(isinstance(c["seconds"], (int, float)) for c in report["checks"])
    assert isinstance(report["total_seconds"], (int, float))
    # tokens are masked everywhere, including the human table on stderr
    assert TOKEN not in err and HOST_TOKEN not in err and TOKEN not in json.dumps(report)
    assert "smoke OK" in err


def test_the_smoke_session_is_deleted_afterwards_unless_kept(tmp_path, capsys):
    with OpenWorkDouble(token=TOKEN, host_token=HOST_TOKEN) as srv:
        code, report, err = smoke_json(capsys, settings_for(tmp_path), srv.url)
        assert code == 0, err
        assert srv.sessions == {}  # created, then deleted
        assert any(s.startswith("session-delete DELETE /w/ws_c52ddf65534b/opencode/session/ses_") for s in srv.seen)
        code, report, err = smoke_json(capsys, settings_for(tmp_path), srv.url, keep_session=True)
        assert code == 0, err
        assert len(srv.sessions) == 1 and not any(s.startswith("session-delete") for s in srv.seen[-8:])


def test_a_failed_deletion_is_a_note_and_fails_the_run(tmp_path, capsys):
    with OpenWorkDouble(token=TOKEN, host_token=HOST_TOKEN, fail=("session-delete", "status")) as srv:
        code, report, err = smoke_json(capsys, settings_for(tmp_path), srv.url)
    assert code == 1
    assert set(results(report).values()) <= {"passed", "skipped"}  # every check itself passed
    assert len(report["notes"]) == 1 and "could not delete the smoke session" in report["notes"][0]
    assert "answered 500" in report["notes"][0] and "--keep-session" in report["notes"][0]


def test_a_failed_deletion_note_masks_a_token_cut_by_the_body_limit():
    from openwork_sandbox.net.openwork_api import ApiResponse
    from openwork_sandbox.smoke.runner import SmokeRunner, Target

    runner = SmokeRunner(Target("http://127.0.0.1:9", TOKEN, HOST_TOKEN, "url"), request_timeout=1, health_timeout=1)
    runner.ws_id, runner.session_id = "ws_1", "ses_1"
    body = "x" * 290 + " " + TOKEN  # the token straddles the 300 characters a note keeps
    runner.client.delete_session = lambda ws, sid: ApiResponse("DELETE", "http://127.0.0.1:9/x", 500, body, 0.1)
    runner._delete_session()
    runner.client.close()
    assert len(runner.report.notes) == 1 and "answered 500" in runner.report.notes[0]
    assert TOKEN[:9] not in runner.report.notes[0]


def test_a_body_that_is_not_json_is_not_quoted_in_the_message():
    from openwork_sandbox.net.openwork_api import ApiResponse

    for text, message in (("x" * 290 + " " + TOKEN, "the body is not JSON"), ("  ", "the body is empty")):
        with pytest.raises(ValueError) as caught:
            ApiResponse("GET", "http://127.0.0.1:9/workspaces", 200, text, 0.1).json()
        assert str(caught.value) == message


@pytest.mark.parametrize("check", HTTP_CHECKS)
@pytest.mark.parametrize("kind", ["status", "body"])
def test_one_broken_check_fails_and_dependents_skip(tmp_path, capsys, check, kind):
    with OpenWorkDouble(token=TOKEN, host_token=HOST_TOKEN, fail=(check, kind)) as srv:
        code, report, err = smoke_json(capsys, settings_for(tmp_path), srv.url)
    assert code == 1, err
    got = results(report)
    expected_bad = "error" if check == "health" else "failed"  # health is readiness: JUnit <error>
    assert got[check] == expected_bad
    assert [n for n, r in got.items() if r in ("failed", "error")] == [check]
    for name in dependents(check):
        assert got[name] == "skipped"
        reason = next(c["message"] for c in report["checks"] if c["name"] == name)
        assert reason.startswith("needs ")
    for name in set(HTTP_CHECKS) - dependents(check) - {check}:
        assert got[name] == "passed"
    failed = next(c for c in report["checks"] if c["name"] == check)
    assert failed["http"] and failed["http"]["status"] is not None
    assert failed["http"]["request"].startswith(("GET http://", "POST http://"))


def test_wrong_client_token_names_the_setting(tmp_path, capsys):
    with OpenWorkDouble(token="the-real-token-0123456789", host_token=HOST_TOKEN) as srv:
        code, report, err = smoke_json(capsys, settings_for(tmp_path), srv.url)
    assert code == 1
    check = next(c for c in report["checks"] if c["name"] == "auth-accepted")
    assert check["result"] == "failed"
    assert check["message"].startswith("401 with the configured client token")
    assert "OPENWORK_TOKEN" in check["hint"]
    assert "Traceback" not in err
    assert results(report)["session-create"] == "skipped"


def test_missing_host_token_skips_host_check(tmp_path, capsys):
    settings = load_settings({"token": TOKEN, "request_timeout": "1", "health_timeout": "1"}, environ={}, root=tmp_path)
    with OpenWorkDouble(token=TOKEN, host_token=HOST_TOKEN) as srv:
        code, report, _ = smoke_json(capsys, settings, srv.url)
    assert code == 0
    host = next(c for c in report["checks"] if c["name"] == "host-token")
    assert host["result"] == "skipped" and "OPENWORK_HOST_TOKEN" in host["message"]


@pytest.mark.parametrize("prefix, trailing", [("/api", ""), ("/api", "/"), ("", "/")])
def test_url_with_path_and_trailing_slash(tmp_path, capsys, prefix, trailing):
    with OpenWorkDouble(token=TOKEN, host_token=HOST_TOKEN, prefix=prefix) as srv:
        code, report, err = smoke_json(capsys, settings_for(tmp_path), srv.url + trailing)
        seen = list(srv.seen)
    assert code == 0, err
    assert seen and all(" /" in s for s in seen)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="IPv6 loopback (::1) is not available on this host")
def test_ipv6_loopback_url(tmp_path, capsys):
    with OpenWorkDouble(token=TOKEN, host_token=HOST_TOKEN, host="::1") as srv:
        assert srv.url.startswith("http://[::1]:")
        code, report, err = smoke_json(capsys, settings_for(tmp_path), srv.url)
    assert code == 0, err
    assert report["url"].startswith("http://[::1]:")


def test_nothing_listening_is_exit_3(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        code, report, err = smoke_json(capsys, settings_for(tmp_path, health_timeout="0.5"), f"http://127.0.0.1:{port}")
    assert code == 3
    got = results(report)
    assert got["health"] == "error" and all(r == "skipped" for n, r in got.items() if n != "health")
    assert "nothing listening" in report["checks"][0]["message"]


@pytest.mark.parametrize("check", ["auth-accepted", "host-token", "session-read"])
def test_server_dies_mid_run(tmp_path, capsys, check):
    """The server drops the connection and stops listening at ``check``: that check fails and every
    later one is skipped with the reason (so the run cannot wait on a dead server)."""
    with OpenWorkDouble(token=TOKEN, host_token=HOST_TOKEN, die_on=check) as srv:
        code, report, err = smoke_json(capsys, settings_for(tmp_path), srv.url)
    assert code == 1, err
    got = results(report)
    assert [n for n, r in got.items() if r == "failed"] == [check]
    later = list(CHECKS)[list(CHECKS).index(check) + 1 :]
    for name in later:
        assert got[name] == "skipped"
        assert (
            next(c["message"] for c in report["checks"] if c["name"] == name)
            == f"the server stopped answering during {check}"
        )
    assert "stopped answering" in next(c["message"] for c in report["checks"] if c["name"] == check)


def test_stuck_server_fails_the_check_on_the_request_timeout(tmp_path, capsys):
    with OpenWorkDouble(token=TOKEN, host_token=HOST_TOKEN, hang_on="session-create") as srv:
        code, report, err = smoke_json(capsys, settings_for(tmp_path), srv.url)
    assert code == 1
    check = next(c for c in report["checks"] if c["name"] == "session-create")
    assert check["result"] == "failed" and "OPENWORK_REQUEST_TIMEOUT" in check["message"]
    assert results(report)["session-read"] == "skipped"


def test_junit_one_testcase_per_check(tmp_path, capsys):
    junit = tmp_path / "reports" / "ci" / "smoke.xml"  # a folder that does not exist yet is made
    with OpenWorkDouble(token=TOKEN, host_token=HOST_TOKEN, fail=("session-read", "body")) as srv:
        code = run_smoke(settings_for(tmp_path), url=srv.url, junit=str(junit))
    assert code == 1
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == list(CHECKS)
    assert all(float(c.get("time")) >= 0 for c in cases)
    by_name = {c.get("name"): c for c in cases}
    failure = by_name["session-read"].find("failure")
    assert failure is not None and "GET http://" in failure.text and "status:  200" in failure.text
    assert "body:" in failure.text
    assert by_name["persistence"].find("skipped") is not None
    assert by_name["health"].find("failure") is None and by_name["health"].find("skipped") is None
    assert suite.get("tests") == str(len(CHECKS)) and suite.get("failures") == "1"
    assert TOKEN not in junit.read_text()


def test_junit_health_not_ready_is_an_error(tmp_path):
    junit = tmp_path / "smoke.xml"
    with OpenWorkDouble(token=TOKEN, host_token=HOST_TOKEN, fail=("health", "status")) as srv:
        assert run_smoke(settings_for(tmp_path, health_timeout="0.5"), url=srv.url, junit=str(junit)) == 1
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert cases["health"].find("error") is not None
    assert all(cases[n].find("skipped") is not None for n in CHECKS[1:])


def test_github_actions_extras(tmp_path, capsys, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    with OpenWorkDouble(token=TOKEN, host_token=HOST_TOKEN, fail=("messages-read", "status")) as srv:
        code = run_smoke(settings_for(tmp_path), url=srv.url)
    err = capsys.readouterr().err
    assert code == 1
    assert "::error title=smoke messages-read::" in err
    text = summary.read_text()
    assert "| check | result | time | detail |" in text and "| messages-read | ❌ failed" in text


def test_terminal_table_without_json(tmp_path, capsys):
    with OpenWorkDouble(token=TOKEN, host_token=HOST_TOKEN, fail=("host-token", "status")) as srv:
        code = run_smoke(settings_for(tmp_path), url=srv.url)
    out = capsys.readouterr()
    assert code == 1 and out.out == ""  # human output on stderr only
    lines = out.err.splitlines()
    assert lines[0].split() == ["check", "result", "time", "detail"]
    row = next(ln for ln in lines if ln.startswith("host-token "))
    assert "failed" in row and " ms " in row
    assert "request: GET http://" in out.err and "status:  500" in out.err
    assert TOKEN not in out.err and HOST_TOKEN not in out.err


def test_secret_json_values_are_masked():
    from openwork_sandbox.core.report import redact

    text = redact('{"password": "opencode-secret-value-123", "x": "client-token-0123456789abcdef"}', [TOKEN])
    assert "opencode-secret-value-123" not in text and TOKEN not in text


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"url": "ftp://x", "ephemeral": False}, "expected an http(s) URL"),
        ({"url": "http://127.0.0.1:1", "ephemeral": True}, "drop --url"),
        ({"url": "http://127.0.0.1:1", "persistence": True}, "needs a local sandbox"),
    ],
)
def test_bad_usage_is_a_settings_error(tmp_path, kwargs, fragment):
    from openwork_sandbox.core.errors import SettingsError

    with pytest.raises(SettingsError) as info:
        run_smoke(settings_for(tmp_path), **kwargs)
    assert fragment in str(info.value) and info.value.exit_code == 2


def test_ephemeral_bad_settings_are_exit_2_and_leave_nothing(tmp_path):
    """A port published beyond loopback with a short token: `up` refuses before creating anything,
    and smoke --ephemeral reports it as bad settings (exit 2), not as a failed check."""
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.sandbox.up import up

    settings = settings_for(tmp_path, connect_host="0.0.0.0", token="short", host_token="also-short", runtime="docker")
    with pytest.raises(WorkflowError) as info:
        run_smoke(settings, ephemeral=True, boot=up)
    assert info.value.exit_code == 2 and "OPENWORK_TOKEN" in info.value.message
    state = tmp_path / "state"
    assert not state.exists() or list(state.iterdir()) == []


def _invoke(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENWORK")}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "invoke", "smoke", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_task_exit_codes_through_invoke(tmp_path):
    """The real task: 0 against a good server, 3 with nothing listening, 2 for bad usage, no traceback."""
    env = {
        "OPENWORK_TOKEN": TOKEN,
        "OPENWORK_HOST_TOKEN": HOST_TOKEN,
        "OPENWORK_REQUEST_TIMEOUT": "1",
        "OPENWORK_HEALTH_TIMEOUT": "0.5",
        "OPENWORK_ENV_FILE": str(tmp_path / "none.env"),
    }
    (tmp_path / "none.env").write_text("")
    with OpenWorkDouble(token=TOKEN, host_token=HOST_TOKEN) as srv:
        ok = _invoke("--url", srv.url, "--json", env_extra=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = _invoke("--url", f"http://127.0.0.1:{s.getsockname()[1]}", env_extra=env)
    assert dead.returncode == 3 and "Traceback" not in dead.stderr
    bad = _invoke("--url", "nonsense", env_extra=env)
    assert bad.returncode == 2 and "--url" in bad.stderr and "Traceback" not in bad.stderr


# --- the checks are declared once -------------------------------------------------------------------


def test_declarations_feed_the_runner_the_doc_and_the_help():
    from openwork_sandbox.smoke import checks as smoke_checks
    from openwork_sandbox.smoke import runner as smoke

    assert CHECKS == (
        "health",
        "auth-required",
        "auth-accepted",
        "host-token",
        "session-create",
        "session-read",
        "messages-read",
        "prompt-answered",
        "persistence",
    )
    assert PREREQUISITES["session-read"] == ("session-create",) and PREREQUISITES["health"] == ()
    assert [c.name for c in smoke_checks.DECLARED if c.readiness] == ["health"]
    for c in smoke_checks.DECLARED:
        assert f"{c.name}  " in smoke.__doc__ and c.proves in smoke.__doc__
    listing = subprocess.run(
        [sys.executable, "-m", "invoke", "--help", "smoke"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert re.search(r"session-create +POST /w/<id>/opencode/session", listing.stdout), listing.stdout


def test_a_check_must_name_earlier_prerequisites():
    from openwork_sandbox.smoke.checks import check

    with pytest.raises(ValueError, match="unknown or later prerequisites"):
        check("later", needs=("not-declared",), proves="nothing")(lambda r: "")
    with pytest.raises(ValueError, match="duplicate"):
        check("health", proves="twice")(lambda r: "")
