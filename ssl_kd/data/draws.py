"""Where a view's random numbers come from: torch's global RNG, or a stream of each example's own.

Every random draw of the view functions has the batch as its first dimension (one op, magnitude,
crop offset ... per image or per token). `Draws` takes them from torch's global RNG on the device;
`KeyedDraws` makes row i's numbers a hash of that example's key and a per-call counter only, so
the views of an example do not depend on which other examples share its batch. The trainer keys
each example by (seed, step, view, position in the global batch, dataset index): a torchrun rank
then augments its own 1/N of the batch and draws exactly what one process draws for those
examples, and a resumed run draws what the uninterrupted one drew.

The hash is integer arithmetic (Wellons' lowbias32 finaliser), so the random numbers do not
depend on the device either (the float ops applying them may differ in the last bits; tested on
the CPU only).
"""
from __future__ import annotations

import zlib

import torch

MASK32 = 0xFFFFFFFF


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash, elementwise on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32  # int64 products may wrap; their low 32 bits are exact
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def mix_in(h: torch.Tensor, value: int | torch.Tensor) -> torch.Tensor:
    """Fold `value` (an int, used as a scalar operand: no host-to-device copy, which would wait
    for the device, or an int64 tensor) into the hash state `h`."""
    return mix32(h ^ (value & MASK32))


def stream_id(name: str) -> int:
    """A stable number for a view stream ("unlabelled/strong"): crc32, the same in every process
    (Python's str hash is salted per process)."""
    return zlib.crc32(name.encode())


def example_keys(seed: int, step: int, stream: str, idx: torch.Tensor, offset: int) -> torch.Tensor:
    """Keys (n,) of a rank's part of a global batch: examples `idx` (dataset indices, on the
    device) at global positions offset, offset + 1, ...; the position tells apart an index drawn
    twice in one batch (a split smaller than the batch)."""
    positions = torch.arange(offset, offset + idx.shape[0], device=idx.device, dtype=torch.int64)
    h = mix_in(mix_in(mix_in(mix32(torch.full_like(positions, seed & MASK32)), step), stream_id(stream)), positions)
    return mix_in(h, idx.to(torch.int64))


class Draws:
    """Random numbers from torch's global RNG on the device (the tests' and pictures' source)."""

    def rand(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform in [0, 1)."""
        return torch.rand(shape, device=device, dtype=dtype)

    def randint(self, low: int, high: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Uniform integers in [low, high)."""
        return torch.randint(low, high, shape, device=device)


GLOBAL = Draws()


class KeyedDraws(Draws):
    """Row i's numbers are a function of keys[i], the call's rank among this object's calls and
    the element's place in the row, nothing else."""

    def __init__(self, keys: torch.Tensor) -> None:
        self.keys = keys.to(torch.int64)
        self.calls = 0

    def _bits(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if shape[0] != self.keys.shape[0]:
            raise ValueError(f"a draw of shape {tuple(shape)} for {self.keys.shape[0]} keyed examples; the first dimension is the batch")
        self.calls += 1
        inner = 1
        for size in shape[1:]:
            inner *= size
        element = torch.arange(inner, device=device, dtype=torch.int64)
        h = mix_in(self.keys.to(device), self.calls)[:, None]
        return mix32(h ^ element).view(shape)

    def rand(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return ((self._bits(shape, device) >> 8).to(torch.float64) / 2.0**24).to(dtype)  # 24 bits: exact in float32, < 1

    def randint(self, low: int, high: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return low + (self._bits(shape, device) % (high - low))  # the modulo bias is below 2^-24 for these small ranges
