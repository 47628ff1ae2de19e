"""Run the same preprocessed batch through PyTorch or onnxruntime, in chunks, to numpy logits."""
from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

from leafscout.vision.bundle import session_options

__all__ = ["torch_logits", "ort_session", "ort_logits"]


@torch.inference_mode()
def torch_logits(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)])


def ort_session(path: str | os.PathLike, threads: int | None = None) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])


def ort_logits(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)])
