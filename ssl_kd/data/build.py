"""Dataset names -> SSLData: load a family's raw sets, then make seeded, class-balanced splits.

Every family gets the same splitting, and the split depends only on `DataConfig.split_seed`
(never on the training seed), so runs with different training seeds share their labelled set.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from ssl_kd.config import DataConfig
from ssl_kd.data.family import DatasetFamily, RawData
from ssl_kd.data.mismatch import UNSEEN, SeenClasses, mismatched_pool, seen_classes
from ssl_kd.data.own import own_splits
from ssl_kd.data.placement import check_placement
from ssl_kd.data.types import NO_LABEL, PAD_MODES, TASK_KINDS, AugPolicy, SSLData, TextPolicy
from ssl_kd.errors import ConfigError, DataError
from ssl_kd.registry import DATASETS, discover, unknown_name_message

NOISE_MODES = ("symmetric", "pairwise")
LABEL_SPEC = re.compile(r"(\d+)(k?)")
NAME_EXAMPLES = ("e.g. cifar10_40, cifar10_4k, cifar100_10k, svhn_1000, digits_30, sst2_1k, or cifar10 for all labels; "
                 "your own images in ImageFolder layout: imagefolder_<labels> with --set data.folder=PATH; "
                 "your own text files: textfile_<labels> with --set data.folder=PATH")


def parse_dataset_name(name: str) -> tuple[str, int | None]:
    """Split `<family>[_<labels>]` (`cifar10_4k` -> ('cifar10', 4000); `svhn` -> ('svhn', None))."""
    discover("ssl_kd.datasets")
    if name in DATASETS:
        return name, None
    family, _, spec = name.rpartition("_")
    match = LABEL_SPEC.fullmatch(spec.lower())
    if family not in DATASETS:
        unknown = family if family and match else name
        raise ConfigError(
            f"{unknown_name_message('dataset', unknown, DATASETS.names())} "
            f"Dataset names are <family>[_<labels>], {NAME_EXAMPLES}."
        )
    labels = int(match.group(1)) * (1000 if match.group(2) else 1) if match else 0
    if labels <= 0:
        raise ConfigError(
            f"dataset {name!r}: bad label count {spec!r}; write <family>_<labels> with a positive "
            f"number, optionally with a k for thousands ({NAME_EXAMPLES})."
        )
    return family, labels


def preset_name(family: str, labels: int) -> str:
    """The dataset name of `family` with `labels` labels, as parse_dataset_name reads it (cifar10, 4000 -> cifar10_4k)."""
    return f"{family}_{labels // 1000}k" if labels >= 1000 and labels % 1000 == 0 else f"{family}_{labels}"


def resolve_family(name: str) -> tuple[DatasetFamily, int | None]:
    """The registered family of a dataset name (its protocol gives the training defaults) and its label count."""
    family, labels = parse_dataset_name(name)
    return DATASETS.get(family), labels


def build_dataset(name: str, data_cfg: DataConfig, data_dir: Path, download: bool, net: str = "") -> SSLData:
    """Load `name`'s family from `<data_dir>/<family>/` and split it as `data_cfg` says (on the CPU).

    A text family is tokenised with network `net`'s tokenizer (default: the preset's network).

    With a label count, the unlabelled set is the whole training set minus validation (the
    FixMatch protocol: labelled examples included); without one, every non-validation example is
    labelled and the unlabelled set is empty. The user's own data (a family giving
    `RawData.train_part`) is split as `ssl_kd.data.own` says: their labels, their unlabelled
    examples and their validation split.

    With `data.unlabelled_mismatch` the model has the family's seen classes only and the
    unlabelled pool is drawn as `ssl_kd.data.mismatch` says; the preset's labels per class
    (`cifar10_4k`: 400) are kept for each seen class.

    With label noise, `train_y` holds the (partly flipped) labels used for training, `clean_y`
    the labels before flipping, and `noisy_idx` the flipped indices (labelled split only: the
    validation split is never noised).
    """
    check_data_config(data_cfg)
    family, labels = resolve_family(name)
    root = data_dir / Path(data_cfg.folder or family.name).expanduser()  # an absolute data.folder replaces data_dir
    # a family with num_classes=0 lists its classes cheaply (an image folder) or has them once loaded (text files)
    num_classes = family.num_classes or (len(family.classes(root)) if family.classes is not None else 0)
    per_class = labels_per_class(labels, num_classes, name) if labels is not None and num_classes else None
    raw = family.load(root, download, **{key: getattr(data_cfg, key) for key in family.options})
    if not num_classes:
        num_classes = len(raw.class_names)
        per_class = labels_per_class(labels, num_classes, name) if labels is not None else None
    policy = family.policy
    if data_cfg.pad_mode and isinstance(policy, AugPolicy):  # a protocol's own padding (the zoo's: zeros)
        policy = dataclasses.replace(policy, pad_mode=data_cfg.pad_mode)
    if isinstance(policy, TextPolicy):
        from ssl_kd.text.tokenise import tokenise_raw

        raw, policy = tokenise_raw(raw, policy, net or family.protocol.get("net", ""), data_cfg.max_length)
    check_labels(raw, family.name, num_classes)
    check_task(family, raw, data_cfg)
    mismatch = data_cfg.unlabelled_mismatch
    if mismatch is not None and per_class is None:
        raise ConfigError(f"data.unlabelled_mismatch applies to presets with unlabelled data, not {name!r}; "
                          f"use e.g. {family.name}_<labels> or drop data.unlabelled_mismatch.")
    view = seen_classes(family, raw) if mismatch is not None else SeenClasses(raw.train_y, raw.test_x, raw.test_y, raw.class_names)
    generator = torch.Generator().manual_seed(data_cfg.split_seed)
    ood_idx, pool_truth, note = None, True, ""
    if raw.train_part is not None:  # the user's own data: their labelled, unlabelled and validation examples
        own = own_splits(name, raw, num_classes, per_class, data_cfg, generator)
        val_idx, labelled_idx, unlabelled_idx, pool_truth, note = (own.val_idx, own.labelled_idx, own.unlabelled_idx,
                                                                   own.pool_truth, own.note)
    else:
        val_per_class = data_cfg.val_per_class or 0  # a benchmark carves none unless asked
        seen_y = view.train_y[view.train_y != UNSEEN]
        check_class_sizes(name, seen_y.bincount(minlength=view.num_classes), val_per_class, per_class)
        val_idx, labelled_idx, rest_idx = split_indices(view.train_y, view.num_classes, per_class, val_per_class, generator)
        unlabelled_idx = rest_idx if per_class is not None else torch.empty(0, dtype=torch.int64)
        if mismatch is not None:
            unlabelled_idx, ood_idx = mismatched_pool(view.train_y, rest_idx, mismatch, generator)
    train_y, noisy_idx = view.train_y, None
    if data_cfg.label_noise > 0:
        train_y, noisy_idx = flip_labels(
            view.train_y, labelled_idx, data_cfg.label_noise, data_cfg.noise_mode, view.num_classes, generator
        )
    return SSLData(
        name=name,
        train_x=raw.train_x,
        train_y=train_y,
        labelled_idx=labelled_idx,
        unlabelled_idx=unlabelled_idx,
        val_idx=val_idx,
        test_x=view.test_x,
        test_y=view.test_y,
        num_classes=view.num_classes,
        policy=policy,
        class_names=view.class_names,
        noisy_idx=noisy_idx,
        ood_idx=ood_idx if ood_idx is not None and ood_idx.numel() else None,
        clean_y=view.train_y if noisy_idx is not None else None,
        train_text=[" || ".join(t) for t in raw.train_text] if raw.train_text is not None else None,
        train_gold=raw.train_gold,
        test_gold=raw.test_gold,
        task=family.task,
        train_ids=raw.train_ids,
        pool_truth=pool_truth,
        split_note=note,
    )


def class_form_hint(name: str, lead: str = ", or its classification form ") -> str:
    """`lead` + the classification form of a regression dataset that has one (stsb_60 -> stsb6_60),
    else "", for errors that refuse a regression task."""
    try:
        family, labels = resolve_family(name)
    except ConfigError:
        return ""
    if not family.class_form:
        return ""
    return f"{lead}{family.class_form}{f'_{labels}' if labels else ''}"


def check_data_config(cfg: DataConfig) -> None:
    check_placement(cfg)
    if cfg.image_size < 1:
        raise ConfigError(f"data.image_size={cfg.image_size} must be a positive side in pixels, e.g. 64.")
    if cfg.noise_mode not in NOISE_MODES:
        raise ConfigError(f"data.noise_mode={cfg.noise_mode!r} is not valid; use one of: {', '.join(NOISE_MODES)}.")
    if not 0.0 <= cfg.label_noise <= 1.0:
        raise ConfigError(f"data.label_noise={cfg.label_noise} is not a fraction; give a value in [0, 1], e.g. 0.2.")
    share = cfg.unlabelled_mismatch
    if share is not None and not 0.0 <= share <= 1.0:
        raise ConfigError(f"data.unlabelled_mismatch={share} is not a share; give a value in [0, 1] (e.g. 0.5), "
                          f"or none for the standard all-class setting.")
    if cfg.val_per_class is not None and cfg.val_per_class < 0:
        raise ConfigError(f"data.val_per_class={cfg.val_per_class} is negative; give 0 (no validation split) or more.")
    if cfg.pad_mode and cfg.pad_mode not in PAD_MODES:
        raise ConfigError(f"data.pad_mode={cfg.pad_mode!r} is not valid; use one of: {', '.join(PAD_MODES)} "
                          f"(or leave it empty for the dataset's own).")


def check_task(family: DatasetFamily, raw: RawData, cfg: DataConfig) -> None:
    """A regression family carries its gold scores; label noise and class mismatch flip or drop
    classes, which a score's bins are not."""
    if family.task not in TASK_KINDS:
        raise ConfigError(f"dataset family {family.name!r} declares task {family.task!r}; use one of {', '.join(TASK_KINDS)}")
    if family.task != "regression":
        return
    if raw.train_gold is None or raw.test_gold is None:
        raise DataError(f"{family.name}: a regression family must give train_gold and test_gold (float scores)")
    for key, used in (("label_noise", cfg.label_noise > 0), ("unlabelled_mismatch", cfg.unlabelled_mismatch is not None)):
        if used:
            alternative = f"; the classification form {family.class_form} takes it" if family.class_form else ""
            raise ConfigError(f"data.{key} flips or drops classes and {family.name} is a regression task; "
                              f"drop data.{key}{alternative}")


