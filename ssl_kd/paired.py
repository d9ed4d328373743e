"""Paired comparisons over seeds: runs of several algorithms with the same seeds and data settings,
read from any number of run folders (e.g. several `tools/sweep.py` outputs), compared seed by seed.

Runs are grouped by their setting (dataset, step budget and every `data.*` option but the split
seed) and paired by (training seed, split seed) within a setting, so `tools/sweep.py --vary-split`
runs (split seed = training seed) pair seed by seed. For each algorithm the table gives the median
and range of the metric; against each reference algorithm, the mean paired difference, a percentile
bootstrap 95% interval (seeds resampled with replacement, seeded), a t-interval of the mean
difference, the wins/losses/ties and a two-sided exact sign-test p (ties dropped). Below
`MIN_PAIRS_FOR_INTERVAL` pairs no interval is printed (at 3 pairs the percentile bootstrap is just
[min, max]).
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
from scipy import stats

from ssl_kd.config import LOCATION_ONLY, DataConfig
from ssl_kd.errors import ConfigError
from ssl_kd.sweep import read_run

SWEEP_FOLDER = re.compile(r"(?P<label>.+)_s(?P<seed>\d+)")  # tools/sweep.py names runs <label>_s<seed>
MIN_PAIRS_FOR_INTERVAL = 5


@dataclass(frozen=True)
class Run:
    label: str  # the sweep's row label (the algorithm, or a variant name)
    seed: int
    split_seed: int  # pairs need the same training seed and the same split seed
    setting: str
    value: float
    path: Path


@dataclass(frozen=True)
class Paired:
    """The paired difference of one algorithm against one reference."""

    pairs: int
    mean: float
    low: float | None  # percentile bootstrap; None below MIN_PAIRS_FOR_INTERVAL pairs
    high: float | None
    t_low: float | None  # t-interval of the mean difference; None below MIN_PAIRS_FOR_INTERVAL pairs
    t_high: float | None
    wins: int
    losses: int
    ties: int
    sign_p: float  # two-sided exact sign test, ties dropped (1 when every pair ties)


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
    the options that only say where the data lives and the split seed (part of the pairing key)."""
    train, defaults = config["train"], dataclasses.asdict(DataConfig())
    data = {**defaults, **config.get("data", {})}
    same = lambda a, b: (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)  # noqa: E731 (YAML writes tuples as lists)
    options = [f"data.{k}={v}" for k, v in sorted(data.items())
               if not same(v, defaults.get(k)) and k not in LOCATION_ONLY and k != "split_seed"]
    return ", ".join([train["dataset"], f"{train['steps']} steps", *options])


def label_of(folder: Path, config: dict[str, Any]) -> str:
    """The run's row label: the sweep's `<label>_s<seed>` folder name, else its algorithm."""
    match = SWEEP_FOLDER.fullmatch(folder.name)
    return match["label"] if match and int(match["seed"]) == int(config["train"]["seed"]) else config["train"]["algo"]


def read_runs(paths: list[Path], metric: str) -> tuple[list[Run], list[Path]]:
    """(finished runs, unfinished folders without a summary.json)."""
    runs, unfinished, seen = [], [], {}
    for folder in run_folders(paths):
        if not (folder / "summary.json").is_file():
            unfinished.append(folder)
            continue
        config = yaml.safe_load((folder / "config.yaml").read_text())
        seed, label = int(config["train"]["seed"]), label_of(folder, config)
        figures = read_run(folder)
        if metric not in figures:
            raise ConfigError(f"{folder}: no metric {metric!r}; choose one of {', '.join(sorted(figures))}.")
        split_seed = int(config.get("data", {}).get("split_seed", DataConfig().split_seed))
        run = Run(label, seed, split_seed, setting_of(config), float(figures[metric]), folder)
        key = (run.label, run.seed, run.split_seed, run.setting)
        if key in seen:
            raise ConfigError(f"{seen[key]} and {folder} are both {run.label} seed {seed} (split seed {split_seed}) in the "
                              f"same setting; pass only one of them.")
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


