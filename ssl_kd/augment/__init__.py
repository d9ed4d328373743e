"""Batched, on-device augmentation: named views (none/weak/strong), FixMatch RandAugment, Cutout."""
from ssl_kd.augment.randaugment import OP_NAMES, apply_op, cutout, rand_augment
from ssl_kd.augment.views import VIEW_NAMES, make_view, normalise
from ssl_kd.augment.weak import weak_augment

__all__ = ["OP_NAMES", "VIEW_NAMES", "apply_op", "cutout", "make_view", "normalise", "rand_augment", "weak_augment"]
