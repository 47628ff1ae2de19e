"""Wilson intervals, per-row statistics, and a survey that survives a restart (SQLite WAL)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leafscout.link.records import UNCERTAIN, PlantRecord
from leafscout.link.stats import wilson_interval
from leafscout.robot.field_stats import FieldStats, RowStats
from leafscout.robot.survey_store import SurveyStore, SurveyStoreError


@pytest.mark.parametrize(
    "k,n,lo,hi",
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (1, 100, 0.0018, 0.0545),
     (0, 0, 0.0, 1.0)],
)
def test_wilson_interval_matches_published_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


@given(st.integers(0, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_interval_contains_the_estimate_and_stays_in_0_1(kn: tuple[int, int]) -> None:
    k, n = kn
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= hi <= 1.0
    if n:
        assert lo <= k / n <= hi


def test_wilson_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="successes=11, n=10"):
        wilson_interval(11, 10)


def test_incidence_leaves_uncertain_plants_out() -> None:
    row = RowStats(3)
    for label in ["Tomato___healthy"] * 5 + ["Tomato___Early_blight"] * 3 + [UNCERTAIN] * 2:
        row.add(label)
    assert (row.plants, row.diseased, row.uncertain, row.decided) == (10, 3, 2, 8)
    assert row.incidence == pytest.approx(3 / 8)
    assert row.to_json()["ci95"] == [round(v, 6) for v in wilson_interval(3, 8)]
    assert row.by_class == {"Tomato___healthy": 5, "Tomato___Early_blight": 3, UNCERTAIN: 2}


def plant(i: int, label: str, row: int) -> PlantRecord:
    return PlantRecord("r1", "s1", i, 1000.0 + i, label, -1 if label == UNCERTAIN else 0, 0.9, 5, row, 1.5 * i)


def test_a_restarted_robot_continues_its_survey(tmp_path: Path) -> None:
    db = tmp_path / "robot" / "survey.db"
    with SurveyStore(db) as store:
        state = store.open_survey("s1", "r1")
        assert (state.next_plant_id, state.resumed) == (0, False)
        for i, (label, row) in enumerate([("A___healthy", 0), ("A___rust", 0), (UNCERTAIN, 1)]):
            rec = plant(state.next_plant_id, label, row)
            state.next_plant_id += 1
            store.add_plant(rec)
            state.stats.add(rec)
        with sqlite3.connect(db) as other:  # WAL: another reader sees committed plants while we run
            assert other.execute("SELECT COUNT(*) FROM plants").fetchone()[0] == 3
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with SurveyStore(db) as store:  # the robot restarts
        state = store.open_survey("s1", "r1")
        assert state.resumed and state.sessions == 2 and state.next_plant_id == 3
        rows = {r.row: (r.plants, r.diseased, r.uncertain) for r in state.stats.rows.values()}
        assert rows == {0: (2, 1, 0), 1: (1, 0, 1)}
        store.add_plant(plant(3, "A___rust", 1))
        assert [p.plant_id for p in store.plants("s1")] == [0, 1, 2, 3]
        assert store.open_survey("other", "r1").next_plant_id == 0  # surveys are kept apart
        with pytest.raises(SurveyStoreError, match="plant 3 of survey 's1' is already stored"):
            store.add_plant(plant(3, "A___rust", 1))


def test_field_totals_add_up_over_rows() -> None:
    stats = FieldStats()
    for i, (label, row) in enumerate([("a___healthy", 0), ("a___rust", 1), ("a___rust", None)]):
        stats.add(plant(i, label, row))
    total = stats.total()
    assert (total.plants, total.diseased) == (3, 2)
    assert [r.row for r in stats.sorted_rows()] == [0, 1, None]
