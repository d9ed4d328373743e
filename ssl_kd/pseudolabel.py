"""A trained run's pseudo-labels for its unlabelled pool (`tools/predict.py RUN --unlabelled`): one
row per unlabelled example with what identifies it, the predicted class, its probability and, for a
run trained with influence weights, the example's influence score and weight."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ssl_kd.data.types import SSLData
from ssl_kd.errors import ConfigError
from ssl_kd.export import chosen_model, predict_outputs


def pool_indices(data: SSLData) -> Tensor:
    """The unlabelled pool without the labelled examples (the FixMatch protocol's pool holds them too), sorted."""
    pool = data.unlabelled_idx.cpu()
    pool = torch.unique(pool[~torch.isin(pool, data.labelled_idx.cpu())])
    if pool.numel() == 0:
        raise ConfigError(f"{data.name} has no unlabelled examples to label; train on a dataset with an unlabelled pool")
    return pool


def example_columns(data: SSLData, idx: Tensor) -> dict[str, list[Any]]:
    """The columns that say which example a row is: its dataset index, the user's own name for it
    (an image's path, or `file:record` of a text row) when the data is the user's, and its text."""
    columns: dict[str, list[Any]] = {"index": idx.tolist()}
    if data.train_ids is not None:
        columns["id"] = [data.train_ids[i] for i in columns["index"]]
    if data.train_text is not None:
        columns["text"] = [data.train_text[i] for i in columns["index"]]
    return columns


def influence_columns(run: Any, idx: Tensor, progress: bool) -> dict[str, list[float]]:
    """Influence score and weight of each pool example, as tools/explain.py ranks them (the model's
    own predictions as targets, against the validation split or else the labelled one), for a run
    trained with weights.kind=influence; empty for any other run."""
    if run.cfg.weights.kind != "influence":
        return {}
    from ssl_kd.influence.explain import rank_training_examples
    from ssl_kd.weighting.influence import run_influence_config

    ranking = rank_training_examples(chosen_model(run), run.data, split="unlabelled", cfg=run_influence_config(run.cfg),
                                     progress=progress)
    assert torch.equal(ranking.indices, idx), "the ranked pool is the pool labelled"
    return {"influence": [float(f"{s:.6e}") for s in ranking.scores.tolist()],
            "weight": [round(w, 6) for w in ranking.weights.tolist()]}


def label_pool(run: Any, batch_size: int, min_confidence: float = 0.0,
               progress: bool = True) -> tuple[list[str], list[dict[str, Any]]]:
    """(the column names, one row per unlabelled example whose predicted class has at least
    `min_confidence` probability)."""
    data = run.data
    if data.is_regression:
        raise ConfigError(f"{run.cfg.train.dataset} is a regression task: its pool has scores, not class labels to write")
    idx = pool_indices(data)
    device = next(run.model.parameters()).device
    probs = predict_outputs(chosen_model(run), data.train_x[idx.to(data.train_x.device)].to(device), data.policy,
                            batch_size).softmax(-1).cpu()
    confidence, predicted = probs.max(1)
    classes = data.class_names or [str(i) for i in range(data.num_classes)]
    columns = {**example_columns(data, idx),
               "prediction": [classes[c] for c in predicted.tolist()],
               "probability": [round(p, 6) for p in confidence.tolist()],
               **influence_columns(run, idx, progress)}
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    # filtered on the probability as written, so a row showing p is kept by --min-confidence p
    return list(columns), [row for row in rows if row["probability"] >= min_confidence]
