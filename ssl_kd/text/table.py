"""Text classification examples from tables of records: your own CSV/TSV/JSON/JSON Lines files
(datasets/textfile.py) or a Hugging Face dataset (datasets/hfdataset.py).

`data.text_columns` names the text column (or two, for sentence pairs) and `data.label_column`
the label. The classes are the training split's label values, sorted (numerically when they are
all integers), unless the source declares them (a `ClassLabel` feature). The evaluation split is
the first of test, validation and dev that has labels; without one, `data.test_fraction` of the
training examples is held out (seeded by `data.split_seed`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from ssl_kd.data.family import RawData
from ssl_kd.errors import DataError

EVAL_SPLITS = ("test", "validation", "dev")
MISSING = (None, "", -1)  # a hidden label (GLUE's test splits hold -1)


@dataclass(frozen=True)
class Columns:
    """Where the texts and the label are (DataConfig's text_columns and label_column)."""

    text: tuple[str, ...]
    label: str

    def describe(self) -> str:
        return f"text column(s) {', '.join(self.text)} and label column {self.label}"


@dataclass
class Split:
    """One split's examples: the text of each (one or two segments) and its label value as a string."""

    source: str  # the file or dataset split, for messages
    texts: list[tuple[str, ...]]
    labels: list[str]


def check_columns(source: str, present: Sequence[str], columns: Columns) -> None:
    missing = [c for c in (*columns.text, columns.label) if c not in present]
    if missing:
        raise DataError(f"{source} lacks column(s) {missing} (it has {list(present)[:12]}); name yours with "
                        f"--set data.text_columns=COL[,COL2] --set data.label_column=COL")


def read_records(source: str, records: Iterable[dict[str, Any]], columns: Columns) -> Split:
    """The examples of `records` (dicts); `row` numbers in messages count records from 1."""
    texts, labels = [], []
    for row, record in enumerate(records, start=1):
        if row == 1:
            check_columns(source, list(record), columns)
        label = record.get(columns.label)
        if label in MISSING:
            raise DataError(f"{source}, record {row}: no label in column {columns.label!r}; every example needs one")
        texts.append(tuple("" if record.get(c) is None else str(record.get(c)) for c in columns.text))
        labels.append(str(label))
    if not texts:
        raise DataError(f"{source} holds no examples; expected records with {columns.describe()}")
    return Split(source, texts, labels)


def has_labels(records: Sequence[dict[str, Any]], column: str) -> bool:
    return any(r.get(column) not in MISSING for r in records)


def class_names(labels: Sequence[str]) -> list[str]:
    """The distinct label values, sorted (as numbers when they all are integers: 2 before 10)."""
    values = set(labels)
    numeric = all(v.lstrip("-").isdigit() for v in values)
    return sorted(values, key=int) if numeric else sorted(values)


def encode(split: Split, classes: list[str]) -> torch.Tensor:
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({v for v in split.labels if v not in index})
    if unknown:
        raise DataError(f"{split.source}: label(s) {unknown[:5]} are not among the training labels {classes[:20]}; "
                        "fix the labels, or add training examples of those classes")
    return torch.tensor([index[v] for v in split.labels], dtype=torch.long)


def hold_out(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, test): a seeded `fraction` of `split` held out for evaluation."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"{split.source} has no test, validation or dev split; add one, or hold out a share of the "
                        f"training examples with --set data.test_fraction=0.1 (a fraction in (0, 1), not {fraction})")
    n = len(split.texts)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, round(fraction * n))
    pick = lambda idx: Split(split.source, [split.texts[i] for i in idx], [split.labels[i] for i in idx])  # noqa: E731
    return pick(sorted(order[cut:])), pick(sorted(order[:cut]))


def to_raw(train: Split, test: Split, classes: list[str] | None = None) -> RawData:
    """RawData of the splits (token ids are filled in at tokenisation)."""
    names = classes or class_names(train.labels)
    empty = torch.empty(0, 1, dtype=torch.long)
    return RawData(empty, encode(train, names), empty, encode(test, names), names, train.texts, test.texts)
