"""Batched augmentation: view contract, per-image randomness, FixMatch op behaviour, reproducibility."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ssl_kd.augment import OP_NAMES, VIEW_NAMES, apply_op, cutout, make_view, rand_augment
from ssl_kd.data.types import AugPolicy
from ssl_kd.errors import ConfigError, DataError

CIFAR = AugPolicy(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
DIGITS = AugPolicy(mean=(0.3,), std=(0.4,), flip=False)
RAW_GRAY = AugPolicy(mean=(0.0,), std=(1.0,), flip=False)  # identity normalisation: views stay in [0,1]


def _images(n: int, c: int, side: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, side, side), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("view", VIEW_NAMES)
@pytest.mark.parametrize(("channels", "side", "policy"), [(1, 8, DIGITS), (3, 32, CIFAR)])
def test_view_keeps_shape_device_and_gives_float32(view: str, channels: int, side: int, policy: AugPolicy) -> None:
    x = _images(16, channels, side)
    out = make_view(view, x, policy)
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    assert out.device == x.device


def test_none_view_only_normalises() -> None:
    x = _images(4, 3, 32)
    mean = torch.tensor(CIFAR.mean).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR.std).view(1, 3, 1, 1)
    torch.testing.assert_close(make_view("none", x, CIFAR), (x.float() / 255 - mean) / std)


def test_float_images_are_taken_to_be_in_unit_range() -> None:
    x = _images(4, 3, 32)
    torch.testing.assert_close(make_view("none", x.float() / 255, CIFAR), make_view("none", x, CIFAR))


def _left_dark_right_bright(n: int) -> torch.Tensor:
    x = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
    x[..., 4:] = 255
    return x


def test_weak_never_flips_when_the_policy_forbids_it() -> None:
    torch.manual_seed(0)
    x = _left_dark_right_bright(64)
    no_flip = make_view("weak", x, RAW_GRAY)
    assert (no_flip[..., 0] == 0).all() and (no_flip[..., -1] == 1).all()
    flipped = make_view("weak", x, AugPolicy(mean=(0.0,), std=(1.0,), flip=True))[..., 0] == 1
    assert flipped.all(dim=-1).any(), "the check above must be able to see a flip"


def test_weak_crop_is_a_per_image_shift_of_at_most_the_padding() -> None:
    torch.manual_seed(0)
    x = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).repeat(32, 1, 1, 1)
    out = (make_view("weak", x, RAW_GRAY) * 255).round().long()  # pad = round(0.125 * 8) = 1
    shifts = set()
    for image in out[:, 0]:
        dy, dx = divmod(int(image[3, 3]), 8)
        dy, dx = dy - 3, dx - 3
        assert abs(dy) <= 1 and abs(dx) <= 1
        torch.testing.assert_close(image[2:6, 2:6], x[0, 0, 2 + dy : 6 + dy, 2 + dx : 6 + dx].long())
        shifts.add((dy, dx))
    assert len(shifts) > 1, "every image drew the same crop"


def test_weak_crop_pads_with_the_policys_mode() -> None:
    """Reflect padding keeps a uniform bright image bright; zero padding (RepDistiller's) shows
    black bars where the crop is shifted, and only there."""
    x = torch.full((64, 1, 8, 8), 255, dtype=torch.uint8)
    torch.manual_seed(0)
    reflected = make_view("weak", x, RAW_GRAY)
    torch.manual_seed(0)
    zeroed = make_view("weak", x, dataclasses.replace(RAW_GRAY, pad_mode="zeros"))
    assert (reflected == 1).all()
    black = zeroed == 0
    assert black.any() and ((zeroed == 1) | black).all()
    rows, cols = black.all(dim=-1, keepdim=True), black.all(dim=-2, keepdim=True)  # whole black rows / columns
    assert (black == (rows | cols)).all(), "black pixels come in whole bars"
    assert rows.sum(dim=(-2, -1)).max() <= 1 and cols.sum(dim=(-2, -1)).max() <= 1  # a 1-pixel pad: one bar each way at most


def test_each_protocol_pads_as_its_reference() -> None:
    """FixMatch's presets reflect (google-research/fixmatch's augment_shift); the zoo preset pads
    with zeros (RepDistiller's RandomCrop(32, padding=4)); a bad mode is a config error naming it."""
    from ssl_kd.config import DataConfig, load_yaml
    from ssl_kd.data.build import check_data_config
    from ssl_kd.registry import DATASETS, discover_all
    from ssl_kd.run import resolve_config
    from tests.conftest import REPO

    discover_all()
    assert DATASETS.get("cifar10").policy.pad_mode == DATASETS.get("cifar100").policy.pad_mode == "reflect"
    zoo = resolve_config(load_yaml(str(REPO / "configs" / "zoo_cifar100.yaml")), {"algo": "supervised", "dataset": "cifar100"}, [])
    assert zoo.data.pad_mode == "zeros"
    with pytest.raises(ConfigError, match="data.pad_mode='zero'.*reflect, zeros"):
        check_data_config(DataConfig(pad_mode="zero"))


def test_weak_without_flip_or_crop_is_the_identity() -> None:
    policy = AugPolicy(mean=(0.5,), std=(0.2,), flip=False, crop_fraction=0.0)
    x = _images(4, 1, 8)
    torch.testing.assert_close(make_view("weak", x, policy), make_view("none", x, policy))


def test_rand_augment_draws_ops_per_image() -> None:
    torch.manual_seed(0)
    x = _images(32, 3, 32).float() / 255
    out, op_ids = rand_augment(x, num_ops=2)
    assert out.shape == x.shape
    assert op_ids.shape == (32, 2)
    assert ((op_ids >= 0) & (op_ids < len(OP_NAMES))).all()
    assert len({tuple(row) for row in op_ids.tolist()}) > 1, "all images got the same ops"
    assert len(op_ids.unique()) > len(OP_NAMES) // 2


def test_rand_augment_gives_each_image_its_own_ops_in_order() -> None:
    """The masked batch equals applying each image's drawn ops one by one to that image alone."""
    x = _images(24, 3, 16, seed=2).float() / 255
    torch.manual_seed(5)
    out, op_ids = rand_augment(x, num_ops=2)
    torch.manual_seed(5)
    drawn = torch.randint(len(OP_NAMES), (24, 2))
    magnitudes = torch.rand(24, 2)
    assert torch.equal(drawn, op_ids)
    for i in range(24):
        image = x[i : i + 1]
        for slot in range(2):
            image = apply_op(image, OP_NAMES[int(op_ids[i, slot])], magnitudes[i, slot : slot + 1])
        torch.testing.assert_close(out[i : i + 1], image, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", OP_NAMES)
def test_each_op_changes_images_and_stays_in_unit_range(name: str) -> None:
    generator = torch.Generator().manual_seed(1)
    # a mid-range CIFAR-sized image, so AutoContrast, Equalize and Posterize all have work to do
    x = ((0.2 + 0.6 * torch.rand(4, 3, 32, 32, generator=generator)) * 255).round() / 255
    out = apply_op(x, name, torch.tensor([0.0, 0.2, 0.7, 0.999]))
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    changed = (out != x).flatten(1).any(dim=1)
    if name == "Identity":
        assert not changed.any()
    else:
        assert changed[:2].all(), f"{name} left an image unchanged at a strong magnitude"


@pytest.mark.parametrize("name", OP_NAMES)
def test_each_op_works_on_small_gray_images(name: str) -> None:
    x = _images(3, 1, 8).float() / 255
    out = apply_op(x, name, torch.tensor([0.0, 0.5, 0.999]))
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1


def test_cutout_fills_one_gray_square_no_larger_than_the_fraction() -> None:
    torch.manual_seed(0)
    out = cutout(torch.ones(64, 1, 32, 32), fraction=0.5)
    assert set(out.unique().tolist()) <= {0.5, 1.0}
    sides = []
    for image in out[:, 0]:
        rows, cols = torch.nonzero(image == 0.5, as_tuple=True)
        if rows.numel():
            height, width = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
            assert rows.numel() == height * width, "the filled region is not a rectangle"
            assert max(height, width) <= 16
            sides.append(max(height, width))
    assert len(set(sides)) > 1
    torch.testing.assert_close(cutout(torch.ones(4, 1, 8, 8), fraction=0.0), torch.ones(4, 1, 8, 8))


def test_strong_view_stays_in_normalised_unit_range() -> None:
    torch.manual_seed(0)
    out = make_view("strong", _images(32, 1, 8), RAW_GRAY)
    assert out.min() >= 0 and out.max() <= 1


def test_same_seed_same_views_and_different_seeds_differ() -> None:
    x = _images(16, 3, 32)

    def views(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.cat([make_view("weak", x, CIFAR), make_view("strong", x, CIFAR)])

    torch.testing.assert_close(views(3), views(3), rtol=0, atol=0)
    assert not torch.equal(views(3), views(4))


def test_unknown_view_names_the_valid_views() -> None:
    with pytest.raises(ConfigError, match="'stronk'") as error:
        make_view("stronk", _images(2, 3, 32), CIFAR)
    assert all(name in str(error.value) for name in VIEW_NAMES)
    with pytest.raises(ConfigError):
        make_view("stronk", torch.zeros(2, 5, dtype=torch.long), None)


@pytest.mark.parametrize("view", VIEW_NAMES)
def test_token_ids_and_missing_policy_pass_through(view: str) -> None:
    tokens = torch.randint(0, 30000, (4, 16))
    assert make_view(view, tokens, CIFAR) is tokens
    images = _images(2, 3, 32)
    assert make_view(view, images, None) is images


def test_policy_with_the_wrong_channel_count_is_a_data_error() -> None:
    with pytest.raises(DataError, match="3 means"):
        make_view("none", _images(2, 1, 8), CIFAR)


@pytest.mark.parametrize("view", ["weak", "strong"])
def test_keyed_views_of_any_part_of_a_batch_are_the_whole_batchs(view: str) -> None:
    """Each example's view depends on its key only: the views of a batch's parts, keyed by their
    global positions, are the views of the whole batch; another step or view name draws anew."""
    from ssl_kd.data.draws import KeyedDraws, example_keys

    x, idx = _images(12, 3, 32), torch.arange(100, 112)
    whole = make_view(view, x, CIFAR, KeyedDraws(example_keys(0, 7, f"unlabelled/{view}", idx, 0)))
    parts = [make_view(view, x[s], CIFAR, KeyedDraws(example_keys(0, 7, f"unlabelled/{view}", idx[s], s.start)))
             for s in (slice(0, 4), slice(4, 8), slice(8, 12))]
    assert torch.equal(torch.cat(parts), whole)
    torch.manual_seed(0)
    assert torch.equal(make_view(view, x, CIFAR, KeyedDraws(example_keys(0, 7, f"unlabelled/{view}", idx, 0))), whole)  # not the global RNG
    for other in (example_keys(0, 8, f"unlabelled/{view}", idx, 0), example_keys(0, 7, f"unlabelled/{view}_2", idx, 0),
                  example_keys(1, 7, f"unlabelled/{view}", idx, 0)):
        assert not torch.equal(make_view(view, x, CIFAR, KeyedDraws(other)), whole)


def test_keyed_draws_are_uniform_and_tell_repeated_indices_apart() -> None:
    """An index drawn twice in one batch (a split smaller than the batch) gets two different
    streams (its positions differ); the numbers are uniform on [0, 1) and over an integer range."""
    from ssl_kd.data.draws import KeyedDraws, example_keys

    keys = example_keys(3, 0, "labelled/weak", torch.tensor([5, 5] + list(range(998))), 0)
    draws = KeyedDraws(keys)
    u = draws.rand((1000, 50), torch.device("cpu"))
    assert not torch.equal(u[0], u[1])
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
    counts = draws.randint(2, 5, (1000, 30), torch.device("cpu")).flatten().bincount(minlength=5)
    assert counts[:2].sum() == 0 and (counts[2:].float() / 10_000 - 1).abs().max() < 0.05
    with pytest.raises(ValueError, match="first dimension is the batch"):
        draws.rand((999,), torch.device("cpu"))
