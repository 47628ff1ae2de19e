"""Train a registered model on a PlantVillage-layout folder (or synthetic leaves).

``train(config)`` is the whole recipe; ``train_one_epoch`` and ``evaluate`` are the
plain pieces it loops over, as in torchvision's reference scripts. Images are decoded
once into memory; training images are augmented as uint8 BGR and then go through
``PreprocessSpec.apply``, validation images through exactly the robot's path.
Runs under ``torchrun`` with DistributedDataParallel; only rank 0 writes files.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from leafscout.vision import PreprocessSpec, create_model, get_entry
from leafscout.vision.taxonomy import BACKGROUND

from .augment import AUGMENT_PRESETS, LeafAugment, augment_config, cut_leaf_mask
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .data import Dataset, decode_cached, default_data_dir, scan_folder
from .distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from .evaluate import predict_batches
from .metrics import classification_metrics
from .split import Split, load_split, make_split

__all__ = ["TrainConfig", "TrainError", "train", "train_one_epoch", "evaluate", "build_model", "resolve_precision"]

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine")
BALANCING = ("loss", "sqrt", "none")
PRECISIONS = ("fp32", "bf16", "auto")
SAMPLING = ("uniform", "balanced")
CACHE_SCALE = 1.25  # training crops come from images this much larger than the input


class TrainError(ValueError):
    """A training configuration that cannot run."""


@dataclass
class TrainConfig:
    data: Path | list[Path] | None = None  # None: default_data_dir(), else synthetic leaves; a list: several sources
    model: str = "leafnet_bn"
    epochs: int = 30
    out: Path = Path("runs/leafnet_bn")
    img_size: int | None = None  # None: the model's registered input size
    batch_size: int = 64  # global, over all processes
    lr: float | None = None  # None: 3e-3 for adamw, 0.1 for sgd
    optimizer: str = "adamw"
    schedule: str = "onecycle"
    weight_decay: float = 0.05
    label_smoothing: float = 0.05
    seed: int = 0
    workers: int = 0
    resume: bool = False
    # Fine-tune: start from this checkpoint's weights (fresh optimizer and schedule) on the
    # split it was trained on (its run's split.json), so its test part stays unseen.
    init_from: Path | None = None
    augment: bool = True
    background_p: float = 0.2
    jpeg_p: float | None = None  # probability of a camera-like JPEG (4:2:0) round trip; None: the preset's
    robot_paint_p: float | None = None  # probability of the robot's painted crop (paint_like_robot); None: the preset's
    augment_set: dict[str, str] | None = None  # AugmentConfig fields set over the preset (--augment-set NAME=VALUE)
    augment_preset: str = "leaf"  # a key of training.augment.AUGMENT_PRESETS
    balance: str = "loss"
    # "balanced": each epoch draws samples with weights 1/sqrt(source size * class size in
    # that source), so a small source or class is seen often without being memorised.
    sampling: str = "uniform"
    # Drop training background windows of photos (not of vegetation masks) with more than this
    # share of leaf-coloured pixels: unboxed leaves, not negatives (training.sources). None: keep all.
    background_max_leafy: float | None = None
    threads: int | None = None  # torch threads per process; None: leave one core for the rest
    model_args: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None
    synthetic_per_class: int = 120
    progress: bool = True
    time_budget_s: float | None = None  # stop early (and decay the LR sooner) to fit this
    channels_last: bool = True  # ~20% faster convolutions on CPU (measured on the dev box)
    # bf16 autocast for the training forward pass (weights, optimizer and evaluation stay
    # fp32): 1.6x the images/s of fp32 for leafnet_bn on an AMX Xeon. "auto": bf16 where
    # the CPU (or GPU) computes it natively, else fp32 (emulated bf16 is slower than fp32).
    precision: str = "fp32"
    # torch.compile the training step (fuses BN and ReLU with their neighbours): 1.83 -> 1.56
    # ms per 96 px image for leafnet_bn, 2.13 -> 1.68 for leafnet_bn_deep (bf16, one thread,
    # benchmarks/train_bench.py --step-times), after a warm-up of seconds to a minute.
    # Evaluation and checkpoints use the plain module.
    compile: bool = False
    dump_replicas: bool = False  # each rank writes its final weights (DDP checks)
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None

    def validate(self) -> None:
        get_entry(self.model)  # raises with the list of valid names
        if self.optimizer not in OPTIMIZERS:
            raise TrainError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise TrainError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.augment_preset not in AUGMENT_PRESETS:
            raise TrainError(f"augment_preset must be one of {sorted(AUGMENT_PRESETS)}, got {self.augment_preset!r}")
        if not 0.0 <= self.background_p <= 1.0:
            raise TrainError(f"background_p must be within [0, 1], got {self.background_p}")
        if self.jpeg_p is not None and not 0.0 <= self.jpeg_p <= 1.0:
            raise TrainError(f"jpeg_p must be within [0, 1], got {self.jpeg_p}")
        if self.robot_paint_p is not None and not 0.0 <= self.robot_paint_p <= 1.0:
            raise TrainError(f"robot_paint_p must be within [0, 1], got {self.robot_paint_p}")
        if self.augment_set:
            try:
                augment_config(self.augment_preset, self.background_p, self.jpeg_p, self.robot_paint_p, self.augment_set)
            except ValueError as e:
                raise TrainError(str(e)) from None
        if self.precision not in PRECISIONS:
            raise TrainError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.background_max_leafy is not None and not 0.0 <= self.background_max_leafy <= 1.0:
            raise TrainError(f"background_max_leafy must be within [0, 1], got {self.background_max_leafy}")
        if self.sampling not in SAMPLING:
            raise TrainError(f"sampling must be one of {SAMPLING}, got {self.sampling!r}")
        if self.balance not in BALANCING:
            raise TrainError(f"balance must be one of {BALANCING}, got {self.balance!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise TrainError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise TrainError(f"lr must be > 0, got {self.lr}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise TrainError(f"time_budget_s must be > 0, got {self.time_budget_s}")
        if self.init_from is not None and self.resume:
            raise TrainError("init_from (fine-tune) and resume exclude each other: resume continues a run, "
                             "init_from starts a new one from another run's weights")
        if self.img_size is not None and self.img_size < 16:
            raise TrainError(f"img_size must be >= 16, got {self.img_size}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("on_epoch_end")
        as_json = lambda v: str(v) if isinstance(v, Path) else [as_json(x) for x in v] if isinstance(v, list) else v  # noqa: E731
        return {k: as_json(v) for k, v in d.items()}

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (3e-3 if self.optimizer == "adamw" else 0.1)


# -- data ---------------------------------------------------------------------------
class TrainImages(torch.utils.data.Dataset):
    """Cached uint8 images (+ leaf masks); augmentation is seeded by (seed, epoch, index)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray | None, labels: np.ndarray,
                 spec: PreprocessSpec, augment: LeafAugment | None, seed: int, sources: np.ndarray | None = None):
        self.images, self.masks, self.labels = images, masks, labels
        self.sources = np.zeros(len(labels), np.int64) if sources is None else sources
        self.spec, self.augment, self.seed, self.epoch = spec, augment, seed, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, int(i)))
            img = self.augment(img, None if self.masks is None else self.masks[i], rng)
            return torch.from_numpy(self.spec.apply(img)), int(self.labels[i])
        # Pre-resized by spec.resize: only the normalization is left (same as spec.apply).
        return torch.from_numpy(self.spec.normalize(img)), int(self.labels[i])


