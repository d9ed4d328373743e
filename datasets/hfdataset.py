"""A Hugging Face `datasets` dataset as a text family: one saved with `save_to_disk`, or a hub name.

`--dataset hfdataset --set data.folder=PATH` reads a `DatasetDict` saved with
`save_to_disk` (absolute, or relative to the data dir; no network). When data.folder is not a
folder it is taken as a hub name (`--set data.folder=stanfordnlp/imdb`), downloaded and cached by
the library as usual (online only). The training split is `train`, whose examples with label -1
(`ClassLabel`'s "no label") or null are unlabelled; an `unlabelled` (or `unlabeled`,
`unsupervised`: IMDB's) split holds more. Held-out splits with labels as for text files
(ssl_kd.text.table.held_out): `test` the test split, `validation` (else `dev`) the validation split,
a lone one the test split (GLUE's test labels are hidden as -1); none: `data.test_fraction` of
train. `hfdataset_<labels>` draws that many labels from a fully labelled train split. Columns as
for text files (data.text_columns, detected when empty; data.label_column); a `ClassLabel` label
keeps its class names and order.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ssl_kd.data.family import DatasetFamily, RawData, register_dataset
from ssl_kd.data.types import TextPolicy
from ssl_kd.datasets.glue import GLUE_PROTOCOL
from ssl_kd.errors import ConfigError, DataError
from ssl_kd.text.hub import TEXT_EXTRA, hub_unreachable
from ssl_kd.text.table import (check_column_count, EVAL_SPLITS, MISSING, UNLABELLED_SPLITS, check_columns, detect_columns, has_labels, held_out,
                               hold_out, read_records, to_raw)


def open_dataset(root: Path, folder: str) -> Any:
    """The DatasetDict at `root` (saved with save_to_disk), else the hub dataset named `folder`."""
    if importlib.util.find_spec("datasets") is None:
        raise ConfigError(f"the hfdataset family needs Hugging Face's `datasets` package; install the text extra: {TEXT_EXTRA}")
    import datasets  # Hugging Face's (datasets/__init__.py hands over when the repository root is on sys.path)

    if root.is_dir():
        try:
            loaded = datasets.load_from_disk(str(root))
        except FileNotFoundError as err:
            raise DataError(f"{root.absolute()} is not a dataset saved with save_to_disk ({err}); point "
                            "--set data.folder=PATH at the folder save_to_disk wrote") from None
    elif folder:
        if why := hub_unreachable():  # the library would retry for a minute before its traceback
            raise DataError(f"data.folder={folder!r} is not a folder, and as a hub dataset it cannot be fetched: the hub "
                            f"cannot be reached ({why}). Save it with save_to_disk where there is a network and point "
                            "--set data.folder=PATH at that folder")
        try:
            loaded = datasets.load_dataset(folder)
        except Exception as err:  # the library raises many kinds (offline, unknown name, gated)
            raise DataError(f"hub dataset {folder!r} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0]}); "
                            "check the name and the network, or save it with save_to_disk and point data.folder at "
                            "that folder") from None
    else:
        raise DataError(f"{root.absolute()} is not a folder; give --set data.folder=PATH (a save_to_disk folder) "
                        "or a hub dataset name")
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    if "train" not in loaded:
        raise DataError(f"dataset {folder or root} has splits {list(loaded)}, no 'train'; save a DatasetDict with a "
                        "train split (and test or validation)")
    return loaded


def label_names(split: Any, column: str) -> list[str] | None:
    """The class names of a ClassLabel column, else None."""
    names = getattr(split.features.get(column), "names", None)
    return list(names) if names else None


def load_hfdataset(root: Path, download: bool, folder: str = "", text_columns: tuple[str, ...] = (),
                   label_column: str = "label", test_fraction: float = 0.0, split_seed: int = 0) -> RawData:
    check_column_count(text_columns)  # a config mistake, before any file is read
    splits = open_dataset(root, folder)
    source = lambda name: f"dataset {folder or root} split {name!r}"  # noqa: E731
    columns, note = detect_columns(source("train"), splits["train"].column_names, text_columns, label_column)
    check_columns(source("train"), splits["train"].column_names, columns)
    names = label_names(splits["train"], label_column)

    def records(name: str, label: bool = True) -> list[dict[str, Any]]:
        check_columns(source(name), splits[name].column_names, columns, label)
        rows = splits[name].select_columns([*columns.text, *([columns.label] if label else [])]).to_list()
        for r in rows if names and label else []:  # ClassLabel ints -> their names (the library refuses others)
            r[columns.label] = None if r[columns.label] in MISSING else names[r[columns.label]]
        return rows

    train = read_records(source("train"), records("train"), columns, "train")
    held = {name: rows for name in EVAL_SPLITS if name in splits and has_labels(rows := records(name), label_column)}
    test_name, val_name = held_out(list(held))
    read = lambda name: read_records(source(name), held[name], columns, name, "refused")  # noqa: E731
    notes = [note] if note else []
    extra = next((name for name in UNLABELLED_SPLITS + ("unsupervised",) if name in splits), None)
    unlabelled = read_records(source(extra), records(extra, label=False), columns, extra, "all") if extra else None
    if unlabelled is not None:
        notes.append(f"unlabelled examples: split {extra!r} ({len(unlabelled.texts)})")
    val = read(val_name) if val_name else None
    if test_name is None:
        train, test = hold_out(train, test_fraction, split_seed)
        notes.append(f"test: {len(test.texts)} examples held out of train (data.test_fraction={test_fraction})")
    else:
        test = read(test_name)
        notes.append(f"test: split {test_name!r}" + (f"; validation: split {val_name!r}" if val_name else
                     " (the only labelled held-out split: the test split; validation is carved from your labelled rows)"))
    return to_raw(train, test, names, unlabelled, val, notes)


register_dataset(
    DatasetFamily(
        name="hfdataset",
        num_classes=0,  # the training labels (or the ClassLabel's names)
        policy=TextPolicy(),
        load=load_hfdataset,
        protocol=GLUE_PROTOCOL,  # the text presets'
        description="a Hugging Face dataset: a save_to_disk folder, or a hub name (online), via --set data.folder=; "
                    "label -1 is unlabelled; columns data.text_columns, data.label_column",
        options=("folder", "text_columns", "label_column", "test_fraction", "split_seed"),
    )
)
