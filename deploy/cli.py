"""`leafscout export`, `verify` and `bench`: checkpoint to bundle, bundle checks, runtime benchmark.

Exit codes: 0 success; 1 a gate or check failed (the report says which) or bad input;
2 export wrote the fp32 bundle but rejected the int8 model that was asked for.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_INT8_REJECTED = 0, 1, 2


def _public_key(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def _cmd_export(args: argparse.Namespace) -> int:
    from leafscout.vision.bundle import BundleError

    from .errors import DeployError, ParityError
    from .export import describe, export_bundle
    from .fold import FoldError

    try:
        result = export_bundle(
            args.checkpoint, args.out, int8=args.int8, data=args.data, split=args.split,
            calibration_images=args.calibration_images, calibration_method=args.calibration_method,
            int8_max_drop=args.int8_max_drop,
            sign_key=args.sign, overwrite=args.force,
        )
    except ParityError as e:
        print(f"export FAILED: {e}", file=sys.stderr)
        return EXIT_FAILED
    except (DeployError, FoldError, BundleError, OSError) as e:
        print(f"export FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(describe(result))
    if args.int8 and not result.int8_written:
        print(f"int8 was asked for but not written: {result.int8_reason}", file=sys.stderr)
        return EXIT_INT8_REJECTED
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from .errors import DeployError
    from .verify import verify_bundle

    try:
        report = verify_bundle(args.bundle, data=args.data, checkpoint=args.checkpoint,
                               public_key=_public_key(args.public_key))
    except DeployError as e:
        print(f"verify FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(report.format())
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_bench(args: argparse.Namespace) -> int:
    from leafscout.vision.bundle import BundleError

    from .bench import bench_bundle, format_table

    try:
        result = bench_bundle(args.bundle, checkpoint=args.checkpoint, batches=tuple(args.batch),
                              threads=tuple(args.threads) if args.threads else None, seconds=args.seconds,
                              runtimes=tuple(args.runtime) if args.runtime else None)
    except (BundleError, ValueError) as e:
        print(f"bench FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    table = format_table(result)
    print(table)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    print(f"results written to {out}")
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    from .parity import MAX_INT8_DROP_POINTS

    p = subparsers.add_parser(
        "export", help="fold BatchNorm, export ONNX (+int8), gate on parity, write a bundle",
        description="Write a deploy bundle (model.onnx, optional model.int8.onnx, manifest.json) from a "
                    "checkpoint. Fails with a report unless PyTorch, folded PyTorch and onnxruntime agree.",
    )
    p.add_argument("checkpoint", help="checkpoint file (best.pt); its run's split.json must be beside it")
    p.add_argument("--out", required=True, help="bundle directory to write (replaced only with --force)")
    p.add_argument("--int8", action="store_true", help="also write a static int8 model (QDQ, per-channel), gated on accuracy")
    p.add_argument("--data", help="data folder the split's images live in, if it moved (default: as recorded)")
    p.add_argument("--split", default="test", choices=("val", "test"), help="split part used for the gates and metrics (default: test)")
    p.add_argument("--calibration-images", type=int, default=256, help="training images used to calibrate int8 (default: 256)")
    p.add_argument("--calibration-method", default="minmax", choices=("minmax", "percentile", "entropy"),
                   help="how int8 activation ranges are chosen from the calibration images (default: minmax)")
    p.add_argument("--int8-max-drop", type=float, default=MAX_INT8_DROP_POINTS,
                   help=f"largest top-1 loss of int8 vs fp32, in points, before int8 is rejected (default: {MAX_INT8_DROP_POINTS})")
    p.add_argument("--sign", metavar="KEY", help="Ed25519 private key (PEM or 32 raw bytes) to sign the manifest with")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_cmd_export)

    p = subparsers.add_parser(
        "verify", help="re-check a bundle: hashes, graph, metrics, int8 gate, PyTorch parity",
        description="Load a bundle strictly and re-run export's checks on its stored split.",
    )
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--data", help="data folder holding the split's images, if it moved")
    p.add_argument("--checkpoint", help="checkpoint to re-check PyTorch parity against (default: the one recorded, if present)")
    p.add_argument("--public-key", help="Ed25519 public key (PEM or 32 raw bytes); makes a valid signature mandatory")
    p.set_defaults(func=_cmd_verify)

    p = subparsers.add_parser(
        "bench", help="throughput and latency of a bundle on PyTorch, onnxruntime and OpenCV DNN",
        description="Time every runtime on the same input in one run and compare each with the core's "
                    "compute limit (one-thread matmul rate / (2 x MACs per image)).",
    )
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--json", default="bench.json", help="where to write the results as JSON (default: bench.json)")
    p.add_argument("--markdown", help="also write the table as markdown to this file")
    p.add_argument("--checkpoint", help="checkpoint for the PyTorch rows (default: the recorded one; else fresh weights)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes (default: 1 32)")
    p.add_argument("--threads", type=int, nargs="+", help="thread counts (default: 1 and all cores)")
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per configuration (default: 1)")
    p.add_argument("--runtime", nargs="+", help="only these runtimes (default: all)")
    p.set_defaults(func=_cmd_bench)
