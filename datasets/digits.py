"""scikit-learn's 8x8 digits: 1,797 images that ship with scikit-learn, for CPU-minute runs and tests.

The release has no test split, so a fixed, class-balanced one (50 images per class) is held out
with a seed of its own: every split seed and label count is evaluated on the same test images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ssl_kd.data.family import DatasetFamily, RawData, register_dataset
from ssl_kd.data.types import AugPolicy

TEST_PER_CLASS = 50  # 500 test images
TEST_SEED = 1797  # fixed forever: changing it changes every digits result


def held_out_test_mask(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """A boolean mask choosing `per_class` random images of every class."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for cls in labels.unique().tolist():
        members = (labels == cls).nonzero().flatten()
        mask[members[torch.randperm(len(members), generator=generator)[:per_class]]] = True
    return mask


def load_digits(root: Path, download: bool) -> RawData:
    """The data ships with scikit-learn: `root` and `download` are unused."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = np.round(bunch.images * (255 / 16)).astype(np.uint8)  # values 0..16 -> 0..255
    images = torch.from_numpy(pixels).unsqueeze(1)  # (N,1,8,8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    test = held_out_test_mask(labels, TEST_PER_CLASS, TEST_SEED)
    return RawData(images[~test], labels[~test], images[test], labels[test], [str(digit) for digit in range(10)])


register_dataset(
    DatasetFamily(
        name="digits",
        num_classes=10,
        policy=AugPolicy(mean=(0.3053,), std=(0.3759,), flip=False),
        load=load_digits,
        protocol={
            "net": "digits_net",
            "steps": 1500,
            "batch_size": 32,
            "uratio": 4,
            "weight_decay": 5e-4,
            "ema": 0.99,  # 0.999 averages over ~1000 steps: too slow for a 1,500-step budget
        },
        presets=(30, 100),
        seen_classes=(0, 1, 2, 3, 4, 5),
        description="scikit-learn digits: 1,297 train / 500 test 8x8 grey images, 10 classes (offline, CPU minutes)",
    )
)
