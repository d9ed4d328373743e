"""Which training examples helped or hurt a model: ranking by influence and a report with pictures.

The ranking reuses the head-restricted machinery of the weighter (one solve, then every example's
score in chunks of matrix products, so the whole training set takes about as long as its forward
pass): training examples are scored against the mean loss of the reference, the validation split
(the labelled training split when the run has none: then the ranked labelled examples are part
of their own reference), or against one chosen test example. Labelled examples are scored with
their (possibly flipped) labels, the others with the model's own predictions as pseudo-labels
(what FixMatch-style training used; a teacher-student run used its teacher's targets instead).
Raw scores separate whole classes, so the report ranks by the score z-scored within each target
class (for one test example: by the raw score) and also lists each example's loss, which finds flipped labels better (BENCHMARKS.md, issue 26).
"""
from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ssl_kd.data.types import SSLData, TextPolicy
from ssl_kd.errors import ConfigError
from ssl_kd.influence.errors import InfluenceError
from ssl_kd.influence.weighter import InfluenceConfig, InfluenceWeighter, head_logits
from ssl_kd.influence.weights import finalise
from ssl_kd.trainer.evaluate import predict

SPLITS = ("all", "labelled", "unlabelled")
SCORE_CHUNK_ELEMENTS = 1 << 24  # rows x head parameters per scoring chunk: 128 MB of float64 gradients (relatif)


@dataclass
class Ranking:
    """Every ranked training example's influence; rows in the order of `indices`."""

    indices: Tensor  # dataset indices into data.train_x
    scores: Tensor  # I(z); < 0 helps
    weights: Tensor  # the weighter's map of the scores, mean 1
    labels: Tensor  # stored labels (flipped ones included; ground truth for unlabelled data)
    targets: Tensor  # what the loss used: the label if labelled, else the pseudo-label
    pseudo_labels: Tensor  # the model's prediction
    labelled: Tensor  # bool
    flipped: Tensor  # bool: label flipped by the noise probe
    loss: Tensor  # the model's cross-entropy on the target (what a loss ranking sorts by)
    reference: str  # the split (or test example) whose loss the influence is measured on
    scored: str  # the training examples ranked
    # order by class_z (against a split's loss); for one test example the raw score is the explanation
    # (the training examples of the class it was predicted as helped it), so it orders by that
    within_class: bool = True

    @property
    def class_z(self) -> Tensor:
        """Each score as a z-score among the ranked examples of its target class: raw influence sorts
        whole classes apart (one class's examples all help, another's all hurt), so only a within-class
        rank can point at a mislabelled example."""
        z = torch.zeros_like(self.scores)
        for c in self.targets.unique().tolist():
            rows = self.targets == c
            group = self.scores[rows]
            z[rows] = (group - group.mean()) / group.std(unbiased=False).clamp_min(1e-30) if rows.sum() > 1 else 0.0
        return z

    def order(self) -> Tensor:
        """Row positions from most helpful to most harmful: by class_z (ties by score) if `within_class`, else by score."""
        by_score = torch.argsort(self.scores, stable=True)
        return by_score[torch.argsort(self.class_z[by_score], stable=True)] if self.within_class else by_score

    @property
    def ordered_by(self) -> str:
        return "influence z-scored within each target class (z < 0 helps)" if self.within_class else "influence (I < 0 helps)"


def training_split(data: SSLData, split: str) -> tuple[Tensor, Tensor]:
    """(dataset indices, labelled mask) of the examples to rank."""
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is unknown; choose one of {', '.join(SPLITS)}")
    labelled = data.labelled_idx.cpu()
    pools = {"labelled": [labelled], "unlabelled": [data.unlabelled_idx.cpu()], "all": [labelled, data.unlabelled_idx.cpu()]}
    idx = torch.unique(torch.cat(pools[split]))
    if split == "unlabelled":
        idx = idx[~torch.isin(idx, labelled)]
    if idx.numel() == 0:
        raise InfluenceError(f"the {split!r} split of {data.name} is empty; choose another --split")
    return idx, torch.isin(idx, labelled)