class EpochSampler(torch.utils.data.Sampler):
    """One seeded permutation per epoch, shared by all ranks; rank r takes every world-th index.

    Union of the ranks' k-th batches = the 1-process k-th batch of the same global size,
    which is what makes DDP and single-process runs comparable.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, weights: np.ndarray | None = None):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world_size
        self.epoch = 0
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:  # weighted draw with replacement, the same on every rank
            perm = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        else:
            perm = torch.randperm(self.n, generator=g)
        perm = perm[: self.n - self.n % self.world]
        return iter(perm[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return self.n // self.world


def _quiet_worker(_: int) -> None:
    """Data workers do small-image OpenCV work: their own thread pools only add contention."""
    import cv2

    cv2.setNumThreads(1)


def balanced_weights(sources: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample draw weights 1/sqrt(n_source * n_class_in_source), summing to 1."""
    key = sources.astype(np.int64) * (int(labels.max()) + 1) + labels
    _, inverse, per_key = np.unique(key, return_inverse=True, return_counts=True)
    _, src_inverse, per_source = np.unique(sources, return_inverse=True, return_counts=True)
    w = 1.0 / np.sqrt(per_key[inverse].astype(np.float64) * per_source[src_inverse])
    return w / w.sum()


def _resolve_data(config: TrainConfig, info: DistInfo) -> Dataset:
    from .sources import is_box_folder, scan_sources

    if isinstance(config.data, (list, tuple)):
        dirs = [Path(d) for d in config.data]
        if len(dirs) > 1 or (dirs and is_box_folder(dirs[0])):
            return scan_sources(dirs)
        config.data = dirs[0] if dirs else None
    if config.data is not None and is_box_folder(Path(config.data)):
        return scan_sources([config.data])
    data = config.data if config.data is not None else default_data_dir()
    if data is None:
        from .synthetic import generate_dataset

        data = Path(config.out) / "synthetic"
        if info.is_main and not data.is_dir():
            log.info("no data folder given and none found: generating synthetic leaves in %s", data)
            generate_dataset(data, per_class=config.synthetic_per_class, seed=config.seed)
        barrier(info)
    return scan_folder(data)


