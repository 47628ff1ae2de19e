"""The batch-normalization study: does BN let LeNet train faster at larger learning rates?

Ioffe & Szegedy (2015) report that BN reaches the baseline's accuracy in 14x fewer
steps, mostly because it tolerates much larger learning rates. This module checks
that on our leaves: ``lenet`` (no BN), ``lenet_bn`` (BN before ReLU) and
``lenet_bn_after`` (BN after ReLU), each over a learning-rate sweep with SGD +
momentum, same seed, same split, same batch order and augmentation. Every run is an
ordinary ``leafscout.training.train.train`` run (no second training loop); this module only
chooses the configurations, stops runs that diverged, and summarizes:
epochs and wall time to a target validation accuracy, best accuracy, a curves PNG
and a markdown table.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

__all__ = [
    "ARMS",
    "StudyConfig",
    "StudyError",
    "RunResult",
    "run_study",
    "report_study",
    "summarize",
    "write_markdown",
    "plot_study",
]

log = logging.getLogger(__name__)

# Registry name -> what the arm tests.
ARMS: dict[str, str] = {
    "lenet": "no BN",
    "lenet_bn": "BN before ReLU",
    "lenet_bn_after": "BN after ReLU",
}
BASELINE = "lenet"
STUDY_FORMAT = "leafscout-bn-study/1"


class StudyError(ValueError):
    """A study configuration that cannot run."""


class _Diverged(RuntimeError):
    """Raised from the epoch callback to stop a run whose loss is no longer finite."""


@dataclass
class StudyConfig:
    """One sweep. Defaults are the full study (docs/batchnorm.md: under 30 minutes on the 2-core dev box)."""

    out: Path
    data: Path | None = None  # None: the shared PlantVillage set, else synthetic leaves
    arms: tuple[str, ...] = tuple(ARMS)
    lrs: tuple[float, ...] = (0.01, 0.1, 1.0)
    epochs: int = 20
    target: float = 0.70
    img_size: int = 32
    batch_size: int = 64
    seed: int = 0
    # SGD-style weight decay (train()'s default 0.05 is meant for AdamW).
    weight_decay: float = 5e-4
    # No label smoothing: the study measures plain cross-entropy training, and the
    # calibration that follows should see the model's own confidence.
    label_smoothing: float = 0.0
    # Off: the study measures how fast the optimizer fits the same images (as in
    # Ioffe & Szegedy's MNIST experiment), and it keeps an epoch at ~3 s here.
    augment: bool = False
    synthetic_per_class: int = 120
    cache_dir: Path | None = None
    threads: int | None = None
    progress: bool = True

    def validate(self) -> None:
        from leafscout.vision import get_entry

        for arm in self.arms:
            get_entry(arm)  # unknown names raise with the list of valid ones
        if not self.arms:
            raise StudyError("arms is empty; choose from " + ", ".join(ARMS))
        if len(set(self.arms)) != len(self.arms):
            raise StudyError(f"arms must not repeat, got {list(self.arms)}")
        if not self.lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs):
            raise StudyError(f"lrs must be positive numbers, got {list(self.lrs)}")
        if len(set(self.lrs)) != len(self.lrs):
            raise StudyError(f"lrs must not repeat, got {list(self.lrs)}")
        if self.epochs < 1:
            raise StudyError(f"epochs must be >= 1, got {self.epochs}")
        if not 0.0 < self.target <= 1.0:
            raise StudyError(f"target must be a validation accuracy in (0, 1], got {self.target}")

    @classmethod
    def quick(cls, out: Path, **overrides: Any) -> "StudyConfig":
        """A minute-long smoke version (tests, first look): 2 epochs, small batches, few synthetic leaves."""
        preset: dict[str, Any] = dict(epochs=2, batch_size=16, synthetic_per_class=24, target=0.3, progress=False)
        return cls(out=out, **{**preset, **overrides})

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


@dataclass
class RunResult:
    """One (arm, learning rate) run and its per-epoch history from ``metrics.json``."""

    arm: str
    lr: float
    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    diverged: bool = False
    setup_seconds: float = 0.0  # split, cache and model set-up before epoch 1

    @property
    def label(self) -> str:
        return ARMS.get(self.arm, self.arm)

    def epochs_to(self, target: float) -> int | None:
        """First epoch whose validation top-1 reaches ``target`` (None: never)."""
        return next((h["epoch"] for h in self.history if _valid(h) and h["val_top1"] >= target), None)

    def seconds_to(self, target: float) -> float | None:
        """Training + validation seconds summed up to that epoch (set-up excluded)."""
        e = self.epochs_to(target)
        return None if e is None else sum(h["seconds"] for h in self.history if h["epoch"] <= e)

    @property
    def best_val(self) -> float | None:
        vals = [h["val_top1"] for h in self.history if _valid(h)]
        return max(vals) if vals else None

    @property
    def final_val(self) -> float | None:
        return self.history[-1]["val_top1"] if self.history and not self.diverged else None

    def to_json(self, target: float) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "label": self.label,
            "lr": self.lr,
            "run_dir": str(self.run_dir),
            "diverged": self.diverged,
            "epochs_run": len(self.history),
            "epochs_to_target": self.epochs_to(target),
            "seconds_to_target": self.seconds_to(target),
            "best_val_top1": self.best_val,
            "final_val_top1": self.final_val,
            "setup_seconds": self.setup_seconds,
            "history": self.history,
        }


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _valid(h: dict[str, Any]) -> bool:
    """An epoch with finite losses (a NaN model predicts class 0 and scores chance: not a result)."""
    return _finite(h["train_loss"]) and _finite(h["val_loss"]) and _finite(h["val_top1"])


def _run_name(arm: str, lr: float) -> str:
    return f"{arm}_lr{lr:g}"


def _resolve_data(config: StudyConfig) -> Path:
    """One data folder for every run (synthetic leaves are generated once, not per run)."""
    from .data import default_data_dir

    data = config.data if config.data is not None else default_data_dir()
    if data is not None:
        return Path(data)
    from .synthetic import generate_dataset

    data = Path(config.out) / "synthetic"
    if not data.is_dir():
        log.info("no data folder given and none found: generating synthetic leaves in %s", data)
        generate_dataset(data, per_class=config.synthetic_per_class, seed=config.seed)
    return data


def _finished_run(run_dir: Path, train_config: Any) -> RunResult | None:
    """The run already in ``run_dir`` when it finished with exactly this configuration, else None.

    Lets a study grow (more learning rates, another arm) or resume after an
    interruption without training again what it already has.
    """
    from .checkpoint import CheckpointError, read_checkpoint

    metrics, last = run_dir / "metrics.json", run_dir / "last.pt"
    if not (metrics.is_file() and last.is_file()):
        return None
    try:
        recorded = read_checkpoint(last).get("train_config")
        history = json.loads(metrics.read_text())
    except (CheckpointError, OSError, ValueError):
        return None

    def comparable(d: dict[str, Any]) -> dict[str, Any]:  # what changes the numbers, not where they go
        return {k: v for k, v in d.items() if k not in ("progress", "out", "cache_dir")}

    if not isinstance(recorded, dict) or comparable(recorded) != comparable(train_config.to_json()) or not history:
        return None
    diverged = not _valid(history[-1])
    if len(history) != train_config.epochs and not diverged:
        return None  # interrupted: train it again
    previous = run_dir.parent.parent / "study.json"
    setup = 0.0
    if previous.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            setup = next((r["setup_seconds"] for r in json.loads(previous.read_text())["runs"]
                          if Path(r["run_dir"]) == run_dir), 0.0)
    return RunResult(train_config.model, float(train_config.lr), run_dir, history, diverged, setup)


def _train_one(config: StudyConfig, data: Path, arm: str, lr: float) -> RunResult:
    from .train import TrainConfig, train

    run_dir = Path(config.out) / "runs" / _run_name(arm, lr)

    def stop_if_diverged(record: dict[str, Any]) -> None:
        if not (_finite(record["train_loss"]) and _finite(record["val_loss"])):
            raise _Diverged(f"{arm} at lr {lr:g}: loss is {record['train_loss']} at epoch {record['epoch']}")

    train_config = TrainConfig(
        data=data, model=arm, epochs=config.epochs, out=run_dir, img_size=config.img_size,
        batch_size=config.batch_size, lr=lr, optimizer="sgd", schedule="cosine",
        weight_decay=config.weight_decay, label_smoothing=config.label_smoothing, seed=config.seed,
        augment=config.augment, threads=config.threads, cache_dir=config.cache_dir,
        progress=config.progress, on_epoch_end=stop_if_diverged,
    )
    done = _finished_run(run_dir, train_config)
    if done is not None:
        log.info("%s: reusing the finished run with the same configuration", run_dir)
        return done
    result = RunResult(arm, lr, run_dir)
    t0 = time.monotonic()
    try:
        train(train_config)
    except _Diverged as e:
        log.warning("diverged, stopped: %s", e)
        result.diverged = True
    metrics = run_dir / "metrics.json"
    result.history = json.loads(metrics.read_text()) if metrics.is_file() else []
    if not result.diverged and not all(_valid(h) for h in result.history):
        result.diverged = True
    result.setup_seconds = max(0.0, time.monotonic() - t0 - sum(h["seconds"] for h in result.history))
    return result


def summarize(runs: list[RunResult], target: float) -> dict[str, Any]:
    """Per arm: the learning rate that reaches the target in the fewest epochs, and the verdict.

    The claim tested: BN reaches the target in at most half the epochs the no-BN
    baseline needs at its own best learning rate.
    """
    per_arm: dict[str, Any] = {}
    for arm in dict.fromkeys(r.arm for r in runs):
        arm_runs = [r for r in runs if r.arm == arm]
        reached = [r for r in arm_runs if r.epochs_to(target) is not None]
        best_acc = max(arm_runs, key=lambda r: r.best_val if r.best_val is not None else -1.0)
        fastest = min(reached, key=lambda r: (r.epochs_to(target), r.seconds_to(target))) if reached else None
        per_arm[arm] = {
            "label": ARMS.get(arm, arm),
            "fastest_lr": None if fastest is None else fastest.lr,
            "epochs_to_target": None if fastest is None else fastest.epochs_to(target),
            "seconds_to_target": None if fastest is None else fastest.seconds_to(target),
            "best_val_top1": best_acc.best_val,
            "best_val_lr": best_acc.lr,
            "diverged_lrs": [r.lr for r in arm_runs if r.diverged],
        }
    # Fewest epochs over the sweep to several accuracy levels: does the verdict depend on the target?
    levels = sorted({0.5, 0.6, 0.7, 0.8, 0.9, round(target, 4)})
    for arm, s in per_arm.items():
        arm_runs = [r for r in runs if r.arm == arm]
        s["epochs_to_level"] = {
            f"{lvl:g}": min((e for e in (r.epochs_to(lvl) for r in arm_runs) if e is not None), default=None)
            for lvl in levels
        }
    verdicts = {}
    base = per_arm.get(BASELINE)
    for arm, s in per_arm.items():
        if arm == BASELINE or base is None:
            continue
        e_bn, e_base = s["epochs_to_target"], base["epochs_to_target"]
        if e_bn is None:
            verdict, ratio = "does not reach the target", None
        elif e_base is None:
            verdict, ratio = "reaches the target; the no-BN baseline never does", None
        else:
            ratio = e_base / e_bn
            verdict = "holds" if e_bn <= 0.5 * e_base else "does not hold"
        verdicts[arm] = {"speedup_epochs": ratio, "claim_half_the_epochs": verdict}
    return {"target": target, "per_arm": per_arm, "vs_baseline": verdicts}


def _fmt(x: float | None, spec: str, none: str = "never") -> str:
    return none if x is None else format(x, spec)


def _seconds(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f} s" if round(x, 1) < 10 else f"{x:.0f} s"


def write_markdown(runs: list[RunResult], summary: dict[str, Any], config: StudyConfig, path: Path) -> Path:
    """The results table (one row per run) and the per-arm verdict, as markdown."""
    target = summary["target"]
    lines = [
        f"Target: validation top-1 >= {target:.0%}; {config.epochs} epochs per run, SGD (momentum 0.9, Nesterov), "
        f"cosine schedule with 1 warm-up epoch, batch {config.batch_size}, {config.img_size} px, seed {config.seed}.",
        "",
        "| arm | model | lr | epochs to target | wall time to target | best val top-1 | final val top-1 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        final = "diverged (NaN)" if r.diverged else _fmt(r.final_val, ".1%", "-")
        lines.append(
            f"| {r.label} | `{r.arm}` | {r.lr:g} | {_fmt(r.epochs_to(target), 'd')} | "
            f"{_seconds(r.seconds_to(target))} | "
            f"{_fmt(r.best_val, '.1%', '-')} | {final} |"
        )
    lines += ["", "| arm | fastest lr | epochs to target | speed-up vs no BN | BN in <= half the epochs? |",
              "|---|---:|---:|---:|---|"]
    for arm, s in summary["per_arm"].items():
        v = summary["vs_baseline"].get(arm, {})
        speed = v.get("speedup_epochs")
        lines.append(
            f"| {s['label']} (`{arm}`) | {_fmt(s['fastest_lr'], 'g', '-')} | {_fmt(s['epochs_to_target'], 'd')} | "
            f"{'baseline' if arm == BASELINE else _fmt(speed, '.2f', 'n/a') + ('x' if speed else '')} | "
            f"{'-' if arm == BASELINE else v.get('claim_half_the_epochs', 'n/a')} |"
        )
    levels = list(next(iter(summary["per_arm"].values()))["epochs_to_level"])
    lines += ["", "Fewest epochs over the learning-rate sweep to reach each validation top-1 level:", "",
              "| arm | " + " | ".join(f"{float(lvl):.0%}" for lvl in levels) + " |",
              "|---|" + "---:|" * len(levels)]
    for arm, s in summary["per_arm"].items():
        cells = " | ".join(_fmt(s["epochs_to_level"][lvl], "d", "-") for lvl in levels)
        lines.append(f"| {s['label']} | {cells} |")
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_study(runs: list[RunResult], target: float, path: Path) -> Path:
    """Validation top-1 (top row) and training loss (bottom row) per epoch, one column per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    arms = list(dict.fromkeys(r.arm for r in runs))
    lrs = sorted({r.lr for r in runs})
    colors = {lr: plt.cm.viridis(i / max(1, len(lrs) - 1) * 0.85) for i, lr in enumerate(lrs)}
    fig, axes = plt.subplots(2, len(arms), figsize=(4.6 * len(arms), 7.2), squeeze=False, sharey="row")
    for col, arm in enumerate(arms):
        top, bottom = axes[0, col], axes[1, col]
        for r in (r for r in runs if r.arm == arm):
            ep = [h["epoch"] for h in r.history]
            name = f"lr {r.lr:g}" + (" (diverged)" if r.diverged else "")
            style = "x--" if r.diverged else "o-"
            top.plot(ep, [h["val_top1"] if _valid(h) else float("nan") for h in r.history],
                     style, color=colors[r.lr], ms=3, label=name)
            bottom.plot(ep, [h["train_loss"] if _finite(h["train_loss"]) else float("nan") for h in r.history],
                        style, color=colors[r.lr], ms=3, label=name)
            e = r.epochs_to(target)
            if e is not None:
                top.axvline(e, color=colors[r.lr], lw=0.8, ls=":")
        top.axhline(target, color="red", lw=1, ls="--", label=f"target {target:.0%}")
        top.set(title=f"{ARMS.get(arm, arm)} ({arm})", xlabel="epoch", ylabel="val top-1", ylim=(0, 1))
        bottom.set(xlabel="epoch", ylabel="train loss", yscale="log")
        for ax in (top, bottom):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_study(config: StudyConfig) -> dict[str, Any]:
    """Train every (arm, lr) pair and write study.json, study.md and curves.png to ``config.out``."""
    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data = _resolve_data(config)
    t0 = time.monotonic()
    runs: list[RunResult] = []
    pairs = [(arm, lr) for arm in config.arms for lr in config.lrs]
    with tqdm(pairs, desc="bn study", unit="run", disable=not config.progress) as bar:
        for arm, lr in bar:
            bar.set_postfix_str(_run_name(arm, lr))
            run = _train_one(config, data, arm, lr)
            runs.append(run)
            log.info("%s lr %g: best val %s, target reached at epoch %s%s", arm, lr, _fmt(run.best_val, ".3f", "-"),
                     run.epochs_to(config.target), " (diverged)" if run.diverged else "")
    return _write_reports(config, data, time.monotonic() - t0, runs)


