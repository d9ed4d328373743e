"""TensorBoard pictures of a run: a confusion matrix per evaluation, a histogram of the teacher's
(or model's) confidence on unlabelled examples (any modality), and at the start the augmented
views: a grid of images, or a table of sentences as the views see them (decoded tokens)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssl_kd.augment.views import make_view
from ssl_kd.data.types import SSLData
from ssl_kd.trainer.evaluate import confusion_matrix, predict

CONFIDENCE_EXAMPLES = 1024  # unlabelled images whose confidence is histogrammed at each evaluation
GRID_EXAMPLES = 8


def confusion_figure(confusion: torch.Tensor, class_names: list[str]) -> Any:
    """A row-normalised confusion matrix (recall per true class) as a matplotlib figure."""
    from matplotlib.figure import Figure

    k = confusion.shape[0]
    rates = (confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)).cpu().numpy()
    side = min(12.0, 2.0 + 0.4 * k)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    if k <= 20:
        names = class_names if len(class_names) == k else [str(i) for i in range(k)]
        ax.set_xticks(range(k), names, rotation=90)
        ax.set_yticks(range(k), names)
        for i in range(k):
            for j in range(k):
                if confusion[i, j]:
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return fig


def confidence(model: nn.Module, data: SSLData, batch_size: int, autocast: Any) -> torch.Tensor | None:
    """Max softmax probability of `model` on a fixed set of unlabelled examples (eval mode)."""
    idx = data.unlabelled_idx[:CONFIDENCE_EXAMPLES]
    if idx.numel() == 0:
        return None
    logits, _ = predict(model, data.train_x[idx], data.policy, batch_size, autocast)
    return logits.softmax(-1).max(-1).values


def views_grid(data: SSLData, names: tuple[str, ...] = ("none", "weak", "strong")) -> torch.Tensor | None:
    """(C, H, W) image in [0, 1]: one row per view of the first labelled images, un-normalised.
    Draws its randomness on a forked RNG, so training batches are unchanged."""
    if data.train_x.ndim != 4 or data.policy is None:
        return None
    x = data.train_x[data.labelled_idx[:GRID_EXAMPLES]]
    mean = torch.tensor(data.policy.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(data.policy.std, device=x.device).view(1, -1, 1, 1)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        rows = [(make_view(name, x, data.policy) * std + mean).clamp(0, 1) for name in names]
    tiles = torch.stack(rows)  # (views, n, C, H, W)
    v, n, c, h, w = tiles.shape
    pad = torch.ones(v, n, c, h + 2, w + 2, device=x.device)
    pad[..., 1:-1, 1:-1] = tiles
    return pad.permute(2, 0, 3, 1, 4).reshape(c, v * (h + 2), n * (w + 2)).cpu()


def views_text(data: SSLData, tokenizer: Any, names: tuple[str, ...] = ("none", "weak", "strong"),
               count: int = 4) -> str | None:
    """A Markdown table of the first labelled sentences as each view sees them (decoded token ids,
    special tokens shown, padding dropped), drawn on a forked RNG so training is unchanged."""
    if data.modality != "text" or data.labelled_idx.numel() == 0:
        return None
    x = data.train_x[data.labelled_idx[:count]]
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        views = {name: make_view(name, x, data.policy) for name in names}
    pad = data.policy.pad_id
    decode = lambda ids: tokenizer.decode([i for i in ids.tolist() if i != pad]).replace("|", "\\|")  # noqa: E731
    rows = ["| example | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i in range(x.shape[0]):
        rows.append(f"| {i} | " + " | ".join(decode(views[name][i]) for name in names) + " |")
    return "\n".join(rows)


def log_evaluation_pictures(logger: Any, step: int, data: SSLData, test_logits: torch.Tensor,
                            scorer: nn.Module, scorer_name: str, batch_size: int, autocast: Any) -> None:
    """The confusion matrix of the evaluated model and the confidence histogram of `scorer`."""
    confusion = confusion_matrix(test_logits, data.test_y, data.num_classes)
    logger.figure("eval/confusion_matrix", confusion_figure(confusion, data.class_names), step)
    conf = confidence(scorer, data, batch_size, autocast)
    if conf is not None:
        logger.histogram(f"eval/{scorer_name}_confidence_unlabelled", conf, step)
