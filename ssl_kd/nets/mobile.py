"""MobileNetV2 of the RepDistiller zoo (Tian et al. 2020), CIFAR variant.

`mobilenetv2`: MobileNetV2 (Sandler et al. 2018) at width 0.5, expansion 6, stem stride 2 and
  the 24-channel stage at stride 1 (total stride 16), 1280 features: RepDistiller's `mobile_half`,
  the student of the ResNet-50 -> MobileNetV2 pair. Every inverted residual has its 1x1
  expansion, also at expansion 1. Initialisation as RepDistiller's: He-normal convolutions, the
  head at normal(0, 0.01).
"""
from __future__ import annotations

import torch
from torch import nn

from ssl_kd.nets.blocks import PooledCNN, conv_bn
from ssl_kd.registry import register_network

# (expansion, channels, blocks, stride of the first block) at width 1
MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.body = nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride, groups=mid), conv_bn(mid, cout, 1, relu=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileNetV2(PooledCNN):
    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 0.5, last: int = 1280) -> None:
        super().__init__()
        cin = int(32 * width)
        layers: list[nn.Module] = [conv_bn(in_channels, cin, 3, 2)]
        for expansion, channels, blocks, stride in MOBILENETV2_STAGES:
            cout = int(channels * width)
            for j in range(blocks):
                layers.append(InvertedResidual(cin, cout, stride if j == 0 else 1, expansion))
                cin = cout
        layers.append(conv_bn(cin, last, 1))
        self._build(layers, last, num_classes, init="he_normal_head")


@register_network("mobilenetv2")
def mobilenetv2(num_classes: int, in_channels: int = 3) -> MobileNetV2:
    """MobileNetV2 at width 0.5 for 32x32 inputs (RepDistiller's mobile_half)."""
    return MobileNetV2(num_classes, in_channels)
