"""Small convolutional networks for quick CPU runs: `cnn_small` (32x32) and `digits_net` (8x8)."""
from __future__ import annotations

import torch
from torch import nn

from ssl_kd.nets.base import Classifier
from ssl_kd.registry import register_network


def conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True)]


class SmallCNN(Classifier):
    """Conv-BN-LeakyReLU stages with max-pooling between them, global average pooling at the end."""

    def __init__(self, num_classes: int, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, width in enumerate(widths):
            layers += conv_bn(cin, width)
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = width
        self.backbone = nn.Sequential(*layers)
        self._make_head(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).mean(dim=(2, 3))


@register_network("cnn_small")
def cnn_small(num_classes: int, in_channels: int = 3) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, (32, 64, 128))


@register_network("digits_net")
def digits_net(num_classes: int, in_channels: int = 1) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, (32, 64))
