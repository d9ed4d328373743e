"""Derived tensors (token ids, decoded images) cached once in $SSL_KD_CACHE, never in the data folder,
which may be read-only. Writes are atomic, so parallel runs never read half a file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from ssl_kd.errors import DataError

CACHE_ENV = "SSL_KD_CACHE"


def cache_root() -> Path:
    """$SSL_KD_CACHE, else ~/.cache/ssl_kd."""
    return Path(os.environ.get(CACHE_ENV, "") or Path.home() / ".cache" / "ssl_kd").expanduser()


def load_or_make(path: Path, make: Callable[[], Any]) -> tuple[Any, bool]:
    """(the tensors stored at `path`, True) if it exists, else (make(), False) after saving them there."""
    if path.exists():
        try:
            return torch.load(path, weights_only=True), True
        except Exception as err:  # a truncated or foreign file fails in many ways
            raise DataError(f"the cache file {path} is unreadable ({type(err).__name__}: {err}); delete it "
                            f"and rerun to rebuild it.") from err
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(value, tmp)
    tmp.replace(path)
    return value, False
