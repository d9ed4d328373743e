"""Text classification examples from tables of records: your own CSV/TSV/JSON/JSON Lines files
(datasets/textfile.py) or a Hugging Face dataset (datasets/hfdataset.py).

`data.text_columns` names the text column (or two, for sentence pairs; empty: detected from the
obvious names, `detect_columns`) and `data.label_column` the label. The classes are the training
split's label values, sorted (numerically when they are all integers), unless the source declares
them (a `ClassLabel` feature). A training row whose label is empty, null, missing or -1 is
unlabelled, and an `unlabelled` file or split holds more of them (ssl_kd.data.own).

Held-out splits (`held_out`): `test` is the test split and `validation` (else `dev`) the validation
split; a lone `validation` or `dev` is the test split, as GLUE's released dev is, and validation is
then carved from the labelled training examples. Without any, `data.test_fraction` of the training
examples is held out for testing (seeded by `data.split_seed`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from ssl_kd.data.family import RawData
from ssl_kd.data.own import LABELLED, UNLABELLED, VALIDATION
from ssl_kd.data.types import NO_LABEL
from ssl_kd.errors import ConfigError, DataError

EVAL_SPLITS = ("test", "validation", "dev")
UNLABELLED_SPLITS = ("unlabelled", "unlabeled")  # a file stem or a dataset split of unlabelled examples
MISSING = (None, "", -1, "-1")  # no label: an unlabelled example (GLUE's test splits hold -1)
# the obvious text columns, pairs first: detected when data.text_columns is empty and exactly one fits
PAIR_COLUMNS = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"), ("question", "sentence"))
SINGLE_COLUMNS = ("text", "sentence", "question", "review", "content", "document")


@dataclass(frozen=True)
class Columns:
    """Where the texts and the label are (DataConfig's text_columns and label_column)."""

    text: tuple[str, ...]
    label: str

    def describe(self) -> str:
        return f"text column(s) {', '.join(self.text)} and label column {self.label}"


@dataclass
class Split:
    """One split's examples: the text of each (one or two segments), its label value as a string
    (None: unlabelled), and its id (`<tag>:<record number>`)."""

    source: str  # the file or dataset split, for messages
    texts: list[tuple[str, ...]]
    labels: list[str | None]
    ids: list[str]


def check_columns(source: str, present: Sequence[str], columns: Columns, label: bool = True) -> None:
    missing = [c for c in (*columns.text, *([columns.label] if label else [])) if c not in present]
    if missing:
        raise DataError(f"{source} lacks column(s) {missing} (it has {list(present)[:12]}); name yours with "
                        f"--set data.text_columns=COL[,COL2] --set data.label_column=COL")


def check_column_count(text_columns: tuple[str, ...]) -> None:
    """Empty (detect), one text column, or two for sentence pairs."""
    if len(text_columns) not in (0, 1, 2):
        raise ConfigError(f"data.text_columns={list(text_columns)}: give one text column, or two for sentence pairs")


def detect_columns(source: str, present: Sequence[str], text_columns: tuple[str, ...], label_column: str) -> tuple[Columns, str]:
    """`text_columns` if given, else the one obvious text column (or pair) of `present`, and a note
    saying which was used; no obvious one, or several, is a DataError naming them."""
    check_column_count(text_columns)
    if text_columns:
        return Columns(tuple(text_columns), label_column), ""
    fits = [pair for pair in PAIR_COLUMNS if all(c in present for c in pair)]
    fits = fits or [(c,) for c in SINGLE_COLUMNS if c in present]
    if len(fits) != 1:
        found = f"several fit ({', '.join('+'.join(f) for f in fits)})" if fits else "none of the usual names fit"
        raise DataError(f"{source}: cannot tell the text column, {found}; it has {list(present)[:12]}; name it with "
                        "--set data.text_columns=COL (two for sentence pairs: COL1,COL2)")
    return Columns(fits[0], label_column), (f"text column(s): {', '.join(fits[0])} (detected; --set "
                                            "data.text_columns=COL chooses another)")


def read_records(source: str, records: Iterable[dict[str, Any]], columns: Columns, tag: str,
                 unlabelled: str = "allowed") -> Split:
    """The examples of `records` (dicts), ids `<tag>:<n>` with n counting records from 1.
    `unlabelled`: "allowed" (a missing label is None), "refused" (a held-out split: every example
    needs one) or "all" (an unlabelled file: any label column is ignored)."""
    texts, labels, ids = [], [], []
    for row, record in enumerate(records, start=1):
        if row == 1:
            check_columns(source, list(record), columns, label=unlabelled != "all")
        label = None if unlabelled == "all" else record.get(columns.label)
        if label in MISSING and unlabelled == "refused":
            raise DataError(f"{source}, record {row}: no label in column {columns.label!r}; every example of a "
                            "test or validation split needs one")
        texts.append(tuple("" if record.get(c) is None else str(record.get(c)) for c in columns.text))
        labels.append(None if label in MISSING else str(label))
        ids.append(f"{tag}:{row}")
    if not texts:
        raise DataError(f"{source} holds no examples; expected records with {columns.describe()}")
    return Split(source, texts, labels, ids)


def has_labels(records: Sequence[dict[str, Any]], column: str) -> bool:
    return any(r.get(column) not in MISSING for r in records)


def held_out(available: Sequence[str]) -> tuple[str | None, str | None]:
    """(test, validation) among the labelled held-out splits `available` (names in EVAL_SPLITS)."""
    found = [name for name in EVAL_SPLITS if name in available]
    if "test" in found:
        return "test", next((n for n in found if n != "test"), None)
    return (found[0] if found else None), None


def class_names(labels: Sequence[str | None]) -> list[str]:
    """The distinct label values, sorted (as numbers when they all are integers: 2 before 10)."""
    values = {v for v in labels if v is not None}
    numeric = all(v.lstrip("-").isdigit() for v in values)
    return sorted(values, key=int) if numeric else sorted(values)


def encode(split: Split, classes: list[str]) -> torch.Tensor:
    """Class indices of `split`'s labels; NO_LABEL for an unlabelled example."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({v for v in split.labels if v is not None and v not in index})
    if unknown:
        raise DataError(f"{split.source}: label(s) {unknown[:5]} are not among the training labels {classes[:20]}; "
                        "fix the labels, or add training examples of those classes")
    return torch.tensor([NO_LABEL if v is None else index[v] for v in split.labels], dtype=torch.long)


def hold_out(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, test): a seeded `fraction` of `split` held out for evaluation."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"{split.source} has no test, validation or dev split; add one, or hold out a share of the "
                        f"training examples with --set data.test_fraction=0.1 (a fraction in (0, 1), not {fraction})")
    n = len(split.texts)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, round(fraction * n))
    pick = lambda idx: Split(split.source, [split.texts[i] for i in idx], [split.labels[i] for i in idx],  # noqa: E731
                             [split.ids[i] for i in idx])
    return pick(sorted(order[cut:])), pick(sorted(order[:cut]))


def to_raw(train: Split, test: Split, classes: list[str] | None = None, unlabelled: Split | None = None,
           val: Split | None = None, notes: Sequence[str] = ()) -> RawData:
    """RawData of the splits (token ids are filled in at tokenisation): the training examples are
    `train`'s, then `unlabelled`'s, then `val`'s, told apart by `train_part` (ssl_kd.data.own)."""
    names = classes or class_names(train.labels)
    if any(v is None for v in test.labels):
        raise DataError(f"{test.source} has unlabelled examples; every example of a test split needs a label")
    parts = [(p, split) for p, split in ((LABELLED, train), (UNLABELLED, unlabelled), (VALIDATION, val)) if split is not None]
    part = torch.cat([torch.full((len(s.texts),), p, dtype=torch.long) for p, s in parts])
    train_y = torch.cat([encode(s, names) for _, s in parts])  # each part's errors name its own file
    part[(part == LABELLED) & (train_y == NO_LABEL)] = UNLABELLED  # a row with an empty label
    empty = torch.empty(0, 1, dtype=torch.long)
    return RawData(empty, train_y, empty, encode(test, names), names, [t for _, s in parts for t in s.texts], test.texts,
                   train_part=part, train_ids=[i for _, s in parts for i in s.ids], notes=list(notes))