def t_interval(diffs: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of `diffs` (a point when they are all equal)."""
    mean, n = float(diffs.mean()), len(diffs)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * diffs.std(ddof=1) / np.sqrt(n))
    return mean - half, mean + half


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign-test p of wins against losses (ties already dropped); 1 without any."""
    return float(stats.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0


def paired(values: dict, reference: dict, resamples: int, seed: int) -> Paired | None:
    """`values` minus `reference` over their common keys (seeds, or (seed, split seed) pairs), or None
    without any; the intervals only from MIN_PAIRS_FOR_INTERVAL pairs on."""
    keys = sorted(set(values) & set(reference))
    if not keys:
        return None
    diffs = np.array([values[k] - reference[k] for k in keys])
    wins, losses = int((diffs > 0).sum()), int((diffs < 0).sum())
    low = high = t_low = t_high = None
    if len(keys) >= MIN_PAIRS_FOR_INTERVAL:
        low, high = bootstrap_interval(diffs, resamples, seed)
        t_low, t_high = t_interval(diffs)
    return Paired(len(keys), float(diffs.mean()), low, high, t_low, t_high, wins, losses, int((diffs == 0).sum()),
                  sign_test(wins, losses))


def split_note(runs: list[Run]) -> str:
    """How the runs of one setting chose their split seed, for the setting's heading."""
    splits = {r.split_seed for r in runs}
    if len(splits) == 1:
        only = splits.pop()
        return "" if only == DataConfig().split_seed else f", data.split_seed={only}"
    return ", data.split_seed=seed (--vary-split)" if all(r.split_seed == r.seed for r in runs) else ", split seeds vary"


def pair_name(key: tuple[int, int], seed_only: bool) -> str:
    """A pairing key as the seeds column shows it: the training seed, with its split seed when that
    is neither constant over the setting nor the training seed."""
    return str(key[0]) if seed_only else f"{key[0]}/{key[1]}"


def interval_cell(low: float | None, high: float | None) -> str:
    return f"[{low:+.2f}, {high:+.2f}]" if low is not None and high is not None else "-"


def table(runs: list[Run], references: list[str], metric: str, resamples: int, seed: int,
          order: list[str] | None = None) -> str:
    """One Markdown table per setting."""
    blocks = [f"Metric `{metric}`; against each reference: mean paired difference over common (seed, split seed) "
              f"pairs, percentile bootstrap 95% interval ({resamples:,} resamples of seeds, seed {seed}), t 95% interval "
              f"of the mean difference (both only from {MIN_PAIRS_FOR_INTERVAL} pairs on), wins/losses/ties and the "
              f"two-sided exact sign-test p (ties dropped)."]
    for setting in sorted({r.setting for r in runs}):
        members = [r for r in runs if r.setting == setting]
        by_label: dict[str, dict[tuple[int, int], float]] = {}
        for r in members:
            by_label.setdefault(r.label, {})[(r.seed, r.split_seed)] = r.value
        seed_only = len({r.split_seed for r in members}) == 1 or all(r.split_seed == r.seed for r in members)
        labels = [label for label in (order or sorted(by_label)) if label in by_label]
        refs = [ref for ref in references if ref in by_label]
        missing = [ref for ref in references if ref not in by_label]
        head = ["algorithm", "seeds", "median (range)"]
        for ref in refs:
            head += [f"vs {ref}: mean (n)", "bootstrap 95%", "t 95%", "W/L/T", "sign p"]
        lines = [f"### {setting}{split_note(members)}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label in labels:
            values = by_label[label]
            cells = [label, ",".join(pair_name(k, seed_only) for k in sorted(values)),
                     f"{statistics.median(values.values()):.1f} ({min(values.values()):.1f}-{max(values.values()):.1f})"]
            comparisons = [None if ref == label else paired(values, by_label[ref], resamples, seed) for ref in refs]
            for c in comparisons:
                cells += [""] * 5 if c is None else [f"{c.mean:+.2f} (n={c.pairs})", interval_cell(c.low, c.high),
                                                     interval_cell(c.t_low, c.t_high), f"{c.wins}/{c.losses}/{c.ties}",
                                                     f"{c.sign_p:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
        if missing:
            lines += ["", f"No runs of {', '.join(missing)} in this setting."]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
