"""Field statistics: plants, diseased and uncertain per row and per class, with Wilson intervals.

Incidence is diseased / decided plants (uncertain plants are neither diseased nor
healthy, so they are left out of the ratio and reported on their own). The 95%
interval is Wilson's score interval, which stays inside [0, 1] and behaves for
small rows and for 0 % or 100 % incidence, unlike the normal approximation.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from .records import UNCERTAIN, PlantRecord, RowSummary, is_diseased

__all__ = ["wilson_interval", "RowStats", "FieldStats", "Z95"]

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n == 0."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At 0 and n the bounds are exactly 0 and 1; floating point would leave a 1e-17 sliver.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


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
