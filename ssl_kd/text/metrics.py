"""GLUE's official metrics by name, computed from logits and labels (in percent, like top1).

`accuracy` (SST-2, MNLI, QNLI, RTE, WNLI), `f1` of the positive class plus accuracy (MRPC, QQP),
`matthews` correlation (CoLA), `pearson_spearman` (STS-B's six-class form: the expected class
value against the float gold scores when given, else against the class; the regression form
scores its one output with `correlations`). Correlations are undefined (nan) when one
side is constant, as in scipy.

`run_metric` names the one figure a run is judged on (best.pt, summary.json, sweep tables):
top1 for accuracy tasks (the same number), else the task's official metric; for STS-B the mean
of Pearson and Spearman, as GLUE's overall score averages a task's two figures (GLUE's tables print
both; `METRIC_PARTS` puts them in summary.json beside the mean).
"""
from __future__ import annotations

import torch

from ssl_kd.errors import ConfigError


RUN_METRIC = {"accuracy": "top1", "f1": "f1", "matthews": "matthews", "pearson_spearman": "pearson_spearman"}


def run_metric(metric: str | None) -> str:
    """The metrics.jsonl key a run with official metric `metric` (None: an image run) is judged on."""
    return RUN_METRIC.get(metric or "accuracy", "top1")


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean of their positions), as scipy.stats.rankdata."""
    values, inverse, counts = torch.unique(x.double(), return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return ((ends - (counts.double() - 1) / 2))[inverse]


def correlations(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Pearson and Spearman correlation (percent) of predicted scores with the gold, and their mean."""
    pred, target = pred.double(), target.to(pred.device, torch.float64)
    pearson, spearman = 100.0 * _pearson(pred, target), 100.0 * _pearson(_ranks(pred), _ranks(target))
    return {"pearson": pearson, "spearman": spearman, "pearson_spearman": (pearson + spearman) / 2}


# The figures a run metric is the mean of, reported beside it in summary.json (`last_pearson`).
METRIC_PARTS = {"pearson_spearman": ("pearson", "spearman")}


def matthews(pred: torch.Tensor, y: torch.Tensor) -> float:
    return _pearson((pred == 1).double(), (y == 1).double()) if pred.unique().numel() > 1 and y.unique().numel() > 1 else 0.0


def f1_positive(pred: torch.Tensor, y: torch.Tensor) -> float:
    tp = float(((pred == 1) & (y == 1)).sum())
    return 2 * tp / max(1.0, float((pred == 1).sum() + (y == 1).sum()))


def official_metrics(metric: str, logits: torch.Tensor, y: torch.Tensor,
                     gold: torch.Tensor | None = None) -> dict[str, float]:
    """The task's figures; `gold` (float scores) replaces `y` as the target of the correlations."""
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
        return correlations(expected, gold if gold is not None else y)
    raise ConfigError(f"unknown metric {metric!r}; use accuracy, f1, matthews or pearson_spearman")
