"""Write a (folded) PyTorch model to ONNX and check the graph: one input, one output, no BN.

Uses the torch.export-based exporter (``dynamo=True``, the default since PyTorch 2.9):
it gives a clean graph (no Identity chains) with a named dynamic batch axis.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from collections import Counter
from pathlib import Path

import onnx
import torch
import torch.nn as nn

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "OPSET", "OnnxExportError", "export_onnx", "op_counts", "check_onnx"]

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OPSET = 18
# The exporter's optimizer logs every pass at INFO; that is noise in `leafscout export`.
_CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


class OnnxExportError(RuntimeError):
    """The exporter failed or wrote a graph that breaks the bundle contract."""


@torch.no_grad()
def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, int], *, in_chans: int = 3) -> Path:
    """Export ``model`` (eval mode) with input ``image`` [N,3,H,W] and output ``logits`` [N,C]."""
    path = Path(path)
    model = model.eval()
    example = (torch.zeros(2, in_chans, *input_size),)
    batch = torch.export.Dim("batch", min=1)
    # The exporter prints progress to stdout; keep it for the debug log only.
    buf = io.StringIO()
    chatty = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [lg.level for lg in chatty]
    for lg in chatty:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        with contextlib.redirect_stdout(buf):
            program = torch.onnx.export(
                model,
                example,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as e:  # noqa: BLE001 - the exporter raises many types
        raise OnnxExportError(f"torch.onnx.export failed for {type(model).__name__}: {e}") from e
    finally:
        for lg, level in zip(chatty, levels):
            lg.setLevel(level)
        log.debug("exporter output:\n%s", buf.getvalue())
    program.save(str(path))
    check_onnx(path)
    return path


def op_counts(model: str | os.PathLike | onnx.ModelProto) -> Counter:
    """How many nodes of each op type the graph has (top-level graph)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    return Counter(node.op_type for node in proto.graph.node)


def check_onnx(path: str | os.PathLike, *, allow_batchnorm: bool = False) -> onnx.ModelProto:
    """Run ``onnx.checker`` and the bundle contract (names, rank, no BatchNormalization)."""
    proto = onnx.load(str(path))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise OnnxExportError(f"{path}: onnx.checker failed: {e}") from e
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise OnnxExportError(f"{path}: graph has inputs {inputs} and outputs {outputs}, expected [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or not dims[0].dim_param:
        raise OnnxExportError(f"{path}: input {INPUT_NAME!r} must be NCHW with a dynamic batch axis")
    n_bn = op_counts(proto).get("BatchNormalization", 0)
    if n_bn and not allow_batchnorm:
        raise OnnxExportError(f"{path}: graph still has {n_bn} BatchNormalization node(s); fold the model first")
    return proto
