"""CIFAR ResNets of the RepDistiller zoo (Tian et al. 2020; He et al. 2016's CIFAR design).

- `resnet8/14/20/32/44/56/110`, `resnet8x4/32x4`: three stages of basic blocks, (depth - 2) / 6 per stage,
  widths 16-32-64 (x4: 64-128-256 after a 32-channel stem), stride 2 between stages, 1x1
  projection shortcuts where the shape changes.
- `resnet50`: bottleneck blocks (3, 4, 6, 3) with the CIFAR stem (3x3 convolution, stride 1, no
  max-pooling), as in RepDistiller's `ResNet50` and KD-AIF's example code.

Initialisation as RepDistiller's: He-normal convolutions, BN at identity, and the head at
PyTorch's default Linear init.
"""
from __future__ import annotations

import torch
from torch import nn

from ssl_kd.nets.blocks import PooledCNN, conv_bn
from ssl_kd.registry import register_network


def shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    return nn.Identity() if stride == 1 and cin == cout else conv_bn(cin, cout, 1, stride, relu=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, width, 3, stride), conv_bn(width, width, relu=False))
        self.shortcut = shortcut(cin, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(conv_bn(cin, width, 1), conv_bn(width, width, 3, stride), conv_bn(width, cout, 1, relu=False))
        self.shortcut = shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet(PooledCNN):
    """Stem -> stages of `block` (widths[i] with blocks[i] each, the first of stage i > 0 strided) -> global average pool."""

    def __init__(self, num_classes: int, in_channels: int, block: type[nn.Module], stem: int,
                 widths: tuple[int, ...], blocks: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_channels, stem)]
        cin = stem
        for i, (width, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(block(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width * block.expansion  # type: ignore[attr-defined]
        self._build(layers, cin, num_classes, init="he")


def cifar_resnet(num_classes: int, in_channels: int, depth: int, stem: int, widths: tuple[int, int, int]) -> ResNet:
    n = (depth - 2) // 6
    return ResNet(num_classes, in_channels, BasicBlock, stem, widths, (n, n, n))


@register_network("resnet20")
def resnet20(num_classes: int, in_channels: int = 3) -> ResNet:
    """ResNet-20, 3 basic blocks per stage, widths 16-32-64."""
    return cifar_resnet(num_classes, in_channels, 20, 16, (16, 32, 64))


@register_network("resnet14")
def resnet14(num_classes: int, in_channels: int = 3) -> ResNet:
    """ResNet-14, 2 basic blocks per stage, widths 16-32-64."""
    return cifar_resnet(num_classes, in_channels, 14, 16, (16, 32, 64))


@register_network("resnet32")
def resnet32(num_classes: int, in_channels: int = 3) -> ResNet:
    """ResNet-32, 5 basic blocks per stage, widths 16-32-64."""
    return cifar_resnet(num_classes, in_channels, 32, 16, (16, 32, 64))


@register_network("resnet44")
def resnet44(num_classes: int, in_channels: int = 3) -> ResNet:
    """ResNet-44, 7 basic blocks per stage, widths 16-32-64."""
    return cifar_resnet(num_classes, in_channels, 44, 16, (16, 32, 64))


@register_network("resnet56")
def resnet56(num_classes: int, in_channels: int = 3) -> ResNet:
    """ResNet-56, 9 basic blocks per stage, widths 16-32-64."""
    return cifar_resnet(num_classes, in_channels, 56, 16, (16, 32, 64))


@register_network("resnet110")
def resnet110(num_classes: int, in_channels: int = 3) -> ResNet:
    """ResNet-110, 18 basic blocks per stage, widths 16-32-64."""
    return cifar_resnet(num_classes, in_channels, 110, 16, (16, 32, 64))


@register_network("resnet8x4")
def resnet8x4(num_classes: int, in_channels: int = 3) -> ResNet:
    """ResNet-8x4, 1 basic block per stage, widths 64-128-256 after a 32-channel stem."""
    return cifar_resnet(num_classes, in_channels, 8, 32, (64, 128, 256))


@register_network("resnet32x4")
def resnet32x4(num_classes: int, in_channels: int = 3) -> ResNet:
    """ResNet-32x4, 5 basic blocks per stage, widths 64-128-256 after a 32-channel stem."""
    return cifar_resnet(num_classes, in_channels, 32, 32, (64, 128, 256))


@register_network("resnet50")
def resnet50(num_classes: int, in_channels: int = 3) -> ResNet:
    """ResNet-50, bottleneck blocks (3, 4, 6, 3) with the CIFAR stem (RepDistiller's ResNet50)."""
    return ResNet(num_classes, in_channels, Bottleneck, 64, (64, 128, 256, 512), (3, 4, 6, 3))


@register_network("resnet8")
def resnet8(num_classes: int, in_channels: int = 3) -> ResNet:
    """ResNet-8, 1 basic block per stage, widths 16-32-64."""
    return cifar_resnet(num_classes, in_channels, 8, 16, (16, 32, 64))
