"""Dataset families: how a registered family loads its raw splits and which protocol it implies.

A dataset name follows `<family>[_<labels>]` (`cifar10_4k`, `digits_100`, `svhn`): the family
loads the full train/test sets once; `ssl_kd.data.build` makes the labelled/unlabelled/validation
splits, so every family gets the same, seeded, class-balanced splitting.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ssl_kd.data.types import AugPolicy, TextPolicy
from ssl_kd.registry import DATASETS


# The FixMatch protocol (Sohn et al. 2020) shared by the CIFAR and SVHN presets.
FIXMATCH_PROTOCOL: dict[str, Any] = {
    "net": "wrn28_2",
    "steps": 2**20,
    "batch_size": 64,
    "uratio": 7,
    "weight_decay": 5e-4,
    "eval_every": 5000,  # the benchmark presets' interval (their median is over the last 20 of ~210); others: train.evals
}


@dataclass
class RawData:
    """A family's full training and test sets, before splitting.

    Text families give their examples as `train_text`/`test_text` (one tuple of one or two
    segments per example) and leave `train_x`/`test_x` empty: the data layer tokenises them with
    the network's tokenizer (ssl_kd.text.tokenise) into token ids (N,L). A regression task
    scored on float gold values (STS-B) gives them as `train_gold`/`test_gold` beside its classes.

    A family reading the user's own data (ssl_kd.data.own) gives `train_part`: where each training
    example came from (own.LABELLED, own.UNLABELLED labelled NO_LABEL, or own.VALIDATION, the user's
    validation split), `train_ids` (each example's path or file:record) and `notes` (which files
    or columns it chose, printed at start). Without `train_part` every example is labelled.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    train_text: list[tuple[str, ...]] | None = None
    test_text: list[tuple[str, ...]] | None = None
    train_gold: torch.Tensor | None = None  # float64 (N,) gold scores of a regression task
    test_gold: torch.Tensor | None = None
    train_part: torch.Tensor | None = None  # int64 (N,) own.LABELLED / UNLABELLED / VALIDATION
    train_ids: list[str] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetFamily:
    """A registered family.

    `load(root, download)` reads the standard release layout under `root` (the family's own
    sub-folder of the data dir, e.g. `<data-dir>/cifar10`), downloading there first when
    `download` is true, and raises `DataError` naming the path and the fix when files are missing.
    `protocol` holds the preset's training defaults (TrainConfig field -> value).
    A family whose classes are read from its files has `num_classes=0` and lists them cheaply with
    `classes(root)` before loading (an image folder), or without `classes` has them once loaded
    (`RawData.class_names`: text files); `options` names DataConfig fields passed to
    `load` as keywords (the image folder's `image_size`).
    `task` is "classification" or "regression" (ssl_kd.data.types.TASK_KINDS); a regression family
    gives `train_gold`/`test_gold` and names its classification form, if any, in `class_form`
    (stsb -> stsb6), for the error that refuses a classification-only algorithm.
    """

    name: str
    num_classes: int
    policy: AugPolicy | TextPolicy  # its type declares the modality; a text family's ids are filled in at tokenisation
    load: Callable[[Path, bool], RawData]
    protocol: dict[str, Any] = field(default_factory=dict)
    presets: tuple[int, ...] = ()  # label counts listed by `--list` (any count is accepted)
    seen_classes: tuple[int, ...] = ()  # labelled classes under data.unlabelled_mismatch (ssl_kd.data.mismatch)
    description: str = ""
    classes: Callable[[Path], list[str]] | None = None  # with num_classes=0: the class names under `root`
    options: tuple[str, ...] = ()  # DataConfig fields `load` takes as keyword arguments
    task: str = "classification"
    class_form: str = ""  # a regression family's classification twin (a family name)


def register_dataset(family: DatasetFamily) -> DatasetFamily:
    return DATASETS.register(family.name)(family)
