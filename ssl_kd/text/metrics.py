"""GLUE's official metrics by name, computed from logits and labels (in percent, like top1).

`accuracy` (SST-2, MNLI, QNLI, RTE, WNLI), `f1` of the positive class plus accuracy (MRPC, QQP),
`matthews` correlation (CoLA), `pearson_spearman` (STS-B: the expected class value against the
label). Correlations are undefined (nan) when one side is constant, as in scipy.
"""
from __future__ import annotations

import torch

from ssl_kd.errors import ConfigError


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean of their positions), as scipy.stats.rankdata."""
    values, inverse, counts = torch.unique(x.double(), return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return ((ends - (counts.double() - 1) / 2))[inverse]


def matthews(pred: torch.Tensor, y: torch.Tensor) -> float:
    return _pearson((pred == 1).double(), (y == 1).double()) if pred.unique().numel() > 1 and y.unique().numel() > 1 else 0.0


def f1_positive(pred: torch.Tensor, y: torch.Tensor) -> float:
    tp = float(((pred == 1) & (y == 1)).sum())
    return 2 * tp / max(1.0, float((pred == 1).sum() + (y == 1).sum()))


def official_metrics(metric: str, logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    pred = logits.argmax(-1)
    accuracy = 100.0 * float((pred == y).double().mean())
    if metric == "accuracy":
        return {"accuracy": accuracy}
    if metric == "f1":
        return {"f1": 100.0 * f1_positive(pred, y), "accuracy": accuracy}
    if metric == "matthews":
        return {"matthews": 100.0 * matthews(pred, y)}
    if metric == "pearson_spearman":
        classes = torch.arange(logits.shape[-1], device=logits.device, dtype=torch.float64)
        expected = (logits.double().softmax(-1) * classes).sum(-1)
        return {"pearson": 100.0 * _pearson(expected, y), "spearman": 100.0 * _pearson(_ranks(expected), _ranks(y))}
    raise ConfigError(f"unknown metric {metric!r}; use accuracy, f1, matthews or pearson_spearman")
