"""The parity gate: every runtime must give the same answers as PyTorch, and int8 nearly so.

Pure functions on logits, so export, verify and the tests share one definition of
"agrees": max |logit difference| and top-1 agreement for each pair of fp32 runtimes,
and the top-1 drop (in accuracy points) of int8 against fp32 on labelled images.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

__all__ = ["MAX_LOGIT_DIFF", "MAX_INT8_DROP_POINTS", "PairResult", "ParityReport", "Int8Gate",
           "compare_runtimes", "int8_gate", "top1"]

MAX_LOGIT_DIFF = 1e-4
MAX_INT8_DROP_POINTS = 0.5


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(1) == labels).mean())


@dataclass
class PairResult:
    a: str
    b: str
    max_abs_diff: float
    top1_agreement: float
    ok: bool


@dataclass
class ParityReport:
    n: int
    tolerance: float
    pairs: list[PairResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.pairs)

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "max_abs_logit_diff_allowed": self.tolerance, "ok": self.ok,
                "pairs": [asdict(p) for p in self.pairs]}

    def format(self) -> str:
        lines = [f"parity on {self.n} images (max |logit diff| <= {self.tolerance:g}, top-1 agreement 100%):"]
        for p in self.pairs:
            mark = "ok  " if p.ok else "FAIL"
            lines.append(f"  {mark} {p.a:>14} vs {p.b:<14} max|diff| {p.max_abs_diff:.3g}  "
                         f"top-1 agreement {100 * p.top1_agreement:.2f}%")
        return "\n".join(lines)


def compare_runtimes(logits: dict[str, np.ndarray], tolerance: float = MAX_LOGIT_DIFF) -> ParityReport:
    """Compare every pair of runtimes' logits on the same images."""
    if len(logits) < 2:
        raise ValueError(f"need logits from at least two runtimes, got {sorted(logits)}")
    shapes = {name: np.shape(v) for name, v in logits.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"runtimes returned different shapes: {shapes}")
    n = next(iter(shapes.values()))[0]
    report = ParityReport(n=n, tolerance=tolerance)
    for (na, a), (nb, b) in combinations(logits.items(), 2):
        diff = float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max()) if n else 0.0
        agree = float((np.argmax(a, 1) == np.argmax(b, 1)).mean()) if n else 1.0
        report.pairs.append(PairResult(na, nb, diff, agree, diff <= tolerance and agree == 1.0))
    return report


@dataclass
class Int8Gate:
    top1_fp32: float
    top1_int8: float
    max_drop_points: float
    agreement: float

    @property
    def drop_points(self) -> float:
        return 100.0 * (self.top1_fp32 - self.top1_int8)

    @property
    def ok(self) -> bool:
        return self.drop_points <= self.max_drop_points + 1e-9

    def format(self) -> str:
        verdict = "ok" if self.ok else "REJECTED"
        return (f"int8 gate {verdict}: top-1 fp32 {100 * self.top1_fp32:.2f}%, int8 {100 * self.top1_int8:.2f}% "
                f"(drop {self.drop_points:.2f} points, allowed {self.max_drop_points:g}); "
                f"int8/fp32 prediction agreement {100 * self.agreement:.2f}%")

    def to_json(self) -> dict[str, Any]:
        return {"top1_fp32": self.top1_fp32, "top1_int8": self.top1_int8, "drop_points": self.drop_points,
                "max_drop_points": self.max_drop_points, "agreement": self.agreement, "ok": self.ok}


def int8_gate(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray, max_drop_points: float = MAX_INT8_DROP_POINTS) -> Int8Gate:
    """Accuracy drop of int8 against fp32 on the same labelled images."""
    agreement = float((fp32.argmax(1) == int8.argmax(1)).mean())
    return Int8Gate(top1(fp32, labels), top1(int8, labels), max_drop_points, agreement)
