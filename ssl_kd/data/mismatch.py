"""Class-mismatched unlabelled data (Oliver et al. 2018, "Realistic evaluation of deep SSL").

With `data.unlabelled_mismatch=S` the model classifies a family's *seen* classes only
(`DatasetFamily.seen_classes`, relabelled 0..K-1): the labelled, validation and test splits hold
seen classes only, and a share S of the unlabelled pool comes from the other (unseen) classes.

The pool has a fixed size N = min(seen-class non-validation images, unseen-class images), so every
S in [0, 1] can be drawn and different shares compare pools of the same size. Two permutations,
drawn from the split seed only (their sizes do not depend on S), fix the order of the seen and of
the unseen candidates; the pool is the first N - round(S N) seen and the first round(S N) unseen
candidates. So pools are nested: raising S swaps seen images for unseen ones and keeps the rest.
Unseen-class training images carry the label -1 (`UNSEEN`), which no prediction can match.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_kd.data.family import DatasetFamily, RawData
from ssl_kd.errors import ConfigError

UNSEEN = -1  # the label of a training image whose class the model does not have


@dataclass
class SeenClasses:
    """A family's raw data restricted to its seen classes: training images keep their positions
    (unseen ones labelled UNSEEN), the test split keeps seen classes only, all relabelled 0..K-1."""

    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def seen_classes(family: DatasetFamily, raw: RawData) -> SeenClasses:
    """Relabel `raw` onto `family.seen_classes`, or raise if the family defines none."""
    if not family.seen_classes:
        raise ConfigError(f"data.unlabelled_mismatch: dataset family {family.name!r} defines no seen classes; "
                          f"use digits or cifar10 (e.g. --dataset digits_30), or drop data.unlabelled_mismatch.")
    seen = torch.tensor(family.seen_classes, dtype=torch.int64)
    relabel = torch.full((family.num_classes,), UNSEEN, dtype=torch.int64)
    relabel[seen] = torch.arange(len(seen))
    keep = relabel[raw.test_y] != UNSEEN
    return SeenClasses(
        train_y=relabel[raw.train_y],
        test_x=raw.test_x[keep],
        test_y=relabel[raw.test_y[keep]],
        class_names=[raw.class_names[c] if c < len(raw.class_names) else str(c) for c in family.seen_classes],
    )


def mismatched_pool(train_y: torch.Tensor, seen_rest: torch.Tensor, share: float,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool, unseen members of the pool), sorted index tensors, for an unseen-class share `share`.

    `seen_rest` are the seen-class candidates (training set minus validation); every UNSEEN image
    is an unseen candidate. See the module docstring for the draw.
    """
    unseen = (train_y == UNSEEN).nonzero().flatten()
    size = min(len(seen_rest), len(unseen))
    seen_order = seen_rest[torch.randperm(len(seen_rest), generator=generator)]
    unseen_order = unseen[torch.randperm(len(unseen), generator=generator)]
    count = round(share * size)
    ood = unseen_order[:count].sort().values
    pool = torch.cat([seen_order[: size - count], ood]).sort().values
    return pool, ood
