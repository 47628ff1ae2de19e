"""Field statistics: plants, diseased and uncertain per row and per class, with Wilson intervals.

Incidence is diseased / decided plants (uncertain plants are neither diseased nor
healthy, so they are left out of the ratio and reported on their own). The 95%
interval is Wilson's score interval, which stays inside [0, 1] and behaves for
small rows and for 0 % or 100 % incidence, unlike the normal approximation.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from leafscout.link.records import UNCERTAIN, PlantRecord, RowSummary, is_diseased
from leafscout.link.stats import Z95, wilson_interval

__all__ = ["wilson_interval", "RowStats", "FieldStats", "Z95"]

@dataclass
class RowStats:
    row: int | None
    plants: int = 0
    diseased: int = 0
    uncertain: int = 0
    by_class: Counter = field(default_factory=Counter)

    @property
    def decided(self) -> int:
        return self.plants - self.uncertain

    @property
    def incidence(self) -> float:
        return self.diseased / self.decided if self.decided else 0.0

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.diseased, self.decided)

    def add(self, label: str, count: int = 1, health: str | None = None) -> None:
        """Count a plant; ``health`` (from the bundle's taxonomy) decides, else the class name does."""
        uncertain = label == UNCERTAIN or health == UNCERTAIN
        diseased = health == "diseased" if health is not None else is_diseased(label)
        self.plants += count
        self.diseased += count if diseased and not uncertain else 0
        self.uncertain += count if uncertain else 0
        self.by_class[label] += count

    def to_json(self, ndigits: int = 6) -> dict:
        lo, hi = self.ci95
        return {
            "row": self.row, "plants": self.plants, "diseased": self.diseased, "uncertain": self.uncertain,
            "incidence": round(self.incidence, ndigits), "ci95": [round(lo, ndigits), round(hi, ndigits)],
            "by_class": dict(sorted(self.by_class.items())),
        }

    def summary(self, robot_id: str, survey_id: str, t: float) -> RowSummary:
        lo, hi = self.ci95
        return RowSummary(robot_id, survey_id, -1 if self.row is None else self.row, self.plants, self.diseased,
                          self.uncertain, self.incidence, lo, hi, t)


class FieldStats:
    """Running counts for a survey; rows are created as plants arrive (``None`` = position unknown)."""

    def __init__(self) -> None:
        self.rows: dict[int | None, RowStats] = {}

    def add(self, record: PlantRecord) -> RowStats:
        return self.add_label(record.row, record.label, health=record.health)

    def add_label(self, row: int | None, label: str, count: int = 1, health: str | None = None) -> RowStats:
        stats = self.rows.get(row)
        if stats is None:
            stats = self.rows[row] = RowStats(row)
        stats.add(label, count, health)
        return stats

    def total(self) -> RowStats:
        out = RowStats(None)
        for r in self.rows.values():
            out.plants += r.plants
            out.diseased += r.diseased
            out.uncertain += r.uncertain
            out.by_class.update(r.by_class)
        return out

    def sorted_rows(self) -> list[RowStats]:
        return sorted(self.rows.values(), key=lambda r: (r.row is None, r.row if r.row is not None else 0))
