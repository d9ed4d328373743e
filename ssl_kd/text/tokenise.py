"""Tokenise a text family's examples once, with the network's fast tokenizer, and cache the ids.

The cache key is the tokenizer's full definition (its JSON), the maximum length and the texts
themselves, so a second run with the same tokenizer starts at once and any change re-tokenises.
The cache lives in $SSL_KD_CACHE (default ~/.cache/ssl_kd/tokens), never in the data folder,
which may be read-only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

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
    fill_special_tokens(tokenizer)
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"the tokenizer of {net!r} has no pad token nor an end-of-text token to pad with; "
                          "give a checkpoint whose tokenizer defines one")
    tokenizer.padding_side = "right"
    return tokenizer


def fill_special_tokens(tokenizer: Any) -> None:
    """A GPT-2 style tokenizer has no pad token: pad with its end-of-text token, as Hugging Face's
    examples do. Without a mask token the strong view masks with the unknown token, else the pad
    token (the model then does not attend to it: a token cutoff)."""
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.mask_token_id is None:
        fallback = tokenizer.unk_token if tokenizer.unk_token_id is not None else tokenizer.pad_token
        if fallback is not None:
            tokenizer.mask_token = fallback


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


def encode(tokenizer: Any, texts: list[tuple[str, ...]], max_length: int, desc: str = "tokenising",
           chunk: int = 4096) -> torch.Tensor:
    """Token ids (N, longest) right-padded with the pad id; pairs are encoded as the model expects.
    Chunk by chunk, with a progress bar on stderr (67k SST-2 sentences take ~25 s on a CPU)."""
    if not texts:
        return torch.empty(0, 1, dtype=torch.long)
    parts = []
    for start in tqdm(range(0, len(texts), chunk), desc=desc, unit="chunk", disable=None, leave=False):
        part = texts[start:start + chunk]
        first = [t[0] for t in part]
        second = [t[1] for t in part] if len(part[0]) > 1 else None
        enc = tokenizer(first, second, truncation=True, max_length=max_length, padding="longest", return_tensors="pt")
        parts.append(enc["input_ids"].long())
    width = max(p.shape[1] for p in parts)  # as padding="longest" over all of them
    return torch.cat([F.pad(p, (0, width - p.shape[1]), value=int(tokenizer.pad_token_id)) for p in parts])


WORD_START_MARKERS = {"ByteLevel": "\u0120", "Metaspace": "\u2581"}  # GPT-2's "Ġ", SentencePiece's "▁"


def continuation_ids(tokenizer: Any) -> tuple[int, ...]:
    """Ids of the pieces that continue the word before them, read off the vocabulary once: those
    with the model's continuing-subword prefix (WordPiece's "##"), or, for a byte-level or
    SentencePiece pre-tokenizer, those without its word-start marker. () when the tokenizer marks
    neither: each piece is then a word of its own."""
    definition = json.loads(tokenizer.backend_tokenizer.to_str())
    prefix = definition["model"].get("continuing_subword_prefix")
    pre = json.dumps(definition.get("pre_tokenizer"))
    marker = next((m for kind, m in WORD_START_MARKERS.items() if f'"{kind}"' in pre), None)
    if not prefix and not marker:
        return ()
    special = set(tokenizer.all_special_ids)
    return tuple(sorted(i for piece, i in tokenizer.get_vocab().items()
                        if i not in special and (piece.startswith(prefix) if prefix else not piece.startswith(marker))))


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
    (train_x, test_x), _ = load_or_make(path, lambda: (encode(tokenizer, raw.train_text or [], max_length, "tokenising train"),
                                                       encode(tokenizer, raw.test_text or [], max_length, "tokenising test")))
    policy = dataclasses.replace(policy, pad_id=int(tokenizer.pad_token_id), mask_id=int(tokenizer.mask_token_id),
                                 special_ids=tuple(sorted(set(tokenizer.all_special_ids))),
                                 continuation_ids=continuation_ids(tokenizer))
    return dataclasses.replace(raw, train_x=train_x, test_x=test_x), policy
