"""Field classifier benchmark: the committed bundle on held-out field photos, lab photos and non-leaves.

Evaluates a bundle (default: the reference bundle) exactly as the robot decides, with
`leafscout eval` on the test part of every source its split lists (PlantDoc photos,
PlantVillage photos, cwfid field images; none of them used for training, calibration or
thresholds), plus a folder of *negatives*: the background windows of those held-out
photos (soil, mulch, stems, sky, hands, pots, fruit, weeds), written out as image files.
Writes JSON and the markdown fragment docs/_bench_field.md with the targets of the
field-classifier issue.

    python benchmarks/field_bench.py [--bundle DIR] [--data-root ../shared/data]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from leafscout.deploy.data import read_bundle_split  # noqa: E402
from leafscout.training.data import sample_image  # noqa: E402
from leafscout.training.sources import LEAFY_NEGATIVE_MAX, unboxed_leaf_windows  # noqa: E402
from leafscout.vision.bundle import default_bundle_path, load_bundle  # noqa: E402
from leafscout.vision.taxonomy import BACKGROUND  # noqa: E402

FIELD_SOURCE = "plantdoc"
LAB_SOURCE = "plantvillage"
# name -> (where, metric, comparison, target)
TARGETS = [
    ("PlantDoc held-out leaves", FIELD_SOURCE, "health_accuracy", ">=", 0.90),
    ("PlantDoc held-out leaves", FIELD_SOURCE, "false_alarm_rate", "<=", 0.10),
    ("PlantDoc held-out leaves", FIELD_SOURCE, "coverage", ">=", 0.80),
    ("PlantDoc held-out leaves", FIELD_SOURCE, "top1", ">=", 0.50),
    ("held-out non-leaf crops", "negatives", "negatives_called_plant", "<=", 0.05),
    ("PlantVillage held-out test", LAB_SOURCE, "top1", ">=", 0.97),
    ("PlantVillage held-out test", LAB_SOURCE, "macro_f1", ">=", 0.96),
    ("field validation (calibration)", "calibration", "ece_after", "<=", 0.03),
    # The same, with each half of the validation photos calibrated by a temperature fitted on the other.
    ("field validation, 2-fold cross-fitted", "calibration", "ece_cross_fitted", "<=", 0.03),
]


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
        amx = " with AMX" if "amx_bf16" in out else ""
    except (OSError, subprocess.SubprocessError):
        model, amx = platform.processor(), ""
    return f"{os.cpu_count()}-core {platform.machine()} {model}{amx}, no GPU"


def write_negatives(bundle_dir: Path, data_root: Path, out: Path) -> int:
    """The held-out (test part) background windows of the bundle's split, as PNG files."""
    bundle = load_bundle(bundle_dir)
    split = read_bundle_split(bundle_dir, bundle.manifest["provenance"].get("split_manifest_sha256"),
                              data=[data_root / n for n in ("plantvillage", "plantdoc", "cwfid")])
    out.mkdir(parents=True, exist_ok=True)
    bg = split.classes.index(BACKGROUND)
    windows = [s for s in split.samples("test") if s.label == bg]
    leafy = unboxed_leaf_windows(split, windows)
    n = 0
    for s, unboxed_leaf in zip(windows, leafy):
        if not unboxed_leaf:
            cv2.imwrite(str(out / f"{split.source_names()[s.source]}-{n:05d}.png"), sample_image(s))
            n += 1
    return n, int(leafy.sum())


def measure(bundle_dir: Path, data_root: Path, out_dir: Path) -> dict:
    negatives = out_dir / "negatives"
    n_neg, n_leafy = write_negatives(bundle_dir, data_root, negatives)
    cmd = [sys.executable, "-m", "leafscout", "eval", str(bundle_dir)]
    for name in (LAB_SOURCE, FIELD_SOURCE, "cwfid"):
        cmd += ["--data", str(data_root / name)]
    cmd += ["--negatives", str(negatives), "--split", "test", "--json"]
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"eval failed:\n{done.stderr[-3000:]}")
    metrics = json.loads(done.stdout[done.stdout.index("{"):])
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    shown = ["python", *(os.path.relpath(c, REPO) if os.path.isabs(c) else c for c in cmd[1:])]
    return {"command": " ".join(shlex.quote(c) for c in shown), "seconds": time.monotonic() - t0,
            "negatives_written": n_neg, "unboxed_leaf_windows_left_out": n_leafy, "eval": metrics, "calibration": manifest.get("calibration", {}),
            "model": manifest["model"], "files": manifest["files"]}


