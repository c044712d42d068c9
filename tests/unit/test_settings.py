"""Settings: precedence (flag > environment > .env > default) and every validation rule."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from openwork_sandbox.config import SPECS, ImageRef, load_settings
from openwork_sandbox.config.specs import DEFAULT_IMAGE
from openwork_sandbox.core.errors import SettingsError
from tests.support.paths import ROOT


def load(tmp_path, env=None, dotenv=None, flags=None, env_file=None):
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv)
    return load_settings(flags or {}, environ=env or {}, root=tmp_path, env_file=env_file)


def problems(tmp_path, **kwargs) -> list[str]:
    with pytest.raises(SettingsError) as info:
        load(tmp_path, **kwargs)
    assert info.value.exit_code == 2
    return info.value.problems


# --- precedence -----------------------------------------------------------------------------


def test_defaults(tmp_path):
    s = load(tmp_path)
    assert s.image == DEFAULT_IMAGE
    assert s.image_ref.registry == "127.0.0.1:5000"
    assert s.name == "openwork-microsandbox"
    assert s.port == 8787
    assert s.workspace_dir == tmp_path / ".state" / "openwork-microsandbox" / "workspace"
    assert s.data_dir == tmp_path / ".state" / "openwork-microsandbox" / "data"
    assert s.token is None and s.host_token is None  # generated per sandbox, never a fixed default
    assert s.runtime == "auto"
    assert s.replace is False
    assert (s.orchestrator_version, s.server_version, s.opencode_version) == ("0.18.1", "0.18.1", "1.17.11")
    assert s.base_image == "debian:bookworm-slim"
    assert s.url == "http://127.0.0.1:8787"
    assert s.bind_address == "127.0.0.1"


def test_precedence_flag_over_env_over_dotenv_over_default(tmp_path):
    dotenv = "OPENWORK_MICROSANDBOX_PORT=9001\nOPENWORK_MICROSANDBOX_NAME=from-dotenv\nOPENWORK_MICROSANDBOX_CPUS=3\n"
    env = {"OPENWORK_MICROSANDBOX_PORT": "9002", "OPENWORK_MICROSANDBOX_NAME": "from-env"}
    s = load(tmp_path, env=env, dotenv=dotenv, flags={"port": 9003})
    assert s.port == 9003 and s.origin("port") == "flag --port"
    assert s.name == "from-env" and s.origin("name") == "environment"
    assert s.cpus == 3 and s.origin("cpus") == ".env:3" or s.origin("cpus").endswith(".env:3")
    assert s.memory == 2048 and s.origin("memory") == "default"
    # the state folders follow the name
    assert s.workspace_dir == tmp_path / ".state" / "from-env" / "workspace"


def test_none_flags_fall_through(tmp_path):
    s = load(tmp_path, env={"OPENWORK_MICROSANDBOX_PORT": "9100"}, flags={"port": None})
    assert s.port == 9100


def test_dotenv_never_overrides_environment_and_os_environ_untouched(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("OPENWORK_CONNECT_HOST", raising=False)
    (tmp_path / ".env").write_text("OPENWORK_CONNECT_HOST=10.1.2.3\n")
    s = load_settings({}, environ={"OPENWORK_CONNECT_HOST": "127.0.0.2"}, root=tmp_path)
    assert s.connect_host == "127.0.0.2"
    s2 = load_settings({}, root=tmp_path)  # real os.environ: .env applies, but is not written into it
    assert s2.connect_host == "10.1.2.3"
    assert "OPENWORK_CONNECT_HOST" not in os.environ


def test_env_file_flag_and_variable(tmp_path):
    other = tmp_path / "ci.env"
    other.write_text("OPENWORK_MICROSANDBOX_NAME=from-ci-file\n")
    (tmp_path / ".env").write_text("OPENWORK_MICROSANDBOX_NAME=from-default-file\n")
    assert load(tmp_path, env_file=str(other)).name == "from-ci-file"
    assert load(tmp_path, env={"OPENWORK_ENV_FILE": str(other)}).name == "from-ci-file"
    assert load(tmp_path).name == "from-default-file"


def test_missing_explicit_env_file(tmp_path):
    assert problems(tmp_path, env_file=str(tmp_path / "nope.env")) == [
        f"--env-file={tmp_path / 'nope.env'}: no such file; create it (copy .env.example) or drop the setting"
    ]


def test_relative_dirs_resolve_against_project_root(tmp_path):
    s = load(tmp_path, env={"OPENWORK_MICROSANDBOX_WORKSPACE_DIR": "ws", "OPENWORK_STATE_DIR": "st"})
    assert s.workspace_dir == tmp_path / "ws"
    assert s.sandbox_state_dir == tmp_path / "st" / "openwork-microsandbox"
    assert s.data_dir == tmp_path / "st" / "openwork-microsandbox" / "data"


def test_settings_are_immutable(tmp_path):
    s = load(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


# --- validation: one line per problem, naming setting, value, origin and what is accepted ------


@pytest.mark.parametrize("value", ["ten", "0", "65536", "-1", "80.5"])
def test_bad_port(tmp_path, value):
    assert problems(tmp_path, dotenv=f"OPENWORK_MICROSANDBOX_PORT={value}\n") == [
        f'OPENWORK_MICROSANDBOX_PORT="{value}" (from {tmp_path}/.env:1): expected a port 1-65535, e.g. 8787'
    ]


def test_port_bounds_accepted(tmp_path):
    assert load(tmp_path, env={"OPENWORK_MICROSANDBOX_PORT": "1"}).port == 1
    assert load(tmp_path, env={"OPENWORK_MICROSANDBOX_PORT": "65535"}).port == 65535


@pytest.mark.parametrize(
    "value, accepted",
    [
        ("", "expected a name of letters, digits, '_', '.', '-', e.g. openwork-microsandbox"),
        ("a" * 129, "expected at most 128 bytes (microsandbox and Docker reject longer names)"),
        (
            "has space",
            "expected letters, digits, '_', '.', '-' starting with a letter or digit, e.g. openwork-microsandbox",
        ),
        ("a/b", "expected letters, digits, '_', '.', '-' starting with a letter or digit, e.g. openwork-microsandbox"),
        (
            "-lead",
            "expected letters, digits, '_', '.', '-' starting with a letter or digit, e.g. openwork-microsandbox",
        ),
        ("é", "expected letters, digits, '_', '.', '-' starting with a letter or digit, e.g. openwork-microsandbox"),
    ],
)
def test_bad_name(tmp_path, value, accepted):
    assert problems(tmp_path, env={"OPENWORK_MICROSANDBOX_NAME": value}) == [
        f'OPENWORK_MICROSANDBOX_NAME="{value}" (from environment): {accepted}'
    ]


def test_names_of_the_tools_own_state_are_reserved(tmp_path):
    assert problems(tmp_path, flags={"name": "services"}) == [
        'OPENWORK_MICROSANDBOX_NAME="services" (from flag --name): '
        "is reserved for the tool's own state (.state/services); pick another name"
    ]


def test_name_of_128_bytes_is_fine(tmp_path):
    assert load(tmp_path, env={"OPENWORK_MICROSANDBOX_NAME": "a" * 128}).name == "a" * 128


@pytest.mark.parametrize(
    "value", ["UPPER/case:tag", "registry:5000/", "repo:tag:extra", "repo@sha256:short", "has space"]
)
def test_bad_image(tmp_path, value):
    assert problems(tmp_path, flags={"image": value}) == [
        f'OPENWORK_MICROSANDBOX_IMAGE="{value}" (from flag --image): '
        "expected an image reference like 127.0.0.1:5000/openwork-microsandbox:dev"
    ]


@pytest.mark.parametrize(
    "value, registry, repository, tag",
    [
        ("127.0.0.1:5000/openwork-microsandbox:dev", "127.0.0.1:5000", "openwork-microsandbox", "dev"),
        ("ghcr.io/example/openwork-microsandbox:dev", "ghcr.io", "example/openwork-microsandbox", "dev"),
        ("localhost/x", "localhost", "x", None),
        ("library/debian:bookworm-slim", None, "library/debian", "bookworm-slim"),
        ("debian", None, "debian", None),
        ("[::1]:5000/a/b:1.0", "[::1]:5000", "a/b", "1.0"),
    ],
)
def test_image_refs_parse(value, registry, repository, tag):
    ref = ImageRef.parse(value)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert str(ref) == value


def test_loopback_registry_detection():
    assert ImageRef.parse("127.0.0.1:5000/a:b").registry_is_loopback
    assert ImageRef.parse("localhost:5000/a:b").registry_is_loopback
    assert ImageRef.parse("[::1]:5000/a:b").registry_is_loopback
    assert not ImageRef.parse("ghcr.io/a:b").registry_is_loopback
    assert not ImageRef.parse("debian:bookworm").registry_is_loopback


@pytest.mark.parametrize("value", ["maybe", "2", "tru", "enabled"])
def test_bad_boolean(tmp_path, value):
    assert problems(tmp_path, env={"OPENWORK_MICROSANDBOX_REPLACE": value}) == [
        f'OPENWORK_MICROSANDBOX_REPLACE="{value}" (from environment): expected a boolean: 1/0, true/false, yes/no or on/off'
    ]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("1", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_boolean_spellings(tmp_path, value, expected):
    assert load(tmp_path, env={"OPENWORK_MICROSANDBOX_REPLACE": value}).replace is expected


def test_empty_token(tmp_path):
    assert problems(tmp_path, dotenv="OPENWORK_TOKEN=\n") == [
        f'OPENWORK_TOKEN="(unset)" (from {tmp_path}/.env:1): is empty: set a token without whitespace, '
        "or unset it to have one generated"
    ]


def test_token_with_whitespace_is_refused_and_never_shown(tmp_path):
    secret = "super secret token value"
    lines = problems(tmp_path, env={"OPENWORK_HOST_TOKEN": secret})
    assert lines == [
        'OPENWORK_HOST_TOKEN="supe…(24 chars)" (from environment): contains whitespace: a token must be one word'
    ]
    assert secret not in "\n".join(lines)


@pytest.mark.parametrize("secret", ["tökenvalue-1234", "token\x7fvalue", "token\x01value", "€€€€€€€€"])
def test_token_http_headers_cannot_carry_is_refused_and_never_shown(tmp_path, secret):
    lines = problems(tmp_path, env={"OPENWORK_TOKEN": secret})
    assert len(lines) == 1 and lines[0].startswith('OPENWORK_TOKEN="')
    assert lines[0].endswith(
        "(from environment): contains a character HTTP headers cannot carry (non-ASCII or a control character): "
        "use ASCII letters, digits and punctuation only"
    )
    assert secret not in lines[0]


def test_unparseable_dotenv_line_named_by_number(tmp_path):
    lines = problems(tmp_path, dotenv="# comment\nOPENWORK_MICROSANDBOX_PORT=8787\nthis is not a setting\n")
    assert lines == [f"{tmp_path}/.env:3: cannot parse 'this is not a setting': expected NAME=value"]


def test_unparseable_secret_line_hides_value(tmp_path):
    lines = problems(tmp_path, dotenv='OPENWORK_TOKEN="abc def\n')
    assert all("abc def" not in line for line in lines)


def test_a_secret_whose_quote_never_closes_hides_the_lines_after_it_too(tmp_path):
    lines = problems(
        tmp_path,
        dotenv='OPENWORK_TOKEN="first-half-of-it\nsecond half of it\nthis is not a setting\n'
        "OPENWORK_MICROSANDBOX_NAME=box\nnor is this\n",
    )
    text = "\n".join(lines)
    assert "first-half" not in text and "second half" not in text
    assert lines[:3] == [
        f"{tmp_path}/.env:1: cannot parse 'OPENWORK_TOKEN=…': expected NAME=value",
        f"{tmp_path}/.env:2: cannot parse '…': expected NAME=value",
        f"{tmp_path}/.env:3: cannot parse '…': expected NAME=value",
    ]
    # a line that parses ends the hiding: later bad lines are shown again
    assert f"{tmp_path}/.env:5: cannot parse 'nor is this': expected NAME=value" in lines


@pytest.mark.parametrize(
    "text, shown",
    [
        ("OPENWORK_TOKEN secret-abcdef-123456\n", "OPENWORK_TOKEN …"),  # a space typed for the '='
        ("export OPENWORK_REGISTRY_PASSWORD: hunter2-very-secret\n", "OPENWORK_REGISTRY_PASSWORD …"),
        ('OPENWORK_HOST_TOKEN = "never closed\n', "OPENWORK_HOST_TOKEN=…"),
    ],
)
def test_unparseable_secret_line_without_its_equals_sign_hides_value_too(tmp_path, text, shown):
    assert problems(tmp_path, dotenv=text) == [f"{tmp_path}/.env:1: cannot parse {shown!r}: expected NAME=value"]


def test_dotenv_with_export_quotes_and_comments_is_fine(tmp_path):
    s = load(
        tmp_path,
        dotenv='export OPENWORK_MICROSANDBOX_NAME="quoted-name"  # a comment\n'
        "OPENWORK_MICROSANDBOX_PORT='9999'\n\n# end\n",
    )
    assert (s.name, s.port) == ("quoted-name", 9999)


def test_misspelled_key_suggests_the_closest_name(tmp_path):
    assert problems(tmp_path, dotenv="OPENWORK_MICROSANDBOX_PROT=8787\n") == [
        f"OPENWORK_MICROSANDBOX_PROT (from {tmp_path}/.env:1): unknown setting; did you mean OPENWORK_MICROSANDBOX_PORT?"
    ]


def test_every_problem_collected_in_one_error(tmp_path):
    lines = problems(
        tmp_path,
        env={
            "OPENWORK_MICROSANDBOX_PORT": "x",
            "OPENWORK_MICROSANDBOX_RUNTIME": "podman",
            "OPENWORK_MICROSANDBOX_CPUS": "0",
            "OPENWORK_MICROSANDBOX_MEMORY": "lots",
        },
    )
    assert lines == [
        'OPENWORK_MICROSANDBOX_PORT="x" (from environment): expected a port 1-65535, e.g. 8787',
        'OPENWORK_MICROSANDBOX_RUNTIME="podman" (from environment): expected one of auto|microsandbox|docker|swarm',
        'OPENWORK_MICROSANDBOX_CPUS="0" (from environment): expected a number of CPUs from 0.1 to 64, e.g. 2, or 0.5 '
        "for half a core (Docker)",
        'OPENWORK_MICROSANDBOX_MEMORY="lots" (from environment): expected a whole number 384-262144 MiB, e.g. 2048',
    ]


def test_cpus_take_a_fraction_of_a_core_and_keep_whole_numbers_whole(tmp_path):
    assert load(tmp_path, env={"OPENWORK_MICROSANDBOX_CPUS": "0.1"}).cpus == 0.1
    whole = load(tmp_path, env={"OPENWORK_MICROSANDBOX_CPUS": "2"}).cpus
    assert whole == 2 and isinstance(whole, int)  # a sandbox made with "2" keeps its fingerprint
    assert isinstance(load(tmp_path, env={"OPENWORK_MICROSANDBOX_CPUS": "3.0"}).cpus, int)
    for bad in ("0.05", "65", "0.125", "half", "-1"):
        lines = problems(tmp_path, env={"OPENWORK_MICROSANDBOX_CPUS": bad})
        assert lines == [
            f'OPENWORK_MICROSANDBOX_CPUS="{bad}" (from environment): expected a number of CPUs from 0.1 '
            "to 64, e.g. 2, or 0.5 for half a core (Docker)"
        ], bad


@pytest.mark.parametrize("value", ["http://host", "host:80", "a b", ""])
def test_bad_connect_host(tmp_path, value):
    assert problems(tmp_path, env={"OPENWORK_CONNECT_HOST": value}) == [
        f'OPENWORK_CONNECT_HOST="{value}" (from environment): '
        "expected a host name or IP address without scheme or port, e.g. 127.0.0.1"
    ]


def test_bind_address_follows_connect_host(tmp_path):
    assert load(tmp_path, env={"OPENWORK_CONNECT_HOST": "localhost"}).bind_address == "127.0.0.1"
    assert load(tmp_path, env={"OPENWORK_CONNECT_HOST": "192.0.2.10"}).bind_address == "192.0.2.10"
    assert load(tmp_path, env={"OPENWORK_CONNECT_HOST": "openwork.example"}).bind_address == "0.0.0.0"
    assert load(tmp_path, env={"OPENWORK_CONNECT_HOST": "::1"}).url == "http://[::1]:8787"


def test_bad_version(tmp_path):
    assert problems(tmp_path, env={"OPENCODE_VERSION": "latest"}) == [
        'OPENCODE_VERSION="latest" (from environment): expected a version like 1.2.3'
    ]


def test_public_dict_masks_secrets(tmp_path):
    token = "tok_" + "x" * 40
    s = load(tmp_path, env={"OPENWORK_TOKEN": token, "OPENWORK_REGISTRY_PASSWORD": "p" * 30})
    shown = str(s.public_dict())
    assert token not in shown and "p" * 30 not in shown


# --- the task boundary: bad settings exit 2 with one line each, no traceback ------------------


def test_task_exits_2_without_traceback(tmp_path):
    env = {
        "PATH": __import__("os").environ["PATH"],
        "HOME": str(tmp_path),
        "OPENWORK_MICROSANDBOX_PORT": "ten",
        "OPENWORK_MICROSANDBOX_NAME": "bad name",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "doctor"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "OPENWORK_MICROSANDBOX_NAME=\"bad name\" (from environment): expected letters, digits, '_', '.', '-' "
        "starting with a letter or digit, e.g. openwork-microsandbox",
        'OPENWORK_MICROSANDBOX_PORT="ten" (from environment): expected a port 1-65535, e.g. 8787',
    ]


# --- .env.example and the code agree, both ways ----------------------------------------------


def _example_keys() -> list[str]:
    text = (ROOT / ".env.example").read_text()
    return re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.M)


def test_env_example_documents_every_setting():
    documented = set(_example_keys())
    read = {spec.env for spec in SPECS} | {"OPENWORK_ENV_FILE"}
    assert read - documented == set(), "settings the code reads but .env.example does not document"
    assert documented - read == set(), ".env.example documents settings the code does not read"


def test_env_example_has_a_comment_above_each_key():
    lines = (ROOT / ".env.example").read_text().splitlines()
    for n, line in enumerate(lines):
        if re.match(r"^#?\s*[A-Z][A-Z0-9_]+=", line):
            above = lines[n - 1]
            assert above.startswith("#") and not re.match(r"^#?\s*[A-Z][A-Z0-9_]+=", above), f"no comment above {line}"


def test_env_example_loads_cleanly_when_uncommented(tmp_path):
    text = re.sub(r"^# ([A-Z][A-Z0-9_]+=)", r"\1", (ROOT / ".env.example").read_text(), flags=re.M)
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("OPENWORK_ENV_FILE="))
    # the example paths for local binaries do not exist here; drop them, keep the rest
    text = "\n".join(ln for ln in text.splitlines() if "_BIN" not in ln)
    s = load(tmp_path, dotenv=text)
    assert s.port == 8787 and s.runtime == "auto"


def test_no_module_reads_openwork_settings_outside_settings_py():
    pattern = re.compile(r"environ(?:\.get)?\s*[\[(]\s*[\"'](OPENWORK_|OPENCODE_|NPM_CONFIG)")
    offenders = []
    for path in (ROOT / "openwork_sandbox").rglob("*.py"):
        if path.name == "settings.py":
            continue
        if pattern.search(path.read_text()):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


# --- one duration rule: settings and `logs --since` -------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds", [("90", 90.0), ("90s", 90.0), ("2m", 120.0), (" 1.5h ", 5400.0), ("1d", 86400.0)]
)
def test_durations_are_read_one_way_everywhere(tmp_path, text, seconds):
    from openwork_sandbox.sandbox.logs import parse_since

    s = load(tmp_path, env={"OPENWORK_HEALTH_TIMEOUT": text, "OPENWORK_REQUEST_TIMEOUT": text})
    assert s.health_timeout == seconds and s.request_timeout == seconds
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["2 minutes", "0", "-5", "2d", "m"])
def test_bad_durations_name_the_setting(tmp_path, text):
    lines = problems(tmp_path, env={"OPENWORK_HEALTH_TIMEOUT": text})
    assert lines == [
        f'OPENWORK_HEALTH_TIMEOUT="{text}" (from environment): expected a duration above 0 and at most '
        "a day: seconds, or a number with s, m, h or d, e.g. 90, 90s or 2m"
    ]


# --- the .env scan (python-dotenv's grammar, without its private parser) ---------------------------


@pytest.mark.parametrize(
    "text, bad, numbers",
    [
        ("# c\nexport A=\"x y\"  # note\nB='z'\n\nC=plain # c\nD\n", [], {"A": 2, "B": 3, "C": 5, "D": 6}),
        ('M="line1\nline2"\nN=2\n', [], {"M": 1, "N": 3}),
        ('A="say \\"hi\\""\nB=1\n', [], {"A": 1, "B": 2}),
        ("A=1\nthis is not a setting\nB=2\n", [2], {"A": 1, "B": 3}),
        ('A="x" junk\n=value\n', [1, 2], {}),
        ('Q="never closed\nX=1\n', [1], {"X": 2}),
        ("A='x'\r\nB=\"y\" # c\r\nC\r\nD=1\r\n", [], {"A": 1, "B": 2, "C": 3, "D": 4}),  # CRLF (Windows) line ends
    ],
)
def test_dotenv_scan(text, bad, numbers):
    from openwork_sandbox.config.env_file import parse_dotenv

    problems_found, found = parse_dotenv(Path(".env"), text)
    assert [int(p.split(":")[1]) for p in problems_found] == bad
    assert found == numbers


def test_settings_does_not_import_private_dotenv_modules():
    config = ROOT / "openwork_sandbox" / "config"
    text = "".join(p.read_text() for p in config.glob("*.py"))
    assert "dotenv.parser" not in text and "from dotenv import dotenv_values" in text


# --- one version parser ---------------------------------------------------------------------------


def test_npm_versions_are_ordered_like_semver():
    from openwork_sandbox.core.versions import npm_version, npm_version_key

    listed = ["1.10.0", "1.2.3", "1.2.3-beta.10", "junk", "1.2.3-beta.2", "0.18.1", "1.2.3-alpha"]
    assert sorted(listed, key=npm_version_key) == [
        "junk",
        "0.18.1",
        "1.2.3-alpha",
        "1.2.3-beta.2",
        "1.2.3-beta.10",
        "1.2.3",
        "1.10.0",
    ]
    assert [npm_version(v) for v in ("v1.2.3", "1.0.0-next.3", "1.2", "1.2.3.4")] == [
        "1.2.3",
        "1.0.0-next.3",
        None,
        None,
    ]


def test_python_package_minimums_compare_by_pep440():
    from openwork_sandbox.core.versions import at_least

    assert at_least("2.10", "2.9") and at_least("0.7.11", "0.7.11") and not at_least("0.7.9", "0.7.11")
    assert not at_least("not-a-version", "1.0")
