"""Platforms (issue 16), the parts that need no Docker: OPENWORK_PLATFORMS and the per-platform
settings, their one-line errors, the ELF architecture of real files, and the CLI's exit 2 for an
unknown platform."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from openwork_sandbox.core.errors import SettingsError
from tests.support.paths import ROOT, STANDINS

STANDIN = STANDINS / "standin_openwork_server.py"


def _settings(tmp_path: Path, **env: str):
    from openwork_sandbox.config import load_settings

    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    return load_settings(environ=env, env_file=env_file, root=tmp_path)


def test_platform_list_parses_in_order_once_each(tmp_path):
    s = _settings(tmp_path, OPENWORK_PLATFORMS="linux/arm64, linux/amd64,linux/arm64/v8")
    assert s.platform == "linux/arm64,linux/amd64"
    assert _settings(tmp_path).platform is None  # unset: the host's platform alone


@pytest.mark.parametrize("raw", ["linux/s390x", "windows/amd64", "linux/arm/v7", ","])
def test_unknown_platform_is_one_line_naming_the_setting(tmp_path, raw):
    with pytest.raises(SettingsError) as err:
        _settings(tmp_path, OPENWORK_PLATFORMS=raw)
    text = str(err.value)
    assert "OPENWORK_PLATFORMS" in text and "linux/amd64" in text and "\n" not in text.strip()


def test_per_platform_override_keeps_a_plain_path_the_hosts(tmp_path):
    from openwork_sandbox.core.platforms import host_platform

    host = str(host_platform())
    other = "linux/arm64" if host == "linux/amd64" else "linux/amd64"
    s = _settings(tmp_path, OPENWORK_SERVER_BIN=f"{host}=/opt/a/server,{other}=/opt/b/server")
    assert s.server_bin == Path("/opt/a/server")
    assert s.per_platform["server_bin"] == {host: Path("/opt/a/server"), other: Path("/opt/b/server")}
    plain = _settings(tmp_path, OPENWORK_SERVER_BIN="bin/server")
    assert plain.server_bin == tmp_path / "bin" / "server" and plain.per_platform == {}
    bases = _settings(tmp_path, OPENWORK_BASE_IMAGE=f"{other}=example.com/base:arm")
    assert bases.base_image == "debian:bookworm-slim"  # the host's stays the default
    assert bases.per_platform["base_image"] == {other: "example.com/base:arm"}


@pytest.mark.parametrize(
    "raw, words",
    [
        ("linux/mips=/a", "unknown platform"),
        ("linux/amd64=", "names no value"),
        ("linux/amd64=/a,linux/amd64=/b", "twice"),
    ],
)
def test_bad_per_platform_override_is_one_line(tmp_path, raw, words):
    with pytest.raises(SettingsError) as err:
        _settings(tmp_path, OPENWORK_OPENCODE_BIN=raw)
    assert "OPENWORK_OPENCODE_BIN" in str(err.value) and words in str(err.value)


def test_a_platform_without_its_file_names_the_setting(tmp_path):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.image.multiplatform import check_overrides, wanted

    s = _settings(tmp_path, OPENWORK_PLATFORMS="linux/amd64,linux/arm64", OPENWORK_SERVER_BIN=f"linux/amd64={STANDIN}")
    with pytest.raises(WorkflowError) as err:
        check_overrides(s, wanted(s))
    assert err.value.exit_code == 2
    assert err.value.message.startswith("OPENWORK_SERVER_BIN names no file for linux/arm64")


def test_elf_architecture_of_real_files():
    from openwork_sandbox.core.platforms import elf_arch, host_arch

    with open("/bin/sh", "rb") as f:
        assert elf_arch(f.read(20)) == host_arch()
    assert elf_arch(STANDIN.read_bytes()[:20]) is None  # a script
    qemu = Path("/usr/bin/qemu-aarch64-static")
    if qemu.exists():  # an x86-64 program that runs aarch64 ones: its own header says x86-64
        assert elf_arch(qemu.read_bytes()[:20]) == "amd64"


def test_index_entry_names_variant_for_arm64_only():
    from openwork_sandbox.core.platforms import parse_platform

    assert parse_platform("linux/arm64").oci() == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert parse_platform("linux/amd64").oci() == {"architecture": "amd64", "os": "linux"}


def test_cli_unknown_platform_exits_2_with_one_line(tmp_path):
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "build-image", "--platform", "linux/s390x", "--env-file", str(env_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "PYTHONPATH": str(ROOT),
            "OPENWORK_STATE_DIR": str(tmp_path / "state"),
        },
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "OPENWORK_PLATFORMS" in lines[0] and "linux/s390x" in lines[0], proc.stderr
    assert "flag --platform)" in lines[0]
    assert "Traceback" not in proc.stderr


def test_the_hosts_platform_alone_keeps_todays_build(tmp_path):
    from openwork_sandbox.core.platforms import host_platform
    from openwork_sandbox.image.multiplatform import is_multi

    assert not is_multi(_settings(tmp_path))
    assert not is_multi(_settings(tmp_path, OPENWORK_PLATFORMS=str(host_platform())))
    assert is_multi(_settings(tmp_path, OPENWORK_PLATFORMS="linux/amd64,linux/arm64"))


def test_without_qemu_the_gate_checks_the_elf_architecture_and_says_so(tmp_path, monkeypatch):
    from openwork_sandbox.core.errors import WorkflowError
    from openwork_sandbox.core.platforms import host_arch, parse_platform
    from openwork_sandbox.image import foreign_check

    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu-user on it
    foreign = parse_platform("linux/arm64" if host_arch() == "amd64" else "linux/amd64")
    qemu, elf = ("qemu-aarch64-static", "aarch64") if foreign.arch == "arm64" else ("qemu-x86_64-static", "x86-64")
    outputs, line = foreign_check.check(tmp_path, foreign, "sha256:unused", {"openwork-server": STANDIN})
    assert outputs == {} and "\n" not in line
    assert line.startswith(f"{qemu} is not installed") and f"{elf} ELF" in line
    with pytest.raises(WorkflowError) as err:  # a program of this host named for the other platform
        foreign_check.check(tmp_path, foreign, "sha256:unused", {"opencode": Path("/bin/sh").resolve()})
    assert f"opencode ({host_arch()})" in err.value.message
