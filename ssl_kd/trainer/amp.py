"""The autocast of a run's forward passes: bf16 on CUDA (`train.amp`), and on the CPU only when asked
(`train.cpu_amp`: 1.5x faster text steps on a CPU with AMX-BF16, BENCHMARKS.md issue 21; a CPU without bf16
units would not gain, so it is off by default)."""
from __future__ import annotations

import contextlib

import torch

from ssl_kd.config import TrainConfig


def autocast_for(device: torch.device, train: TrainConfig) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and train.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and train.cpu_amp:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
