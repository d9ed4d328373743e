"""Counts the operations in a block of code that would make the host wait for a GPU.

On a CUDA device these read device memory back (`.item()`, `bool(t)`, `.tolist()`, `.cpu()`),
or need a data-dependent output size (`nonzero`, boolean-mask indexing, `unique`). The counter
sees them on the CPU too, where they cost nothing, so a CPU test can prove a step free of them:
aten-level ones through a TorchDispatchMode, Python-level readbacks through patched methods.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING_ATEN = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2",
                "unique_consecutive", "unique_dim", "repeat_interleave", "masked_scatter", "bincount")
SYNCING_METHODS = ("tolist", "cpu", "numpy")
MASK_INDEXING = ("index", "index_put", "index_put_", "_index_put_impl_")


class _AtenCounter(TorchDispatchMode):
    def __init__(self, counts: Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.overloadpacket.__name__
        if name in SYNCING_ATEN and not (name == "repeat_interleave" and (kwargs or {}).get("output_size")):
            self.counts[name] += 1
        elif name in MASK_INDEXING and any(i is not None and i.dtype == torch.bool for i in args[1]):
            self.counts["boolean_mask_indexing"] += 1  # x[mask]: the result's size is data-dependent
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_syncs() -> Iterator[Counter]:
    """Yield a Counter of the syncing operations run inside the block, by name."""
    counts: Counter = Counter()
    patches = []
    for method in SYNCING_METHODS:
        original = getattr(torch.Tensor, method)

        def counted(self: torch.Tensor, *args: Any, _name: str = method, _original: Any = original, **kwargs: Any) -> Any:
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        patches.append(mock.patch.object(torch.Tensor, method, counted))
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        stack.enter_context(_AtenCounter(counts))
        yield counts
