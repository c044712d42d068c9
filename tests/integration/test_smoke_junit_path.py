"""`invoke smoke --junit PATH` where the report cannot be written: refused in one line (exit 2) before
any check runs (the server sees no request) and nothing is written, through the real `invoke`."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.standins.openwork_double import OpenWorkDouble
from tests.support.lifecycle import invoke

TOKEN = "client-token-0123456789abcdef"
HOST_TOKEN = "host-token-0123456789abcdef"


def _smoke(tmp_path, junit: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    with OpenWorkDouble(token=TOKEN, host_token=HOST_TOKEN) as srv:
        proc = invoke(
            tmp_path,
            "smoke",
            "--url",
            srv.url,
            "--junit",
            junit,
            timeout=120,
            OPENWORK_TOKEN=TOKEN,
            OPENWORK_HOST_TOKEN=HOST_TOKEN,
        )
    return proc, list(srv.seen)


def _refused(proc: subprocess.CompletedProcess, seen: list[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert seen == []  # no check ran
    return lines[0]


def test_a_folder_as_the_report_path_is_refused_before_any_check(tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    line = _refused(*_smoke(tmp_path, str(folder)))
    assert line == f"--junit {folder}: it is a folder; name a file in it, e.g. {folder}/smoke.xml"
    assert list(folder.iterdir()) == []


def test_a_file_as_the_report_folder_is_refused_before_any_check(tmp_path):
    (tmp_path / "reports").write_text("not a folder")
    junit = tmp_path / "reports" / "smoke.xml"
    line = _refused(*_smoke(tmp_path, str(junit)))
    assert line.startswith(f"--junit {junit}: cannot create the folder {tmp_path / 'reports'} (")
    assert (tmp_path / "reports").read_text() == "not a folder"


def _mount(*args: str) -> bool:
    return os.geteuid() == 0 and subprocess.run(["mount", *args], capture_output=True).returncode == 0


def test_a_read_only_folder_is_refused_before_any_check_new_file_or_old(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "old.xml").write_text("<old/>")
    if not (_mount("--bind", str(folder), str(folder)) and _mount("-o", "remount,bind,ro", str(folder))):
        subprocess.run(["umount", str(folder)], capture_output=True)
        pytest.skip("needs root and bind mounts to make a read-only folder")
    try:
        line = _refused(*_smoke(tmp_path, str(folder / "smoke.xml")))
        assert line == (
            f"--junit {folder / 'smoke.xml'}: cannot write in {folder} (no write permission or a read-only "
            "filesystem); pick a writable path"
        )
        line = _refused(*_smoke(tmp_path, str(folder / "old.xml")))
        assert line == (
            f"--junit {folder / 'old.xml'}: the file cannot be written (no write permission or a read-only "
            "filesystem); pick a writable path"
        )
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)
    assert sorted(p.name for p in folder.iterdir()) == ["old.xml"]
    assert (folder / "old.xml").read_text() == "<old/>"


def test_a_writable_path_still_gets_its_report(tmp_path):
    junit = tmp_path / "new" / "smoke.xml"
    proc, seen = _smoke(tmp_path, str(junit))
    assert proc.returncode == 0, proc.stderr
    assert seen  # the checks ran
    assert junit.read_text().startswith("<?xml")
