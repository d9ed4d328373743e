"""Text views on token ids (N,L), batched on the ids' device: the text half of the view registry.

`weak` is the sentence as is (no meaning-preserving token-level change is weak enough to be
worth the noise); `strong` masks tokens with the tokenizer's mask token, deletes tokens and cuts
one contiguous span (Shen et al. 2020, "A simple but tough-to-beat data augmentation approach":
token and span cutoff, done here by removing the tokens). Special tokens and padding never change;
removed tokens close up so padding stays at the right. No back-translation: no translation model
can be had offline.
"""
from __future__ import annotations

import torch

from ssl_kd.data.draws import GLOBAL, Draws
from ssl_kd.data.types import TextPolicy


def content_mask(ids: torch.Tensor, policy: TextPolicy) -> torch.Tensor:
    """True at real word pieces (not special tokens, not padding)."""
    special = torch.tensor(policy.special_ids, dtype=ids.dtype).to(ids.device, non_blocking=True)
    return ~torch.isin(ids, special)


def close_up(ids: torch.Tensor, keep: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Drop the tokens where `keep` is false, shifting the rest left in order and padding the tail."""
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    out = ids.gather(1, order)
    kept = keep.sum(1, keepdim=True)
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    return out.masked_fill(positions >= kept, pad_id)


def span_cut(content: torch.Tensor, fraction: float, draws: Draws = GLOBAL) -> torch.Tensor:
    """A random contiguous span of ceil(fraction * n) content tokens per row (n: the row's content count)."""
    n = content.sum(1)
    span = torch.ceil(n.float() * fraction).long().clamp(max=n) if fraction > 0 else torch.zeros_like(n)
    start = (draws.rand(tuple(n.shape), n.device) * (n - span + 1).float()).long()
    rank = content.long().cumsum(1) - 1  # position among the row's content tokens
    return content & (rank >= start[:, None]) & (rank < (start + span)[:, None])


def strong_text(ids: torch.Tensor, policy: TextPolicy, draws: Draws = GLOBAL) -> torch.Tensor:
    """Masking, then deletion, then span cutoff, at the policy's rates (random per token/row)."""
    content = content_mask(ids, policy)
    masked = content & (draws.rand(tuple(ids.shape), ids.device) < policy.mask_rate)
    ids = ids.masked_fill(masked, policy.mask_id)
    deleted = content & (draws.rand(tuple(ids.shape), ids.device) < policy.delete_rate)
    keep = ~(deleted | span_cut(content, policy.span_fraction, draws))
    return close_up(ids, keep, policy.pad_id)


def identity(ids: torch.Tensor, policy: TextPolicy, draws: Draws = GLOBAL) -> torch.Tensor:
    return ids
