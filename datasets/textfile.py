"""Your own text classification files: CSV, TSV, JSON or JSON Lines.

    <folder>/train.csv             the training examples (or .tsv, .json, .jsonl)
    <folder>/test.csv              the evaluation examples (else validation.* or dev.*; or none
                                   and --set data.test_fraction=0.1)

`--dataset textfile_<labels> --set data.folder=PATH` (absolute, or relative to the data dir);
`textfile` alone trains on every label. CSV and TSV files have a header line naming the columns
(UTF-8, a byte-order mark allowed; quoting as Python's csv module reads it); a JSON file holds a
list of objects, a JSON Lines file one object per line. `data.text_columns` (default `text`; two
names for sentence pairs) and `data.label_column` (default `label`) name the columns; the classes
are the training labels, sorted (ssl_kd.text.table).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ssl_kd.data.family import DatasetFamily, RawData, register_dataset
from ssl_kd.datasets.glue import GLUE_PROTOCOL
from ssl_kd.data.types import TextPolicy
from ssl_kd.errors import ConfigError, DataError
from ssl_kd.text.table import EVAL_SPLITS, Columns, has_labels, hold_out, read_records, to_raw

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
LAYOUT = "<folder>/train.{csv,tsv,json,jsonl} and <folder>/test.* (or validation.*, dev.*)"


def find_file(root: Path, stem: str) -> Path | None:
    found = [root / f"{stem}{suffix}" for suffix in SUFFIXES if (root / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        raise DataError(f"{root.absolute()} holds {', '.join(p.name for p in found)}; keep one {stem} file")
    return found[0] if found else None


def read_file(path: Path) -> list[dict[str, Any]]:
    """The records of one file, by its suffix."""
    try:
        if path.suffix in (".csv", ".tsv"):
            with open(path, encoding="utf-8-sig", newline="") as f:
                return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        records = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path} cannot be read as {path.suffix[1:].upper()}: {err}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path}: a JSON file must hold a list of objects, e.g. [{{\"text\": \"...\", \"label\": 1}}]; "
                        "for one object per line name it .jsonl")
    return records


def columns_of(text_columns: tuple[str, ...], label_column: str) -> Columns:
    if len(text_columns) not in (1, 2):
        raise ConfigError(f"data.text_columns={list(text_columns)}: give one text column, or two for sentence pairs")
    return Columns(tuple(text_columns), label_column)


def load_textfile(root: Path, download: bool, text_columns: tuple[str, ...] = ("text",), label_column: str = "label",
                  test_fraction: float = 0.0, split_seed: int = 0) -> RawData:
    columns = columns_of(text_columns, label_column)
    train_path = find_file(root, "train")
    if train_path is None:
        raise DataError(f"{root.absolute()} has no train file; a text file dataset is laid out as {LAYOUT}. "
                        "To fix: point --set data.folder=PATH (absolute, or relative to --data-dir) at such a folder.")
    train = read_records(str(train_path), read_file(train_path), columns)
    for stem in EVAL_SPLITS:
        path = find_file(root, stem)
        records = read_file(path) if path is not None else []
        if records and has_labels(records, label_column):
            return to_raw(train, read_records(str(path), records, columns))
    return to_raw(*hold_out(train, test_fraction, split_seed))


register_dataset(
    DatasetFamily(
        name="textfile",
        num_classes=0,  # the training labels
        policy=TextPolicy(),
        load=load_textfile,
        protocol=GLUE_PROTOCOL,  # the text presets'
        description=f"your own text files: {LAYOUT}, via --set data.folder=PATH; columns data.text_columns, "
                    "data.label_column",
        options=("text_columns", "label_column", "test_fraction", "split_seed"),
    )
)