def _write_reports(config: StudyConfig, data: Path, wall_seconds: float, runs: list[RunResult]) -> dict[str, Any]:
    out = Path(config.out)
    summary = summarize(runs, config.target)
    doc = {
        "format": STUDY_FORMAT,
        "config": config.to_json(),
        "data": str(data),
        "wall_seconds": wall_seconds,  # this invocation (reused runs cost nothing)
        # What training every run from scratch took: set-up plus epochs, summed over runs.
        "train_seconds_total": sum(r.setup_seconds + sum(h["seconds"] for h in r.history) for r in runs),
        "summary": summary,
        "runs": [r.to_json(config.target) for r in runs],
    }
    tmp = out / "study.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out / "study.json")
    write_markdown(runs, summary, config, out / "study.md")
    plot_study(runs, config.target, out / "curves.png")
    return doc


def report_study(out: str | os.PathLike, target: float | None = None) -> dict[str, Any]:
    """Re-analyse a finished study (e.g. for another target) from its study.json, without training."""
    out = Path(out)
    path = out / "study.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StudyError(f"cannot read {path}: {e}; run the study first") from e
    if not isinstance(doc, dict) or doc.get("format") != STUDY_FORMAT:
        raise StudyError(f"{path} is not a {STUDY_FORMAT} record")
    fields = {k: v for k, v in doc["config"].items() if k in StudyConfig.__dataclass_fields__}
    fields.update(out=out, arms=tuple(fields["arms"]), lrs=tuple(fields["lrs"]),
                  data=None if fields.get("data") is None else Path(fields["data"]))
    if target is not None:
        fields["target"] = target
    config = StudyConfig(**fields)
    config.validate()
    runs = [RunResult(r["arm"], r["lr"], Path(r["run_dir"]), r["history"], r["diverged"], r["setup_seconds"])
            for r in doc["runs"]]
    return _write_reports(config, Path(doc["data"]), doc["wall_seconds"], runs)
