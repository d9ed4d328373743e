"""Wide ResNets (Zagoruyko & Komodakis 2016): WRN-28-k as used by FixMatch (leaky ReLU 0.1, BN
momentum 0.001) and WRN-40-2/40-1/16-2/16-1 of the RepDistiller zoo (ReLU, BN momentum 0.1)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssl_kd.nets.base import Classifier
from ssl_kd.registry import register_network


@dataclass(frozen=True)
class WRNStyle:
    """What differs between the two reference implementations."""

    slope: float  # of the leaky ReLU; 0 is a plain ReLU
    bn_momentum: float
    # FixMatch's first block of the first group feeds its shortcut the pre-activation even when
    # the widths match; RepDistiller's does so only when a 1x1 projection exists. The two agree
    # for widen >= 2 (the first block projects 16 -> 16k) and differ for widen = 1.
    activate_before_residual: bool
    repdistiller_init: bool  # He-normal (fan-out, ReLU) convolutions, default-init head weight with zero bias


FIXMATCH = WRNStyle(slope=0.1, bn_momentum=0.001, activate_before_residual=True, repdistiller_init=False)  # BN decay 0.999
REPDISTILLER = WRNStyle(slope=0.0, bn_momentum=0.1, activate_before_residual=False, repdistiller_init=True)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, activate_before_residual: bool, style: WRNStyle) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, momentum=style.bn_momentum)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=style.bn_momentum)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.act = nn.LeakyReLU(style.slope, inplace=True)
        self.shortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.activate_before_residual = activate_before_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act(self.bn1(x))
        # A projection shortcut always takes the pre-activation; an identity one takes the raw
        # input unless this block activates before the residual.
        shortcut_in = pre if (self.shortcut is not None or self.activate_before_residual) else x
        out = self.conv2(self.act(self.bn2(self.conv1(pre))))
        return out + (shortcut_in if self.shortcut is None else self.shortcut(shortcut_in))


class WideResNet(Classifier):
    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 28, widen: int = 2,
                 style: WRNStyle = FIXMATCH) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
        for group in range(3):
            for i in range(n):
                cin = widths[group] if i == 0 else widths[group + 1]
                stride = (1 if group == 0 else 2) if i == 0 else 1
                first = group == 0 and i == 0 and style.activate_before_residual
                layers.append(BasicBlock(cin, widths[group + 1], stride, first, style))
        layers += [nn.BatchNorm2d(widths[3], momentum=style.bn_momentum), nn.LeakyReLU(style.slope, inplace=True)]
        self.backbone = nn.Sequential(*layers)
        self._make_head(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nonlinearity = "relu" if style.repdistiller_init else "leaky_relu"
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=nonlinearity)
            elif isinstance(m, nn.Linear):
                if not style.repdistiller_init:
                    nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).mean(dim=(2, 3))


@register_network("wrn28_2")
def wrn28_2(num_classes: int, in_channels: int = 3) -> WideResNet:
    """Wide ResNet-28-2 as in FixMatch (leaky ReLU 0.1, BN momentum 0.001)."""
    return WideResNet(num_classes, in_channels, 28, 2)


@register_network("wrn28_8")
def wrn28_8(num_classes: int, in_channels: int = 3) -> WideResNet:
    """Wide ResNet-28-8 as in FixMatch (leaky ReLU 0.1, BN momentum 0.001)."""
    return WideResNet(num_classes, in_channels, 28, 8)


@register_network("wrn40_2")
def wrn40_2(num_classes: int, in_channels: int = 3) -> WideResNet:
    """Wide ResNet-40-2 as in RepDistiller (ReLU, BN momentum 0.1)."""
    return WideResNet(num_classes, in_channels, 40, 2, REPDISTILLER)


@register_network("wrn40_1")
def wrn40_1(num_classes: int, in_channels: int = 3) -> WideResNet:
    """Wide ResNet-40-1 as in RepDistiller (ReLU, BN momentum 0.1)."""
    return WideResNet(num_classes, in_channels, 40, 1, REPDISTILLER)


@register_network("wrn16_2")
def wrn16_2(num_classes: int, in_channels: int = 3) -> WideResNet:
    """Wide ResNet-16-2 as in RepDistiller (ReLU, BN momentum 0.1)."""
    return WideResNet(num_classes, in_channels, 16, 2, REPDISTILLER)


@register_network("wrn16_1")
def wrn16_1(num_classes: int, in_channels: int = 3) -> WideResNet:
    """Wide ResNet-16-1 as in RepDistiller (ReLU, BN momentum 0.1)."""
    return WideResNet(num_classes, in_channels, 16, 1, REPDISTILLER)
