"""Named views of a batch: what an algorithm asks for ("weak", "strong", ...), computed on x's device.

The data layer computes the views an algorithm declares and never branches on algorithm names;
a view depends only on the dataset's AugPolicy. Inputs that are not images (token ids) pass
through unchanged so text datasets share the same code path.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ssl_kd.augment.randaugment import cutout, rand_augment
from ssl_kd.augment.weak import weak_augment
from ssl_kd.data.types import AugPolicy
from ssl_kd.errors import ConfigError, DataError


def _strong(x: torch.Tensor, policy: AugPolicy) -> torch.Tensor:
    """FixMatch's strong view: weak, then RandAugment, then Cutout."""
    x, _ = rand_augment(weak_augment(x, policy), policy.strong_ops)
    return cutout(x, policy.cutout_fraction)


_VIEWS: dict[str, Callable[[torch.Tensor, AugPolicy], torch.Tensor]] = {
    "none": lambda x, policy: x,
    "weak": weak_augment,
    "strong": _strong,
}

VIEW_NAMES: tuple[str, ...] = tuple(_VIEWS)


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


def make_view(view: str, x: torch.Tensor, policy: AugPolicy | None) -> torch.Tensor:
    """Return view `view` of images x (uint8 (N,C,H,W)) as normalised float32 on x's device.

    Randomness comes from torch's global RNG (on x's device), which the trainer seeds and
    checkpoints, so views are reproducible. Without a policy, or for non-image inputs such as
    token ids (N,L), x is returned unchanged.
    """
    base = base_view(view)
    if base not in _VIEWS:
        raise ConfigError(f"unknown view {view!r}; valid views are: {', '.join(VIEW_NAMES)} "
                          f"(append _2, _3, ... for further independent draws, e.g. weak_2)")
    if policy is None or x.dim() != 4:
        return x
    return normalise(_VIEWS[base](_to_unit_range(x), policy), policy)