def _value(result: dict, where: str, metric: str) -> float | None:
    ev = result["eval"]
    if where == "negatives":
        return ev.get("negatives_called_plant")
    if where == "calibration":
        return result["calibration"].get(metric)
    return ev["per_source"].get(where, {}).get(metric)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def markdown(result: dict, bench_cmd: str) -> str:
    ev, cal = result["eval"], result["calibration"]
    size = sum(f["bytes"] for f in result["files"].values()) / 1e6
    lines = [
        "## Field classifier (issue #13 targets)",
        "",
        f"Machine: {machine()}. Date: {dt.date.today().isoformat()}. Bundle: `{result['bundle']}` "
        f"({result['model']['name']}, {result['model']['params']:,} parameters, input "
        f"{result['input']} px, {size:.1f} MB on disk), evaluated as the robot decides "
        f"(`{ev['decide_on']}`, abstain below {ev['abstain_below']:.3f}, out-of-distribution floor "
        f"{ev['ood_below']:.3f}, model file {result['model_file']}).",
        "",
        f"Benchmark command: `{bench_cmd}`; it ran `{result['command']}`.",
        "",
        "Every figure is on the **test part** of the bundle's split (PlantDoc split by photo, PlantVillage "
        "by leaf, cwfid by image), which no training, calibration or threshold choice looked at. "
        f"Negatives: the {result['negatives_written']} background windows of those held-out photos that "
        f"show no leaf: cwfid soil, weed and crop patches, and PlantDoc windows that no leaf box touches with at "
        f"most {100 * LEAFY_NEGATIVE_MAX:.0f}% leaf-coloured pixels (soil, mulch, fruit, hands, walls, sky, text). "
        f"PlantDoc's boxes are not exhaustive: {result['unboxed_leaf_windows_left_out']} more windows show "
        "unboxed leaves and are left out, as they are from calibration.",
        "",
        "| target | measured | target | met |",
        "|---|---|---|---|",
    ]
    for label, where, metric, cmp, target in TARGETS:
        v = _value(result, where, metric)
        met = v is not None and (v >= target if cmp == ">=" else v <= target)
        lines.append(f"| {label}: {metric} | {_pct(v)} | {cmp} {_pct(target)} | {'yes' if met else 'no'} |")
    lines += ["", "| source (test part) | n | top-1 | macro-F1 | ECE | health acc. | false alarms | misses | "
                  "coverage | crop acc. | background called plant |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in ev["per_source"].items():
        lines.append(f"| {name} | {m['n']} | {_pct(m['top1'])} | {m['macro_f1']:.3f} | {_pct(m['ece'])} | "
                     f"{_pct(m['health_accuracy'])} | {_pct(m['false_alarm_rate'])} | {_pct(m['miss_rate'])} | "
                     f"{_pct(m['coverage'])} | {_pct(m['crop_accuracy'])} | {_pct(m['background_called_plant'])} |")
    neg = ev.get("negatives", {})
    lines += ["", f"Negatives: {neg.get('n')} crops, decided {neg.get('called')}.",
              f"Calibration (fitted on the field validation part of {', '.join(cal.get('fit_sources', []))}): "
              f"T = {cal.get('temperature', 0):.3f}{_background_t(cal)} (chosen by "
              f"{cal.get('temperature_objective', 'nll')}), ECE "
              f"{_pct(cal.get('ece_before'))} -> {_pct(cal.get('ece_after'))} on {cal.get('n_fit')} validation crops "
              f"(2-fold cross-fitted by photo: {_pct(cal.get('ece_cross_fitted'))}; at the NLL temperature "
              f"{cal.get('temperature_nll', cal.get('temperature', 0)):.3f}: {_pct(cal.get('ece_at_nll_temperature'))}"
              f"{_single_t(cal)}); validation {cal.get('val')}."]
    return "\n".join(lines) + "\n"


def _background_t(cal: dict) -> str:
    t = cal.get("background_temperature")
    return "" if t is None else f" on crops whose best class is a plant and {t:.3f} on those whose best class is background"


def _single_t(cal: dict) -> str:
    if cal.get("temperature_single") is None:
        return ""
    return (f"; one temperature for all, {cal['temperature_single']:.3f}: {_pct(cal.get('ece_single_temperature'))}, "
            f"cross-fitted {_pct(cal.get('ece_cross_fitted_single_temperature'))}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=default_bundle_path())
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "field")
    ap.add_argument("--md", type=Path, default=REPO / "docs" / "_bench_field.md")
    args = ap.parse_args(argv)
    bench_cmd = "python benchmarks/field_bench.py" + (
        f" --bundle {os.path.relpath(args.bundle, REPO)}" if args.bundle != default_bundle_path() else "")
    result = measure(args.bundle, args.data_root, args.out)
    bundle = load_bundle(args.bundle)
    result.update(bundle=os.path.relpath(args.bundle, REPO), input=bundle.spec.size[0], model_file=bundle.model_file)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "field_bench.json").write_text(json.dumps(result, indent=1))
    args.md.write_text(markdown(result, bench_cmd))
    print(args.md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