def _cached_arrays(samples, transform, key: str, config: TrainConfig, info: DistInfo, desc: str):
    """Rank 0 decodes and writes the cache first; the other ranks then read it."""
    paths = list(samples)
    kw = dict(cache_dir=config.cache_dir, desc=desc, progress=config.progress and info.is_main)
    if info.is_main:
        arrays, ok = decode_cached(paths, transform, key, **kw)
    barrier(info)
    if not info.is_main:
        arrays, ok = decode_cached(paths, transform, key, **kw)
    return arrays, ok


def _train_set(split: Split, spec: PreprocessSpec, config: TrainConfig, info: DistInfo) -> TrainImages:
    samples = split.samples("train")
    labels = np.array([s.label for s in samples], np.int64)
    sources = np.array([s.source for s in samples], np.int64)
    if not config.augment:
        images, ok = _cached_arrays(samples, spec.resize, json.dumps(spec.to_json()), config, info, "train images")
        return TrainImages(images[ok], None, labels[ok], spec, None, config.seed, sources[ok])
    side = int(round(max(spec.size) * CACHE_SCALE))
    big = PreprocessSpec(size=(side, side), color="BGR", interpolation=spec.interpolation)

    def with_mask(image: np.ndarray) -> np.ndarray:
        # The cut at full resolution (the field simulator cuts the same way), then resized.
        mask = cv2.resize(cut_leaf_mask(image), big.size[::-1], interpolation=cv2.INTER_AREA)
        return np.dstack([big.resize(image), mask])

    def no_mask(image: np.ndarray) -> np.ndarray:
        return np.dstack([big.resize(image), np.zeros(big.size, np.uint8)])

    # Lab photos (a whole image per leaf) are cut out to be pasted on new backgrounds; boxes
    # cut from field photos already have real surroundings and are never pasted.
    boxed = np.array([s.box is not None for s in samples], bool)
    arrays = np.zeros((len(samples), side, side, 4), np.uint8)
    ok = np.zeros(len(samples), bool)
    for want, fn, key in ((False, with_mask, "bgr+cutmask:"), (True, no_mask, "bgr+nomask:")):
        idx = np.flatnonzero(boxed == want)
        if len(idx):
            arrays[idx], ok[idx] = _cached_arrays([samples[i] for i in idx], fn, key + json.dumps(big.to_json()),
                                                  config, info, "train images")
    ok &= _clean_backgrounds(arrays[..., :3], samples, split, config.background_max_leafy)
    arrays = arrays[ok]
    bank = _background_bank(arrays[..., :3], labels[ok], split.classes)
    aug = LeafAugment(augment_config(config.augment_preset, config.background_p, config.jpeg_p, config.robot_paint_p,
                                     config.augment_set), bank)
    return TrainImages(np.ascontiguousarray(arrays[..., :3]), np.ascontiguousarray(arrays[..., 3]), labels[ok],
                       spec, aug, config.seed, sources[ok])


