"""Splits are class-balanced, seeded by the split seed alone, disjoint from validation; the sampler resumes exactly."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_kd.config import DataConfig
from ssl_kd.data.build import build_dataset, flip_labels
from ssl_kd.data.sampler import InfiniteSampler
from ssl_kd.data.types import SSLData
from ssl_kd.errors import CheckpointError, ConfigError, DataError

UNUSED = Path("unused")  # digits ship with scikit-learn


def digits(name: str = "digits_30", **data: object) -> SSLData:
    return build_dataset(name, DataConfig(**data), UNUSED, False)


def as_set(indices: torch.Tensor) -> set[int]:
    return set(indices.tolist())


def test_labelled_split_is_class_balanced() -> None:
    data = digits("digits_100", val_per_class=5)
    assert torch.equal(data.train_y[data.labelled_idx].bincount(minlength=10), torch.full((10,), 10))
    assert torch.equal(data.train_y[data.val_idx].bincount(minlength=10), torch.full((10,), 5))


def test_split_depends_only_on_split_seed() -> None:
    a, b, c = digits(split_seed=1), digits(split_seed=1), digits(split_seed=2)
    assert torch.equal(a.labelled_idx, b.labelled_idx)
    assert not torch.equal(a.labelled_idx, c.labelled_idx)


def test_validation_is_disjoint_and_unlabelled_is_the_rest() -> None:
    data = digits(val_per_class=20)
    val, labelled, unlabelled = as_set(data.val_idx), as_set(data.labelled_idx), as_set(data.unlabelled_idx)
    assert not val & labelled and not val & unlabelled
    assert labelled <= unlabelled  # FixMatch protocol: labelled examples are also unlabelled
    assert val | unlabelled == set(range(len(data.train_y)))


def test_fully_labelled_preset_has_no_unlabelled_set() -> None:
    data = digits("digits", val_per_class=10)
    assert not data.has_unlabelled
    assert as_set(data.labelled_idx) | as_set(data.val_idx) == set(range(len(data.train_y)))
    assert len(data.labelled_idx) + len(data.val_idx) == len(data.train_y)


def test_smaller_label_counts_are_subsets() -> None:
    assert as_set(digits("digits_30").labelled_idx) <= as_set(digits("digits_100").labelled_idx)


def test_too_many_labels_per_class() -> None:
    with pytest.raises(DataError, match="200 labels per class requested.*only 1[23][0-9] training images"):
        digits("digits_2000")


def test_labels_not_divisible_by_classes() -> None:
    with pytest.raises(DataError, match="35 labels cannot be split evenly over 10 classes.*30 or 40"):
        digits("digits_35")


def test_validation_larger_than_a_class() -> None:
    with pytest.raises(DataError, match="val_per_class=500"):
        digits(val_per_class=500)


@pytest.mark.parametrize(
    ("data", "key"), [({"noise_mode": "asymmetric"}, "symmetric, pairwise"), ({"label_noise": 1.5}, "label_noise")]
)
def test_bad_data_config(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        digits(**data)


@pytest.mark.parametrize("mode", ["symmetric", "pairwise"])
def test_label_noise_flips_exact_fraction(mode: str) -> None:
    clean = digits("digits_100")
    noisy = digits("digits_100", label_noise=0.3, noise_mode=mode)
    assert torch.equal(clean.labelled_idx, noisy.labelled_idx)  # noise never changes the split
    flipped = (clean.train_y != noisy.train_y).nonzero().flatten()
    assert torch.equal(flipped, noisy.noisy_idx) and len(flipped) == 30
    assert as_set(flipped) <= as_set(noisy.labelled_idx)
    if mode == "pairwise":
        assert torch.equal(noisy.train_y[flipped], (clean.train_y[flipped] + 1) % 10)


def test_symmetric_noise_reaches_every_other_class() -> None:
    train_y = torch.zeros(1000, dtype=torch.int64)
    noisy, flipped = flip_labels(train_y, torch.arange(1000), 0.5, "symmetric", 10, torch.Generator().manual_seed(0))
    assert len(flipped) == 500 and (noisy[flipped] != 0).all()
    assert set(noisy[flipped].tolist()) == set(range(1, 10))


def test_no_noise_means_no_noisy_indices() -> None:
    assert digits().noisy_idx is None


def take(sampler: InfiniteSampler, count: int) -> list[torch.Tensor]:
    return [next(sampler) for _ in range(count)]


def test_sampler_is_seeded_and_covers_each_epoch() -> None:
    indices = torch.arange(100, 130)
    a = take(InfiniteSampler(indices, 10, seed=3), 6)
    b = take(InfiniteSampler(indices, 10, seed=3), 6)
    c = take(InfiniteSampler(indices, 10, seed=4), 6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    for epoch in (a[:3], a[3:]):
        assert sorted(torch.cat(epoch).tolist()) == indices.tolist()


def test_sampler_batches_stay_full_when_larger_than_the_split() -> None:
    batches = take(InfiniteSampler(torch.tensor([7, 8, 9]), 8, seed=0), 3)
    assert all(len(batch) == 8 for batch in batches)
    assert sorted(torch.cat(batches)[:6].tolist()) == [7, 7, 8, 8, 9, 9]


def test_sampler_state_round_trip_is_exact() -> None:
    indices = torch.arange(37)
    original = InfiniteSampler(indices, 8, seed=11)
    take(original, 7)  # stop mid-epoch
    state = original.state_dict()
    expected = take(original, 12)
    resumed = InfiniteSampler(indices, 8, seed=999)  # the state, not the seed, decides
    resumed.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(expected, take(resumed, 12)))


def test_sampler_refuses_state_of_another_split() -> None:
    state = InfiniteSampler(torch.arange(10), 4, seed=0).state_dict()
    with pytest.raises(CheckpointError, match="10 indices"):
        InfiniteSampler(torch.arange(12), 4, seed=0).load_state_dict(state)


def test_sampler_rejects_an_empty_split() -> None:
    with pytest.raises(DataError, match="empty split"):
        InfiniteSampler(torch.empty(0, dtype=torch.int64), 4, seed=0)
