"""Class-mismatched unlabelled data and label noise in SSL presets: splits, truth, trainer logs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_kd.algorithm import StepOutput
from ssl_kd.config import DataConfig
from ssl_kd.data.build import build_dataset
from ssl_kd.data.family import DatasetFamily, RawData
from ssl_kd.data.mismatch import UNSEEN, seen_classes
from ssl_kd.data.types import AugPolicy, SSLData
from ssl_kd.errors import ConfigError
from ssl_kd.trainer.monitor import ood_logs
from tests.conftest import make_trainer

UNUSED = Path("unused")  # digits ship with scikit-learn
DIGIT_TRAIN_SIZE = 1297


def digits(name: str = "digits_30", **data: object) -> SSLData:
    return build_dataset(name, DataConfig(**data), UNUSED, False)


def as_set(indices: torch.Tensor) -> set[int]:
    return set(indices.tolist())


def test_seen_classes_only_in_labelled_validation_and_test() -> None:
    data = digits(unlabelled_mismatch=0.5, val_per_class=5)
    assert data.num_classes == 6 and data.class_names == ["0", "1", "2", "3", "4", "5"]
    assert torch.equal(data.train_y[data.labelled_idx].bincount(minlength=6), torch.full((6,), 3))  # digits_30: 3 per class
    assert torch.equal(data.train_y[data.val_idx].bincount(minlength=6), torch.full((6,), 5))
    assert torch.equal(data.test_y.bincount(), torch.full((6,), 50))  # 50 test images of each seen digit
    assert data.test_x.shape[0] == 300
    unseen = (data.train_y == UNSEEN).nonzero().flatten()
    assert as_set(data.ood_idx) <= as_set(unseen) and not as_set(unseen) & as_set(data.labelled_idx)


def test_pool_size_is_fixed_and_the_share_exact() -> None:
    sizes, oods = set(), {}
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        data = digits(unlabelled_mismatch=share)
        sizes.add(data.unlabelled_idx.numel())
        oods[share] = set() if data.ood_idx is None else as_set(data.ood_idx)
        assert oods[share] <= as_set(data.unlabelled_idx)
        in_pool = data.train_y[data.unlabelled_idx]
        assert int((in_pool == UNSEEN).sum()) == len(oods[share]) and (in_pool < 6).all()
    (size,) = sizes
    # digits without the 500 test images: 783 of digits 0-5, 514 of digits 6-9 -> pools of 514
    assert size == 514 and len(oods[0.5]) == 257 and len(oods[1.0]) == 514 and len(oods[0.0]) == 0
    assert oods[0.25] <= oods[0.5] <= oods[0.75]  # nested: a higher share only swaps images in


def test_no_mismatch_means_no_ood_and_all_classes() -> None:
    plain, zero = digits(), digits(unlabelled_mismatch=0.0)
    assert plain.ood_idx is None and plain.num_classes == 10 and plain.unlabelled_idx.numel() == DIGIT_TRAIN_SIZE
    assert zero.ood_idx is None and zero.num_classes == 6


def test_mismatched_pool_depends_only_on_split_seed() -> None:
    a, b, c = (digits(unlabelled_mismatch=0.5, split_seed=s) for s in (1, 1, 2))
    assert torch.equal(a.unlabelled_idx, b.unlabelled_idx) and torch.equal(a.ood_idx, b.ood_idx)
    assert not torch.equal(a.ood_idx, c.ood_idx)
    assert torch.equal(a.labelled_idx, digits(unlabelled_mismatch=0.0, split_seed=1).labelled_idx)


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_share_outside_zero_one_is_refused(share: float) -> None:
    with pytest.raises(ConfigError, match=f"unlabelled_mismatch={share} .*\\[0, 1\\]"):
        digits(unlabelled_mismatch=share)


def test_mismatch_needs_an_unlabelled_pool() -> None:
    with pytest.raises(ConfigError, match="presets with unlabelled data, not 'digits'"):
        digits("digits", unlabelled_mismatch=0.5)


def test_cifar_animals_are_the_seen_classes_relabelled() -> None:
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    labels = torch.arange(10).repeat(2)
    raw = RawData(torch.zeros(20, 3, 2, 2, dtype=torch.uint8), labels, torch.arange(10).view(10, 1, 1, 1).expand(10, 3, 2, 2),
                  torch.arange(10), names)
    family = DatasetFamily("cifar_like", 10, AugPolicy((0.5,), (0.5,)), lambda root, dl: raw, seen_classes=(2, 3, 4, 5, 6, 7))
    view = seen_classes(family, raw)
    assert view.class_names == ["bird", "cat", "deer", "dog", "frog", "horse"]
    assert view.train_y[:10].tolist() == [UNSEEN, UNSEEN, 0, 1, 2, 3, 4, 5, UNSEEN, UNSEEN]
    assert view.test_y.tolist() == [0, 1, 2, 3, 4, 5] and view.test_x[:, 0, 0, 0].tolist() == [2, 3, 4, 5, 6, 7]
    with pytest.raises(ConfigError, match="family 'plain' defines no seen classes"):
        seen_classes(DatasetFamily("plain", 10, AugPolicy((0.5,), (0.5,)), lambda root, dl: raw), raw)


def test_label_noise_flips_only_the_labelled_split_of_an_ssl_preset() -> None:
    clean, noisy = digits("digits_100", val_per_class=10), digits("digits_100", val_per_class=10, label_noise=0.2)
    assert torch.equal(noisy.noisy_idx, (clean.train_y != noisy.train_y).nonzero().flatten())
    assert len(noisy.noisy_idx) == 20 and as_set(noisy.noisy_idx) <= as_set(noisy.labelled_idx)
    assert torch.equal(noisy.train_y[noisy.val_idx], clean.train_y[clean.val_idx])  # validation never noised
    assert torch.equal(noisy.clean_y, clean.train_y)
    assert torch.equal(noisy.true_labels(noisy.noisy_idx), clean.train_y[noisy.noisy_idx])  # truth stays clean
    assert clean.clean_y is None and torch.equal(clean.true_labels(clean.labelled_idx), clean.train_y[clean.labelled_idx])


def test_noise_under_mismatch_stays_within_the_seen_classes() -> None:
    data = digits("digits_100", unlabelled_mismatch=0.5, label_noise=0.5)
    assert len(data.noisy_idx) == 30 and (data.train_y[data.noisy_idx] >= 0).all() and (data.train_y[data.noisy_idx] < 6).all()


def test_ood_logs_by_hand() -> None:
    ood = torch.tensor([True, False, False, True])
    out = StepOutput(loss=torch.tensor(0.0), weights=torch.tensor([0.2, 1.0, 0.8, 0.4]), mask=torch.tensor([1.0, 1.0, 0.0, 0.0]))
    logs = ood_logs(ood, out)
    assert logs["weight/ood_mean"].item() == pytest.approx(0.3) and logs["weight/id_mean"].item() == pytest.approx(0.9)
    assert logs["train/masked_ood_share"].item() == pytest.approx(0.5)  # 1 unseen of the 2 that pass
    assert set(ood_logs(ood, StepOutput(loss=torch.tensor(0.0)))) == set()


def test_trainer_never_counts_an_unseen_class_pseudo_label_correct(tmp_path) -> None:
    trainer = make_trainer(tmp_path, "fixmatch", 2, "--set", "data.unlabelled_mismatch=1.0", "--set", "algo.threshold=0")
    logs, out = trainer.train_one_step()
    assert logs["train/pseudo_label_acc"].item() == 0.0  # every unlabelled image is from an unseen class
    assert logs["train/masked_ood_share"].item() == 1.0 and out.mask.sum() == out.mask.numel()
