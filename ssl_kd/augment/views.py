"""Named views of a batch: what an algorithm asks for ("weak", "strong", ...), computed on x's device.

The data layer computes the views an algorithm declares and never branches on algorithm names;
a view depends only on the dataset's policy. The registry maps (modality, view name) to a batched
function, the modality being the policy's (`AugPolicy`: image, `TextPolicy`: text), so "strong"
is RandAugment + Cutout for images and whole-word masking/deletion/span cutoff for text
(ssl_kd.text.views) and no algorithm branches on modality.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ssl_kd.data.draws import GLOBAL, Draws
from ssl_kd.augment.randaugment import cutout, rand_augment
from ssl_kd.augment.weak import weak_augment
from ssl_kd.data.types import AugPolicy, TextPolicy
from ssl_kd.errors import ConfigError, DataError
from ssl_kd.text.views import identity, strong_text


def _strong(x: torch.Tensor, policy: AugPolicy, draws: Draws) -> torch.Tensor:
    """FixMatch's strong view: weak, then RandAugment, then Cutout."""
    x, _ = rand_augment(weak_augment(x, policy, draws), policy.strong_ops, draws)
    return cutout(x, policy.cutout_fraction, draws)


# view functions: (batch, policy, where the random numbers come from) -> view
_IMAGE_VIEWS: dict[str, Callable[[torch.Tensor, AugPolicy, Draws], torch.Tensor]] = {
    "none": lambda x, policy, draws: x,
    "weak": weak_augment,
    "strong": _strong,
}
_TEXT_VIEWS: dict[str, Callable[[torch.Tensor, TextPolicy, Draws], torch.Tensor]] = {
    "none": identity,
    "weak": identity,
    "strong": strong_text,
}
VIEWS: dict[tuple[str, str], Callable] = {
    **{("image", name): fn for name, fn in _IMAGE_VIEWS.items()},
    **{("text", name): fn for name, fn in _TEXT_VIEWS.items()},
}

VIEW_NAMES: tuple[str, ...] = tuple(_IMAGE_VIEWS)


def _to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0,1]; floating images are taken to be in [0,1] already."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def normalise(x: torch.Tensor, policy: AugPolicy) -> torch.Tensor:
    """Standardise float images (N,C,H,W) in [0,1] with the policy's per-channel mean and std."""
    if len(policy.mean) != x.shape[1] or len(policy.std) != x.shape[1]:
        raise DataError(
            f"the augmentation policy has {len(policy.mean)} means and {len(policy.std)} stds but the "
            f"images have {x.shape[1]} channels; give one mean and one std per channel in the dataset's AugPolicy"
        )
    # non_blocking: a plain host-to-device copy would wait for all queued work on the device
    mean = torch.tensor(policy.mean).to(x.device, non_blocking=True).view(1, -1, 1, 1)
    std = torch.tensor(policy.std).to(x.device, non_blocking=True).view(1, -1, 1, 1)
    return (x - mean) / std


def base_view(view: str) -> str:
    """"weak_2" (any view name plus "_<n>") is a further independent draw of "weak": an algorithm
    that needs two views of one kind (Mean Teacher: weak + weak) declares ("weak", "weak_2")."""
    stem, _, number = view.rpartition("_")
    return stem if stem and number.isdigit() else view


def make_view(view: str, x: torch.Tensor, policy: AugPolicy | TextPolicy | None, draws: Draws = GLOBAL) -> torch.Tensor:
    """Return view `view` of x on x's device: images (uint8 (N,C,H,W)) as normalised float32,
    token ids (N,L) as token ids of the same shape.

    Randomness comes from `draws`: torch's global RNG (on x's device) by default, or each
    example's own keyed stream (`ssl_kd.data.draws.KeyedDraws`, as the trainer makes views),
    reproducible either way. Without a policy, or for images that are not 4-D,
    x is returned unchanged.
    """
    base = base_view(view)
    modality = policy.modality if policy is not None else "image"
    if (modality, base) not in VIEWS:
        names = sorted(name for kind, name in VIEWS if kind == modality)
        raise ConfigError(f"unknown view {view!r} for {modality} data; valid views are: {', '.join(names)} "
                          f"(append _2, _3, ... for further independent draws, e.g. weak_2)")
    if policy is None:
        return x
    if modality == "text":
        return VIEWS[modality, base](x, policy, draws)
    if x.dim() != 4:
        return x
    return normalise(VIEWS[modality, base](_to_unit_range(x), policy, draws), policy)
