"""`leafscout study bn` and `leafscout calibrate`; heavy imports stay inside the handlers."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["register", "main"]


def _lr_list(text: str) -> tuple[float, ...]:
    try:
        lrs = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated learning rates like 0.01,0.1,1.0, got {text!r}"
        ) from None
    if not lrs or any(not lr > 0 for lr in lrs):
        raise argparse.ArgumentTypeError(f"learning rates must be positive numbers, got {text!r}")
    return lrs


def _arm_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    study = subparsers.add_parser(
        "study",
        help="controlled experiments on the models (see docs/batchnorm.md)",
        description="Controlled experiments; each writes a JSON record, a markdown table and a PNG.",
    )
    kinds = study.add_subparsers(dest="study", metavar="STUDY", required=True)
    p = kinds.add_parser(
        "bn",
        help="batch normalization: LeNet without BN, BN before and BN after ReLU over a learning-rate sweep",
        description="Train lenet, lenet_bn and lenet_bn_after at each learning rate (SGD, momentum 0.9) with the "
        "same seed, split and batch order; write OUT/study.json, OUT/study.md (epochs and wall time to the target "
        "validation accuracy, best accuracy) and OUT/curves.png. Runs whose loss turns NaN are stopped and reported.",
    )
    p.add_argument("--data", type=Path, default=None,
                   help="PlantVillage-layout folder (default: $LEAFSCOUT_DATA, the shared set, else synthetic leaves)")
    p.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per run under runs/)")
    p.add_argument("--quick", action="store_true",
                   help="smoke version: 2 epochs, batch 16, target 30%%, 24 synthetic leaves per class when no data")
    p.add_argument("--lrs", type=_lr_list, default=None, help="comma-separated learning rates (default 0.01,0.1,1.0)")
    p.add_argument("--arms", type=_arm_list, default=None,
                   help="comma-separated registry models to compare (default lenet,lenet_bn,lenet_bn_after)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 20; 2 with --quick)")
    p.add_argument("--target", type=_probability, default=None,
                   help="validation top-1 to reach, in (0, 1] (default 0.70; 0.3 with --quick)")
    p.add_argument("--img-size", type=int, default=None, help="input side in pixels (default 32)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default 64; 16 with --quick)")
    p.add_argument("--seed", type=int, default=None, help="seed shared by every run (default 0)")
    p.add_argument("--augment", action="store_true", help="train with the leaf augmentation (slower; off by default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--report-only", action="store_true",
                   help="do not train: re-analyse OUT/study.json (e.g. with another --target) and rewrite the reports")
    p.set_defaults(func=_study_bn)

    p = subparsers.add_parser(
        "calibrate",
        help="fit temperature scaling and an abstain threshold on a checkpoint's validation split",
        description="Fit one temperature T on the run's validation split (NLL), choose abstain_below, the smallest "
        "confidence threshold whose accepted validation predictions reach --target-precision, measure both on the "
        "test split, write them into the checkpoint's 'calibration' block (deploy copies it into the bundle) and "
        "save reliability.png beside the checkpoint. The checkpoint needs its run's split.json beside it.",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint (.pt) with split.json in the same folder")
    p.add_argument("--target-precision", type=_probability, default=0.98,
                   help="precision wanted on accepted (not uncertain) predictions (default 0.98)")
    p.add_argument("--data", type=Path, default=None,
                   help="re-point the run's split.json at this copy of the images (default: where it was trained)")
    p.add_argument("--split", default="val", choices=("train", "val", "test"),
                   help="split to fit on (default val; test is for reporting only)")
    p.add_argument("--target-health-accuracy", type=_probability, default=0.92,
                   help="field models (with a background class): health accuracy wanted on decided field "
                        "validation leaves (default 0.92)")
    p.add_argument("--min-coverage", type=_probability, default=0.85,
                   help="field models: never abstain on more than 1 - this of the field validation leaves (default 0.85)")
    p.add_argument("--max-negatives-plant", type=_probability, default=0.04,
                   help="field models: at most this share of validation background crops may be decided as a "
                        "plant; sets the out-of-distribution floor (default 0.04)")
    p.add_argument("--json", action="store_true", help="print the calibration block as JSON")
    p.set_defaults(func=_calibrate)


def _study_bn(args: argparse.Namespace) -> int:
    from .study import StudyConfig, StudyError, report_study, run_study

    given = {
        "data": args.data, "lrs": args.lrs, "arms": args.arms, "epochs": args.epochs, "target": args.target,
        "img_size": args.img_size, "batch_size": args.batch_size, "seed": args.seed,
    }
    given = {k: v for k, v in given.items() if v is not None}
    given["augment"] = args.augment
    if args.no_progress:
        given["progress"] = False
    try:
        if args.report_only:
            doc = report_study(args.out, args.target)
        else:
            config = StudyConfig.quick(args.out, **given) if args.quick else StudyConfig(out=args.out, **given)
            doc = run_study(config)
    except (StudyError, ValueError, FileNotFoundError) as e:
        print(f"leafscout study bn: error: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "study.md").read_text(), end="")
    print(f"\nwrote {args.out}/study.json, study.md, curves.png (training took {doc['wall_seconds']:.0f} s)")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from .calibration import calibrate_checkpoint
    from .checkpoint import CheckpointError

    report = "test" if args.split != "test" else None
    try:
        from .checkpoint import read_checkpoint

        if "background" in read_checkpoint(args.checkpoint)["classes"]:
            return _calibrate_field(args)
        result = calibrate_checkpoint(args.checkpoint, args.target_precision, args.split, data=args.data,
                                      report_split=report)
    except (ValueError, CheckpointError, FileNotFoundError) as e:
        print(f"leafscout calibrate: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"temperature      {result['temperature']:.4f}")
    print(f"ECE ({args.split})        {100 * result['ece_before']:.2f}% -> {100 * result['ece_after']:.2f}%")
    prec = result["val_precision_accepted"]
    print(f"abstain_below    {result['abstain_below']:.4f}  ({args.split}: precision "
          f"{'-' if prec is None else f'{100 * prec:.2f}%'}, coverage {100 * result['val_coverage']:.1f}%"
          f"{'' if result['target_met'] else ', TARGET NOT MET'})")
    if report and report in result:
        r = result[report]
        rp = r["precision_accepted"]
        print(f"ECE ({report})       {100 * r['ece_before']:.2f}% -> {100 * r['ece_after']:.2f}%")
        print(f"{report} accepted    precision {'-' if rp is None else f'{100 * rp:.2f}%'}, "
              f"coverage {100 * r['coverage']:.1f}%")
    print(f"wrote {args.checkpoint} (calibration block) and {args.checkpoint.with_name('reliability.png')}")
    return 0


def _calibrate_field(args: argparse.Namespace) -> int:
    from .calibration import calibrate_field

    result = calibrate_field(args.checkpoint, data=args.data, target_health_accuracy=args.target_health_accuracy,
                             min_coverage=args.min_coverage, max_negatives_called_plant=args.max_negatives_plant)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    v = result["val"]
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    print(f"temperature      {result['temperature']:.4f}  (fitted on field validation: {', '.join(result['fit_sources'])}"
          + ("" if result["background_temperature"] is None else "; crops whose best class is a plant") + ")")
    if result["background_temperature"] is not None:
        print(f"background T     {result['background_temperature']:.4f}  (crops whose best class is background; one "
              f"temperature for all would give ECE {100 * result['ece_single_temperature']:.2f}%, cross-fitted "
              f"{100 * result['ece_cross_fitted_single_temperature']:.2f}%)")
    print(f"ECE (field val)  {100 * result['ece_before']:.2f}% -> {100 * result['ece_after']:.2f}%  (T chosen by "
          f"{result['temperature_objective']}; 2-fold cross-fitted by photo: {100 * result['ece_cross_fitted']:.2f}%)")
    print(f"abstain_below    {result['abstain_below']:.4f}  (health; val coverage {pct(v['coverage'])}, health accuracy "
          f"{pct(v['health_accuracy'])}, false alarms {pct(v['false_alarm_rate'])}"
          f"{'' if result['target_met'] else ', TARGET NOT MET'})")
    print(f"ood_below        {result['ood_below']:.4f}  (val background decided as a plant: {pct(v['background_called_plant'])})")
    print(f"wrote {args.checkpoint} (calibration block) and {args.checkpoint.with_name('reliability.png')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m leafscout.training.study_cli ...`` until the lead wires this module into ``leafscout``."""
    import logging

    parser = argparse.ArgumentParser(prog="leafscout", description="BN study and calibration")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
