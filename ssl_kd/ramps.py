"""Ramp-up and annealing schedules shared by algorithms: scalars in [0, 1] from training progress.

`progress` arguments are a step divided by a length in steps; every function clips it to [0, 1],
so a schedule holds its final value once its length has passed. A length of 0 means "no ramp".
"""
from __future__ import annotations

import math

from ssl_kd.errors import ConfigError

ANNEAL_SCHEDULES = ("linear", "exp", "log")


def ramp_progress(step: int, length: float) -> float:
    """step / length clipped to [0, 1]; 1.0 when `length` <= 0 (the ramp is switched off)."""
    if length <= 0:
        return 1.0
    return min(max(step / length, 0.0), 1.0)


def sigmoid_rampup(step: int, length: float) -> float:
    """exp(-5 (1 - t)^2): the sigmoid-shaped ramp of Laine & Aila 2017 and Mean Teacher."""
    t = ramp_progress(step, length)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def linear_rampup(step: int, length: float) -> float:
    """t: the linear ramp of Pseudo-Label as in TorchSSL/USB."""
    return ramp_progress(step, length)


def anneal(schedule: str, progress: float) -> float:
    """UDA's training-signal-annealing schedules alpha_t (Xie et al. 2020, section 3.3):
    linear t, exp exp(5 (t - 1)) (releases late), log 1 - exp(-5 t) (releases early)."""
    t = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return t
    if schedule == "exp":
        return math.exp(5.0 * (t - 1.0))
    if schedule == "log":
        return 1.0 - math.exp(-5.0 * t)
    raise ConfigError(f"unknown annealing schedule {schedule!r}; use one of {', '.join(ANNEAL_SCHEDULES)}")
