"""Test metrics of a classifier: top-1, top-5 (over 5 classes), balanced accuracy, macro-F1, per-class
accuracy (percent); of a regression head: MSE and the Pearson/Spearman correlations."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm
from torch import nn

from ssl_kd.augment.views import make_view
from ssl_kd.data.types import AugPolicy, SSLData, TextPolicy
from ssl_kd.text.metrics import correlations, official_metrics


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, policy: AugPolicy | None, batch_size: int,
            autocast: Callable[[], Any] = nullcontext,
            rows: slice | torch.Tensor = slice(None), desc: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and features of `model` (in eval mode) over `x[rows]` (a slice or an index tensor),
    reading one batch of rows at a time (`x` may be a host-placed HostTensor larger than the device's memory).
    With `desc`, a progress bar on stderr (a terminal only) counts the batches."""
    was_training = model.training
    model.eval()
    logits, feats = [], []
    if isinstance(rows, slice):
        begin, end, _ = rows.indices(x.shape[0])
        batches = [slice(start, min(start + batch_size, end)) for start in range(begin, end, batch_size)]
    else:
        batches = list(rows.split(batch_size))
    for batch in tqdm(batches, desc=desc, unit="batch", disable=None if desc else True, leave=False):
        with autocast():
            lg, ft = model(make_view("none", x[batch], policy))
        logits.append(lg.float())
        feats.append(ft.float())
    model.train(was_training)
    return torch.cat(logits), torch.cat(feats)


def confusion_matrix(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts of (true class, predicted class)."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=y.device)
    confusion.index_put_((y, logits.argmax(-1)), torch.ones_like(y), accumulate=True)
    return confusion


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Metrics from logits; classes absent from `y` are left out of balanced accuracy and F1."""
    pred = logits.argmax(-1)
    confusion = confusion_matrix(logits, y, num_classes)
    support = confusion.sum(1).float()
    predicted = confusion.sum(0).float()
    tp = confusion.diag().float()
    present = support > 0
    recall = tp / support.clamp(min=1)
    precision = tp / predicted.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    metrics: dict[str, Any] = {
        "top1": 100.0 * (pred == y).float().mean().item(),
        "balanced_acc": 100.0 * recall[present].mean().item(),
        "macro_f1": 100.0 * f1[present].mean().item(),
        "loss": F.cross_entropy(logits, y).item(),
        "per_class": [round(100.0 * r, 2) for r in recall.tolist()],
    }
    if num_classes > 5:  # with 5 classes or fewer top-5 is 100% by construction
        metrics["top5"] = 100.0 * (logits.topk(5, dim=-1).indices == y[:, None]).any(-1).float().mean().item()
    return metrics


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, policy: AugPolicy | None, num_classes: int,
             batch_size: int = 1024, autocast: Callable[[], Any] = nullcontext) -> dict[str, Any]:
    """Metrics of `model` on (x, y) under inference_mode (no autograd bookkeeping at all, unlike
    no_grad); the tensors it makes never leave this function, as inference tensors cannot be
    used in autograd later."""
    with torch.inference_mode():
        logits, _ = predict(model, x, policy, batch_size, autocast)
        return task_metrics(logits, y, num_classes, policy)


def evaluate_data(model: nn.Module, data: SSLData, batch_size: int = 1024,
                  autocast: Callable[[], Any] = nullcontext) -> dict[str, Any]:
    """`evaluate` on `data`'s test split, with its gold scores and task kind (data_metrics)."""
    with torch.inference_mode():
        logits, _ = predict(model, data.test_x, data.policy, batch_size, autocast)
        return data_metrics(logits, data)


def regression_metrics(outputs: torch.Tensor, gold: torch.Tensor) -> dict[str, Any]:
    """A one-output head's scores against the float gold: MSE (the training loss, as `loss`) and
    the correlations GLUE reports."""
    pred, gold = outputs[:, 0].double(), gold.to(outputs.device, torch.float64)
    mse = float((pred - gold).pow(2).mean())
    return {"loss": mse, "mse": mse, **correlations(pred, gold)}


def data_metrics(logits: torch.Tensor, data: SSLData, split: str = "test") -> dict[str, Any]:
    """task_metrics of `logits` on `data`'s "test" or "val" split, with its labels and gold scores."""
    y = data.test_y if split == "test" else data.train_y[data.val_idx]
    return task_metrics(logits, y, data.num_classes, data.policy, data.gold(split), data.task)


def task_metrics(logits: torch.Tensor, y: torch.Tensor, num_classes: int, policy: AugPolicy | TextPolicy | None,
                 gold: torch.Tensor | None = None, task: str = "classification") -> dict[str, Any]:
    """classification_metrics, and for GLUE tasks their official metric by name beside them
    (`gold`: float scores, which correlations are computed against); a regression task's
    regression_metrics (no classes to count)."""
    if task == "regression":
        assert gold is not None, "a regression task is scored against its gold scores"
        return regression_metrics(logits, gold)
    metrics = classification_metrics(logits, y, num_classes)
    if isinstance(policy, TextPolicy):
        metrics.update(official_metrics(policy.metric, logits, y, gold))
    return metrics
