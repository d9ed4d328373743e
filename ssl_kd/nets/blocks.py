"""Pieces shared by the CIFAR zoo: conv + BN (+ ReLU), RepDistiller's initialisation (He-normal
convolutions, BN at identity) and the backbone -> global average pool -> head classifier."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ssl_kd.nets.base import Classifier

# How RepDistiller initialises each family: "he" = He-normal convolutions (fan-out), BN at
# identity, and the head left at PyTorch's default (its ResNets, ResNet50); "he_normal_head" adds
# the head at normal(0, 0.01), zero bias (its VGGs, MobileNetV2); "default" touches nothing (its
# ShuffleNets have no init code).
Init = Literal["he", "he_normal_head", "default"]


def init_weights(module: nn.Module, normal_head: bool = True) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and normal_head:
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias, 'same' padding) + BatchNorm, optionally + ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class PooledCNN(Classifier):
    """A convolutional backbone, global average pooling, then the linear head."""

    def _build(self, layers: list[nn.Module], num_features: int, num_classes: int, init: Init) -> None:
        self.backbone = nn.Sequential(*layers)
        self._make_head(num_features, num_classes)
        if init != "default":
            init_weights(self, normal_head=init == "he_normal_head")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).mean(dim=(2, 3))
