"""Nothing left behind (issue 17, item 4): ephemeral sandboxes are marked, `doctor` lists what no
job or `.state/` folder owns, `reset --stale` removes the stale ones.

The rule (``ownership.judge``) is checked as a table; the marks, the SDK arguments, and the whole
path on the real Docker engine: an `invoke smoke --ephemeral` killed with SIGKILL leaves its
sandbox, `doctor` names it, `reset --stale` removes it and its state folder, and keeps the
sandboxes something still owns.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from openwork_sandbox.state.ownership import (
    EPHEMERAL,
    EXPIRES,
    OWNER,
    STATE_DIR,
    Verdict,
    judge,
    owner_alive,
    this_process,
)
from tests.support.lifecycle import make_settings

NOW = 1_800_000_000.0
GONE, ALIVE, ELSEWHERE = "host:1:1", "host:2:2", "other:3:3"
ALIVE_BY_OWNER = {GONE: False, ALIVE: True, ELSEWHERE: None}


@pytest.mark.parametrize(
    "marks,folder,expected",
    [
        # an ephemeral sandbox whose smoke job was killed
        ({EPHEMERAL: "1", OWNER: GONE, EXPIRES: str(int(NOW) + 600)}, True, Verdict("its job (1) is gone", False)),
        # its job runs and its time is not up: owned
        ({EPHEMERAL: "1", OWNER: ALIVE, EXPIRES: str(int(NOW) + 600)}, True, Verdict(None, False)),
        # its job runs but it is past its time
        ({EPHEMERAL: "1", OWNER: ALIVE, EXPIRES: str(int(NOW) - 5)}, True, Verdict("its time ran out 5s ago", False)),
        # made on another host (the job cannot be asked): only the time counts
        ({EPHEMERAL: "1", OWNER: ELSEWHERE, EXPIRES: str(int(NOW) + 600)}, True, Verdict(None, False)),
        (
            {EPHEMERAL: "1", OWNER: ELSEWHERE, EXPIRES: str(int(NOW) - 60)},
            True,
            Verdict("its time ran out 60s ago", False),
        ),
        # ephemeral, its folder deleted by hand
        (
            {EPHEMERAL: "1", OWNER: ELSEWHERE, EXPIRES: str(int(NOW) + 600)},
            False,
            Verdict("no state folder owns it", True),
        ),
        # a sandbox kept for months: never stale, an orphan only when its folder is gone
        ({STATE_DIR: "/x/.state/a"}, True, Verdict(None, False)),
        ({STATE_DIR: "/x/.state/a"}, False, Verdict(None, True)),
        ({}, False, Verdict(None, True)),  # made before marks existed
    ],
)
def test_the_rule(marks, folder, expected):
    assert judge(marks, folder_exists=folder, now=NOW, alive=ALIVE_BY_OWNER.get) == expected


def test_owner_alive_asks_the_process_table():
    assert owner_alive(this_process()) is True
    proc = subprocess.Popen(["true"])
    proc.wait()
    host, pid, start = this_process().split(":")
    assert owner_alive(f"{host}:{proc.pid}:{start}") is False  # gone
    assert owner_alive(f"{host}:{os.getpid()}:{int(start) + 1 if start.isdigit() else 1}") is False  # pid reused
    assert owner_alive(f"not-{host}:{os.getpid()}:{start}") is None  # another host: cannot tell


def test_marks_reach_both_runtimes(tmp_path, monkeypatch):
    """The Docker labels and the microVM's labels and max_duration come from one LaunchSpec."""
    pytest.importorskip("microsandbox")
    from openwork_sandbox.runtimes.microsandbox.spec import MARK_PREFIX, create_kwargs
    from openwork_sandbox.sandbox.launch import launch_spec

    settings = make_settings(
        tmp_path, OPENWORK_MICROSANDBOX_NAME="owtest-i17a-marks", OPENWORK_EPHEMERAL_MAX_DURATION="20m"
    )
    kept = launch_spec(settings, "microsandbox", "t" * 32, "h" * 32)
    assert kept.marks == {STATE_DIR: str(settings.sandbox_state_dir)} and kept.max_duration is None
    assert "max_duration" not in create_kwargs(kept)

    before = time.time()
    eph = launch_spec(settings.with_overrides(ephemeral=True), "microsandbox", "t" * 32, "h" * 32)
    assert eph.max_duration == 1200.0
    assert eph.marks[EPHEMERAL] == "1" and eph.marks[OWNER] == this_process()
    assert before + 1200 - 1 <= int(eph.marks[EXPIRES]) <= time.time() + 1200
    kwargs = create_kwargs(eph)
    assert kwargs["max_duration"] == 1200.0
    assert kwargs["labels"][MARK_PREFIX + EPHEMERAL] == "1"
    assert kwargs["labels"][MARK_PREFIX + STATE_DIR] == str(settings.sandbox_state_dir)


# --- on the real Docker engine -----------------------------------------------------------------
