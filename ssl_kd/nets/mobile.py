"""Mobile networks of the RepDistiller zoo (Tian et al. 2020), CIFAR variants.

- `mobilenetv2`: MobileNetV2 (Sandler et al. 2018) at width 0.5, expansion 6, stem stride 2 and
  the 24-channel stage at stride 1 (total stride 16), 1280 features: RepDistiller's `mobile_half`,
  the student of the ResNet-50 -> MobileNetV2 pair. Every inverted residual has its 1x1
  expansion, also at expansion 1.
- `shufflenetv2`: ShuffleNetV2 (Ma et al. 2018) at width 1 (116-232-464 channels, 3/7/3 blocks,
  1024 features) with a 3x3 stride-1 stem and no max-pooling.
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
        self._build(layers, last, num_classes)


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleBlock(nn.Module):
    """Stride 1: half the channels pass, the other half go 1x1 -> depthwise 3x3 -> 1x1; concatenate, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(conv_bn(half, half, 1), conv_bn(half, half, 3, groups=half, relu=False), conv_bn(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, work = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(work)], dim=1))


class ShuffleDown(nn.Module):
    """Stride 2: both branches see the whole input and each yields half of `cout` channels."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.left = nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin, relu=False), conv_bn(cin, mid, 1))
        self.right = nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, 2, groups=mid, relu=False), conv_bn(mid, mid, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1))


class ShuffleNetV2(PooledCNN):
    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, int, int] = (116, 232, 464),
                 blocks: tuple[int, int, int] = (3, 7, 3), last: int = 1024) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_channels, 24)]
        cin = 24
        for width, n in zip(widths, blocks):
            layers.append(ShuffleDown(cin, width))
            layers += [ShuffleBlock(width) for _ in range(n)]
            cin = width
        layers.append(conv_bn(cin, last, 1))
        self._build(layers, last, num_classes)


@register_network("mobilenetv2")
def mobilenetv2(num_classes: int, in_channels: int = 3) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels)


@register_network("shufflenetv2")
def shufflenetv2(num_classes: int, in_channels: int = 3) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes, in_channels)
