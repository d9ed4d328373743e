"""FixMatch's RandAugment (random-magnitude variant) and Cutout, batched with per-image choices.

FixMatch (Sohn et al., NeurIPS 2020, appendix table 12) applies `num_ops` (2) operations per
image, each drawn uniformly from the 14 below, each with a magnitude drawn uniformly from its
range at every step, then Cutout. The paper's ranges, and how they map onto the ops used here
(kornia 0.9 functionals; several kornia names mean something else than PIL's):

    AutoContrast  -                  per-channel min/max stretch; own code, because kornia's
                                     normalize_min_max turns a flat channel black
    Brightness    B in [0.05, 0.95]  PIL factor, image * B -> adjust_brightness_accumulative
                                     (kornia's adjust_brightness *adds* its factor)
    Color         C in [0.05, 0.95]  blend with luma -> adjust_saturation_with_gray_subtraction
                                     (a no-op on 1-channel images, as in PIL)
    Contrast      C in [0.05, 0.95]  blend with the mean luma -> adjust_contrast_with_mean_subtraction
                                     (kornia's adjust_contrast only multiplies)
    Equalize      -                  equalize (PIL-exact; a no-op below 256 pixels, e.g. 8x8 digits)
    Identity      -
    Posterize     B in [4, 8] bits   integer bits drawn uniformly -> posterize (8 bits is a no-op)
    Rotate        theta in [-30, 30] degrees, about the centre
    Sharpness     S in [0.05, 0.95]  blend with PIL's smoothing filter -> sharpness
    ShearX/Y      R in [-0.3, 0.3]   PIL AFFINE (1, R, 0, 0, 1, 0): sheared about the top-left corner
    Solarize      T in [0, 1]        invert pixels >= T -> solarize
    TranslateX/Y  l in [-0.3, 0.3]   times the image width/height, in pixels
    Cutout        L in [0, 0.5]      one gray square of side L x image side (see `cutout`)

Geometric ops resample with nearest neighbour and fill with black, as the reference PIL calls do.
Each slot runs every pixel op once on the whole batch and keeps, per image, the result of the op
that image drew (a mask select); the five geometric ops share one warp. Nothing is read back to
the host, so on a GPU the step never waits for the device: the ops queue asynchronously. The
price is computing every op on every image: 2 slots on 56 CIFAR images take about 25 ms on one
loaded CPU thread against 7 ms for per-op subsets (which needed the per-op counts on the host),
still under 1% of a WRN-28-2 step there.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_saturation_with_gray_subtraction,
    equalize,
    posterize,
    sharpness,
    solarize,
)

from ssl_kd.data.draws import GLOBAL, Draws

PixelOp = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Images (n,C,H,W) in [0,1] and magnitudes (n,) in [0,1) -> new images."""
AffineOp = Callable[[torch.Tensor, int, int], torch.Tensor]
"""Magnitudes (n,) in [0,1), height, width -> inverse maps (n,2,3) in grid units (see `_warp`)."""

OP_NAMES: tuple[str, ...] = (
    "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
    "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY",
)  # fmt: skip
"""FixMatch's RandAugment op list; an op id is a position in this tuple."""


def _factor(m: torch.Tensor) -> torch.Tensor:
    """Map [0,1) onto the enhancement factor range [0.05, 0.95]."""
    return 0.05 + 0.9 * m


def _signed(m: torch.Tensor, bound: float) -> torch.Tensor:
    """Map [0,1) onto the symmetric range [-bound, bound]."""
    return (2.0 * m - 1.0) * bound


def _auto_contrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Stretch each channel to span [0,1]; a flat channel stays as it is (PIL ImageOps.autocontrast)."""
    low = x.amin(dim=(-2, -1), keepdim=True)
    span = x.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span > 0, (x - low) / span.clamp_min(1e-8), x)


def _posterize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Keep B in {4,...,8} high bits of each 8-bit value."""
    return posterize(x, (4 + (m * 5).long()).clamp_max(8))


_PIXEL_OPS: dict[str, PixelOp] = {
    "AutoContrast": _auto_contrast,
    "Brightness": lambda x, m: adjust_brightness_accumulative(x, _factor(m)),
    "Color": lambda x, m: adjust_saturation_with_gray_subtraction(x, _factor(m)),
    "Contrast": lambda x, m: adjust_contrast_with_mean_subtraction(x, _factor(m)),
    "Equalize": lambda x, m: equalize(x),
    "Identity": lambda x, m: x,
    "Posterize": _posterize,
    "Sharpness": lambda x, m: sharpness(x, _factor(m)),
    "Solarize": lambda x, m: solarize(x, m),
}


def _identity_maps(m: torch.Tensor) -> torch.Tensor:
    return torch.eye(2, 3, device=m.device, dtype=m.dtype).repeat(m.shape[0], 1, 1)


def _shear(axis: int) -> AffineOp:
    """Shear along x (axis 0) or y (axis 1) by R in [-0.3, 0.3] about the top-left corner, as PIL's
    AFFINE (1, R, 0, 0, 1, 0) does: x_in = x + R * y in pixels, i.e. u_in = u + R * (h / w) * (v + 1)."""

    def inverse_maps(m: torch.Tensor, h: int, w: int) -> torch.Tensor:
        maps = _identity_maps(m)
        rate = _signed(m, 0.3) * (h / w, w / h)[axis]
        maps[:, axis, 1 - axis] = rate
        maps[:, axis, 2] = rate
        return maps

    return inverse_maps


