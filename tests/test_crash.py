"""SIGKILL the robot while it writes: no accepted record lost, the outbox never corrupt.

"Accepted" = the child printed the record's sequence number, which it does only after
the transaction holding it committed (``Telemetry.on_commit``).  The benchmark kills
200 times; the test 30 times.

``leafscout run`` itself is killed at random points while it counts plants: every plant
in its survey database must reach the station (before: a plant was written to the survey
database and only then queued, so a kill in between lost it for good).  The benchmark
(``benchmarks/telemetry_bench.py --only run_crash``) and the test both kill it 200 times.
"""
from __future__ import annotations

from telemetry_faults import crash_loop, run_kill_loop


def test_sigkill_while_writing_loses_no_accepted_record(tmp_path):
    result = crash_loop(tmp_path / "outbox.db", kills=30, seed=1)
    assert result["accepted"] > 30


def test_sigkill_of_leafscout_run_loses_no_counted_plant(tmp_path):
    result = run_kill_loop(tmp_path, kills=200, seed=3)
    assert result["killed_while_counting"] >= 80, result  # the kills landed mid-survey, not after it
    assert result["counted"] > 50
