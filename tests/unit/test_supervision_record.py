"""``state.supervision``: the record is read as the supervisor writes it, and a live sandbox's
restart count is called unknown (not the record's number) when the record cannot be its supervisor's
word: missing, unreadable, from an earlier start, or on a data folder too full to take a write."""

from __future__ import annotations

import json
from pathlib import Path

from openwork_sandbox.state.supervision import Supervision, read, unknown_restarts

DATA = Path("/srv/sb/data")
TINY = 4_000_000
START = 1_800_000_000.0


def judged(record, *, live=True, started=START, free=10**9):
    return unknown_restarts(record, data_dir=DATA, live=live, sandbox_started_at=started, free=free, tiny=TINY)


def test_the_supervisors_started_at_is_read(tmp_path):
    (tmp_path / "supervisor.json").write_text(json.dumps({"started_at": 1_799_999_990, "restarts": 3}))
    record = read(tmp_path)
    assert (record.started_at, record.restarts) == (1_799_999_990.0, 3)


def test_a_fresh_record_on_a_folder_with_room_is_believed():
    assert judged(Supervision(restarts=2, started_at=START + 1)) is None
    assert judged(Supervision(restarts=2, started_at=START - 4)) is None  # the entrypoint ran first; seconds truncate
    assert judged(Supervision(restarts=2)) is None  # an older supervisor wrote no started_at


def test_a_sandbox_that_is_not_live_keeps_its_record_as_history():
    assert judged(None, live=False, free=0) is None
    assert judged(Supervision(started_at=START - 3600), live=False, free=0) is None


def test_no_record_for_a_live_sandbox_is_unknown():
    assert judged(None) == f"unknown: the supervisor has written no record in {DATA}"
    assert judged(None, free=12_000) == (
        f"unknown: the supervisor has written no record in {DATA} (disk full? 12.0 kB free there)"
    )


def test_a_record_from_an_earlier_start_is_unknown_and_says_what_it_said():
    record = Supervision(restarts=0, started_at=START - 60)
    assert judged(record) == (
        f"unknown: the supervisor could not write its record in {DATA}; the one there is from an earlier start (0 then)"
    )
    assert judged(record, free=0).endswith("(0 then) (disk full? 0 B free there)")


def test_an_unreadable_record_is_unknown():
    assert judged(Supervision(problem="x could not be read (ValueError)")) == (
        "unknown: x could not be read (ValueError)"
    )


def test_a_fresh_record_on_a_nearly_full_folder_is_a_lower_bound():
    assert judged(Supervision(restarts=4, started_at=START + 2), free=144_000) == (
        f"unknown (at least 4): the supervisor may not be able to write its record in {DATA} "
        "(disk full? 144.0 kB free there)"
    )
    assert judged(Supervision(restarts=4, started_at=START + 2), free=TINY) is None
