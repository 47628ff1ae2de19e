"""Training-curve and confusion-matrix PNGs (matplotlib, headless Agg backend)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_curves", "plot_confusion"]


def plot_curves(history: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Loss and accuracy per epoch (train vs validation) and the learning rate."""
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    axes[0].plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    axes[0].set(title="loss", xlabel="epoch")
    axes[1].plot(ep, [h["train_acc"] for h in history], "o-", label="train top-1 (augmented)")
    axes[1].plot(ep, [h["val_top1"] for h in history], "o-", label="val top-1")
    axes[1].plot(ep, [h["val_macro_f1"] for h in history], "s--", label="val macro-F1")
    axes[1].set(title="accuracy", xlabel="epoch", ylim=(0, 1.01))
    axes[2].plot(ep, [h["lr"] for h in history], "o-")
    axes[2].set(title="learning rate (end of epoch)", xlabel="epoch")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(
    confusion: np.ndarray, classes: list[str], path: str | os.PathLike, title: str = "confusion"
) -> Path:
    """Row-normalized confusion matrix (rows = true class), counts in the cells when they fit."""
    cm = np.asarray(confusion, np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(classes)
    side = max(5.0, 0.32 * n + 3)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= 40:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
