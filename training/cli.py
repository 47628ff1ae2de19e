"""`leafscout train` and `leafscout models`; heavy imports stay in handlers."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a registered model on a PlantVillage-layout folder",
        description="Train with a leaf-grouped split; writes split.json, last.pt, best.pt, metrics.json, "
        "curves.png and confusion.png to --out. Run under torchrun for DistributedDataParallel.",
    )
    p.add_argument("--data", type=Path, action="append", default=None,
                   help="a source: a folder with one sub-folder per class, or a box folder (images/, labels/ in "
                        "YOLO format, classes.txt, optional name map and masks/); repeat for several sources "
                        "in one label space (default: $LEAFSCOUT_DATA, the shared PlantVillage set, else "
                        "generated synthetic leaves)")
    p.add_argument("--model", default="leafnet_bn", help="registered model name (see `leafscout models`)")
    p.add_argument("--epochs", type=int, default=30, help="number of epochs (default 30)")
    p.add_argument("--out", type=Path, required=True, help="run directory for checkpoints, metrics and plots")
    p.add_argument("--img-size", type=int, default=None, help="input side in pixels (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size over all processes (default 64)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-3 adamw, 0.1 sgd)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="optimizer (sgd = momentum 0.9, Nesterov)")
    p.add_argument("--schedule", choices=("onecycle", "cosine"), default="onecycle", help="learning-rate schedule")
    p.add_argument("--weight-decay", type=float, default=0.05, help="weight decay on conv/linear weights (default 0.05)")
    p.add_argument("--label-smoothing", type=float, default=0.05, help="label smoothing (default 0.05)")
    p.add_argument("--balance", choices=("loss", "sqrt", "none"), default="loss",
                   help="class imbalance handling: inverse-frequency loss weights (loss), inverse square "
                        "root of the frequency (sqrt: milder), or none")
    p.add_argument("--background-p", type=float, default=0.2,
                   help="probability of pasting the leaf on a random background (default 0.2)")
    p.add_argument("--jpeg-p", type=float, default=None,
                   help="probability of a camera-like JPEG round trip (4:2:0, quality 60-95, leaf 96-160 px): "
                        "robustness to MJPG/YUV420 cameras (default: the preset's, 0 for leaf and light)")
    p.add_argument("--robot-paint-p", type=float, default=None,
                   help="probability of the crop as the robot classifies it: the ground around the leaf's outline "
                        "painted soil colour (default: the preset's, 0.35 for robot, 0 for the others)")
    p.add_argument("--augment-set", action="append", default=None, metavar="NAME=VALUE", type=_name_value,
                   help="set one augmentation setting over the preset, repeatable, e.g. blur_p=0.2 or "
                        "crop_scale=0.5,1.0 (any field of training.augment.AugmentConfig)")
    p.add_argument("--augment", choices=("leaf", "light", "field", "robot", "field-clean"), default="leaf", dest="augment_preset",
                   help="augmentation preset: leaf (crops 60-100%%, tilts, colour jitter; default), light "
                        "(turns, flips, 85-100%% crops, mild lighting: for LeNet-sized models) or field (leaf "
                        "plus real field backgrounds, colour casts, exposure, shadows, blur, noise, JPEG, "
                        "occlusion: for the robot's model) or robot (field, plus a third of the images painted around the leaf "
                        "as the robot paints its crops) or field-clean (leaf plus field's real backgrounds and JPEG: "
                        "a finishing fine-tune after field)")
    p.add_argument("--background-max-leafy", type=float, default=None, metavar="SHARE",
                   help="drop training background windows of photos with more than this share of leaf-coloured "
                        "pixels (unboxed leaves, not negatives), e.g. 0.1 (default: keep all)")
    p.add_argument("--sampling", choices=("uniform", "balanced"), default="uniform",
                   help="uniform: every training sample once per epoch; balanced: draw with weights "
                        "1/sqrt(source size x class size), so small sources and classes are seen more")
    p.add_argument("--no-augment", action="store_true", help="train on the plain preprocessed images")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                   help="training arithmetic: bf16 autocast is ~1.6x faster on CPUs with AMX/AVX512-BF16 "
                        "(weights and evaluation stay fp32); auto = bf16 where the hardware has it natively, "
                        "else fp32 (default fp32)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step (1.2-1.3x the images/s of leafnet_bn(_deep) on a CPU, "
                        "after a warm-up; needs a C++ compiler)")
    p.add_argument("--seed", type=int, default=0, help="seed for split, init, order and augmentation")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0: main process)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: cores / processes - 1, at least 1)")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="finish within this many minutes: fewer epochs, learning rate decayed to fit")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--init-from", type=Path, default=None, metavar="CKPT",
                   help="fine-tune: start from this checkpoint's weights (new optimizer and schedule) on the "
                        "split it was trained on (split.json beside it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--dump-replicas", action="store_true",
                   help="every process also writes its final weights to OUT/replicas/rankN.pt (DDP check)")
    p.set_defaults(func=_train)

    p = subparsers.add_parser("models", help="list registered models with parameters and MACs")
    p.add_argument("--num-classes", type=int, default=32, help="head size used for the counts (default 32)")
    p.set_defaults(func=_models)


def _name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. blur_p=0.2), got {text!r}")
    return name.strip(), value.strip()


def _train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    data = args.data[0] if args.data and len(args.data) == 1 else args.data
    config = TrainConfig(
        data=data, model=args.model, epochs=args.epochs, out=args.out, img_size=args.img_size,
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, schedule=args.schedule,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, balance=args.balance,
        sampling=args.sampling, background_max_leafy=args.background_max_leafy,
        background_p=args.background_p, jpeg_p=args.jpeg_p, robot_paint_p=args.robot_paint_p,
        augment_set=dict(args.augment_set) if args.augment_set else None,
        augment=not args.no_augment, augment_preset=args.augment_preset,
        precision=args.precision, compile=args.compile, seed=args.seed, workers=args.workers,
        threads=args.threads, time_budget_s=None if args.time_budget is None else args.time_budget * 60, resume=args.resume,
        init_from=args.init_from, progress=not args.no_progress, dump_replicas=args.dump_replicas,
    )
    try:
        run = train(config)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"leafscout train: error: {e}", file=sys.stderr)
        return 2
    print(run)
    return 0


def _models(args: argparse.Namespace) -> int:
    from leafscout.vision import count_macs, count_params, create_model, get_entry, list_models

    print(f"{'model':<18} {'input':>7} {'params':>10} {'MACs':>12}  description")
    for name in list_models():
        entry = get_entry(name)
        model = create_model(name, num_classes=args.num_classes)
        macs = count_macs(model, entry.input_size)
        size = "x".join(map(str, entry.input_size))
        print(f"{name:<18} {size:>7} {count_params(model):>10,} {macs:>12,}  {entry.description}")
    return 0
