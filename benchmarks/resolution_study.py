"""Top-1 of checkpoints at other input sizes than they were trained at, per source, on validation.

Why: a model trained with random scale and crop sees leaves larger than a test crop shows them,
so it can score better on crops resized to more pixels than its training size (the "FixRes"
effect). This measures how much, to choose the input size a fine-tune and the bundle use.
Validation part only: the test part stays out of that choice.

    python benchmarks/resolution_study.py runs/field_v3/best.pt --sizes 96,112,128
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from leafscout.training.checkpoint import checkpoint_preprocess, load_checkpoint  # noqa: E402
from leafscout.training.evaluate import _samples_for, predict_probs  # noqa: E402
from leafscout.training.split import load_split, split_beside  # noqa: E402


def study(checkpoint: Path, sizes: list[int], split: str = "val") -> list[dict]:
    model, ckpt = load_checkpoint(checkpoint)
    spec = checkpoint_preprocess(ckpt)
    samples = _samples_for(Path(checkpoint), ckpt, None, split)  # as eval: the run's split, checked against the checkpoint
    names = load_split(split_beside(checkpoint)).source_names()
    source = np.array([s.source for s in samples])
    rows = []
    for size in sizes:
        y, probs = predict_probs(model, dataclasses.replace(spec, size=(size, size)), samples)
        hit = probs.argmax(1) == y
        row = {"checkpoint": str(checkpoint), "trained_at": spec.size[0], "size": size, "split": split}
        row.update({names[i]: round(100 * float(hit[source == i].mean()), 2) for i in np.unique(source)})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", type=Path, nargs="+", help="checkpoints with split.json beside them")
    p.add_argument("--sizes", default="96,112,128", help="comma-separated input sides in pixels")
    p.add_argument("--split", default="val", choices=("train", "val"), help="split part (default val; never test)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    for ckpt in args.checkpoints:
        study(ckpt, sizes, args.split)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
