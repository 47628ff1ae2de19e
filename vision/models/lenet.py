"""LeNet-5 (LeCun et al. 1998) for 32x32 colour leaves, with optional BatchNorm.

``bn="before"`` puts BatchNorm between each conv/hidden linear layer and its
activation (Ioffe & Szegedy 2015, and the layout that folds into the layer before it);
``bn="after"`` puts it after the activation, for the placement study.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import register_model

_BN_CHOICES = (None, "before", "after")


def _unit(layer: nn.Module, features: int, bn: str | None, dims: int) -> list[nn.Module]:
    norm = nn.BatchNorm2d(features) if dims == 2 else nn.BatchNorm1d(features)
    act = nn.ReLU(inplace=True)
    if bn is None:
        return [layer, act]
    if bn == "before":
        return [layer, norm, act]
    return [layer, act, norm]


class LeNet5(nn.Module):
    def __init__(self, num_classes: int, *, in_chans: int = 3, bn: str | None = None, input_size: int = 32):
        super().__init__()
        if bn not in _BN_CHOICES:
            raise ValueError(f"bn must be one of {_BN_CHOICES}, got {bn!r}")
        bias = bn != "before"  # a bias right before BN is redundant
        spatial = ((input_size - 4) // 2 - 4) // 2
        if spatial < 1:
            raise ValueError(f"input_size {input_size} is too small for LeNet-5 (need >= 16)")
        self.features = nn.Sequential(
            *_unit(nn.Conv2d(in_chans, 6, 5, bias=bias), 6, bn, 2),
            nn.MaxPool2d(2),
            *_unit(nn.Conv2d(6, 16, 5, bias=bias), 16, bn, 2),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            *_unit(nn.Linear(16 * spatial * spatial, 120, bias=bias), 120, bn, 1),
            *_unit(nn.Linear(120, 84, bias=bias), 84, bn, 1),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model(input_size=(32, 32), description="LeNet-5, no BatchNorm (ablation baseline)")
def lenet(num_classes: int, **kwargs) -> LeNet5:
    return LeNet5(num_classes, bn=None, **kwargs)


@register_model(input_size=(32, 32), description="LeNet-5 with BatchNorm before each activation")
def lenet_bn(num_classes: int, **kwargs) -> LeNet5:
    return LeNet5(num_classes, bn="before", **kwargs)


@register_model(input_size=(32, 32), description="LeNet-5 with BatchNorm after each activation (study arm)")
def lenet_bn_after(num_classes: int, **kwargs) -> LeNet5:
    return LeNet5(num_classes, bn="after", **kwargs)
