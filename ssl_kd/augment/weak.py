"""The weak view: random horizontal flip and padded random crop (reflect or zeros), drawn per image.

Batched tensor ops only (no PIL, no per-image loop), so it runs on the training device. Flip
and crop are one gather on the padded batch with per-image indices: on the CPU (56 CIFAR images,
one thread) that takes about 0.5 ms against 1.4 ms for two gathers and 3.4 ms for kornia's
RandomHorizontalFlip + RandomCrop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_kd.data.draws import GLOBAL, Draws
from ssl_kd.data.types import PAD_MODES, AugPolicy


def crop_padding(policy: AugPolicy, height: int, width: int) -> int:
    """Pixels of padding: `crop_fraction` of the shorter side, rounded (4 for 32x32, 1 for 8x8)."""
    return round(policy.crop_fraction * min(height, width))


def flip_and_crop(x: torch.Tensor, pad: int, flip: bool, pad_mode: str = "reflect", draws: Draws = GLOBAL) -> torch.Tensor:
    """Pad (N,C,H,W) by `pad` (reflected, or zeros: black in [0,1] images), crop each image back
    to H x W at a random offset, and mirror each image left-right with probability 1/2 if `flip`.

    Mirroring a crop of the padded image is a crop of the padded mirror image (both paddings are
    symmetric), so the flip only reverses the column indices of the gather.
    """
    n, c, h, w = x.shape
    if pad:
        x = F.pad(x, (pad, pad, pad, pad), mode=PAD_MODES[pad_mode])
    padded_w = w + 2 * pad
    rows = draws.randint(0, 2 * pad + 1, (n, 1), x.device) + torch.arange(h, device=x.device)
    cols = draws.randint(0, 2 * pad + 1, (n, 1), x.device) + torch.arange(w, device=x.device)
    if flip:
        mirrored = draws.rand((n, 1), x.device) < 0.5
        cols = torch.where(mirrored, padded_w - 1 - cols, cols)
    index = (rows[:, :, None] * padded_w + cols[:, None, :]).view(n, 1, h * w)
    return x.flatten(2).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def weak_augment(x: torch.Tensor, policy: AugPolicy, draws: Draws = GLOBAL) -> torch.Tensor:
    """FixMatch's weak view of images (N,C,H,W): flip (if the policy allows it) and shift-crop."""
    return flip_and_crop(x, crop_padding(policy, x.shape[-2], x.shape[-1]), policy.flip, policy.pad_mode, draws)
