"""`invoke backup` while the real orchestrator and opencode write sessions, then `restore` into another name, `up` and `smoke` it."""

from __future__ import annotations

import sqlite3
import stat
import tarfile
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support.lifecycle import docker_env, invoke, make_settings


def _up(tmp_path: Path, env: dict) -> None:
    """`invoke up`; once more when the orchestrator gave up on a slow opencode start (it allows
    opencode a fixed 10 s, which a machine running many sandboxes at once can miss three times)."""
    for attempt in (1, 2):
        proc = invoke(tmp_path, "up", timeout=400, **env)
        if proc.returncode == 0 or attempt == 2 or "ERROR Run failed" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr


@pytest.mark.docker
def test_backup_while_sessions_are_written_then_restore_into_another_name(stack_image, tmp_path):
    from openwork_sandbox.sandbox.endpoint import endpoint
    from openwork_sandbox.sandbox.reset import reset
    from tests.support.openwork_client import issue_token, make_session, read_session, status_with

    env_a = docker_env(stack_image.ref, "bka")
    env_b = docker_env(stack_image.ref, "bkb")
    a, b = make_settings(tmp_path, **env_a), make_settings(tmp_path, **env_b)
    try:
        _up(tmp_path, env_a)
        ep = endpoint(a)
        first = make_session(ep.url, ep.token, "before the backup")
        issued = issue_token(ep.url, ep.host_token)

        written: list[tuple[float, str]] = []  # (when the POSTs were answered, session id)
        stop, failures = threading.Event(), []

        def write_sessions():
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    written.append((time.time(), make_session(ep.url, ep.token, f"written during the backup {n}")))
                except (AssertionError, requests.RequestException) as exc:
                    failures.append(repr(exc))
                    return

        writer = threading.Thread(target=write_sessions, daemon=True)
        writer.start()
        while len(written) < 3 and writer.is_alive():
            time.sleep(0.1)
        archive = tmp_path / "live.tar.gz"
        began = time.time()
        proc = invoke(tmp_path, "backup", "--output", str(archive), timeout=300, **env_a)
        ended = time.time()
        stop.set()
        writer.join(timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert not failures, failures
        assert "SQLite online backup" in proc.stderr and "✓ backed up" in proc.stderr
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600
        committed_before = [sid for when, sid in written if when < began]
        assert len(committed_before) >= 3
        print(
            f"backup took {ended - began:.1f}s; sessions written: {len(committed_before)} before it began, "
            f"{sum(began <= when <= ended for when, _ in written)} while it ran"
        )

        # the copy in the archive is whole and holds every session committed before the backup began
        with tarfile.open(archive) as tar:
            copy = tar.extractfile("data/home/.local/share/opencode/opencode.db").read()
        db = tmp_path / "copy.db"
        db.write_bytes(copy)
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        ids = {row[0] for row in con.execute("SELECT id FROM session")}
        assert {first, *committed_before} <= ids
        con.close()

        # restore refuses the running sandbox itself, in one line
        proc = invoke(tmp_path, "restore", str(archive), timeout=120, **env_a)
        assert proc.returncode == 1 and proc.stderr.splitlines() == [
            f"sandbox {a.name} is running: run `invoke down` first, then `invoke restore {archive}` (restoring under "
            "a running server would mix two databases)"
        ]

        # into another name: restore, up, smoke; the sessions and the issued token are back
        proc = invoke(tmp_path, "restore", str(archive), timeout=300, **env_b)
        assert proc.returncode == 0, proc.stderr
        _up(tmp_path, env_b)
        proc = invoke(tmp_path, "smoke", timeout=300, **env_b)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        url_b = b.url
        session, texts = read_session(url_b, ep.token, first)  # the restored tokens: the same client token
        assert session["id"] == first and texts == ["before the backup"]
        _, texts = read_session(url_b, ep.token, committed_before[-1])
        assert texts and texts[0].startswith("written during the backup")
        assert status_with(url_b, issued) == 200
        assert status_with(url_b, issued + "x") == 401
    finally:
        reset(a, yes=True)
        reset(b, yes=True)
