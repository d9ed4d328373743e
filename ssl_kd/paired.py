"""Paired comparisons over seeds: runs of several algorithms with the same seeds and data settings,
read from any number of run folders (e.g. several `tools/sweep.py` outputs), compared seed by seed.

Runs are grouped by their setting (dataset, step budget and every `data.*` option) and paired by
training seed within a setting. For each algorithm the table gives the median and range of the
metric; against each reference algorithm, the mean paired difference, a percentile bootstrap 95%
interval (seeds resampled with replacement, seeded) and the wins/losses/ties over common seeds.
"""
from __future__ import annotations

import dataclasses
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ssl_kd.config import LOCATION_ONLY, DataConfig
from ssl_kd.errors import ConfigError
from ssl_kd.sweep import read_run

SWEEP_FOLDER = re.compile(r"(?P<label>.+)_s(?P<seed>\d+)")  # tools/sweep.py names runs <label>_s<seed>


@dataclass(frozen=True)
class Run:
    label: str  # the sweep's row label (the algorithm, or a variant name)
    seed: int
    setting: str
    value: float
    path: Path


@dataclass(frozen=True)
class Paired:
    """The paired difference of one algorithm against one reference."""

    pairs: int
    mean: float
    low: float
    high: float
    wins: int
    losses: int
    ties: int


def run_folders(paths: list[Path]) -> list[Path]:
    """Every run folder (one with a config.yaml) given directly or as a child of a given folder."""
    found = []
    for path in paths:
        if (path / "config.yaml").is_file():
            found.append(path)
            continue
        children = sorted(p for p in path.glob("*") if (p / "config.yaml").is_file()) if path.is_dir() else []
        if not children:
            raise ConfigError(f"{path} is neither a run folder nor a folder of runs (no config.yaml); "
                              f"give a tools/sweep.py --out folder or a run folder.")
        found.extend(children)
    return found


def setting_of(config: dict[str, Any]) -> str:
    """What must match for two runs to be paired: dataset, steps and every data option (named
    when it differs from its default, so configs written before an option existed still pair), except
    the options that only say where the data lives."""
    train, defaults = config["train"], dataclasses.asdict(DataConfig())
    data = {**defaults, **config.get("data", {})}
    options = [f"data.{k}={v}" for k, v in sorted(data.items()) if v != defaults.get(k) and k not in LOCATION_ONLY]
    return ", ".join([train["dataset"], f"{train['steps']} steps", *options])


def read_runs(paths: list[Path], metric: str) -> tuple[list[Run], list[Path]]:
    """(finished runs, unfinished folders without a summary.json)."""
    runs, unfinished, seen = [], [], {}
    for folder in run_folders(paths):
        if not (folder / "summary.json").is_file():
            unfinished.append(folder)
            continue
        config = yaml.safe_load((folder / "config.yaml").read_text())
        seed = int(config["train"]["seed"])
        match = SWEEP_FOLDER.fullmatch(folder.name)
        label = match["label"] if match and int(match["seed"]) == seed else config["train"]["algo"]
        figures = read_run(folder)
        if metric not in figures:
            raise ConfigError(f"{folder}: no metric {metric!r}; choose one of {', '.join(sorted(figures))}.")
        run = Run(label, seed, setting_of(config), float(figures[metric]), folder)
        key = (run.label, run.seed, run.setting)
        if key in seen:
            raise ConfigError(f"{seen[key]} and {folder} are both {run.label} seed {seed} in the same setting; "
                              f"pass only one of them.")
        seen[key] = folder
        runs.append(run)
    return runs, unfinished


def bootstrap_interval(diffs: np.ndarray, resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `diffs`, resampling them with replacement."""
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired(values: dict[int, float], reference: dict[int, float], resamples: int, seed: int) -> Paired | None:
    """`values` minus `reference` over their common seeds, or None without any."""
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        return None
    diffs = np.array([values[s] - reference[s] for s in seeds])
    low, high = bootstrap_interval(diffs, resamples, seed)
    return Paired(len(seeds), float(diffs.mean()), low, high, int((diffs > 0).sum()), int((diffs < 0).sum()),
                  int((diffs == 0).sum()))


def table(runs: list[Run], references: list[str], metric: str, resamples: int, seed: int,
          order: list[str] | None = None) -> str:
    """One Markdown table per setting."""
    blocks = [f"Metric `{metric}`; against each reference: mean paired difference over common seeds, "
              f"percentile bootstrap 95% interval ({resamples:,} resamples of seeds, seed {seed}), wins/losses/ties."]
    for setting in sorted({r.setting for r in runs}):
        by_label: dict[str, dict[int, float]] = {}
        for r in runs:
            if r.setting == setting:
                by_label.setdefault(r.label, {})[r.seed] = r.value
        labels = [label for label in (order or sorted(by_label)) if label in by_label]
        refs = [ref for ref in references if ref in by_label]
        missing = [ref for ref in references if ref not in by_label]
        head = ["algorithm", "seeds", "median (range)"]
        for ref in refs:
            head += [f"vs {ref}: mean [95% CI]", "W/L/T"]
        lines = [f"### {setting}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label in labels:
            values = by_label[label]
            cells = [label, ",".join(str(s) for s in sorted(values)),
                     f"{statistics.median(values.values()):.1f} ({min(values.values()):.1f}-{max(values.values()):.1f})"]
            comparisons = [None if ref == label else paired(values, by_label[ref], resamples, seed) for ref in refs]
            for c in comparisons:
                cells += ["", ""] if c is None else [f"{c.mean:+.2f} [{c.low:+.2f}, {c.high:+.2f}] (n={c.pairs})",
                                                     f"{c.wins}/{c.losses}/{c.ties}"]
            lines.append("| " + " | ".join(cells) + " |")
        if missing:
            lines += ["", f"No runs of {', '.join(missing)} in this setting."]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