def _translate(axis: int) -> AffineOp:
    """Shift along x (axis 0) or y (axis 1) by l in [-0.3, 0.3] of the width (height): 2 * l in grid units."""

    def inverse_maps(m: torch.Tensor, h: int, w: int) -> torch.Tensor:
        maps = _identity_maps(m)
        maps[:, axis, 2] = 2.0 * _signed(m, 0.3)
        return maps

    return inverse_maps


def _rotate(m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Rotate about the image centre by theta in [-30, 30] degrees (the aspect terms keep it rigid)."""
    angle = torch.deg2rad(_signed(m, 30.0))
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    return torch.stack(
        [torch.stack([cos, -sin * (h / w), zero], -1), torch.stack([sin * (w / h), cos, zero], -1)], -2
    )


_AFFINE_OPS: dict[str, AffineOp] = {
    "Rotate": _rotate,
    "ShearX": _shear(0),
    "ShearY": _shear(1),
    "TranslateX": _translate(0),
    "TranslateY": _translate(1),
}


def _warp(x: torch.Tensor, inverse_maps: torch.Tensor) -> torch.Tensor:
    """Output point p of image i shows input point inverse_maps[i] @ (p, 1); nearest pixel, black outside.

    The maps are in `affine_grid`'s normalised coordinates (u right, v down, [-1, 1] from edge to
    edge). They are built on x's device without host tensors, which would force a device sync.
    """
    grid = F.affine_grid(inverse_maps, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _apply_ops(x: torch.Tensor, op_ids: torch.Tensor, magnitudes: torch.Tensor, ops: tuple[str, ...] = OP_NAMES) -> torch.Tensor:
    """Give image i op `op_ids[i]` at magnitude `magnitudes[i]`, for op ids among `ops`.

    Every op in `ops` runs on the whole batch and a mask keeps each image's own result, so no op
    count or index list is read back to the host (fixed shapes, no device sync); the geometric
    ops share one warp whose per-image maps are selected the same way.
    """
    h, w = x.shape[-2:]
    out = x
    inverse_maps = None
    geometric = torch.zeros_like(op_ids, dtype=torch.bool)
    for name in ops:
        if name == "Identity":
            continue
        chosen = op_ids == OP_NAMES.index(name)
        if name in _AFFINE_OPS:
            maps = _AFFINE_OPS[name](magnitudes, h, w)
            inverse_maps = maps if inverse_maps is None else torch.where(chosen[:, None, None], maps, inverse_maps)
            geometric = geometric | chosen
        else:
            out = torch.where(chosen[:, None, None, None], _PIXEL_OPS[name](x, magnitudes), out)
    if inverse_maps is not None:
        out = torch.where(geometric[:, None, None, None], _warp(x, inverse_maps), out)
    return out


def apply_op(x: torch.Tensor, name: str, magnitudes: torch.Tensor) -> torch.Tensor:
    """Apply the op called `name` (one of `OP_NAMES`) to every image, at per-image magnitudes
    (N,) in [0,1) that map onto the op's FixMatch range; for inspecting and testing single ops."""
    if name not in OP_NAMES:
        raise ValueError(f"unknown RandAugment op {name!r}; valid ops are: {', '.join(OP_NAMES)}")
    op_ids = torch.full((x.shape[0],), OP_NAMES.index(name), device=x.device)
    return _apply_ops(x, op_ids, magnitudes, (name,))


def rand_augment(x: torch.Tensor, num_ops: int, draws: Draws = GLOBAL) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply `num_ops` random ops per image to float images (N,C,H,W) in [0,1].

    Ops (with repetition, as in FixMatch) and magnitudes are drawn independently per image from
    `draws` (torch's global RNG by default) on x's device. Returns the images and the op ids (N, num_ops), positions
    in `OP_NAMES`, in the order applied.
    """
    n = x.shape[0]
    op_ids = draws.randint(0, len(OP_NAMES), (n, num_ops), x.device)
    magnitudes = draws.rand((n, num_ops), x.device, x.dtype)
    for slot in range(num_ops):
        x = _apply_ops(x, op_ids[:, slot], magnitudes[:, slot])
    return x, op_ids


def cutout(x: torch.Tensor, fraction: float, draws: Draws = GLOBAL) -> torch.Tensor:
    """Fill one square per image of (N,C,H,W) with gray 0.5 (FixMatch's Cutout).

    The side is drawn uniformly from {0, ..., floor(fraction * shorter side)} and the centre
    uniformly over the image; the square is clipped at the border, as in FixMatch's code.
    """
    n, _, h, w = x.shape
    side = draws.randint(0, math.floor(fraction * min(h, w)) + 1, (n, 1), x.device)
    top = draws.randint(0, h, (n, 1), x.device) - side // 2
    left = draws.randint(0, w, (n, 1), x.device) - side // 2
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= top) & (rows < top + side)
    in_cols = (cols >= left) & (cols < left + side)
    return x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.5)
