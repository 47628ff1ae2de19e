"""`leafscout eval`: a checkpoint or a deploy bundle on its split or on any labelled folders.

Here rather than in ``training`` because it reads bundles as the robot does; training
does not import deploy, deploy imports training.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint (or a deploy bundle) on a split",
        description="Top-1, macro-F1, per-class precision/recall, confusion matrix and expected calibration error.",
    )
    p.add_argument("path", type=Path, nargs="?", default=None,
                   help="checkpoint (.pt) or deploy bundle directory (with manifest.json); "
                        "default: the packaged reference bundle")
    p.add_argument("--data", type=Path, action="append", default=None,
                   help="a source to evaluate on, repeatable: a folder the model's split lists (matched by "
                        "folder name: its --split part) or any other ImageFolder tree or box folder (all of it); "
                        "default: every source of the model's split")
    p.add_argument("--negatives", type=Path, default=None,
                   help="a folder of images with no leaf (soil, straw, weeds, sky, tools): reports "
                        "negatives_called_plant, the share given a plant class")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                   help="which part of the run's split to evaluate (default test)")
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                   help="for a bundle: evaluate model.int8.onnx (default: when the bundle has one) or not")
    p.add_argument("--json", action="store_true", help="print the full metrics as JSON")
    p.set_defaults(func=_eval)


def _pct(v: float | None) -> str:
    return "   -  " if v is None else f"{100 * v:5.1f}%"


def _format_report(m: dict) -> str:
    lines = [
        f"{m['model']}  split={m.get('split')}  n={m['n']}  decides on {m['decide_on']}",
        f"top-1 {m['top1']:.4f}   macro-F1 {m['macro_f1']:.4f}   ECE {m['ece']:.4f}",
        f"health accuracy {_pct(m['health_accuracy'])}  false alarms {_pct(m['false_alarm_rate'])}  "
        f"misses {_pct(m['miss_rate'])}  coverage {_pct(m['coverage'])}",
    ]
    if "negatives" in m:
        lines.append(f"negatives called a plant: {_pct(m['negatives_called_plant'])} of {m['negatives']['n']}")
    if len(m["per_source"]) > 1:
        lines.append(f"{'source':<20} {'n':>6} {'top-1':>7} {'health':>7} {'f.alarm':>7} {'miss':>7} {'cover':>7}")
        for name, s in m["per_source"].items():
            lines.append(f"{name:<20} {s['n']:6d} {_pct(s['top1'])} {_pct(s['health_accuracy'])} "
                         f"{_pct(s['false_alarm_rate'])} {_pct(s['miss_rate'])} {_pct(s['coverage'])}")
    lines.append(f"{'class':<48} {'prec':>6} {'recall':>6} {'f1':>6} {'n':>5}")
    for name, c in m["per_class"].items():
        lines.append(f"{name:<48} {c['precision']:6.3f} {c['recall']:6.3f} {c['f1']:6.3f} {c['support']:5d}")
    return "\n".join(lines)


def _eval(args: argparse.Namespace) -> int:
    from .field_eval import evaluate_sources

    path: Path | None = args.path
    if path is None:
        from leafscout.vision.bundle import default_bundle_path

        path = default_bundle_path()
    try:
        metrics = evaluate_sources(path, args.data, negatives=args.negatives, split=args.split, int8=args.int8)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"leafscout eval: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=1) if args.json else _format_report(metrics))
    return 0
