"""LeafNet-BN: the default leaf classifier, a plain VGG-style BN CNN for 64-96 px.

Plain 3x3 conv + BN + ReLU stages because they fold to one conv each and run fast
on onnxruntime's CPU kernels; global average pooling keeps it input-size agnostic.
"""
from __future__ import annotations

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
    def __init__(self, num_classes: int, *, in_chans: int = 3, width: int = 32, drop_rate: float = 0.2):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn(in_chans, w, 2),
            conv_bn(w, w),
            conv_bn(w, 2 * w, 2),
            conv_bn(2 * w, 2 * w),
            conv_bn(2 * w, 4 * w, 2),
            conv_bn(4 * w, 4 * w),
            conv_bn(4 * w, 8 * w, 2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(drop_rate), nn.Linear(8 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


@register_model(input_size=(64, 64), description="Wider BN CNN for colour leaves (default)")
def leafnet_bn(num_classes: int, **kwargs) -> LeafNet:
    return LeafNet(num_classes, **kwargs)
