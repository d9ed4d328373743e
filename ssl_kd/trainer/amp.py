"""The autocast of a run's forward passes: bf16 on CUDA (`train.amp`), and on the CPU only when asked
(`train.cpu_amp`: a CPU with AVX512-BF16/AMX gains from it, one without loses; measure first)."""
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