def rank_training_examples(
    model: nn.Module, data: SSLData, test_index: int | None = None, split: str = "all",
    cfg: InfluenceConfig | None = None, limit: int = 0, batch_size: int = 512, seed: int = 0,
    progress: bool = False, chunk_size: int = 0,
) -> Ranking:
    """Score training examples by influence on the validation split (or the labelled split if the
    dataset has none), or on test example `test_index`. `limit` > 0 ranks a seeded random subset.
    Inputs go through the evaluation path (`predict`: un-augmented, normalised, eval mode).
    One solve (H from every ranked example, g from the reference), then the scores in chunks of
    `chunk_size` rows (0: as many as keep a chunk's per-example head gradients near 128 MB);
    `progress` shows bars on a terminal's stderr."""
    if test_index is not None:
        if not 0 <= test_index < data.test_x.shape[0]:
            raise ConfigError(f"--test-index {test_index} is out of range: {data.name} has {data.test_x.shape[0]} test examples")
        ref_source, ref_rows = data.test_x, torch.tensor([test_index])
        ref_y = data.test_y[test_index:test_index + 1]
    else:
        ref_rows = (data.val_idx if data.val_idx.numel() > 0 else data.labelled_idx).cpu()
        ref_source, ref_y = data.train_x, data.train_y[ref_rows.to(data.train_y.device)]
    idx, labelled = training_split(data, split)
    if 0 < limit < idx.numel():
        keep = torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        idx, labelled = idx[keep], labelled[keep]
    if not hasattr(model, "head") or not isinstance(model.head, nn.Linear):
        raise InfluenceError("the model has no `head` nn.Linear: explanations need a network following ssl_kd.nets.base.Classifier")
    device = next(model.parameters()).device
    logits, features = _forward(model, data.train_x, idx, data.policy, batch_size, "features" if progress else "", device)
    ref_logits, ref_features = _forward(model, ref_source, ref_rows, data.policy, batch_size, "reference" if progress else "", device)
    if test_index is not None:
        reference = (f"test example {test_index} (label {_name(data, int(ref_y[0]))}, "
                     f"predicted {_name(data, int(ref_logits[0].argmax()))})")
    elif data.val_idx.numel() > 0:
        reference = f"the validation split ({ref_rows.numel():,} examples)"
    else:
        # a labelled example is then part of its own reference: a flipped label lowers its own loss, so it looks helpful
        reference = (f"the labelled training split ({ref_rows.numel():,} examples; the run has no validation split, so "
                     "labelled examples are scored against a loss that includes their own)")
    scored = _scored(int(labelled.sum()), int((~labelled).sum()))
    labels = data.train_y[idx.to(data.train_y.device)].to(device)
    pseudo = logits.argmax(1)
    targets = torch.where(labelled.to(device), labels, pseudo)
    # one solve for a set scored once: no schedule, warm-up, or smoothing and accumulation across visits
    icfg = dataclasses.replace(cfg or InfluenceConfig(), schedule="periodic", warmup_steps=0, ema=0.0, accumulate=False)
    weighter = InfluenceWeighter(icfg)
    weighter.refresh(model.head, ref_features, ref_y.to(device), features, 0)
    scores = _scores(weighter, model.head, features, targets, chunk_size, progress)
    weighter.reference = scores  # the map's scale: the ranked set's own scores
    weights = finalise(weighter.preview(scores, targets, idx.to(device)), icfg.renormalise, icfg.min_weight, icfg.max_weight)
    flipped = torch.zeros_like(labelled)
    if data.noisy_idx is not None:
        flipped = torch.isin(idx, data.noisy_idx.cpu())
    loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    return Ranking(idx, scores.cpu(), weights.cpu(), labels.cpu(), targets.cpu(), pseudo.cpu(), labelled, flipped, loss.cpu(),
                   reference, scored, within_class=test_index is None)


def _scored(labelled: int, unlabelled: int) -> str:
    """"1,000 labelled training examples", "2,000 unlabelled (pseudo-labelled) training examples", or both."""
    parts = ([f"{labelled:,} labelled"] if labelled else []) + ([f"{unlabelled:,} unlabelled (pseudo-labelled)"] if unlabelled else [])
    return f"{' and '.join(parts)} training examples"


