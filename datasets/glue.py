"""The GLUE tasks from the standard TSV release: `<data-dir>/glue/<TASK>/{train,dev}.tsv`.

Dataset names follow the images' grammar: `sst2` (all labels: supervised and KD mode), `sst2_1k`
(1,000 class-balanced labels, the rest unlabelled: SSL mode), and so on for cola, mrpc, qqp, stsb,
mnli (dev_matched), mnli-mm (dev_mismatched), qnli, rte and wnli. Dev is the evaluation split (the
test labels are hidden). Files are read as the release is written: UTF-8 with or without a
byte-order mark (MRPC's files start with one), tab-separated, no quoting (quotes are part of the
text), a header line except for CoLA. Rows with too few fields (QQP's train.tsv has some) are
skipped and counted, as the usual GLUE loaders do.

STS-B is a regression task, and `stsb` is it as released: a one-output head trained with MSE on
the float gold scores (0..5), scored by Pearson and Spearman correlation against them (GLUE's
metric). `stsb6` is the older six-class form, the score rounded half up to 0..5 (2.5 -> 3, not
Python's half-to-even), for the algorithms that train on class probabilities (pseudo-labels,
distillation); its correlations compare the expected class value with the same float gold. Both
forms bin the scores that way to stratify their splits (`stsb_60`: 10 examples per bin), and both
keep the gold as `RawData.train_gold`/`test_gold`.
"""
from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ssl_kd.data.family import DatasetFamily, RawData, register_dataset
from ssl_kd.data.paths import LOCAL_FIXES
from ssl_kd.data.types import TextPolicy
from ssl_kd.errors import DataError

GLUE_PROTOCOL = {
    "net": "hf:minilm-l6",
    "steps": 2000,
    "batch_size": 32,
    "uratio": 3,
    # chosen on a validation split (BENCHMARKS, issue 19): at 5e-5 a 2-layer student stays at chance
    # for 100+ steps, and 2e-4 beat 5e-5 for the whole 6-layer MiniLM too (val 86.5 against 81.0)
    "lr": 2e-4,
    "weight_decay": 0.01,
    "eval_batch_size": 256,
    "ema": 0.0,  # Hugging Face fine-tuning keeps no weight average
    "channels_last": False,
}


@dataclass(frozen=True)
class GlueTask:
    """Where a task's columns are: by header name, or by position for header-less files (CoLA)."""

    folder: str  # sub-folder of <data-dir>/glue
    text_columns: tuple[str | int, ...]  # one (single sentence) or two (pair) columns
    label_column: str | int
    labels: tuple[str, ...]  # label strings in class order
    metric: str  # official metric (ssl_kd.text.metrics)
    dev: str = "dev.tsv"
    header: bool = True
    class_names: tuple[str, ...] = ()
    task: str = "classification"  # or "regression": one output trained on the float gold (ssl_kd.data.types)
    class_form: str = ""  # a regression task's classification twin (stsb -> stsb6)

    def layout(self) -> str:
        columns = ", ".join(str(c) for c in (*self.text_columns, self.label_column))
        head = "a header line naming the columns" if self.header else "no header line"
        return f"tab-separated, {head}; columns used: {columns}; labels: {', '.join(self.labels)}"


