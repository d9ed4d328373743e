"""Run-folder logging: TensorBoard scalars/histograms, metrics.jsonl and summary.json."""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from ssl_kd.config import LOCATION_ONLY, MODALITY_ONLY
from ssl_kd.errors import DataError
from ssl_kd.text.metrics import METRIC_PARTS
from ssl_kd.trainer.optim import SGD_ONLY
from ssl_kd.trainer.schedule import SCHEDULE_OPTIONS
from ssl_kd.trainer.selection import selected_on


class RunLogger:
    """Writes `<run>/tb/`, `<run>/metrics.jsonl` and `<run>/summary.json`.

    `eval_key` is the test figure the summary is about (`ema_top1` when an EMA is kept, as in
    FixMatch's protocol, else `top1`; a text task's official metric, e.g. `f1`, in place of top1).
    `select_key` is the figure `best.pt` is chosen on: the validation split's (`ema_val_top1`)
    when the dataset has one, else the test split's, which is an oracle choice and is named so in
    the summary (`best_test_top1_oracle`). Summary keys carry the metric's name (`last_f1`).
    """

    def __init__(self, run_dir: Path, eval_key: str, resume_step: int | None = None, select_key: str | None = None,
                 class_names: list[str] | None = None, new_session: bool | None = None) -> None:
        """`resume_step`: go on from the evaluations in run_dir's metrics.jsonl up to that step (a
        resume, or a fork that carried its source's history); `new_session`: open a HParams session
        (default: only for a fresh run; a fork opens its own, a resume in place does not)."""
        self.run_dir = run_dir
        self.class_names = class_names or []
        self.eval_key = eval_key
        self.metric = eval_key.removeprefix("ema_")  # top1, f1, matthews, pearson_spearman
        self.select_key = select_key or eval_key
        self.metrics_path = run_dir / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        if resume_step is not None and self.metrics_path.exists():
            # Drop evaluations written after the checkpoint we resume from; they will be redone.
            self.history = [r for r in read_metrics(self.metrics_path) if r["step"] <= resume_step]
            self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
        self.new_session = resume_step is None if new_session is None else new_session

    def scalars(self, values: dict[str, float | torch.Tensor], step: int) -> None:
        for key, value in values.items():
            self.tb.add_scalar(key, float(value), step)

    def histogram(self, key: str, values: torch.Tensor, step: int) -> None:
        self.tb.add_histogram(key, values.detach().float().cpu(), step)

    def figure(self, tag: str, fig: Any, step: int) -> None:
        self.tb.add_figure(tag, fig, step, close=False)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        self.tb.add_image(tag, image, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.tb.add_text(tag, text, step)

    def hparams(self, values: dict[str, Any], median_last: int) -> None:
        """Open the run's one session in TensorBoard's HParams tab: its settings and the summary
        figures it reports, whose values every summary() logs as `hparam/<figure>` scalars. A run
        resumed in its own folder continues the session its start opened."""
        if not self.new_session:
            return
        figures = {f"hparam/{k}": 0.0 for k in self.figures(0, 0.0, median_last) if is_figure(k)}
        experiment, session_start, _ = hparams_summaries(values, figures)
        for summary in (experiment, session_start):
            self.tb.file_writer.add_summary(summary)
        self.tb.flush()

    def per_class(self, row: dict[str, Any]) -> None:
        """Per-class accuracies (`per_class`, `ema_per_class`, ...) as scalars named by class."""
        for key, values in row.items():
            if key.endswith("per_class") and isinstance(values, list):
                names = self.class_names if len(self.class_names) == len(values) else [str(i) for i in range(len(values))]
                for name, value in zip(names, values):
                    self.tb.add_scalar(f"eval_{key}/{name}", value, row["step"])

    def evaluation(self, row: dict[str, Any]) -> bool:
        """Record one evaluation; returns True when it is the best so far on `select_key`."""
        best_before = max((score(r[self.select_key]) for r in self.history), default=float("-inf"))
        row = rounded(row)  # 15.999999642 -> 16.0: float32 noise is not a difference
        self.history.append(row)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "step":
                self.tb.add_scalar(f"eval/{key}", value, row["step"])
        self.per_class(row)
        self.tb.flush()
        return score(row[self.select_key]) > best_before

    def summary(self, steps: int, wall_s: float, median_last: int, extra: dict[str, Any] | None = None,
                train_s: float | None = None) -> dict[str, Any]:
        """Write and return summary.json (`figures`), and log its figures for the HParams tab."""
        summary = self.figures(steps, wall_s, median_last, extra, train_s)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        for key, value in summary.items():
            if is_figure(key) and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(f"hparam/{key}", value, steps)
        self.tb.flush()
        return summary

    def figures(self, steps: int, wall_s: float, median_last: int, extra: dict[str, Any] | None = None,
                train_s: float | None = None) -> dict[str, Any]:
        """The run's summary. `selected_on` says what best.pt was chosen on (val, last, or test:
        ssl_kd.trainer.selection). Test figures selected on the test split carry `oracle`
        in their name; a result to report is `median_<m>`, `last_<m>` or `test_<m>_at_best_val`, with
        <m> the run's metric (`task_metric`: top1, or a text task's official metric); a metric that is
        a mean (STS-B's pearson_spearman) has its parts beside it (`last_pearson`, `last_spearman`)."""
        m = self.metric
        accs = [r[self.eval_key] for r in self.history]
        summary: dict[str, Any] = {
            "metric": self.eval_key,
            "task_metric": m,
            "selected_on": selected_on(self.select_key, self.eval_key),
            f"last_{m}": accs[-1] if accs else None,
            f"median_{m}": statistics.median(accs[-median_last:]) if accs else None,
            "median_over_last": min(median_last, len(accs)),  # evaluations in median_<m> (FixMatch's protocol: 20)
            f"best_test_{m}_oracle": max(accs, key=score, default=None),
        }
        prefix = self.eval_key[: -len(m)]
        last = self.history[-1] if self.history else {}
        summary.update({f"last_{part}": last.get(prefix + part) for part in METRIC_PARTS.get(m, ())})
        if selected_on(self.select_key, self.eval_key) == "val":
            best = max(self.history, key=lambda r: score(r[self.select_key]), default=None)
            summary[f"best_val_{m}"] = best[self.select_key] if best else None
            summary[f"test_{m}_at_best_val"] = best[self.eval_key] if best else None
            summary.update({f"test_{part}_at_best_val": (best or {}).get(prefix + part) for part in METRIC_PARTS.get(m, ())})
        train_s = wall_s if train_s is None else train_s
        summary.update({
            "evaluations": len(accs),
            "steps": steps,
            "wall_s": wall_s,
            "train_s": train_s,
            "steps_per_s": steps / train_s if train_s > 0 else None,
            **(extra or {}),
        })
        return rounded(summary)

    def close(self) -> None:
        self.tb.close()


FIGURE_PREFIXES = ("last_", "median_", "test_", "best_")  # the summary's results, the HParams tab's metrics


def is_figure(key: str) -> bool:
    """A summary key that is a result (not `median_over_last`, the count of evaluations a median covers)."""
    return key.startswith(FIGURE_PREFIXES) and key != "median_over_last"
NOT_SETTINGS = ("out", "data_dir", "extended", "progress", "device", "evals")  # where and how it ran, not what


def run_hparams(cfg: Any, modality: str = "image", device_type: str = "cpu", distributed: bool = False) -> dict[str, Any]:
    """The settings a run is compared by in TensorBoard's HParams tab: the train.*, data.*, algo.*
    and weights.* values that apply to it (lists and None as text), so runs of different algorithms
    share one table. `cfg.train` is the config as it runs (`record_optimizer`); the evaluation
    interval is the resolved one."""
    t = cfg.train
    skip = {*NOT_SETTINGS, *(k for keys in SCHEDULE_OPTIONS.values() for k in keys)} - set(SCHEDULE_OPTIONS[t.lr_schedule])
    skip |= set(SGD_ONLY) if t.optimizer == "adamw" else set()
    skip |= {"channels_last", "amp"} if device_type != "cuda" else {"cpu_amp"}
    skip |= set() if modality == "image" else {"channels_last"}
    skip |= set() if distributed else {"sync_bn", "dist_timeout_s"}
    data_skip = {*LOCATION_ONLY, *(k for m, keys in MODALITY_ONLY.items() if m != modality for k in keys)}
    out: dict[str, Any] = {}
    for section, values, skipped in (("train", {**dataclasses.asdict(t), "eval_every": t.eval_interval()}, skip),
                                     ("data", dataclasses.asdict(cfg.data), data_skip),
                                     ("algo", dataclasses.asdict(cfg.algo) if cfg.algo is not None else {}, set()),
                                     ("weights", dataclasses.asdict(cfg.weights) if cfg.weights.active else {"kind": "none"}, set())):
        for key, value in values.items():
            if key not in skipped:
                out[f"{section}.{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


def run_finished(run_dir: Path) -> bool:
    """Whether the run in `run_dir` wrote the summary of a run that was not interrupted."""
    summary = run_dir / "summary.json"
    return summary.exists() and not json.loads(summary.read_text()).get("interrupted")


def score(value: float) -> float:
    """A figure to rank evaluations by: nan (a correlation of a constant prediction) ranks last."""
    return float("-inf") if math.isnan(value) else value


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl; a torn last line (a crash mid-write) is dropped with a warning."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise DataError(f"{path} line {i + 1} is not JSON ({line[:40]!r}...); repair or delete that line")
            print(f"warning: dropped a torn last line of {path} ({line[:40]!r}...)", file=sys.stderr)
    return rows


def rounded(value: Any, digits: int = 4) -> Any:
    """Floats in JSON shown to users without float noise (97.60000109672546 -> 97.6)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value
