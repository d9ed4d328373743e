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
    """(the tensors stored at `path`, True) if it exists, else (make()'s, False) after saving them there.

    The tensors come back memory-mapped from the file: the processes of a torchrun job on one node
    share its pages through the page cache instead of holding a copy each, and a set larger than
    the host's memory is paged in from disk.
    """
    hit = path.exists()
    if not hit:
        value = make()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(value, tmp)
        tmp.replace(path)
        del value  # the mapped copy replaces it
    try:
        return torch.load(path, weights_only=True, mmap=True), hit
    except Exception as err:  # a truncated or foreign file fails in many ways
        raise DataError(f"the cache file {path} is unreadable ({type(err).__name__}: {err}); delete it "
                        f"and rerun to rebuild it.") from err
