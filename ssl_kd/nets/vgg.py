"""VGG-8/11/13/16/19 with BatchNorm for 32x32 inputs, as in the RepDistiller zoo (Tian et al. 2020).

Five stages of 3x3 convolutions (with bias) + BN + ReLU; 2x2 max-pooling after the first three
stages (not after the fourth at 32x32), global average pooling, one linear head on 512 features.
RepDistiller's `vggN` are its `vggN_bn`: configurations S, A, B, D, E.
"""
from __future__ import annotations

from torch import nn

from ssl_kd.nets.blocks import PooledCNN
from ssl_kd.registry import register_network

STAGES = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(PooledCNN):
    def __init__(self, num_classes: int, in_channels: int, stages: tuple[tuple[int, ...], ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, stage in enumerate(stages):
            for width in stage:
                layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                cin = width
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self._build(layers, cin, num_classes, init="he_normal_head")


@register_network("vgg8")
def vgg8(num_classes: int, in_channels: int = 3) -> VGG:
    """VGG-8 with BatchNorm, for 32x32 inputs (RepDistiller's vgg8_bn)."""
    return VGG(num_classes, in_channels, STAGES["vgg8"])


@register_network("vgg11")
def vgg11(num_classes: int, in_channels: int = 3) -> VGG:
    """VGG-11 with BatchNorm, for 32x32 inputs (RepDistiller's vgg11_bn)."""
    return VGG(num_classes, in_channels, STAGES["vgg11"])


@register_network("vgg13")
def vgg13(num_classes: int, in_channels: int = 3) -> VGG:
    """VGG-13 with BatchNorm, for 32x32 inputs (RepDistiller's vgg13_bn)."""
    return VGG(num_classes, in_channels, STAGES["vgg13"])


@register_network("vgg16")
def vgg16(num_classes: int, in_channels: int = 3) -> VGG:
    """VGG-16 with BatchNorm, for 32x32 inputs (RepDistiller's vgg16_bn)."""
    return VGG(num_classes, in_channels, STAGES["vgg16"])


@register_network("vgg19")
def vgg19(num_classes: int, in_channels: int = 3) -> VGG:
    """VGG-19 with BatchNorm, for 32x32 inputs (RepDistiller's vgg19_bn)."""
    return VGG(num_classes, in_channels, STAGES["vgg19"])
