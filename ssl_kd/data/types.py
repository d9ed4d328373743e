"""The data contract between dataset builders, the sampler/view layer and the algorithms."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch


PAD_MODES = {"reflect": "reflect", "zeros": "constant"}  # AugPolicy.pad_mode -> torch.nn.functional.pad's mode
# What a dataset's model predicts: one of `num_classes` classes (trained on labels), or one float
# score (trained with MSE on the gold scores; the classes are then only bins of the score, used to
# stratify the splits).
TASK_KINDS = ("classification", "regression")
# The label of a user's unlabelled example: no ground truth at all. Distinct from -1
# (ssl_kd.data.mismatch.UNSEEN), a benchmark example of a class the model does not have.
NO_LABEL = -2


@dataclass(frozen=True)
class AugPolicy:
    """How a dataset's images are augmented and normalised (never depends on the algorithm)."""

    modality: ClassVar[str] = "image"  # selects the view functions (ssl_kd.augment.views)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool = True  # horizontal flips (off for digits and SVHN: they change the class)
    crop_fraction: float = 0.125  # pad + random crop by this fraction of the side
    # what the crop's padding holds: "reflect" (FixMatch's TF code, its PyTorch ports, USB) or
    # "zeros", black pixels (torchvision's RandomCrop(32, padding=4): RepDistiller, mdistiller)
    pad_mode: str = "reflect"
    strong_ops: int = 2  # RandAugment operations per image
    cutout_fraction: float = 0.5  # Cutout side as a fraction of the image side (FixMatch: up to 0.5)


@dataclass(frozen=True)
class TextPolicy:
    """How a text dataset's token ids (N,L), right-padded with `pad_id`, are augmented.

    Ids come from the network's tokenizer, so the policy is made with the tokenised data
    (ssl_kd.text.tokenise). Rates are per word (a first word piece and the pieces in
    `continuation_ids` that follow it; special tokens and padding never change): the strong view
    masks, then deletes, then cuts a span of whole words (Shen et al. 2020, "cutoff").
    `metric` names the task's official metric (ssl_kd.text.metrics), reported beside top1.
    """

    modality: ClassVar[str] = "text"
    pad_id: int = -1  # the ids are -1/() in a family's declaration until tokenisation fills them in
    mask_id: int = -1
    special_ids: tuple[int, ...] = ()  # [CLS], [SEP], [PAD], ... of the tokenizer
    continuation_ids: tuple[int, ...] = ()  # pieces that continue a word (WordPiece's "##ably"); () : each piece a word
    mask_rate: float = 0.1
    delete_rate: float = 0.1
    span_fraction: float = 0.1  # length of the cut span, as a fraction of the sentence's words
    metric: str = "accuracy"


@dataclass
class SSLData:
    """All splits of one dataset as tensors (images uint8 (N,C,H,W) or token ids (N,L)).

    `train_x`/`train_y` hold the whole training set; the splits are index tensors into it.
    `unlabelled_idx` is the whole training set in the FixMatch protocol (empty for a fully
    labelled preset); its labels are known in benchmark splits and are used only to monitor
    pseudo-label accuracy (`true_labels`), never for training. Under class mismatch
    (`ssl_kd.data.mismatch`) training images of unseen classes are labelled -1. `val_idx` is carved out of the training set and
    excluded from the labelled and unlabelled splits.

    `task` is "classification" or "regression" (TASK_KINDS). A regression task trains on and is
    scored against `train_gold`/`test_gold`; its `train_y` holds the scores' bins, which stratify
    the splits only. `targets(idx)` is what a labelled batch trains on.

    The user's own data (textfile, hfdataset, imagefolder; ssl_kd.data.own): the unlabelled
    examples and a user's validation examples are rows of `train_x` too; an unlabelled one is
    labelled NO_LABEL, and `pool_truth` is False when any example of the pool has no ground truth
    (monitors that need it, such as pseudo-label accuracy, are then absent, never 0).
    `train_ids` names every training example as the user knows it: an image's path, or
    `<file or split>:<record number>` (counted from 1, header excluded) of a text row, whose text is
    `train_text`; `tools/predict.py --unlabelled` writes them beside the pool's pseudo-labels.
    `split_note` says at start how the splits were made (mode, sizes, class balance).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    labelled_idx: torch.Tensor
    unlabelled_idx: torch.Tensor
    val_idx: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    policy: AugPolicy | TextPolicy
    class_names: list[str] = field(default_factory=list)
    noisy_idx: torch.Tensor | None = None  # labelled indices whose label was flipped (noise probe)
    ood_idx: torch.Tensor | None = None  # unlabelled indices of unseen classes (data.unlabelled_mismatch > 0)
    clean_y: torch.Tensor | None = None  # the labels before flipping when noisy_idx is set
    train_text: list[str] | None = None  # text datasets: the training sentences, for explanations
    train_gold: torch.Tensor | None = None  # a regression task's float gold scores (STS-B), for its metric
    test_gold: torch.Tensor | None = None
    task: str = "classification"
    train_ids: list[str] | None = None  # the user's own data: each training example's path or file:record
    pool_truth: bool = True  # False: some unlabelled examples have no ground truth (the user's own)
    split_note: str = ""  # how the splits were made, printed at start (the user's own data)

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"

    @property
    def num_outputs(self) -> int:
        """The width of the network's last layer: one score for regression, else one logit per class."""
        return 1 if self.is_regression else self.num_classes

    def targets(self, idx: torch.Tensor) -> torch.Tensor:
        """Training targets of examples `idx`: float32 gold scores (regression) or class labels."""
        if self.is_regression:
            assert self.train_gold is not None, "a regression dataset carries its gold scores"
            return self.train_gold[idx.to(self.train_gold.device)].float()
        return self.train_y[idx]

    def gold(self, split: str) -> torch.Tensor | None:
        """The float gold scores of "test" or "val" (None without them), which correlations are computed against."""
        scores = self.test_gold if split == "test" else self.train_gold
        if scores is None or split == "test":
            return scores
        return scores[self.val_idx.to(scores.device)]

    def true_labels(self, idx: torch.Tensor) -> torch.Tensor:
        """Ground truth of training examples, to monitor pseudo-labels only (never to train on):
        the label before any noise flip, -1 for an unseen class (which no prediction matches), and
        NO_LABEL for a user's unlabelled example (check `pool_truth` before monitoring with it)."""
        return (self.clean_y if self.clean_y is not None else self.train_y)[idx]

    @property
    def modality(self) -> str:
        return self.policy.modality

    @property
    def has_unlabelled(self) -> bool:
        return self.unlabelled_idx.numel() > 0

    def to(self, device: torch.device | str) -> "SSLData":
        """Move every tensor to `device` (the data lives on the training device)."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return SSLData(**moved)
