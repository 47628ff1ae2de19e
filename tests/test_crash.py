"""SIGKILL the robot while it writes: no accepted record lost, the outbox never corrupt.

"Accepted" = the child printed the record's sequence number, which it does only after
the transaction holding it committed (``Telemetry.on_commit``).  The benchmark kills
200 times; the test 30 times.
"""
from __future__ import annotations

from telemetry_faults import crash_loop


def test_sigkill_while_writing_loses_no_accepted_record(tmp_path):
    result = crash_loop(tmp_path / "outbox.db", kills=30, seed=1)
    assert result["accepted"] > 30
