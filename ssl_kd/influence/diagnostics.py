"""Does a weight track what it should? ROC-AUCs and rank correlations of per-example weights
against the truth a benchmark knows (is the pseudo-label correct, is the example from an unseen
class), next to teacher confidence as the baseline a weight has to beat."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def roc_auc(values: Tensor, positive: Tensor) -> float:
    """ROC-AUC of `values` ranking `positive` examples first; NaN when one class is absent."""
    from sklearn.metrics import roc_auc_score

    positive = positive.bool().cpu()
    if positive.all() or not positive.any():
        return math.nan
    return float(roc_auc_score(positive.numpy(), values.detach().double().cpu().numpy()))


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation (NaN for fewer than 3 values or a constant input)."""
    from scipy.stats import spearmanr

    if a.numel() < 3:
        return math.nan
    rho = spearmanr(a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy())[0]
    return float(rho)


def weight_diagnostics(scores: Tensor, weights: Tensor, confidence: Tensor, agreement: Tensor, correct: Tensor | None,
                       ood: Tensor | None = None, previous_scores: Tensor | None = None,
                       low_confidence: float = 0.95) -> dict[str, float]:
    """Figures for one probe set of pseudo-labelled examples.

    `scores` are influence scores (I < 0 helps), `weights` what the run would give them,
    `confidence` the teacher's maximum probability, `agreement` the student's probability of the
    pseudo-label, `correct` whether the pseudo-label is right (None without ground truth: the
    correct_* keys are then absent), `ood` whether the example comes
    from a class the labelled set lacks, `previous_scores` the same examples under the previous
    solve. Keys (all floats, NaN where undefined):
    - correct_auc_{weight,score,confidence,agreement}: ROC-AUC at ranking correct pseudo-labels first;
    - low_conf_correct_auc_{weight,score,confidence}: the same among examples below `low_confidence`,
      where a confidence mask cannot see;
    - ood_auc_{weight,confidence}: ROC-AUC of the low value at finding unseen-class examples;
    - stability: Spearman of the scores under this solve and the previous one;
    - disagreement_spearman: Spearman of |I| and 1 - agreement (how much of the score is just the
      student disagreeing with its target).
    """
    helpful = -scores
    out = {"disagreement_spearman": spearman(scores.abs(), 1 - agreement)}
    low = confidence < low_confidence
    if correct is not None:
        out.update({"correct_auc_weight": roc_auc(weights, correct), "correct_auc_score": roc_auc(helpful, correct),
                    "correct_auc_confidence": roc_auc(confidence, correct), "correct_auc_agreement": roc_auc(agreement, correct)})
        for name, values in (("weight", weights), ("score", helpful), ("confidence", confidence)):
            out[f"low_conf_correct_auc_{name}"] = roc_auc(values[low], correct[low]) if low.sum() > 1 else math.nan
    if ood is not None:
        out["ood_auc_weight"] = roc_auc(-weights, ood)
        out["ood_auc_confidence"] = roc_auc(-confidence, ood)
        out["weight_ood_mean"] = float(weights[ood].mean()) if ood.any() else math.nan
        out["weight_id_mean"] = float(weights[~ood].mean()) if (~ood).any() else math.nan
    if previous_scores is not None:
        out["stability"] = spearman(scores, previous_scores)
    out["low_conf_share"] = float(low.float().mean())
    return {k: round(v, 4) for k, v in out.items()}