def _clean_backgrounds(images: np.ndarray, samples: list, split: Split, max_leafy: float | None) -> np.ndarray:
    """False for background windows of unmasked box folders that show leaves (``max_leafy``)."""
    if max_leafy is None:
        return np.ones(len(samples), bool)
    from .sources import unboxed_leaf_windows

    keep = ~unboxed_leaf_windows(split, samples, max_leafy, images)
    log.info("background windows: %d showing leaves dropped from training (over %.0f%% leaf-coloured pixels)",
             int((~keep).sum()), 100 * max_leafy)
    return keep


def _background_bank(images: np.ndarray, labels: np.ndarray, classes: list[str]) -> np.ndarray | None:
    """The training part's real background patches (soil, weeds, surroundings), for pasting and occluding."""
    if BACKGROUND not in classes:
        return None
    bank = images[labels == classes.index(BACKGROUND)]
    log.info("background bank: %d real field patches from the training part", len(bank))
    return bank if len(bank) else None


def _eval_set(samples, spec: PreprocessSpec, config: TrainConfig, info: DistInfo) -> TrainImages:
    labels = np.array([s.label for s in samples], np.int64)
    images, ok = _cached_arrays(samples, spec.resize, json.dumps(spec.to_json()), config, info, "val images")
    return TrainImages(images[ok], None, labels[ok], spec, None, config.seed)


# -- model and optimization -----------------------------------------------------------
def build_model(name: str, num_classes: int, img_size: int, extra: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The model and the exact constructor arguments to record in the checkpoint."""
    args = {"num_classes": num_classes, **extra}
    if (img_size, img_size) != tuple(get_entry(name).input_size) and "input_size" not in args:
        try:
            return create_model(name, **{**args, "input_size": img_size}), {**args, "input_size": img_size}
        except TypeError:
            pass  # size-agnostic model (global pooling)
    return create_model(name, **args), args


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on BN parameters and biases (they set scale and offset, not capacity)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.learning_rate, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.learning_rate)


class LRSchedule:
    """Per-step learning rate: warm-up, then cosine decay, over a total that may shrink.

    ``onecycle`` warms up over the first 25% from peak/20 and decays to peak/4000
    (Smith's one-cycle shape); ``cosine`` warms up over 5% and decays to zero. Unlike
    torch's OneCycleLR the total can be cut short when a time budget runs out, so the
    run still ends on a low learning rate.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, total_steps: int, kind: str):
        self.optimizer, self.peak, self.total, self.kind, self.step_num = optimizer, peak_lr, total_steps, kind, 0
        self._apply()

    def factor(self, step: int) -> float:
        warm, start, end = (0.25, 1 / 20, 1 / 4000) if self.kind == "onecycle" else (0.05, 0.01, 0.0)
        p = step / max(1, self.total)
        if p < warm:
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * p / warm))
        q = min(1.0, (p - warm) / (1 - warm))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * q))

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.peak * self.factor(self.step_num)

    def step(self) -> None:
        self.step_num += 1
        self._apply()

    def set_total(self, total_steps: int) -> None:
        self.total = max(total_steps, self.step_num + 1)
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_num, "total": self.total, "kind": self.kind, "peak": self.peak}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_num, self.total, self.kind, self.peak = state["step"], state["total"], state["kind"], state["peak"]
        self._apply()


