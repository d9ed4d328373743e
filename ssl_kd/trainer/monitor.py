"""Training-time monitors of unlabelled data that needs ground truth the algorithm never sees."""
from __future__ import annotations

import math

import torch

from ssl_kd.algorithm import StepOutput


def ood_logs(ood: torch.Tensor, out: StepOutput) -> dict[str, torch.Tensor]:
    """Under class mismatch (`ood`: the batch's unlabelled examples of unseen classes): the mean
    per-example weight of unseen- and seen-class examples (`weight/ood_mean`, `weight/id_mean`,
    for any algorithm returning `StepOutput.weights`), and the share of unseen-class examples
    among the pseudo-labels that pass the mask (`train/masked_ood_share`)."""
    logs: dict[str, torch.Tensor] = {}
    if out.weights is not None:
        w = out.weights.detach().float()
        for key, members in (("weight/ood_mean", ood), ("weight/id_mean", ~ood)):
            if members.any():
                logs[key] = w[members].mean()
    if out.mask is not None:
        mask = out.mask.detach().float()
        logs["train/masked_ood_share"] = (mask * ood).sum() / mask.sum().clamp(min=1)
    return logs


# monitors that are undefined on some steps (nan): absent from the logs then, never 0
UNDEFINED_WHEN_NAN = ("train/masked_pseudo_label_acc",)


def defined(scalars: dict[str, float]) -> dict[str, float]:
    """`scalars` without the monitors that were undefined this step (the mask admitted nothing)."""
    return {k: v for k, v in scalars.items() if not (k in UNDEFINED_WHEN_NAN and math.isnan(v))}
