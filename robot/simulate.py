"""A field in a computer: leaves on soil along crop rows, filmed by a robot driving the rows.

``simulate_run`` writes what a real survey would leave behind: ``field.avi``
(640x480 MJPG), ``gps.nmea`` (the camera's track, 10 Hz GGA+RMC), ``field.json``
(row geometry, for mapping GPS to rows) and ``truth.json`` (every plant's id, row,
position and true class). ``SimSource`` renders the same frames on the fly as a
camera source (``sim:rows=2,length=4``). Everything follows from the seed.

Each row is a bed of ``lines`` staggered plant lines seen by a downward camera;
the robot drives the rows in a serpentine, so on odd rows the picture is turned
by 180 degrees (the camera turned with the robot) and plants always move right
to left. Leaves are real photographs cut off their backdrop (a PlantVillage-layout
folder, optionally only one part of a split) or synthetic leaves by default.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from leafscout.vision.taxonomy import info_from_name

from .camera import CameraError, Frame, FrameSource
from .conditions import CONDITIONS, SPACING, ConditionError, parse_conditions
from .gps import FieldGeometry, format_fix, write_nmea_log

__all__ = [
    "FieldConfig", "LeafBank", "LeafImage", "PlantTruth", "FieldSimulator", "SimSource", "simulate_run",
    "score_report", "soil_texture", "paste_leaf", "mjpeg_writer", "SimulationError",
]

log = logging.getLogger(__name__)

TRUTH_FORMAT = "leafscout-sim-truth/1"
_EPOCH = 1780300800.0  # 2026-06-01T08:00:00Z: recordings carry a fixed, reproducible clock


class SimulationError(ValueError):
    """Settings or inputs the simulator cannot use."""


@dataclass(frozen=True)
class FieldConfig:
    rows: int = 3
    row_length_m: float = 6.0
    lines: int = 3  # staggered plant lines per row (bed) across the camera's view
    plant_spacing_m: float = 0.48  # along a line
    leaf_size_m: float = 0.27
    px_per_m: float = 400.0  # ground resolution: 640 px = 1.6 m of row in view
    speed_m_s: float = 1.0
    fps: float = 20.0
    width: int = 640
    height: int = 480
    row_spacing_m: float = 1.5
    headland_m: float = 0.3  # bare soil before the first and after the last plant
    turn_frames: int = 6  # soil-only frames between rows
    incidence: tuple[float, float] = (0.1, 0.6)  # each row's disease share is drawn from this range
    origin: tuple[float, float] = (48.0, 11.0)
    heading_deg: float = 90.0
    # OpenCV's own MJPEG encoder at this quality (1-100), not FFmpeg's: the same bytes with any
    # OpenCV build, less error and colour shift (measured in docs/opencv.md).
    video_quality: int = 75
    seed: int = 0
    conditions: tuple[str, ...] = ()  # the field's hard cases (robot.conditions), e.g. ("straw", "weeds")
    bare_share: float = 0.0  # share of each row, in its middle, with no plants (1: bare soil only)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "conditions", parse_conditions(self.conditions))
        except ConditionError as e:
            raise SimulationError(str(e)) from e
        expected = {  # field -> (valid?, what is expected)
            "rows": (self.rows >= 1, ">= 1"), "row_length_m": (self.row_length_m > 0, "> 0"),
            "lines": (1 <= self.lines <= 6, "1-6"), "plant_spacing_m": (self.plant_spacing_m > 0, "> 0"),
            "leaf_size_m": (self.leaf_size_m > 0, "> 0"), "px_per_m": (self.px_per_m > 0, "> 0"),
            "speed_m_s": (self.speed_m_s > 0, "> 0"), "fps": (self.fps > 0, "> 0"),
            "video_quality": (1 <= self.video_quality <= 100, "1-100"), "width": (self.width >= 64, ">= 64"),
            "height": (self.height >= 64, ">= 64"), "turn_frames": (self.turn_frames >= 0, ">= 0"),
            "incidence": (0 <= self.incidence[0] <= self.incidence[1] <= 1, "0 <= low <= high <= 1"),
            "bare_share": (0 <= self.bare_share <= 1, "0-1"),
        }
        bad = [f"{k}={getattr(self, k)!r} (expected {want})" for k, (ok, want) in expected.items() if not ok]
        if bad:
            raise SimulationError(f"invalid field settings: {', '.join(bad)}")
        if self.leaf_size_m * self.px_per_m > self.height / max(1, self.lines) * 1.2:
            raise SimulationError(
                f"leaves of {self.leaf_size_m} m ({self.leaf_size_m * self.px_per_m:.0f} px) do not fit "
                f"{self.lines} lines in a {self.height} px high frame; lower leaf_size_m or lines"
            )

    @property
    def leaf_px(self) -> int:
        return int(round(self.leaf_size_m * self.px_per_m))

    @property
    def step_px(self) -> float:
        return self.speed_m_s / self.fps * self.px_per_m

    @property
    def spacing_m(self) -> float:
        """Plant spacing along a line, closer under the touching/overlapping conditions."""
        closer = [SPACING[c] * self.leaf_size_m for c in self.conditions if c in SPACING]
        return min([self.plant_spacing_m, *closer])

    def bare_stretch(self) -> tuple[float, float]:
        """(start, end) metres of each row left without plants."""
        share = max(self.bare_share, 1 / 3 if "bare" in self.conditions else 0.0)
        mid = self.headland_m + self.row_length_m / 2
        return mid - share * self.row_length_m / 2 - 1e-9, mid + share * self.row_length_m / 2 + 1e-9

    def of_kind(self, kind: str) -> list:
        return [CONDITIONS[c] for c in self.conditions if CONDITIONS[c].kind == kind]

    @classmethod
    def from_spec(cls, spec: str) -> tuple["FieldConfig", dict[str, str]]:
        """``rows=2,length=4,seed=1`` -> config, plus keys meant for the caller (``leaves``)."""
        alias = {"length": "row_length_m", "spacing": "plant_spacing_m", "speed": "speed_m_s"}
        # the live camera hands over rendered frames, no recording: a video quality would do nothing there
        types = {f.name: f.type for f in fields(cls) if f.name != "video_quality"}
        kw: dict[str, Any] = {}
        extra: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise SimulationError(f"simulator option {part!r} is not key=value")
            key = alias.get(key, key)
            if key in ("leaves", "split", "part"):
                extra[key] = value
            elif key == "conditions":  # conditions=straw+weeds ("," separates options)
                kw[key] = value
            elif key in types and types[key] in ("int", "float"):
                kw[key] = int(value) if types[key] == "int" else float(value)
            else:
                known = sorted([*alias, *(k for k, t in types.items() if t in ("int", "float")), "leaves", "split", "part",
                                "conditions"])
                raise SimulationError(f"unknown simulator option {key!r}; known: {', '.join(known)}")
        return cls(**kw), extra


@dataclass
class LeafImage:
    cls: str
    image: np.ndarray  # BGR, tight around the leaf
    mask: np.ndarray  # uint8, 255 = leaf
    source: str


class LeafBank:
    """Leaves to plant, by class: cut from photographs or drawn synthetically."""

    def __init__(self, leaves: list[LeafImage]) -> None:
        if not leaves:
            raise SimulationError("no leaves to plant")
        self.by_class: dict[str, list[LeafImage]] = {}
        for leaf in leaves:
            self.by_class.setdefault(leaf.cls, []).append(leaf)
        self.classes = sorted(self.by_class)
        health = {c: info_from_name(c).health for c in self.classes}  # the taxonomy reads the names, once
        self.healthy = [c for c in self.classes if health[c] == "healthy"]
        self.diseased = [c for c in self.classes if health[c] == "diseased"]
        if not self.healthy or not self.diseased:
            raise SimulationError(f"need healthy and diseased classes to plant, got {self.classes}")

    @classmethod
    def synthetic(cls, seed: int = 0, per_class: int = 16, size: int = 160) -> "LeafBank":
        from leafscout.training.synthetic import SYNTHETIC_CLASSES, draw_leaf

        rng = np.random.default_rng([seed, 7])
        leaves = []
        for name in SYNTHETIC_CLASSES:
            for i in range(per_class):
                img, mask = draw_leaf(rng, name, size)
                leaves.append(_tight(LeafImage(name, img, mask, f"synthetic:{name}:{i}")))
        return cls(leaves)

    @classmethod
    def from_folder(
        cls, root: str | os.PathLike, *, split: str | os.PathLike | None = None, part: str = "test",
        per_class: int = 40, seed: int = 0,
    ) -> "LeafBank":
        """Real leaves from a PlantVillage-layout folder (only ``part`` of ``split`` when given).

        ``split`` is a ``split.json`` or a deploy bundle directory (which carries its model's split).
        """
        from leafscout.training.augment import MIN_CUT_FRACTION, cut_leaf_mask
        from leafscout.training.data import ImageReadError, read_image, scan_folder
        from leafscout.training.split import load_split

        root = Path(root)
        if split is not None:
            if Path(split).is_dir():  # a deploy bundle: its gzipped copy of the training split
                from leafscout.deploy.data import read_bundle_split

                sp = read_bundle_split(split, None, data=root, strict=False)
            else:
                sp = load_split(split, root=root, roots={root.name: root})
            # A split over several sources: only this folder's whole-image leaves (not field
            # photos' boxes, not background windows) can be cut out and planted.
            names = sp.source_names()
            here = names.index(root.name) if sp.sources and root.name in names else 0
            classes = sp.classes
            samples = [s for s in sp.samples(part) if s.source == here and s.box is None
                       and info_from_name(classes[s.label]).health != "background"]
        else:
            ds = scan_folder(root)
            classes, samples = ds.classes, ds.samples
        rng = np.random.default_rng([seed, 11])
        leaves = []
        for label, name in enumerate(classes):
            paths = sorted(str(s.path) for s in samples if s.label == label)
            for p in [paths[i] for i in sorted(rng.permutation(len(paths))[:per_class])]:
                try:
                    img = read_image(p)
                except ImageReadError as e:
                    log.warning("skipping leaf %s: %s", p, e)
                    continue
                mask = cut_leaf_mask(img)
                if mask.mean() < 255 * MIN_CUT_FRACTION:  # the cut failed
                    continue
                leaves.append(_tight(LeafImage(name, img, mask, os.path.relpath(p, root))))
        log.info("leaf bank: %d leaves in %d classes from %s", len(leaves), len(classes), root)
        return cls(leaves)


def _tight(leaf: LeafImage) -> LeafImage:
    ys, xs = np.nonzero(leaf.mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return LeafImage(leaf.cls, leaf.image[y0:y1, x0:x1].copy(), leaf.mask[y0:y1, x0:x1].copy(), leaf.source)


@dataclass(frozen=True)
class PlantTruth:
    id: int
    row: int
    line: int
    metre: float  # along the row, from its start
    cls: str
    diseased: bool
    source: str


def soil_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Brown soil: blotchy low-frequency shade, grain, a few pebbles. Never green."""
    base = np.array([rng.uniform(30, 50), rng.uniform(50, 62), rng.uniform(85, 110)], np.float32)
    blotch = rng.normal(0, 1, (max(2, h // 40), max(2, w // 40), 1)).astype(np.float32)
    blotch = cv2.resize(blotch, (w, h), interpolation=cv2.INTER_CUBIC)[:, :, None] * 12
    grain = rng.normal(0, 7, (h, w, 1)).astype(np.float32)
    soil = np.clip(base + blotch + grain, 0, 255).astype(np.uint8)
    for _ in range(w * h // 4000):
        c = (int(rng.integers(w)), int(rng.integers(h)))
        grey = int(rng.integers(70, 140))
        cv2.circle(soil, c, int(rng.integers(1, 4)), (grey, grey + 5, grey + 10), -1)
    return soil


def paste_leaf(canvas: np.ndarray, leaf: LeafImage, cx: float, cy: float, size: int, angle: float) -> None:
    """Blend ``leaf`` into ``canvas`` (in place) centred at (cx, cy), longest side ``size`` px, rotated."""
    image, mask = leaf.image, leaf.mask
    h, w = image.shape[:2]
    scale = size / max(h, w)
    if scale < 1:
        # warpAffine has no area filter (INTER_AREA falls back to bilinear there), so a 256 -> ~100 px
        # shrink would alias disease texture a real camera lens blurs away: shrink by area first.
        dsize = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, dsize, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, dsize, interpolation=cv2.INTER_AREA)
        h, w = image.shape[:2]
        scale = 1.0
    side = int(math.ceil(math.hypot(h, w) * scale)) + 2
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += (side / 2 - w / 2, side / 2 - h / 2)
    img = cv2.warpAffine(image, m, (side, side), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(mask, m, (side, side), flags=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    cx0, cy0 = max(x0, 0), max(y0, 0)  # clip to the canvas
    cx1, cy1 = min(x0 + side, canvas.shape[1]), min(y0 + side, canvas.shape[0])
    if cx1 <= cx0 or cy1 <= cy0:
        return
    region = canvas[cy0:cy1, cx0:cx1]
    sl = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
    a = alpha[sl][:, :, None]
    region[:] = (img[sl] * a + region * (1 - a)).astype(np.uint8)


class FieldSimulator:
    """Lays out the field at construction (deterministic) and renders frames on demand."""

    def __init__(self, config: FieldConfig, leaves: LeafBank) -> None:
        self.config = config
        self.leaves = leaves
        self.geometry = FieldGeometry(
            config.origin, config.heading_deg, config.row_spacing_m, config.rows,
            config.row_length_m + 2 * config.headland_m,
        )
        rng = np.random.default_rng([config.seed, 1])
        self.plants: list[PlantTruth] = []
        self._pose: dict[int, tuple[float, float, float, LeafImage]] = {}  # id -> (dy px, size px, angle, leaf)
        gap = config.height / config.lines
        spacing = config.spacing_m
        bare = config.bare_stretch()
        for row in range(config.rows):
            share = rng.uniform(*config.incidence)
            for line in range(config.lines):
                m = config.headland_m + config.leaf_size_m / 2 + line * spacing / config.lines
                while m <= config.headland_m + config.row_length_m - config.leaf_size_m / 2:
                    if bare[0] <= m <= bare[1]:
                        m += spacing
                        continue
                    diseased = bool(rng.random() < share)
                    cls = str(rng.choice(leaves.diseased if diseased else leaves.healthy))
                    pool = leaves.by_class[cls]
                    leaf = pool[int(rng.integers(len(pool)))]
                    pid = len(self.plants)
                    metre = m + rng.uniform(-0.02, 0.02)
                    self.plants.append(PlantTruth(pid, row, line, round(metre, 4), cls, diseased, leaf.source))
                    dy = gap * (line + 0.5) + rng.uniform(-0.03, 0.03) * gap
                    self._pose[pid] = (dy, config.leaf_px * rng.uniform(0.8, 1.0), rng.uniform(0, 360), leaf)
                    m += spacing
        self.frames_per_row = int(math.ceil(
            (self.geometry.row_length_m * config.px_per_m - config.width) / config.step_px)) + 1
        if self.frames_per_row < 1:
            raise SimulationError("rows shorter than the camera's view; make row_length_m longer")
        self.n_frames = config.rows * self.frames_per_row + (config.rows - 1) * config.turn_frames

    def _ground(self, h: int, w: int, *key: int) -> np.ndarray:
        """Soil (of the field's texture) with what lies on it: stones, straw, weeds (no plants)."""
        rng = np.random.default_rng([self.config.seed, *key])
        soils = self.config.of_kind("soil")
        ground = soils[0].apply(rng, h, w) if soils else soil_texture(rng, h, w)
        for cond in self.config.of_kind("ground"):
            cond.apply(rng, ground)
        return ground

    def _camera(self, frame: np.ndarray, index: int) -> np.ndarray:
        """The frame conditions (exposure, cast, shadows, blur, noise), in the order given."""
        camera = self.config.of_kind("frame")
        if not camera:
            return frame
        rng = np.random.default_rng([self.config.seed, 5, index])
        for cond in camera:
            frame = cond.apply(rng, frame, index / self.config.fps)
        return frame

    def _row_strip(self, row: int) -> np.ndarray:
        c = self.config
        w = int(math.ceil(self.geometry.row_length_m * c.px_per_m))
        strip = self._ground(c.height, w, 2, row)
        for p in self.plants:
            if p.row == row:
                dy, size, angle, leaf = self._pose[p.id]
                paste_leaf(strip, leaf, p.metre * c.px_per_m, dy, int(size), angle)
        return strip

    def _meta(self, index: int, row: int | None, metre: float, lat: float, lon: float) -> dict[str, Any]:
        return {"row": row, "metre": round(metre, 4), "lat": lat, "lon": lon, "t_unix": _EPOCH + index / self.config.fps}

    def frames(self) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        """(BGR frame, meta) for the whole drive; meta holds row, metre (camera centre), lat, lon."""
        c = self.config
        index = 0
        half_view = c.width / 2 / c.px_per_m
        for row in range(c.rows):
            strip = self._row_strip(row)
            forward = row % 2 == 0
            for k in range(self.frames_per_row):
                x0 = min(int(round(k * c.step_px)), strip.shape[1] - c.width)
                if not forward:
                    x0 = strip.shape[1] - c.width - x0
                view = strip[:, x0 : x0 + c.width]
                frame = view if forward else view[::-1, ::-1]
                metre = x0 / c.px_per_m + half_view
                lat, lon = self.geometry.to_latlon(row, metre)
                yield self._camera(np.ascontiguousarray(frame), index), self._meta(index, row, metre, lat, lon)
                index += 1
            if row + 1 < c.rows:  # turn on the headland: bare soil, sideways to the next row
                end = metre
                turn_soil = self._ground(c.height, c.width, 3, row)
                for k in range(c.turn_frames):
                    lat, lon = self.geometry.to_latlon(row + (k + 1) / (c.turn_frames + 1), end)
                    yield self._camera(turn_soil.copy(), index), self._meta(index, None, end, lat, lon)
                    index += 1

    def truth(self) -> dict[str, Any]:
        rows = []
        for r in range(self.config.rows):
            ps = [p for p in self.plants if p.row == r]
            d = sum(p.diseased for p in ps)
            rows.append({"row": r, "plants": len(ps), "diseased": d, "incidence": round(d / len(ps), 6) if ps else 0.0})
        cfg = asdict(self.config)
        return {
            "format": TRUTH_FORMAT,
            "config": cfg,
            "frames": self.n_frames,
            "fps": self.config.fps,
            "classes": self.leaves.classes,
            "plants_total": len(self.plants),
            "diseased_total": sum(p.diseased for p in self.plants),
            "rows": rows,
            "plants": [asdict(p) for p in self.plants],
        }


class SimSource(FrameSource):
    """The simulator as a camera source: ``sim:rows=2,length=4,seed=1,leaves=DIR``."""

    live = False

    def __init__(self, simulator: FieldSimulator, name: str = "sim") -> None:
        super().__init__(name)
        self.simulator = simulator
        self.fps = simulator.config.fps
        self._it: Iterator | None = None

    @classmethod
    def from_spec(cls, spec: str) -> "SimSource":
        config, extra = FieldConfig.from_spec(spec)
        if "leaves" in extra:
            bank = LeafBank.from_folder(extra["leaves"], split=extra.get("split"), part=extra.get("part", "test"),
                                        seed=config.seed)
        else:
            bank = LeafBank.synthetic(seed=config.seed)
        return cls(FieldSimulator(config, bank), name=f"sim:{spec}")

    def open(self) -> None:
        self._it = self.simulator.frames()
        self._index = 0

    def read(self) -> Frame | None:
        if self._it is None:
            raise CameraError("simulator source is not open")
        try:
            image, meta = next(self._it)
        except StopIteration:
            return None
        index = self._next_index()
        return Frame(image, index, index / self.fps, meta)

    def close(self) -> None:
        self._it = None


def mjpeg_writer(path: str | os.PathLike, fps: float, size: tuple[int, int], quality: int) -> cv2.VideoWriter:
    """An MJPG AVI writer (OpenCV's own encoder, ``quality`` 1-100) for frames of ``size`` (w, h)."""
    writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not writer.isOpened() or not writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality):
        raise SimulationError(f"OpenCV cannot write MJPG video to {path}")
    return writer


def simulate_run(
    out_dir: str | os.PathLike, config: FieldConfig | None = None, *, leaves: LeafBank | None = None,
    progress: bool = False,
) -> Path:
    """Write field.avi, gps.nmea, field.json and truth.json into ``out_dir``; returns it."""
    config = config or FieldConfig()
    sim = FieldSimulator(config, leaves or LeafBank.synthetic(seed=config.seed))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    video = out / "field.avi"
    writer = mjpeg_writer(video, config.fps, (config.width, config.height), config.video_quality)
    sentences: list[str] = []
    every = max(1, int(round(config.fps / 10)))  # a 10 Hz receiver
    course = config.heading_deg
    frames = sim.frames()
    if progress:
        from tqdm import tqdm

        frames = tqdm(frames, total=sim.n_frames, desc="simulating", unit="frame")
    try:
        for i, (image, meta) in enumerate(frames):
            writer.write(image)
            if i % every == 0:
                row = meta["row"]
                heading = course if row is None or row % 2 == 0 else course + 180
                sentences += format_fix(meta["lat"], meta["lon"], meta["t_unix"], speed_m_s=config.speed_m_s,
                                        course_deg=heading)
    finally:
        writer.release()
    write_nmea_log(out / "gps.nmea", sentences)
    (out / "field.json").write_text(json.dumps(sim.geometry.to_json(), indent=1) + "\n")
    (out / "truth.json").write_text(json.dumps(sim.truth(), indent=1) + "\n")
    log.info("simulated %d plants in %d rows, %d frames -> %s", len(sim.plants), config.rows, sim.n_frames, out)
    return out


def score_report(report: dict[str, Any], truth: dict[str, Any]) -> dict[str, Any]:
    """How a run report compares with a simulated field's truth: count error, per-row incidence error."""
    n_true = truth["plants_total"]
    counted = report["plants"]
    by_row = {r["row"]: r for r in report["rows"]}
    rows = []
    for t in truth["rows"]:
        got = by_row.get(t["row"], {"plants": 0, "incidence": 0.0, "uncertain": 0})
        rows.append({
            "row": t["row"], "plants_truth": t["plants"], "plants": got["plants"], "uncertain": got["uncertain"],
            "incidence_truth": t["incidence"], "incidence": got["incidence"],
            "error_points": round(100 * (got["incidence"] - t["incidence"]), 2),
        })
    unplaced = sum(r["plants"] for r in report["rows"] if r["row"] not in {t["row"] for t in truth["rows"]})
    return {
        "plants_truth": n_true,
        "plants": counted,
        "count_error_pct": round(100 * (counted - n_true) / n_true, 2) if n_true else 0.0,
        "plants_outside_rows": unplaced,
        "rows": rows,
        "max_row_error_points": max((abs(r["error_points"]) for r in rows), default=0.0),
    }
