"""Text views: special tokens and padding survive, deletion closes up, rates 0 change nothing,
and the view registry picks text or image functions from the policy's modality."""
from __future__ import annotations

import pytest
import torch

from ssl_kd.augment.views import VIEWS, make_view
from ssl_kd.data.types import AugPolicy, TextPolicy
from ssl_kd.errors import ConfigError

CLS, SEP, PAD, MASK = 101, 102, 0, 103
POLICY = TextPolicy(pad_id=PAD, mask_id=MASK, special_ids=(PAD, 100, CLS, SEP, MASK), mask_rate=0.3,
                    delete_rate=0.3, span_fraction=0.3)


def batch(seed: int = 0) -> torch.Tensor:
    """Single sentences and pairs ([CLS] a [SEP] b [SEP]) of random lengths, right-padded to 40."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(64):
        a = torch.randint(1000, 2000, (int(torch.randint(1, 15, (1,), generator=g)),), generator=g).tolist()
        b = torch.randint(1000, 2000, (int(torch.randint(1, 15, (1,), generator=g)),), generator=g).tolist()
        ids = [CLS, *a, SEP] + ([*b, SEP] if i % 2 else [])
        rows.append(ids + [PAD] * (40 - len(ids)))
    return torch.tensor(rows)


def specials(row: torch.Tensor) -> list[int]:
    return [t for t in row.tolist() if t in (CLS, SEP)]


def test_strong_view_keeps_special_tokens_in_order_and_padding_at_the_end():
    x = batch()
    torch.manual_seed(0)
    y = make_view("strong", x, POLICY)
    assert y.shape == x.shape and not torch.equal(x, y)
    for before, after in zip(x, y):
        assert specials(after) == specials(before)
        assert after[0] == CLS
        length = int((after != PAD).sum())
        assert (after[:length] != PAD).all() and (after[length:] == PAD).all()  # padding stays a right tail
        assert length <= int((before != PAD).sum())
        content = [t for t in after.tolist() if t >= 1000]
        assert set(content) <= set(before.tolist())


def test_deletion_and_cutoff_keep_word_order():
    x = batch(1)
    torch.manual_seed(1)
    y = make_view("strong", x, TextPolicy(pad_id=PAD, mask_id=MASK, special_ids=POLICY.special_ids, mask_rate=0.0,
                                          delete_rate=0.3, span_fraction=0.3))
    for before, after in zip(x, y):
        kept = [t for t in after.tolist() if t != PAD]
        it = iter(before.tolist())
        assert all(t in it for t in kept)  # a subsequence of the original
    assert (y != PAD).sum() < (x != PAD).sum()


def test_masking_only_replaces_content_tokens_with_the_mask_token():
    x = batch(2)
    torch.manual_seed(2)
    y = make_view("strong", x, TextPolicy(pad_id=PAD, mask_id=MASK, special_ids=POLICY.special_ids, mask_rate=0.5,
                                          delete_rate=0.0, span_fraction=0.0))
    changed = x != y
    assert changed.any() and (y[changed] == MASK).all() and (x[changed] >= 1000).all()
    rate = changed.sum() / (x >= 1000).sum()
    assert 0.4 < rate < 0.6


def test_weak_none_and_zero_rates_change_nothing():
    x = batch(3)
    zero = TextPolicy(pad_id=PAD, mask_id=MASK, special_ids=POLICY.special_ids, mask_rate=0, delete_rate=0, span_fraction=0)
    for view, policy in (("weak", POLICY), ("none", POLICY), ("weak_2", POLICY), ("strong", zero)):
        assert torch.equal(make_view(view, x, policy), x)


def test_registry_is_keyed_by_modality_and_view():
    assert {("image", "strong"), ("text", "strong"), ("text", "weak"), ("image", "none")} <= set(VIEWS)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = make_view("weak", images, AugPolicy(mean=(0.5,) * 3, std=(0.25,) * 3))
    assert out.dtype == torch.float32 and out.shape == images.shape
    with pytest.raises(ConfigError, match="unknown view 'mixup' for text data"):
        make_view("mixup", batch(), POLICY)