NLI = ("entailment", "not_entailment")
TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("CoLA", (3,), 1, ("0", "1"), "matthews", header=False, class_names=("unacceptable", "acceptable")),
    "sst2": GlueTask("SST-2", ("sentence",), "label", ("0", "1"), "accuracy", class_names=("negative", "positive")),
    "mrpc": GlueTask("MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), "f1", class_names=("not_equivalent", "equivalent")),
    "qqp": GlueTask("QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), "f1", class_names=("not_duplicate", "duplicate")),
    "stsb": GlueTask("STS-B", ("sentence1", "sentence2"), "score", tuple(str(i) for i in range(6)), "pearson_spearman",
                     task="regression", class_form="stsb6"),
    "stsb6": GlueTask("STS-B", ("sentence1", "sentence2"), "score", tuple(str(i) for i in range(6)), "pearson_spearman"),
    "mnli": GlueTask("MNLI", ("sentence1", "sentence2"), "gold_label", ("contradiction", "entailment", "neutral"),
                     "accuracy", dev="dev_matched.tsv"),
    "mnli-mm": GlueTask("MNLI", ("sentence1", "sentence2"), "gold_label", ("contradiction", "entailment", "neutral"),
                        "accuracy", dev="dev_mismatched.tsv"),
    "qnli": GlueTask("QNLI", ("question", "sentence"), "label", NLI, "accuracy"),
    "rte": GlueTask("RTE", ("sentence1", "sentence2"), "label", NLI, "accuracy"),
    "wnli": GlueTask("WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), "accuracy",
                     class_names=("not_entailment", "entailment")),
}


def has_scores(task: GlueTask) -> bool:
    """Labels are float scores (STS-B in either form), binned into classes and kept as gold."""
    return task.metric == "pearson_spearman"


def label_index(task: GlueTask, value: str) -> int:
    """The class of a label string; STS-B scores (0.0..5.0) round half up (not Python's half-to-even)."""
    if has_scores(task):
        return min(5, max(0, math.floor(float(value) + 0.5)))
    return task.labels.index(value)


def read_tsv(path: Path, task: GlueTask) -> tuple[list[tuple[str, ...]], list[int], list[float]]:
    """(texts, labels, gold scores) of one release file (scores only for STS-B, else empty); rows
    with too few fields are skipped and counted on stderr; a malformed file raises DataError naming
    it and the layout."""
    if not path.is_file():
        raise DataError(f"GLUE file {path} is missing; expected the release layout <data-dir>/glue/{task.folder}/"
                        f"{{train.tsv,{task.dev}}} ({task.layout()}); {LOCAL_FIXES}")
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig: MRPC's header starts with a BOM
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    columns: list[int] = []
    if task.header:
        header, rows = (rows[0] if rows else []), rows[1:]
        missing = [c for c in (*task.text_columns, task.label_column) if c not in header]
        if missing:
            raise DataError(f"GLUE file {path}: header {header[:12]} lacks column(s) {missing}; expected {task.layout()}")
        columns = [header.index(c) for c in (*task.text_columns, task.label_column)]  # type: ignore[arg-type]
        width = len(header)
    else:
        columns = [int(c) for c in (*task.text_columns, task.label_column)]
        width = max(columns) + 1
    texts, labels, gold = [], [], []
    short = []
    for line, row in enumerate(rows, start=2 if task.header else 1):
        if len(row) < width:
            short.append(line)
            continue
        *text, label = (row[c] for c in columns)
        try:
            labels.append(label_index(task, label))
            if has_scores(task):
                gold.append(float(label))
        except ValueError:
            raise DataError(f"GLUE file {path}, line {line}: label {label!r} is not one of {', '.join(task.labels)} "
                            f"({task.layout()})") from None
        texts.append(tuple(text))
    if short:
        shown = ", ".join(map(str, short[:5])) + (", ..." if len(short) > 5 else "")
        print(f"GLUE file {path}: skipped {len(short)} row(s) with fewer than {width} tab-separated fields "
              f"(line {shown})", file=sys.stderr)
    if not texts:
        raise DataError(f"GLUE file {path} holds no examples ({len(short)} short rows skipped); expected {task.layout()}")
    return texts, labels, gold


def glue_loader(task: GlueTask):
    def load(root: Path, download: bool) -> RawData:
        """`root` is <data-dir>/<family>; GLUE lives in <data-dir>/glue/<TASK>/ (no download: see README)."""
        folder = root.parent / "glue" / task.folder
        train_text, train_y, train_gold = read_tsv(folder / "train.tsv", task)
        test_text, test_y, test_gold = read_tsv(folder / task.dev, task)
        empty = torch.empty(0, 1, dtype=torch.long)
        names = list(task.class_names or task.labels)
        gold = {"train_gold": torch.tensor(train_gold, dtype=torch.float64),
                "test_gold": torch.tensor(test_gold, dtype=torch.float64)} if has_scores(task) else {}
        return RawData(empty, torch.tensor(train_y), empty, torch.tensor(test_y), names, train_text, test_text, **gold)

    return load


FORMS = {"stsb": "regression: one output, MSE on the float gold; ", "stsb6": "six classes, the score rounded half up; "}
for _name, _task in TASKS.items():
    register_dataset(
        DatasetFamily(
            name=_name,
            num_classes=len(_task.labels),
            policy=TextPolicy(metric=_task.metric),
            load=glue_loader(_task),
            protocol=GLUE_PROTOCOL,
            presets=(1000,) if _name == "sst2" else (),
            description=f"GLUE {_task.folder} ({'pair' if len(_task.text_columns) > 1 else 'single sentence'}, "
                        f"{FORMS[_name] if _name in FORMS else ''}{_task.metric}; evaluated on {_task.dev}), "
                        f"from <data-dir>/glue/{_task.folder}/",
            task=_task.task,
            class_form=_task.class_form,
        )
    )