def _planned_epochs(config: TrainConfig, info: DistInfo, epoch: int, t_run: float, durations: list[float]) -> int:
    """How many epochs fit in ``time_budget_s`` (rank 0 decides for all processes).

    Uses the median epoch so far, so one epoch slowed by a neighbour's job on a shared
    machine neither cuts the run short for good nor lets it overrun; never beyond --epochs.
    """
    if config.time_budget_s is None:
        return config.epochs
    fit = 0
    if info.is_main:
        left = config.time_budget_s - (time.monotonic() - t_run) - 30.0  # plots, last checkpoint, start-up
        fit = min(config.epochs, epoch + max(0, int(left // float(np.median(durations)))))
    return int(all_reduce_sum(info, [float(fit)])[0])


def _class_weights(labels: np.ndarray, num_classes: int, balance: str) -> torch.Tensor:
    """Inverse-frequency weights with mean 1 over present classes (small classes count more).

    ``sqrt`` uses the inverse square root: small classes still count more, but top-1 on
    the (equally imbalanced) test split pays less for it than with full inverse frequency.
    """
    if balance == "none":
        return torch.ones(num_classes)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    power = 0.5 if balance == "sqrt" else 1.0
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1) ** power, 0.0)
    w *= (counts > 0).sum() / w.sum()
    return torch.tensor(w, dtype=torch.float32)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the hardware has native bf16 arithmetic, else ``fp32``."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


# -- the loop -------------------------------------------------------------------------
def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: LRSchedule,
    class_weights: torch.Tensor,
    label_smoothing: float,
    info: DistInfo,
    *,
    desc: str = "train",
    progress: bool = True,
    memory_format: torch.memory_format = torch.contiguous_format,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """One pass over the training set; returns loss, accuracy and throughput over all ranks."""
    model.train()
    sums = [0.0, 0.0, 0.0]  # loss * n, correct, n
    t0 = time.monotonic()
    bar = tqdm(loader, desc=desc, disable=not (progress and info.is_main), leave=False, mininterval=1.0)
    for x, y in bar:
        x = x.to(info.device, non_blocking=True).contiguous(memory_format=memory_format)
        y = y.to(info.device, non_blocking=True)
        with torch.autocast(info.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            logits = model(x)
        logits = logits.float()
        # Mean of weighted per-sample losses (not divided by the weight sum) so the
        # DDP gradient average equals the single-process gradient of the global batch.
        loss = (F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing) * class_weights[y]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        n = y.shape[0]
        sums[0] += loss.item() * n
        sums[1] += (logits.argmax(1) == y).sum().item()
        sums[2] += n
        bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{sums[1] / sums[2]:.3f}", refresh=False)
    seconds = time.monotonic() - t0
    loss_sum, correct, n = all_reduce_sum(info, sums)
    return {
        "train_loss": loss_sum / max(n, 1),
        "train_acc": correct / max(n, 1),
        "train_seconds": seconds,
        "images_per_s": n / max(seconds, 1e-9),
    }


def evaluate(model: nn.Module, loader: DataLoader, classes: list[str], device: torch.device,
             autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Validation metrics (plus mean cross-entropy) under inference mode (and autocast, if a dtype is given)."""
    y, probs = predict_batches(model, loader, device, autocast_dtype)
    metrics = classification_metrics(y, probs, classes)
    p_true = probs[np.arange(len(y)), y] if len(y) else np.ones(1)
    metrics["loss"] = float(-np.log(np.clip(p_true, 1e-12, 1.0)).mean())
    return metrics


def _prepare_run(config: TrainConfig, info: DistInfo) -> tuple[Split, dict[str, Any] | None]:
    """The split (new, or the run's own one on resume) and the checkpoint to resume from."""
    out = Path(config.out)
    split_path = out / "split.json"
    if config.resume:
        last = out / "last.pt"
        if not last.is_file():
            raise TrainError(f"--resume: {last} does not exist; start without --resume or pick the run's --out")
        return _checkpoint_and_split(last, split_path, config, "--resume")
    if config.init_from is not None:
        split = _init_split(config)
        if info.is_main:
            split.save(split_path)
        return split, None
    split = make_split(_resolve_data(config, info), seed=config.seed)
    if info.is_main:
        split.save(split_path)
    return split, None


def _init_split(config: TrainConfig) -> Split:
    """The split of the run ``init_from`` comes from (a fine-tune must not train on its test part)."""
    source = Path(config.init_from)
    if not source.is_file():
        raise TrainError(f"--init-from: {source} does not exist; give a checkpoint (.pt) of a finished run")
    split_path = source.parent / "split.json"
    if not split_path.is_file():
        raise TrainError(f"--init-from: no split.json beside {source}; fine-tuning needs the split its weights were "
                         "trained on, or the new run could train on their test images")
    return _checkpoint_and_split(source, split_path, config, "--init-from")[0]


def _checkpoint_and_split(path: Path, split_path: Path, config: TrainConfig, flag: str) -> tuple[Split, dict[str, Any]]:
    """A checkpoint and the split it was trained on, checked against each other and the run's model."""
    ckpt = read_checkpoint(path)
    data = config.data
    if isinstance(data, (list, tuple)) and len(data) > 1:  # several sources: match them by folder name
        split = load_split(split_path, roots={Path(d).name: Path(d) for d in data})
    else:
        split = load_split(split_path, root=data[0] if isinstance(data, (list, tuple)) and data else data or None)
    if ckpt.get("split_manifest_sha256") not in (None, split.sha256):
        raise CheckpointError(f"{split_path} is not the split {path} was trained on (sha256 differs)")
    if ckpt["model"]["name"] != config.model:
        raise TrainError(f"{flag}: {path} holds {ckpt['model']['name']!r}, not --model {config.model!r}")
    return split, ckpt


def _init_weights(model: nn.Module, config: TrainConfig, classes: list[str]) -> None:
    """Load ``init_from``'s weights strictly (same model, same classes in the same order)."""
    ckpt = read_checkpoint(Path(config.init_from))
    if list(ckpt["classes"]) != list(classes):
        raise TrainError(f"--init-from: {config.init_from} was trained on other classes than its split lists")
    model.load_state_dict(ckpt["state_dict"], strict=True)
    log.info("fine-tuning from %s (epoch %s)", config.init_from, ckpt.get("epoch"))


def _loaders(train_set: TrainImages, val_set: TrainImages, config: TrainConfig, info: DistInfo):
    """Training loader (this rank's share of each global batch) and the validation loader."""
    weights = balanced_weights(train_set.sources, train_set.labels) if config.sampling == "balanced" else None
    sampler = EpochSampler(len(train_set), config.seed, info.rank, info.world_size, weights)
    loader = DataLoader(train_set, batch_size=config.batch_size // info.world_size, sampler=sampler,
                        drop_last=True, num_workers=config.workers, pin_memory=info.device.type == "cuda",
                        worker_init_fn=_quiet_worker)
    if len(loader) == 0:
        raise TrainError(f"{len(train_set)} training images are fewer than one batch of {config.batch_size}")
    val_loader = DataLoader(val_set, batch_size=256, shuffle=False, num_workers=config.workers,
                            worker_init_fn=_quiet_worker)
    return sampler, loader, val_loader


def _restore(ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: LRSchedule, out: Path) -> tuple[int, list[dict[str, Any]]]:
    """Load model, optimizer and schedule state (strictly); returns the next epoch and the history."""
    model.load_state_dict(ckpt["state_dict"], strict=True)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    start = int(ckpt["epoch"]) + 1
    history = []
    if (out / "metrics.json").is_file():
        history = [h for h in json.loads((out / "metrics.json").read_text()) if h["epoch"] < start]
    log.info("resuming %s at epoch %d", out / "last.pt", start)
    return start, history


def _epoch_record(epoch: int, optimizer: torch.optim.Optimizer, stats: dict[str, float],
                  val: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One metrics.json entry, also logged."""
    record = {
        "epoch": epoch,
        "lr": optimizer.param_groups[0]["lr"],
        **{k: stats[k] for k in ("train_loss", "train_acc", "images_per_s")},
        "val_loss": val["loss"],
        "val_top1": val["top1"],
        "val_macro_f1": val["macro_f1"],
        "val_ece": val["ece"],
        "seconds": seconds,
    }
    log.info("epoch %d: train loss %.3f acc %.3f | val top1 %.4f macro-F1 %.4f | %.0f img/s, %.1f s",
             epoch, record["train_loss"], record["train_acc"], val["top1"], val["macro_f1"],
             record["images_per_s"], seconds)
    return record


def train(config: TrainConfig) -> Path:
    """Run the whole recipe; returns the run directory (split.json, last.pt, best.pt, metrics.json, PNGs)."""
    config.validate()
    info = init_distributed()
    try:
        return _train(config, info)
    finally:
        cleanup(info)


def _train(config: TrainConfig, info: DistInfo) -> Path:
    t_run = time.monotonic()
    if config.batch_size % info.world_size:
        raise TrainError(f"batch_size {config.batch_size} must be divisible by the {info.world_size} processes")
    # Oversubscribed OpenMP threads spin against each other (measured here: 2 threads on
    # a busy 2-core box ran leafnet_bn at 35 img/s, 1 thread at 195), so leave a core free.
    threads = config.threads or max(1, (os.cpu_count() or 1) // info.world_size - 1)
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    out = Path(config.out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    barrier(info)

    split, resume_ckpt = _prepare_run(config, info)
    classes = split.classes
    size = config.img_size or get_entry(config.model).input_size[0]
    spec = PreprocessSpec.for_model(config.model, size)
    train_set = _train_set(split, spec, config, info)
    val_set = _eval_set(split.samples("val"), spec, config, info)
    if info.is_main:
        log.info("split %s: %s; %d classes; input %s", split.sha256[:12], split.counts(), len(classes), spec.size)

    model, model_args = build_model(config.model, len(classes), size, config.model_args)
    if config.init_from is not None:
        _init_weights(model, config, classes)
    model.to(info.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(model, config)
    sampler, loader, val_loader = _loaders(train_set, val_set, config, info)
    scheduler = LRSchedule(optimizer, config.learning_rate, config.epochs * len(loader), config.schedule)
    weights = _class_weights(train_set.labels, len(classes), config.balance).to(info.device)

    start_epoch, history = 1, []
    if resume_ckpt is not None:
        start_epoch, history = _restore(resume_ckpt, model, optimizer, scheduler, out)
    best_top1 = max((h["val_top1"] for h in history), default=-1.0)
    ddp_model = model
    if info.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if config.compile:
        ddp_model = torch.compile(ddp_model)

    precision = resolve_precision(config.precision, info.device)
    autocast_dtype = torch.bfloat16 if precision == "bf16" else None
    if info.is_main:
        log.info("training arithmetic: %s (asked: %s)", precision, config.precision)
    ckpt_common = dict(model_name=config.model, model_args=model_args, classes=classes, preprocess=spec,
                       split_manifest_sha256=split.sha256,
                       extra={"train_config": config.to_json(), "precision_used": precision})
    best_val: dict[str, Any] | None = None
    planned, durations = math.ceil(scheduler.total / len(loader)), []
    for epoch in range(start_epoch, config.epochs + 1):
        if durations and config.time_budget_s is not None:
            new_plan = _planned_epochs(config, info, epoch - 1, t_run, durations)
            if new_plan != planned:
                planned = new_plan
                scheduler.set_total(planned * len(loader))
                if info.is_main:
                    log.info("time budget: planning %d epochs in all", planned)
        if epoch > planned:
            log.info("time budget of %.0f s: stopping after %d epochs", config.time_budget_s, planned)
            break
        t0 = time.monotonic()
        sampler.set_epoch(epoch)
        train_set.epoch = epoch
        stats = train_one_epoch(ddp_model, loader, optimizer, scheduler, weights, config.label_smoothing, info,
                                desc=f"epoch {epoch}/{planned}", progress=config.progress,
                                memory_format=torch.channels_last if config.channels_last else torch.contiguous_format,
                                autocast_dtype=autocast_dtype)
        if not info.is_main:
            barrier(info)
            durations.append(time.monotonic() - t0)
            continue
        # Validation in the training arithmetic: bf16 takes about 40% of fp32's time here and only
        # picks the best epoch; calibration and eval measure the saved fp32 weights afterwards.
        val = evaluate(model, val_loader, classes, info.device, autocast_dtype)
        record = _epoch_record(epoch, optimizer, stats, val, time.monotonic() - t0)
        history.append(record)
        summary = {**record, "val_confusion": val["confusion"]}
        save_checkpoint(out / "last.pt", model, epoch=epoch, metrics=summary, optimizer=optimizer,
                        scheduler=scheduler, **ckpt_common)
        if val["top1"] > best_top1:
            best_top1, best_val = val["top1"], val
            save_checkpoint(out / "best.pt", model, epoch=epoch, metrics=summary, **ckpt_common)
        (out / "metrics.json").write_text(json.dumps(history, indent=1))
        if config.on_epoch_end is not None:
            config.on_epoch_end(record)
        barrier(info)
        durations.append(time.monotonic() - t0)

    if config.dump_replicas:
        replica = out / "replicas" / f"rank{info.rank}.pt"
        replica.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, replica)
    if info.is_main and history:
        _write_plots(out, history, best_val, classes)
    barrier(info)
    return out


def _write_plots(out: Path, history: list[dict[str, Any]], best_val: dict[str, Any] | None, classes: list[str]) -> None:
    from .plots import plot_confusion, plot_curves

    plot_curves(history, out / "curves.png")
    if best_val is None:  # resumed after the best epoch: use the stored one
        best_val = {"confusion": read_checkpoint(out / "best.pt")["metrics"]["val_confusion"]}
    plot_confusion(np.asarray(best_val["confusion"]), classes, out / "confusion.png", title="validation, best epoch")