def check_labels(raw: RawData, family: str, num_classes: int) -> None:
    """Labels outside 0..C-1 mean the files do not belong to this family (a user's unlabelled
    examples, NO_LABEL, have none)."""
    for split, labels in (("training", raw.train_y[raw.train_y != NO_LABEL]), ("test", raw.test_y)):
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(
                f"{family}: {split} labels range over {labels.min()}..{labels.max()}, expected "
                f"0..{num_classes - 1}; the files under the {family} folder belong to another dataset."
            )


def split_indices(
    train_y: torch.Tensor,
    num_classes: int,
    per_class: int | None,
    val_per_class: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(validation, labelled, training minus validation) sorted index tensors.

    One permutation per class: its first `val_per_class` entries are validation, the next
    `per_class` labelled (all the rest when None). So with a fixed seed and validation size,
    smaller label counts are subsets of larger ones (cifar10_40 within cifar10_250).
    """
    val_parts, labelled_parts, rest_parts = [], [], []
    for cls in range(num_classes):
        members = (train_y == cls).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        val_parts.append(members[:val_per_class])
        rest_parts.append(members[val_per_class:])
        labelled_parts.append(rest_parts[-1] if per_class is None else rest_parts[-1][:per_class])
    return tuple(torch.cat(parts).sort().values for parts in (val_parts, labelled_parts, rest_parts))


def labels_per_class(labels: int, num_classes: int, name: str) -> int:
    if labels % num_classes:
        lower, upper = labels // num_classes * num_classes, (labels // num_classes + 1) * num_classes
        options = f"{lower} or {upper}" if lower else f"{upper}"
        raise DataError(
            f"dataset {name!r}: {labels} labels cannot be split evenly over {num_classes} classes; "
            f"use a multiple of {num_classes}, such as {options}."
        )
    return labels // num_classes


def check_class_sizes(name: str, class_counts: torch.Tensor, val_per_class: int, per_class: int | None) -> None:
    """Every class must hold its validation share plus its labelled share."""
    smallest, cls = (int(v) for v in class_counts.min(dim=0))
    if smallest == 0:
        raise DataError(f"dataset {name!r}: class {cls} has no training images; the data files are incomplete.")
    if val_per_class >= smallest:
        raise DataError(
            f"dataset {name!r}: data.val_per_class={val_per_class} leaves no training images of class {cls}, "
            f"which has {smallest}; set data.val_per_class below {smallest}."
        )
    available = smallest - val_per_class
    if per_class is not None and per_class > available:
        raise DataError(
            f"dataset {name!r}: {per_class} labels per class requested, but class {cls} has only {available} "
            f"training images ({smallest} minus data.val_per_class={val_per_class}); ask for at most "
            f"{available * len(class_counts)} labels ({available} per class) or lower data.val_per_class."
        )


def flip_labels(
    train_y: torch.Tensor,
    labelled_idx: torch.Tensor,
    fraction: float,
    mode: str,
    num_classes: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of `train_y` with round(fraction * |labelled|) labelled labels flipped, and the flipped indices.

    symmetric: to a uniformly random other class; pairwise: to the next class (y+1) mod C.
    """
    count = round(fraction * len(labelled_idx))
    chosen = labelled_idx[torch.randperm(len(labelled_idx), generator=generator)[:count]].sort().values
    noisy = train_y.clone()
    if mode == "pairwise":
        shift = torch.ones(count, dtype=train_y.dtype)
    else:
        shift = torch.randint(1, num_classes, (count,), generator=generator, dtype=train_y.dtype)
    noisy[chosen] = (train_y[chosen] + shift) % num_classes
    return noisy, chosen