def _forward(model: nn.Module, x: Any, rows: Tensor, policy: Any, batch_size: int, desc: str,
             device: torch.device) -> tuple[Tensor, Tensor]:
    """Logits and features of `model` over x[rows], one batch at a time (`predict`), in `rows`' order.
    Text is run shortest first: the network trims each batch to its longest sentence, and in index
    order nearly every batch of a large set holds a long one (on SST-2 most sentences are short)."""
    if isinstance(x, Tensor) and x.device != device:  # data kept elsewhere than the model: bring the rows over
        x, rows = x[rows.to(x.device)].to(device), torch.arange(rows.numel())
    rows = rows.to(x.device)
    if not isinstance(policy, TextPolicy) or rows.numel() <= batch_size:
        return predict(model, x, policy, batch_size, rows=rows, desc=desc)
    lengths = torch.cat([(x[part] != policy.pad_id).sum(1).cpu() for part in rows.split(1 << 16)])
    order = torch.argsort(lengths, stable=True).to(rows.device)
    logits, features = predict(model, x, policy, batch_size, rows=rows[order], desc=desc)
    back = torch.argsort(order).to(logits.device)
    return logits[back], features[back]


def _scores(weighter: InfluenceWeighter, head: nn.Linear, features: Tensor, targets: Tensor, chunk_size: int,
            progress: bool) -> Tensor:
    """Every example's score from the weighter's last solve, a chunk of rows at a time (memory stays
    bounded: relative=relatif forms each row's (C x D+1) head gradient)."""
    n, params = features.shape[0], head.weight.numel() + (0 if head.bias is None else head.bias.numel())
    chunk = chunk_size or max(256, SCORE_CHUNK_ELEMENTS // params)
    starts = range(0, n, chunk)
    return torch.cat([weighter.scores(features[i:i + chunk], head_logits(head, features[i:i + chunk], torch.float32),
                                      targets[i:i + chunk])
                      for i in tqdm(starts, desc="scoring", unit="chunk", disable=None if progress and len(starts) > 1 else True,
                                    leave=False)])


def _name(data: SSLData, label: int) -> str:
    """Class name of `label`; "unseen" for -1, the label of an unseen class's image under data.unlabelled_mismatch."""
    if label < 0:
        return "unseen"
    return data.class_names[label] if label < len(data.class_names) else str(label)


def title_of(ranking: Ranking) -> str:
    """What was ranked against what: the scored examples and the reference split, both named."""
    return f"Influence of {ranking.scored} on the loss of {ranking.reference}"


def _grid_figure(data: SSLData, ranking: Ranking, top: int) -> Any:
    """Most helpful (top block) and most harmful (bottom block) images with their annotations."""
    from matplotlib.figure import Figure

    order, z = ranking.order(), ranking.class_z
    k = min(top, order.numel())
    blocks = [("most helpful", order[:k]), ("most harmful", order.flip(0)[:k])]
    cols = min(8, k)
    rows_per_block = math.ceil(k / cols)
    fig = Figure(figsize=(2.0 * cols, 2.6 * 2 * rows_per_block + 0.6))
    fig.suptitle(f"{title_of(ranking)}; ranked by {ranking.ordered_by}", fontsize=9)
    for b, (title, rows) in enumerate(blocks):
        for j, r in enumerate(rows.tolist()):
            ax = fig.add_subplot(2 * rows_per_block, cols, b * rows_per_block * cols + j + 1)
            img = data.train_x[int(ranking.indices[r])].cpu()
            ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray" if img.shape[0] == 1 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            kind = "label" if ranking.labelled[r] else "true"
            flip = " FLIPPED" if ranking.flipped[r] else ""
            ax.set_title(f"{title if j == 0 else ''}\n#{int(ranking.indices[r])} {kind} {_name(data, int(ranking.labels[r]))}"
                         f" pl {_name(data, int(ranking.pseudo_labels[r]))}{flip}\nz={float(z[r]):.2f}"
                         f" loss={float(ranking.loss[r]):.2f}\nI={float(ranking.scores[r]):.1e}"
                         f" w={float(ranking.weights[r]):.2f}", fontsize=7, loc="left")
    fig.tight_layout()
    return fig


def _histogram_figure(ranking: Ranking) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    groups = [("labelled", ranking.labelled & ~ranking.flipped), ("pseudo-labelled", ~ranking.labelled),
              ("flipped label", ranking.flipped)]
    present = [(name, mask) for name, mask in groups if mask.any()]
    ax.hist([ranking.weights[mask].numpy() for _, mask in present], bins=40, stacked=True,
            label=[f"{name} ({int(mask.sum())})" for name, mask in present])
    ax.set_xlabel("influence weight")
    ax.set_ylabel("examples")
    ax.set_title(f"weights of {ranking.scored}\nfrom their influence on the loss of {ranking.reference}", fontsize=8)
    ax.legend()
    fig.tight_layout()
    return fig


# class_z (or, for one test example, score) orders the rows; score is the raw influence; loss, the model's cross-entropy on the target,
# is the baseline for finding mislabelled examples (it ranks flipped labels better: BENCHMARKS.md, issue 26)
CSV_COLUMNS = ["rank", "index", "split", "label", "target", "pseudo_label", "flipped", "class_z", "score", "loss", "weight"]


def ranked_rows(data: SSLData, ranking: Ranking) -> list[list[Any]]:
    """One row of CSV_COLUMNS per ranked example, most helpful first (each column read from its
    tensor once: per-element tensor reads cost seconds on a whole training set)."""
    order = ranking.order()
    columns = [getattr(ranking, name)[order].tolist() for name in
               ("indices", "labelled", "labels", "targets", "pseudo_labels", "flipped", "class_z", "scores", "loss", "weights")]
    return [[rank, index, "labelled" if labelled else "unlabelled", _name(data, label), _name(data, target),
             _name(data, pseudo), int(flipped), f"{z:.3f}", f"{score:.6e}", f"{loss:.4f}", f"{weight:.6f}"]
            for rank, (index, labelled, label, target, pseudo, flipped, z, score, loss, weight) in enumerate(zip(*columns))]


def write_csv(path: Path, data: SSLData, ranking: Ranking) -> None:
    """One row per ranked example, most helpful first."""
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(CSV_COLUMNS)
        out.writerows(ranked_rows(data, ranking))


def write_report(
    model: nn.Module, data: SSLData, out_dir: str | Path, test_index: int | None = None, top: int = 32,
    split: str = "all", writer: Any = None, cfg: InfluenceConfig | None = None, limit: int = 0,
    batch_size: int = 512, progress: bool = False,
) -> dict[str, Path]:
    """Rank, then write a CSV of every example, a weight histogram, and (for images) a PNG grid or
    (for text) a sentence CSV and Markdown table of the `top` most helpful and most harmful examples into `out_dir`; the same figures go to a
    TensorBoard SummaryWriter if given; `progress`: bars while ranking (a terminal only). Returns the written paths by kind."""
    if top < 1:
        raise ConfigError(f"--top {top}: show at least one example per side")
    ranking = rank_training_examples(model, data, test_index, split, cfg, limit, batch_size, progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = "val" if test_index is None else f"test{test_index}"
    paths = {"csv": out / f"influence_{tag}.csv", "histogram": out / f"weights_{tag}.png"}
    write_csv(paths["csv"], data, ranking)
    figures = {"histogram": _histogram_figure(ranking)}
    if data.train_x.dim() == 4 and data.train_x.dtype == torch.uint8:
        figures["grid"] = _grid_figure(data, ranking, top)
        paths["grid"] = out / f"influence_{tag}.png"
    if data.train_text is not None:  # text: tables of sentences instead of an image grid
        from ssl_kd.text.explain import write_sentence_report

        paths.update(write_sentence_report(data, ranking, out, tag, top))
    for kind, fig in figures.items():
        fig.savefig(paths[kind], dpi=110)
        if writer is not None:
            writer.add_figure(f"explain/{tag}/{kind}", fig)
    if writer is not None:
        writer.add_histogram(f"explain/{tag}/weights", ranking.weights)
        writer.add_histogram(f"explain/{tag}/scores", ranking.scores)
        writer.flush()
    return paths
