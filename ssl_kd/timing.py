"""Step timing helpers for tools/bench.py: occasional work inside a step, timed apart and amortised.

A median over steps would leave out work done once every K steps (KD-AIF's influence refresh);
a mean over a short window would overweight it. Timing that work apart and spreading its median
cost over its period gives the long-run cost per step from a short measurement.
"""
from __future__ import annotations

import statistics
import time
from typing import Any


class OccasionalWork:
    """Times the calls of an algorithm's weighting module's occasional methods (the influence
    refresh, its reference batch and the static fit) inside steps."""

    METHODS = (("", "reference_batch"), ("", "fit_static"), ("weighter", "refresh"))

    def __init__(self, algorithm: object) -> None:
        self.seconds = 0.0
        self.depth = 0  # fit_static calls reference_batch: time only the outermost call
        module = getattr(algorithm, "weights", None)
        self.period = refresh_period(module)
        for owner_name, method in self.METHODS:
            owner = getattr(module, owner_name, None) if owner_name else module
            if owner is not None and hasattr(owner, method):
                setattr(owner, method, self.timed(getattr(owner, method)))

    def timed(self, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            self.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                if not self.depth:
                    self.seconds += time.perf_counter() - start
        return wrapper

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def refresh_period(module: object) -> int:
    """Steps between a weighting module's influence refreshes (1: every step; large: once a run)."""
    weighter = getattr(module, "weighter", None)
    cfg = getattr(weighter, "cfg", None)
    schedule = getattr(cfg, "schedule", "")
    if schedule == "periodic":
        return int(cfg.refresh_every)
    return 1 if schedule == "online" else 10**9


def amortised(steps: list[float], occasional: list[float], period: int) -> float:
    """Median step without the occasional work, plus that work's median cost spread over its period."""
    base = statistics.median(s - o for s, o in zip(steps, occasional))
    costs = [o for o in occasional if o > 0]
    return base + (statistics.median(costs) / period if costs else 0.0)
