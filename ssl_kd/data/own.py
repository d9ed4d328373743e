"""Splits of the user's own data (textfile, hfdataset, imagefolder): labelled, unlabelled, validation.

Two modes, printed at start:
- **your labels**: the labelled set is exactly the examples you labelled, the unlabelled pool the
  ones you left unlabelled (an empty, null, missing or -1 label; an `unlabelled` file, split or
  folder), plus the labelled ones with `data.pool_with_labelled` (the FixMatch protocol);
- **benchmark** (`<family>_<labels>` on fully labelled data, e.g. textfile_300): that many labels
  drawn class-balanced, the rest the unlabelled pool with their labels hidden, as for the presets.

Validation is your own split when you give one (val/, validation.*, dev.* beside a test file, a
`validation` split); else `data.val_per_class` per class carved from the labelled examples before
anything else, by default a tenth of the smallest labelled class (0: none, and best.pt is then the
last checkpoint).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_kd.config import DataConfig
from ssl_kd.data.family import RawData
from ssl_kd.data.types import NO_LABEL
from ssl_kd.errors import ConfigError, DataError

LABELLED, UNLABELLED, VALIDATION = 0, 1, 2  # RawData.train_part
AUTO_VAL_SHARE = 10  # no validation split given: 1/10 of the smallest labelled class per class


@dataclass
class OwnSplits:
    val_idx: torch.Tensor
    labelled_idx: torch.Tensor
    unlabelled_idx: torch.Tensor
    pool_truth: bool  # every pool example has a ground truth (benchmark mode)
    note: str


def own_splits(name: str, raw: RawData, num_classes: int, per_class: int | None, cfg: DataConfig,
               generator: torch.Generator) -> OwnSplits:
    """The splits of `raw` (a family that gives `train_part`), checked, with the note printed at start."""
    from ssl_kd.data.build import check_class_sizes, split_indices

    assert raw.train_part is not None
    part, names = raw.train_part, raw.class_names
    own_unlabelled = (part == UNLABELLED).nonzero().flatten()
    own_val = (part == VALIDATION).nonzero().flatten()
    if per_class is not None and own_unlabelled.numel():
        raise ConfigError(f"dataset {name!r} draws {per_class * num_classes} labels from fully labelled data, but the data "
                          f"has {own_unlabelled.numel()} unlabelled examples; use --dataset {name.rpartition('_')[0]} "
                          "to train on exactly the examples you labelled")
    labelled_y = torch.where(part == LABELLED, raw.train_y, torch.full_like(raw.train_y, NO_LABEL))
    counts = labelled_y[labelled_y >= 0].bincount(minlength=num_classes)
    if num_classes < 2:
        raise DataError(f"dataset {name!r}: one class ({names[0] if names else 'none'!r}) among the labels; a classifier "
                        "needs two or more (a label -1, empty or null marks an unlabelled example: name classes otherwise)")
    if (empty := (counts == 0).nonzero().flatten()).numel():
        raise DataError(f"dataset {name!r}: class {names[int(empty[0])]!r} has no labelled example; label some "
                        f"examples of it, or drop the class")
    val_per_class = cfg.val_per_class
    if own_val.numel():
        val_per_class = 0  # the user's own validation split replaces any carving
    elif val_per_class is None:
        val_per_class = int(counts.min()) // AUTO_VAL_SHARE
    check_class_sizes(name, counts, val_per_class, per_class)
    carved, labelled, rest = split_indices(labelled_y, num_classes, per_class, val_per_class, generator)
    val = own_val if own_val.numel() else carved
    if per_class is not None:
        unlabelled, mode = rest, (f"benchmark mode ({name}): {per_class} labels per class drawn from your "
                                  f"{int(counts.sum())} labelled examples, the rest are the unlabelled pool with their labels hidden")
    else:
        unlabelled = own_unlabelled
        if cfg.pool_with_labelled and unlabelled.numel():
            unlabelled = torch.cat([unlabelled, labelled]).sort().values
        mode = (f"your labels: the {labelled.numel()} examples you labelled"
                + (f"; unlabelled pool: your {own_unlabelled.numel()} unlabelled examples"
                   + (" plus the labelled ones (data.pool_with_labelled=true)" if cfg.pool_with_labelled
                      else " (data.pool_with_labelled=true adds the labelled ones, the FixMatch protocol)")
                   if own_unlabelled.numel() else "; no unlabelled examples (a fully labelled set)"))
    share = own_unlabelled.numel() / max(1, own_unlabelled.numel() + int(counts.sum()))
    balance = ", ".join(f"{n} {c}" for n, c in zip(names, labelled_y[labelled].bincount(minlength=num_classes).tolist()))
    if own_val.numel():
        val_line = f"validation: your {own_val.numel()} validation examples"
    elif val_per_class:
        val_line = (f"validation: {val.numel()} labelled examples carved out ({val_per_class} per class; "
                    "--set data.val_per_class=0 keeps them for training, and best.pt is then the last checkpoint)")
    else:
        val_line = "validation: none (data.val_per_class=0, or too few labelled examples); best.pt is the last checkpoint"
    note = "\n".join([*raw.notes, f"data: {mode}",
                      f"data: labelled {labelled.numel()} ({balance}); unlabelled pool {unlabelled.numel()} "
                      f"({100 * share:.0f}% of your training examples are unlabelled); {val_line}"])
    return OwnSplits(val, labelled, unlabelled, per_class is not None, note)


def no_unlabelled_message(algo: str, dataset: str, own: bool) -> str:
    """The error for an algorithm that needs an unlabelled pool on data without one."""
    family = dataset.split("_")[0]
    if own:
        return (f"algorithm {algo!r} needs unlabelled examples but {dataset!r} has none; leave the label of the unlabelled "
                "rows empty (or -1), or add them as an unlabelled.* file, an 'unlabelled' split or an unlabelled/ folder; "
                f"or benchmark on fully labelled data with {family}_<labels>, or use a supervised/KD algorithm")
    return (f"algorithm {algo!r} needs unlabelled data but dataset {dataset!r} is fully labelled; "
            f"use a preset with a label count such as {family}_<labels>, or a supervised/KD algorithm")
