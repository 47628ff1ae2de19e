"""A survey with known numbers, written through the real ``StationDB`` API.

Tests check the dashboard against these numbers, the benchmark fills 100,000 plants
with it, and the demo and docs use it for a sample report. Rows run east from an
origin, one every ``row_spacing_m``; the robot drives them in a serpentine, so its
heartbeat track is a realistic path.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from leafscout.link.records import UNCERTAIN, Heartbeat, PlantRecord

DISEASES = ("Tomato___Late_blight", "Tomato___Early_blight", "Tomato___Septoria_leaf_spot",
            "Tomato___Bacterial_spot")
HEALTHY = "Tomato___healthy"
METRES_PER_DEGREE = 111_320.0


@dataclass(frozen=True)
class RowTruth:
    row: int
    plants: int
    diseased: int
    uncertain: int

    @property
    def incidence(self) -> float:
        return self.diseased / (self.plants - self.uncertain)


@dataclass
class SurveyTruth:
    survey_id: str
    rows: list[RowTruth] = field(default_factory=list)
    thumbnails: int = 0
    without_position: int = 0

    @property
    def plants(self) -> int:
        return sum(r.plants for r in self.rows)

    @property
    def diseased(self) -> int:
        return sum(r.diseased for r in self.rows)

    @property
    def uncertain(self) -> int:
        return sum(r.uncertain for r in self.rows)


def leaf_jpeg(seed: int, size: int = 64) -> bytes:
    """A small JPEG of a leaf-like blob with spots (what the robot's thumbnails look like)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), (40, 70, 110), np.uint8)  # soil, BGR
    cv2.ellipse(img, (size // 2, size // 2), (size // 3, size // 5), int(rng.integers(0, 180)), 0, 360,
                (40, int(rng.integers(120, 180)), 50), -1)
    for _ in range(int(rng.integers(2, 6))):
        c = (int(rng.integers(size // 3, 2 * size // 3)), int(rng.integers(size // 3, 2 * size // 3)))
        cv2.circle(img, c, int(rng.integers(2, 5)), (30, 60, 120), -1)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return buf.tobytes()


def _spread(k: int, n: int) -> set[int]:
    """k indices spread evenly over range(n) (deterministic, no clumping)."""
    return {math.floor((i + 0.5) * n / k) for i in range(k)} if k else set()


def survey_records(
    survey_id: str = "demo-survey",
    *,
    robot_id: str = "robot-1",
    row_incidence: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 0.2, 0.05),
    plants_per_row: int = 40,
    uncertain_per_row: int = 2,
    thumbnails: bool = True,
    without_position_every: int = 0,
    with_rows: bool = True,
    t0: float = 1_780_000_000.0,
    origin: tuple[float, float] = (52.0, 5.0),
    row_spacing_m: float = 0.75,
    plant_spacing_m: float = 0.5,
    truth: SurveyTruth | None = None,
) -> Iterator[tuple[str, PlantRecord | Heartbeat, bytes | None]]:
    """``(record_id, record, thumbnail)`` items for ``StationDB.insert_records``.

    Row ``r`` has ``plants_per_row`` plants, ``uncertain_per_row`` of them uncertain and
    ``round(row_incidence[r] * decided)`` diseased; ``truth`` (if given) is filled in.
    ``with_rows=False`` leaves out row numbers (a robot that knows only its GPS position).
    """
    lat0, lon0 = origin
    seq, t = 0, t0
    cos_lat = math.cos(math.radians(lat0))
    for row, incidence in enumerate(row_incidence):
        decided = plants_per_row - uncertain_per_row
        k = round(incidence * decided)
        uncertain_at = _spread(uncertain_per_row, plants_per_row)
        decided_slots = [i for i in range(plants_per_row) if i not in uncertain_at]
        diseased_at = {decided_slots[i] for i in _spread(k, decided)}
        if truth is not None:
            truth.rows.append(RowTruth(row, plants_per_row, k, uncertain_per_row))
        for i in range(plants_per_row):
            # Serpentine: even rows drive east, odd rows west.
            slot = i if row % 2 == 0 else plants_per_row - 1 - i
            metre = slot * plant_spacing_m
            lat = lat0 + row * row_spacing_m / METRES_PER_DEGREE
            lon = lon0 + metre / (METRES_PER_DEGREE * cos_lat)
            no_fix = without_position_every and seq % without_position_every == without_position_every - 1
            if i in uncertain_at:
                label, index, conf = UNCERTAIN, -1, 0.45
            elif i in diseased_at:
                label = DISEASES[(row + i) % len(DISEASES)]
                index, conf = DISEASES.index(label), 0.8 + 0.19 * ((i * 7) % 10) / 10
            else:
                label, index, conf = HEALTHY, len(DISEASES), 0.9 + 0.09 * ((i * 3) % 10) / 10
            seq, t = seq + 1, t + 1.5
            record = PlantRecord(robot_id, survey_id, seq, t, label, index, round(conf, 3), 3 + i % 4,
                                 row if with_rows else None, metre if with_rows else None,
                                 None if no_fix else lat, None if no_fix else lon)
            thumb = leaf_jpeg(seq) if thumbnails and (label == UNCERTAIN or i in diseased_at) else None
            if truth is not None:
                truth.thumbnails += thumb is not None
                truth.without_position += bool(no_fix)
            yield f"{robot_id}:{seq}", record, thumb
            if i % 5 == 0 or i == plants_per_row - 1:
                seq += 1
                hb = Heartbeat(robot_id, t, queue_depth=i % 3, frames=seq * 10, fps=30.0, status="ok",
                               survey_id=survey_id, lat=lat, lon=lon, row=row if with_rows else None,
                               metre=metre if with_rows else None)
                yield f"{robot_id}:{seq}", hb, None


def fill_survey(db, survey_id: str = "demo-survey", *, batch: int = 2000, progress: bool = False,
                **kwargs) -> SurveyTruth:
    """Write a known survey into a ``StationDB``; returns its true numbers."""
    from tqdm import tqdm

    truth = SurveyTruth(survey_id)
    pending = []
    items = survey_records(survey_id, truth=truth, **kwargs)
    for item in tqdm(items, desc=f"filling {survey_id}", unit=" records", disable=not progress):
        pending.append(item)
        if len(pending) >= batch:
            db.insert_records(pending, link="mqtt")
            pending.clear()
    if pending:
        db.insert_records(pending, link="mqtt")
    return truth


def main(argv: list[str] | None = None) -> int:
    """``python -m leafscout.station.web.sample_data --report docs/sample_report.html``: the docs' sample report."""
    import argparse
    import shutil
    import tempfile
    from pathlib import Path

    from leafscout.station.db import open_db
    from leafscout.station.report import validate_observations, write_report

    parser = argparse.ArgumentParser(description="Write the sample survey report shipped in docs/.")
    parser.add_argument("--report", type=Path, required=True, help="where to write the sample report.html")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        with open_db(Path(tmp) / "station.db") as db:
            fill_survey(db, "sample-field", row_incidence=(0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.3, 0.15, 0.05, 0.0),
                        plants_per_row=60, uncertain_per_row=3)
        paths = write_report(Path(tmp) / "station.db", "sample-field", Path(tmp) / "out")
        problems = validate_observations(paths.geojson.read_text(encoding="utf-8"))
        if problems:
            raise SystemExit(f"invalid GeoJSON: {problems[:3]}")
        shutil.copyfile(paths.html, args.report)
    print(args.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
