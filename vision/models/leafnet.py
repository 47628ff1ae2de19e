"""LeafNet-BN: the default leaf classifier, a plain VGG-style BN CNN for 64-128 px.

Plain 3x3 conv + BN + ReLU stages because they fold to one conv each and run fast
on onnxruntime's CPU kernels; global average pooling keeps it input-size agnostic.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..registry import register_model


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class LeafNet(nn.Module):
    """Stages of one stride-2 conv (width doubling each stage) plus ``depths[i]`` stride-1 convs.

    The default ``depths`` (1, 1, 1, 0) is the original layout (same state-dict keys).
    """

    def __init__(self, num_classes: int, *, in_chans: int = 3, width: int = 32,
                 depths: Sequence[int] = (1, 1, 1, 0), drop_rate: float = 0.2):
        super().__init__()
        layers, cin = [], in_chans
        for i, depth in enumerate(depths):
            cout = width * 2**i
            layers += [conv_bn(cin, cout, 2)] + [conv_bn(cout, cout) for _ in range(depth)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(drop_rate), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


@register_model(input_size=(64, 64), description="Wider BN CNN for colour leaves (default)")
def leafnet_bn(num_classes: int, **kwargs) -> LeafNet:
    return LeafNet(num_classes, **kwargs)


# A second conv at 1/8 resolution: where extra capacity is cheapest on a CPU (per image,
# BN and ReLU on the 48x48 maps cost more than a conv on 12x12 ones). One training step at
# 96 px, bf16, one thread, compiled: 1.68 ms/img against 1.56 for leafnet_bn (quiet box,
# `python benchmarks/train_bench.py --step-times leafnet_bn leafnet_bn_deep`).
@register_model(input_size=(96, 96), description="LeafNet-BN with a second 12x12 conv, for field crops")
def leafnet_bn_deep(num_classes: int, **kwargs) -> LeafNet:
    return LeafNet(num_classes, **{"depths": (1, 1, 2, 0), **kwargs})


# Three convs at 1/8 resolution (888k parameters with 37 classes, about 18% more compute than
# leafnet_bn_deep): the field recipe gained almost nothing from 90 epochs instead of 70, and this
# model, 86 epochs in 50 minutes, gained 1.2-1.5 points of validation top-1 on PlantVillage and
# PlantDoc (docs/field_classifier.md), at a worse calibration; not the reference bundle (yet).
@register_model(input_size=(96, 96), description="LeafNet-BN with three 12x12 convs, for field crops")
def leafnet_bn_deeper(num_classes: int, **kwargs) -> LeafNet:
    return LeafNet(num_classes, **{"depths": (1, 1, 3, 0), **kwargs})
