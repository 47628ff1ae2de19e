"""How the simulator's MJPG recording changes its frames: FFmpeg's default encoder vs OpenCV's own.

    .venv/bin/python benchmarks/mjpeg_encoders.py [--leaves DIR] [--frames 40]

Renders simulated field frames (real leaves when ``--leaves`` or the shared data is there,
synthetic otherwise), writes them with each encoder, reads them back, and prints bytes per
frame, the mean absolute error and the mean shift per channel (grey levels, B G R).
Backs the choice written up in docs/opencv.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "plantvillage"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--leaves", type=Path, default=SHARED if SHARED.is_dir() else None,
                   help="PlantVillage-layout folder (default: the shared data, else synthetic leaves)")
    p.add_argument("--frames", type=int, default=40, help="frames to encode (default 40)")
    p.add_argument("--quality", type=int, default=75, help="OpenCV encoder quality (default 75, the simulator's)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from leafscout.robot.simulate import FieldConfig, FieldSimulator, LeafBank, mjpeg_writer

    bank = LeafBank.from_folder(args.leaves, per_class=5, seed=0) if args.leaves else LeafBank.synthetic(seed=0)
    sim = FieldSimulator(FieldConfig(seed=0), bank)
    frames = []
    for frame, *_ in sim.frames():  # skip the first metres: the rows start on bare headland
        frames.append(frame)
        if len(frames) == 100 + args.frames:
            break
    frames = np.stack(frames[100:])
    size = (frames.shape[2], frames.shape[1])
    writers = {
        "FFmpeg default MJPEG": lambda path: cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 20.0, size),
        f"OpenCV MJPEG quality {args.quality}": lambda path: mjpeg_writer(path, 20.0, size, args.quality),
    }
    print(f"{len(frames)} frames of {size[0]}x{size[1]}, leaves: {args.leaves or 'synthetic'}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, make) in enumerate(writers.items()):
            path = str(Path(tmp) / f"{i}.avi")
            writer = make(path)
            for f in frames:
                writer.write(f)
            writer.release()
            cap = cv2.VideoCapture(path)
            back = np.stack([cap.read()[1] for _ in frames]).astype(np.int16)
            cap.release()
            diff = back - frames
            shift = " ".join(f"{v:+.2f}" for v in diff.mean(axis=(0, 1, 2)))
            print(f"{name}: {Path(path).stat().st_size / len(frames) / 1000:.1f} kB/frame, "
                  f"mean |error| {np.abs(diff).mean():.2f} grey levels, mean shift B G R {shift}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
