"""Text views on token ids (N,L), batched on the ids' device: the text half of the view registry.

`weak` is the sentence as is (no meaning-preserving token-level change is weak enough to be
worth the noise); `strong` masks words with the tokenizer's mask token, deletes words and cuts
one contiguous span of words (Shen et al. 2020, "A simple but tough-to-beat data augmentation
approach": token and span cutoff, done here by removing the tokens). A word is a first word piece
and the continuation pieces after it (the policy's `continuation_ids`, WordPiece's "##ably"), so a
view never cuts a word into a non-word ("neeson capably" -> "neeably"), as UDA's and USB's text
pipelines work on words; a masked word becomes one mask token. Special tokens and padding never
change; removed tokens close up so padding stays at the right. No back-translation: no
translation model can be had offline.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ssl_kd.data.draws import GLOBAL, Draws
from ssl_kd.data.types import TextPolicy


@functools.lru_cache(maxsize=32)
def id_table(ids: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A boolean table on `device` over token ids 0..max(ids) + 1, True at `ids`; made once (a
    vocabulary's continuation ids number thousands, and a lookup per token beats torch.isin's sort)."""
    table = torch.zeros(max(ids, default=-1) + 2, dtype=torch.bool)
    table[list(ids)] = True
    return table.to(device)


def is_in(ids: torch.Tensor, members: tuple[int, ...]) -> torch.Tensor:
    """True where a token id (>= 0) is one of `members`; ids above them all read the table's last, False, entry."""
    table = id_table(members, ids.device)
    return table[ids.clamp(0, table.numel() - 1)]


def content_mask(ids: torch.Tensor, policy: TextPolicy) -> torch.Tensor:
    """True at real word pieces (not special tokens, not padding)."""
    return ~is_in(ids, policy.special_ids)


def word_starts(ids: torch.Tensor, content: torch.Tensor, policy: TextPolicy) -> torch.Tensor:
    """True at the first piece of each word: a content piece that is not a continuation of a
    content piece right before it (a stray continuation after [CLS] starts a word)."""
    piece = is_in(ids, policy.continuation_ids)
    after_content = F.pad(content[:, :-1], (1, 0), value=False)
    return content & ~(piece & after_content)


def close_up(ids: torch.Tensor, keep: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Drop the tokens where `keep` is false, shifting the rest left in order and padding the tail."""
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    out = ids.gather(1, order)
    kept = keep.sum(1, keepdim=True)
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    return out.masked_fill(positions >= kept, pad_id)


def span_cut(content: torch.Tensor, starts: torch.Tensor, fraction: float, draws: Draws = GLOBAL) -> torch.Tensor:
    """The pieces of a random contiguous span of ceil(fraction * n) words per row (n: the row's words)."""
    n = starts.sum(1)
    span = torch.ceil(n.float() * fraction).long().clamp(max=n) if fraction > 0 else torch.zeros_like(n)
    start = (draws.rand(tuple(n.shape), n.device) * (n - span + 1).float()).long()
    rank = starts.long().cumsum(1) - 1  # the word's position among the row's words
    return content & (rank >= start[:, None]) & (rank < (start + span)[:, None])


def strong_text(ids: torch.Tensor, policy: TextPolicy, draws: Draws = GLOBAL) -> torch.Tensor:
    """Word masking, then word deletion, then a span cutoff of words, at the policy's rates
    (one random draw per word, made at the word's first piece and shared by its pieces)."""
    content = content_mask(ids, policy)
    starts = word_starts(ids, content, policy)
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    first = torch.where(starts, positions, 0).cummax(1).values  # each piece's word's first piece

    def words_drawn(rate: float) -> torch.Tensor:
        return content & (draws.rand(tuple(ids.shape), ids.device).gather(1, first) < rate)

    masked = words_drawn(policy.mask_rate)
    ids = ids.masked_fill(masked & starts, policy.mask_id)  # one mask token per word: its other pieces go
    removed = (masked & ~starts) | words_drawn(policy.delete_rate) | span_cut(content, starts, policy.span_fraction, draws)
    return close_up(ids, ~removed, policy.pad_id)


def identity(ids: torch.Tensor, policy: TextPolicy, draws: Draws = GLOBAL) -> torch.Tensor:
    return ids
