"""Your own text classification files: CSV, TSV, JSON or JSON Lines.

    <folder>/train.csv             the training examples (or .tsv, .json, .jsonl); a row with an
                                   empty, null, missing or -1 label is unlabelled
    <folder>/unlabelled.csv        optional: more unlabelled examples (or .tsv, .json, .jsonl, or
                                   .txt: one example per line); any label column is ignored
    <folder>/test.csv              the test examples
    <folder>/validation.csv        the validation examples (or dev.*); without test.*, this file is
                                   the test split and validation is carved from the labelled rows;
                                   with no held-out file at all: --set data.test_fraction=0.1

`--dataset textfile --set data.folder=PATH` (absolute, or relative to the data dir) trains on
exactly the rows you labelled, with the others as the unlabelled pool (ssl_kd.data.own);
`textfile_<labels>` draws that many labels from a fully labelled file (benchmarking). CSV and TSV
files have a header line naming the columns (UTF-8, a byte-order mark allowed; quoting as Python's
csv module reads it); a JSON file holds a list of objects, a JSON Lines file one object per line.
`data.text_columns` (default: detected, e.g. `text` or `sentence`; two names for sentence pairs)
and `data.label_column` (default `label`) name the columns; the classes are the training labels,
sorted (ssl_kd.text.table).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ssl_kd.data.family import DatasetFamily, RawData, register_dataset
from ssl_kd.datasets.glue import GLUE_PROTOCOL
from ssl_kd.data.types import TextPolicy
from ssl_kd.errors import DataError
from ssl_kd.text.table import (check_column_count, EVAL_SPLITS, UNLABELLED_SPLITS, Columns, Split, detect_columns, has_labels, held_out,
                               hold_out, read_records, to_raw)

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
LAYOUT = ("<folder>/train.{csv,tsv,json,jsonl}, optionally unlabelled.{csv,tsv,json,jsonl,txt}, and <folder>/test.* "
          "(and/or validation.*, dev.*)")


def find_file(root: Path, stem: str, suffixes: tuple[str, ...] = SUFFIXES) -> Path | None:
    found = [root / f"{stem}{suffix}" for suffix in suffixes if (root / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        raise DataError(f"{root.absolute()} holds {', '.join(p.name for p in found)}; keep one {stem} file")
    return found[0] if found else None


TXT_COLUMN = "\x00text"  # a .txt file's lines, renamed to the text column once it is known


def read_file(path: Path) -> list[dict[str, Any]]:
    """The records of one file, by its suffix."""
    try:
        if path.suffix in (".csv", ".tsv"):
            with open(path, encoding="utf-8-sig", newline="") as f:
                return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix == ".txt":  # one unlabelled example per line, in the column `TXT_COLUMN`
            return [{TXT_COLUMN: line} for line in text.splitlines() if line.strip()]
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        records = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path} cannot be read as {path.suffix[1:].upper()}: {err}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path}: a JSON file must hold a list of objects, e.g. [{{\"text\": \"...\", \"label\": 1}}]; "
                        "for one object per line name it .jsonl")
    return records


def load_textfile(root: Path, download: bool, text_columns: tuple[str, ...] = (), label_column: str = "label",
                  test_fraction: float = 0.0, split_seed: int = 0) -> RawData:
    check_column_count(text_columns)  # a config mistake, before any file is read
    train_path = find_file(root, "train")
    if train_path is None:
        raise DataError(f"{root.absolute()} has no train file; a text file dataset is laid out as {LAYOUT}. "
                        "To fix: point --set data.folder=PATH (absolute, or relative to --data-dir) at such a folder.")
    records = read_file(train_path)
    columns, note = detect_columns(str(train_path), list(records[0]) if records else [], text_columns, label_column)
    train = read_records(str(train_path), records, columns, train_path.name)
    held = {stem: (path, rows) for stem in EVAL_SPLITS if (path := find_file(root, stem)) is not None
            and has_labels(rows := read_file(path), label_column)}
    test_stem, val_stem = held_out(list(held))
    read = lambda stem: read_records(str(held[stem][0]), held[stem][1], columns, held[stem][0].name, "refused")  # noqa: E731
    notes = [note] if note else []
    unlabelled = read_unlabelled(root, columns)
    if unlabelled is not None:
        notes.append(f"unlabelled examples: {unlabelled.source} ({len(unlabelled.texts)})")
    val = read(val_stem) if val_stem else None
    if test_stem is None:
        train, test = hold_out(train, test_fraction, split_seed)
        notes.append(f"test: {len(test.texts)} examples held out of {train_path.name} (data.test_fraction={test_fraction})")
    else:
        test = read(test_stem)
        notes.append(f"test: {held[test_stem][0].name}" + (f"; validation: {held[val_stem][0].name}" if val_stem else
                     " (the only held-out file: the test split; validation is carved from your labelled rows)"))
    return to_raw(train, test, None, unlabelled, val, notes)


def read_unlabelled(root: Path, columns: Columns) -> Split | None:
    """The examples of `<root>/unlabelled.*` (or unlabeled.*), if there is one."""
    for stem in UNLABELLED_SPLITS:
        path = find_file(root, stem, (*SUFFIXES, ".txt"))
        if path is None:
            continue
        if path.suffix == ".txt" and len(columns.text) > 1:
            raise DataError(f"{path} holds one text per line, but the examples are sentence pairs "
                            f"({', '.join(columns.text)}); give them as {stem}.csv or .jsonl with those columns")
        records = [{columns.text[0]: r[TXT_COLUMN]} if TXT_COLUMN in r else r for r in read_file(path)]
        return read_records(str(path), records, columns, path.name, "all")
    return None


register_dataset(
    DatasetFamily(
        name="textfile",
        num_classes=0,  # the training labels
        policy=TextPolicy(),
        load=load_textfile,
        protocol=GLUE_PROTOCOL,  # the text presets'
        description=f"your own text files: {LAYOUT}, via --set data.folder=PATH; empty labels are unlabelled; "
                    "columns data.text_columns, data.label_column",
        options=("text_columns", "label_column", "test_fraction", "split_seed"),
    )
)
