"""Tokenise a text family's examples once, with the network's fast tokenizer, and cache the ids.

The cache key is the tokenizer's full definition (its JSON), the maximum length and the texts
themselves, so a second run with the same tokenizer starts at once and any change re-tokenises.
The cache lives in $SSL_KD_CACHE (default ~/.cache/ssl_kd/tokens), never in the data folder,
which may be read-only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from ssl_kd.data.cache import CACHE_ENV, cache_root, load_or_make
from ssl_kd.data.family import RawData
from ssl_kd.data.types import TextPolicy
from ssl_kd.errors import ConfigError
from ssl_kd.text.hub import is_hf_name, parse_hf_name, require_transformers, tokenizer_source


def cache_dir() -> Path:
    """$SSL_KD_CACHE itself (older runs' caches stay valid), else ~/.cache/ssl_kd/tokens."""
    return Path(os.environ.get(CACHE_ENV, "") or cache_root() / "tokens").expanduser()


def load_tokenizer(net: str) -> Any:
    """The fast tokenizer of `hf:` network `net` (local folders never touch the network)."""
    require_transformers()
    from transformers import AutoTokenizer

    spec = parse_hf_name(net)
    tokenizer = AutoTokenizer.from_pretrained(spec.source, use_fast=True, local_files_only=spec.is_local)
    if not tokenizer.is_fast:
        raise ConfigError(f"network {net!r} has no fast tokenizer; text runs need a tokenizer.json (a fast tokenizer)")
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise ConfigError(f"the tokenizer of {net!r} lacks a mask or pad token; the text views need both")
    tokenizer.padding_side = "right"
    return tokenizer


def check_same_tokenizer(teacher_net: str, student_net: str) -> None:
    """A text teacher reads the student's token ids, so both networks must share one tokenizer
    (same vocabulary and special tokens); image networks have none and pass."""
    hf = (is_hf_name(teacher_net), is_hf_name(student_net))
    if not any(hf) or (all(hf) and tokenizer_source(teacher_net) == tokenizer_source(student_net)):
        return
    if not all(hf) or load_tokenizer(teacher_net).backend_tokenizer.to_str() != load_tokenizer(student_net).backend_tokenizer.to_str():
        raise ConfigError(f"teacher {teacher_net!r} and student {student_net!r} do not share a tokenizer, so the teacher "
                          "would read the student's token ids as other words; distil into a student made from the "
                          f"teacher's checkpoint (e.g. {teacher_net.split(':layers=')[0]}:layers=2) or train a teacher "
                          "with the student's tokenizer")


def encode(tokenizer: Any, texts: list[tuple[str, ...]], max_length: int) -> torch.Tensor:
    """Token ids (N, longest) right-padded with the pad id; pairs are encoded as the model expects."""
    if not texts:
        return torch.empty(0, 1, dtype=torch.long)
    first = [t[0] for t in texts]
    second = [t[1] for t in texts] if len(texts[0]) > 1 else None
    enc = tokenizer(first, second, truncation=True, max_length=max_length, padding="longest", return_tensors="pt")
    return enc["input_ids"].long()


def _key(tokenizer: Any, max_length: int, raw: RawData) -> str:
    h = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    h.update(f"|{max_length}|".encode())
    for split in (raw.train_text, raw.test_text):
        for example in split or ():
            h.update("\x1f".join(example).encode())
            h.update(b"\x1e")
        h.update(b"\x1d")
    return h.hexdigest()[:24]


def tokenise_raw(raw: RawData, policy: TextPolicy, net: str, max_length: int) -> tuple[RawData, TextPolicy]:
    """`raw` with `train_x`/`test_x` filled by token ids, and `policy` with the tokenizer's ids."""
    tokenizer = load_tokenizer(net)
    path = cache_dir() / f"{_key(tokenizer, max_length, raw)}.pt"
    (train_x, test_x), _ = load_or_make(path, lambda: (encode(tokenizer, raw.train_text or [], max_length),
                                                       encode(tokenizer, raw.test_text or [], max_length)))
    policy = dataclasses.replace(policy, pad_id=int(tokenizer.pad_token_id), mask_id=int(tokenizer.mask_token_id),
                                 special_ids=tuple(sorted(set(tokenizer.all_special_ids))))
    return dataclasses.replace(raw, train_x=train_x, test_x=test_x), policy
