"""torch.compile of the network with a fallback: a run never dies because compilation failed.

torch.compile compiles lazily, at the first forward, and fails there for reasons unrelated to the
model (no C++ compiler for the CPU backend, an unsupported op, a Triton build problem). The
wrapper tries the compiled forward and, when it raises, says why in one line and runs eagerly
from then on; the weights are the same module either way.
"""
from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn


class CompiledWithFallback(nn.Module):
    """Calls `torch.compile(module)`; on its first failure switches to `module` for good."""

    def __init__(self, module: nn.Module, **compile_kwargs: Any) -> None:
        super().__init__()
        self.eager = module
        self.compiled: Any = torch.compile(module, **compile_kwargs)
        self.failed = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
                self.failed = True
                first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
                print(f"warning: torch.compile failed ({type(err).__name__}: {first_line[:200]}); "
                      "continuing without compiling (set train.compile=false to skip the attempt)", file=sys.stderr)
        return self.eager(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        """Everything else (head, feature sizes, ...) is the wrapped network's."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["eager"], name)


def compile_network(module: nn.Module, modality: str) -> CompiledWithFallback:
    """`module` under torch.compile, with dynamic shapes for text (sentence lengths vary by batch)."""
    return CompiledWithFallback(module, dynamic=True if modality == "text" else None)
