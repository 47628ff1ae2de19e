"""Plant boxes on real field photos: how many annotated plants the localizer finds as one box each.

The simulator's touching and overlapping fields only hold the cases we drew; this scores
``LeafLocalizer`` (default settings, no classifier) against human boxes on real material:
the held-out test photos of PlantDoc (leaves in real surroundings, the reference bundle's
split) and cwfid's held-out images (odd numbers; top-down field-robot frames, crop and
weed plants). A box counts as found when one detection overlaps it at IoU >= 0.5
(one-to-one, best pairs first). ``--compare REV`` scores the localizer of another git
revision on the same photos, so a change shows as before -> after.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from replay_bench import cpu_model  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
IOU = 0.5


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def matched(truth: list, found: list) -> int:
    """One-to-one matches at IoU >= 0.5, best pairs first."""
    m = iou_matrix(np.asarray(truth, float).reshape(-1, 4), np.asarray(found, float).reshape(-1, 4))
    used_t, used_f, n = set(), set(), 0
    for k in np.argsort(-m, axis=None):
        t, f = np.unravel_index(k, m.shape)
        if m[t, f] < IOU:
            break
        if t not in used_t and f not in used_f:
            used_t.add(t), used_f.add(f)
            n += 1
    return n


def photo_sets(shared: Path, split: Path) -> dict[str, list[tuple[Path, list]]]:
    """name -> [(image, normalised boxes)] of the held-out photos (read as training reads box folders)."""
    from leafscout.training.sources import scan_box_folder

    sets: dict[str, list[tuple[Path, list]]] = {}
    pd = shared / "plantdoc"
    if pd.is_dir() and split.is_file():
        doc = json.loads(gzip.open(split).read())
        src = next(i for i, s in enumerate(doc["sources"]) if s["name"] == "plantdoc")
        names = {Path(it["path"]).name for it in doc["items"] if it["source"] == src and it["split"] == "test"}
        sets["plantdoc test photos"] = [(img, [b for _, b in boxes]) for img, boxes in scan_box_folder(pd).photos
                                        if img.name in names]
    cw = shared / "cwfid"
    if cw.is_dir():
        sets["cwfid held-out images"] = [(img, [b for _, b in boxes]) for img, boxes in scan_box_folder(cw).photos
                                         if int(img.name[:3]) % 2 == 1]
    return sets


def localizer_of(rev: str | None):
    """``LeafLocalizer`` of the working tree, or of git revision ``rev`` (loaded beside it)."""
    if rev is None:
        from leafscout.vision.localize import LeafLocalizer

        return LeafLocalizer
    source = subprocess.run(["git", "show", f"{rev}:vision/localize.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "localize_rev.py"
    path.write_text(source)
    name = "leafscout.vision._localize_rev"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "leafscout.vision"  # its relative imports (segment) resolve to today's package
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.LeafLocalizer


def score(localizer, photos: list[tuple[Path, list]]) -> dict:
    truth = found = hits = images = 0
    t0 = time.process_time()
    for image_path, normalised in photos:
        image = cv2.imread(str(image_path))
        if image is None or not normalised:
            continue
        h, w = image.shape[:2]
        boxes = [(x0 * w, y0 * h, x1 * w, y1 * h) for x0, y0, x1, y1 in normalised]
        dets = [d.box for d in localizer(image)]
        images += 1
        truth += len(boxes)
        found += len(dets)
        hits += matched(boxes, dets)
    return {"images": images, "boxes": truth, "detections": found, "matched": hits,
            "recall": round(hits / max(1, truth), 4), "precision": round(hits / max(1, found), 4),
            "cpu_ms_per_image": round(1000 * (time.process_time() - t0) / max(1, images), 1)}


def markdown(result: dict, command: str) -> str:
    rows = []
    for name, r in result["sets"].items():
        before = r.get("compare")
        cell = lambda k, pct=True: (  # noqa: E731
            (f"{100 * before[k]:.1f} % -> " if before and pct else f"{before[k]} -> " if before else "")
            + (f"{100 * r['now'][k]:.1f} %" if pct else f"{r['now'][k]}"))
        rows.append(f"| {name} | {r['now']['images']} | {r['now']['boxes']} | {cell('detections', False)} | "
                    f"{cell('matched', False)} | {cell('recall')} | {cell('precision')} |")
    compare = f" Before -> after: revision `{result['compare']}` -> the working tree." if result["compare"] else ""
    return f"""### Plant boxes on real photos (`benchmarks/box_bench.py`)

Command: `{command}`
Machine: {result['machine']}. Date: {result['date']}.
`LeafLocalizer` with its default settings (no classifier) against human plant boxes; a box is
found when one detection overlaps it at IoU >= {IOU} (one-to-one).{compare}
The localizer is tuned for top-down robot frames; PlantDoc's photos are hand-held close-ups
of leaves among leaves (a median box covers 6.4 % of its photo, 6.3 % of the boxes more than
half), and cwfid's boxes are whole carrot and weed plants where the localizer looks for leaves,
so both recalls are low: they show whether a change finds more real plants one box each, not
what the robot reaches on its own camera.

| photos | images | plant boxes | detections | matched | recall | precision |
|---|---:|---:|---:|---:|---:|---:|
""" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED, help="folder with plantdoc/ and cwfid/ (default ../shared/data)")
    p.add_argument("--split", type=Path, default=REPO / "vision" / "reference_bundle" / "split.json.gz",
                   help="split naming PlantDoc's test photos (default: the reference bundle's)")
    p.add_argument("--compare", metavar="REV", default=None, help="also score the localizer of this git revision")
    p.add_argument("--json", type=Path, default=REPO / "bench_out" / "boxes.json")
    p.add_argument("--md", type=Path, default=REPO / "docs" / "_bench_boxes.md")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    sets = photo_sets(args.data, args.split)
    if not sets:
        print(f"no plantdoc/ or cwfid/ under {args.data}: nothing to score", file=sys.stderr)
        return 2
    now, before = localizer_of(None)(), (localizer_of(args.compare)() if args.compare else None)
    result = {"machine": f"{cpu_model()} (`lscpu`), no GPU, OpenCV with 1 thread",
              "date": time.strftime("%Y-%m-%d"), "compare": args.compare, "sets": {}}
    for name, photos in sets.items():
        result["sets"][name] = {"now": score(now, photos)}
        if before is not None:
            result["sets"][name]["compare"] = score(before, photos)
        print(name, json.dumps(result["sets"][name]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    command = "python benchmarks/box_bench.py" + (f" --compare {args.compare}" if args.compare else "")
    args.md.write_text(markdown(result, command))
    print(f"wrote {args.json} and {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
