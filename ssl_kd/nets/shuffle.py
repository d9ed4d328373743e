"""ShuffleNets of the RepDistiller zoo (Tian et al. 2020), CIFAR variants as RepDistiller builds them.

- `shufflenetv1`: ShuffleNetV1 (Zhang et al. 2018), 3 groups, 240-480-960 channels, 4/8/4 blocks;
  RepDistiller's `ShuffleV1`. Its depthwise 3x3 is followed by a ReLU, as there.
- `shufflenetv2`: ShuffleNetV2 (Ma et al. 2018) at width 1 (116-232-464 channels, 3/7/3 blocks,
  1024 features); RepDistiller's `ShuffleV2`.

Both have RepDistiller's 1x1 stride-1 stem (its 3x3 stem is commented out) with no max-pooling,
and PyTorch's default initialisation (RepDistiller has no init code for them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_kd.nets.blocks import PooledCNN, conv_bn
from ssl_kd.registry import register_network

STEM = 24


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Shuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1, added to the input (stride 1) or
    concatenated with its 3x3 average pool (stride 2, so `cout` excludes the input's channels)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = cout // 4
        g = 1 if cin == STEM else groups  # the stem's 24 channels are not split into groups
        self.body = nn.Sequential(conv_bn(cin, mid, 1, groups=g), Shuffle(g), conv_bn(mid, mid, 3, stride, groups=mid),
                                  conv_bn(mid, cout, 1, groups=groups, relu=False))
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.stride == 2:
            return torch.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], dim=1))
        return torch.relu(out + x)


class ShuffleNetV1(PooledCNN):
    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, int, int] = (240, 480, 960),
                 blocks: tuple[int, int, int] = (4, 8, 4), groups: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_channels, STEM, 1)]
        cin = STEM
        for width, n in zip(widths, blocks):
            layers.append(ShuffleV1Unit(cin, width - cin, 2, groups))
            layers += [ShuffleV1Unit(width, width, 1, groups) for _ in range(n - 1)]
            cin = width
        self._build(layers, cin, num_classes, init="default")


class ShuffleV2Unit(nn.Module):
    """Stride 1: half the channels pass, the other half go 1x1 -> depthwise 3x3 -> 1x1; concatenate, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(conv_bn(half, half, 1), conv_bn(half, half, 3, groups=half, relu=False), conv_bn(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, work = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(work)], dim=1))


class ShuffleV2Down(nn.Module):
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
        layers: list[nn.Module] = [conv_bn(in_channels, STEM, 1)]
        cin = STEM
        for width, n in zip(widths, blocks):
            layers.append(ShuffleV2Down(cin, width))
            layers += [ShuffleV2Unit(width) for _ in range(n)]
            cin = width
        layers.append(conv_bn(cin, last, 1))
        self._build(layers, last, num_classes, init="default")


@register_network("shufflenetv1")
def shufflenetv1(num_classes: int, in_channels: int = 3) -> ShuffleNetV1:
    """ShuffleNetV1, 3 groups, 240-480-960 channels (RepDistiller's ShuffleV1)."""
    return ShuffleNetV1(num_classes, in_channels)


@register_network("shufflenetv2")
def shufflenetv2(num_classes: int, in_channels: int = 3) -> ShuffleNetV2:
    """ShuffleNetV2 at width 1, 116-232-464 channels (RepDistiller's ShuffleV2)."""
    return ShuffleNetV2(num_classes, in_channels)
