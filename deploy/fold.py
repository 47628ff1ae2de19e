"""Fold every BatchNorm into the conv or linear layer that feeds it, for deployment.

At inference a BatchNorm is a per-channel affine map, so it can be merged into the
weights of the layer right before it: one op fewer per block and nothing left for
an exporter or runtime to get subtly wrong. Only a BN that directly follows a conv
or linear layer inside an ``nn.Sequential`` can be folded; anything else is refused
with a ``FoldError`` naming the module, never silently left in place.
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_weights

__all__ = ["FoldError", "fold_batchnorm", "count_batchnorm"]

log = logging.getLogger(__name__)

# Which layer a BatchNorm of each kind may be folded into.
_FOLDABLE: dict[type, tuple[type, ...]] = {
    nn.BatchNorm1d: (nn.Conv1d, nn.Linear),
    nn.BatchNorm2d: (nn.Conv2d,),
    nn.BatchNorm3d: (nn.Conv3d,),
}


class FoldError(ValueError):
    """A BatchNorm that cannot be merged into the layer before it."""


def count_batchnorm(model: nn.Module) -> int:
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def _describe(module: nn.Module | None) -> str:
    return "nothing (it is the first layer)" if module is None else type(module).__name__


def _fold_pair(layer: nn.Module, bn: _BatchNorm) -> nn.Module:
    if bn.running_mean is None or bn.running_var is None:
        raise FoldError("it has no running statistics (track_running_stats=False), so it always uses batch statistics")
    if isinstance(layer, nn.Linear):
        if bn.num_features not in (layer.out_features, 1):
            raise FoldError(f"it has {bn.num_features} features but the Linear before it has {layer.out_features} outputs")
        fused = copy.deepcopy(layer)
        ones, zeros = torch.ones_like(bn.running_mean), torch.zeros_like(bn.running_mean)
        fused.weight, fused.bias = fuse_linear_bn_weights(
            layer.weight,
            layer.bias,
            bn.running_mean,
            bn.running_var,
            bn.eps,
            bn.weight if bn.affine else ones,
            bn.bias if bn.affine else zeros,
        )
        return fused
    if bn.num_features != layer.out_channels:
        raise FoldError(f"it has {bn.num_features} features but the conv before it has {layer.out_channels} outputs")
    return fuse_conv_bn_eval(layer, bn)


def _fold_sequential(seq: nn.Sequential, prefix: str) -> int:
    folded = 0
    names = list(seq._modules)
    for i, name in enumerate(names):
        child = seq._modules[name]
        if not isinstance(child, _BatchNorm):
            continue
        path = f"{prefix}{name}"
        prev_name = names[i - 1] if i > 0 else None
        prev = seq._modules[prev_name] if prev_name is not None else None
        allowed = _FOLDABLE.get(type(child), ())
        if not isinstance(prev, allowed):
            choices = " or ".join(t.__name__ for t in allowed) or "a conv/linear layer"
            raise FoldError(
                f"cannot fold {type(child).__name__} at {path!r}: it follows {_describe(prev)}, "
                f"not {choices}. A BatchNorm after an activation (or anything non-linear) cannot be "
                "merged into the layer before it; put it directly after the conv/linear layer."
            )
        try:
            seq._modules[prev_name] = _fold_pair(prev, child)
        except FoldError as e:
            raise FoldError(f"cannot fold {type(child).__name__} at {path!r}: {e}") from None
        seq._modules[name] = nn.Identity()
        folded += 1
    return folded


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A folded copy of ``model`` in eval mode with no BatchNorm left; ``model`` is untouched.

    Raises ``FoldError`` naming the module path when a BatchNorm does not directly
    follow a Conv/Linear inside an ``nn.Sequential`` (the only place where the layer
    feeding it is known without tracing ``forward``).
    """
    folded_model = copy.deepcopy(model).eval()
    total = 0
    for path, module in list(folded_model.named_modules()):
        prefix = f"{path}." if path else ""
        if isinstance(module, nn.Sequential):
            total += _fold_sequential(module, prefix)
            continue
        for name, child in module.named_children():
            if isinstance(child, _BatchNorm):
                raise FoldError(
                    f"cannot fold {type(child).__name__} at {prefix + name!r}: its parent "
                    f"{type(module).__name__} is not an nn.Sequential, so the layer feeding it is unknown; "
                    "wrap the conv/linear layer and its BatchNorm in an nn.Sequential"
                )
    left = count_batchnorm(folded_model)
    if left:  # e.g. a BN nested directly in a module that is also a Sequential subclass
        raise FoldError(f"{left} BatchNorm module(s) could not be folded")
    log.debug("folded %d BatchNorm layers", total)
    return folded_model
