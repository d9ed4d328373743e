"""Multi-seed comparisons: run several algorithms (or config variants) over seeds, one table.

Each run is a `python -m ssl_kd train` subprocess (tools/train.py, through the package, so a sweep
runs from an installed ssl_kd as from the repository) with one CPU thread, `jobs` at a time, so a sweep on a
2-core machine uses both cores. Every run's arguments are resolved to its config before any run
starts (a bad name or value stops the sweep at once). A finished run (a summary.json not marked
`interrupted`) is reused when re-run only if its config.yaml matches the config its arguments give
now; a differing one stops the sweep naming the options, unless `overwrite` (then it is run
again). Unfinished runs are started again from scratch.
"""
from __future__ import annotations

import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

import yaml

from ssl_kd.errors import ConfigError, SSLKDError
from ssl_kd.trainer.logger import run_finished

TRAIN = ["-m", "ssl_kd", "train"]  # after sys.executable: the installed package's train command
IGNORED = ("train.out", "train.progress")  # differ without changing what a run computes
# what `train.optimizer=auto` resolves to when the run starts (ssl_kd.trainer.optim.record_optimizer):
# a run's config.yaml records the resolved values, its planned config still says auto
RESOLVED_AT_START = ("train.optimizer", "train.lr_schedule", "train.warmup_steps")


@dataclass
class Variant:
    """One row of the table: a label and the train.py arguments that define it."""

    label: str
    args: list[str] = field(default_factory=list)


def parse_variant(spec: str) -> Variant:
    """`LABEL=train.py arguments` (a `--variant` option) as a Variant."""
    label, sep, args = spec.partition("=")
    if not sep or not label.strip():
        raise ConfigError(f"--variant {spec!r}: write LABEL=\"train.py arguments\", e.g. nomask=\"--algo kdaif --set algo.threshold=0\"")
    return Variant(label.strip(), shlex.split(args))


def sets_split_seed(args: list[str]) -> bool:
    """Whether train.py arguments set data.split_seed themselves (clashing with --vary-split)."""
    return any("data.split_seed=" in a.replace(" ", "") for a in args)


def seed_args(seed: int, vary_split: bool) -> list[str]:
    """The per-seed train.py arguments: the training seed and, with `vary_split`, the split seed too, so
    each seed draws its own labelled set, label-noise flips and mismatch pool."""
    return ["--seed", str(seed), *(["--set", f"data.split_seed={seed}"] if vary_split else [])]


def train_args(variant: Variant, seed: int, common: list[str], out: Path, vary_split: bool) -> list[str]:
    """The tools/train.py arguments of one run."""
    return [*common, *variant.args, *seed_args(seed, vary_split), "--out", str(out / f"{variant.label}_s{seed}"),
            "--no-progress", "--overwrite"]


def planned_config(args: list[str], what: str) -> dict:
    """The config train.py `args` would run with, resolved here (nothing trained or written)."""
    import contextlib
    import io

    from ssl_kd.cli import make_plan, parser

    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):
            return make_plan(parser().parse_args(args)).cfg.to_dict()
    except SystemExit as err:  # argparse: an unknown flag or a bad value
        message = usage.getvalue().strip().splitlines()[-1:] or [f"exit {err.code}"]
        raise ConfigError(f"{what}: {message[0]}") from None
    except ConfigError as err:
        raise ConfigError(f"{what}: {err}") from None


def flat(tree: dict, prefix: str = "") -> dict[str, object]:
    items: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def differences(run_dir: Path, planned: dict) -> list[str]:
    """`key: was -> now` for every option where `run_dir`'s config.yaml differs from `planned`
    (both with every default filled in)."""
    from ssl_kd.run import config_from_dict

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        saved = config_from_dict({k: v for k, v in saved.items() if k not in ("plugins", "run_id")}).to_dict()
    except (OSError, yaml.YAMLError, SSLKDError, KeyError, TypeError) as err:
        return [f"its config.yaml cannot be read ({err})"]
    was, now = flat(saved), flat(planned)
    return [f"{k}: {was.get(k, '(unset)')} -> {now.get(k, '(unset)')}" for k in sorted(set(was) | set(now))
            if k not in IGNORED and was.get(k) != now.get(k)
            and not (k in RESOLVED_AT_START and now.get("train.optimizer") == "auto")]


def check_reuse(tasks: list[tuple[Variant, int]], common: list[str], out: Path, vary_split: bool,
                overwrite: bool) -> set[tuple[str, int]]:
    """Resolve every run's config before any starts; the finished runs whose config differs from
    their arguments now (to run again with `overwrite`, else a ConfigError naming the options)."""
    stale = set()
    for variant, seed in tasks:
        what = f"run {variant.label} seed {seed}"
        planned = planned_config(train_args(variant, seed, common, out, vary_split), what)
        run_dir = out / f"{variant.label}_s{seed}"
        if not run_finished(run_dir):
            continue
        diff = differences(run_dir, planned)
        if diff and not overwrite:
            raise ConfigError(f"{run_dir} was made with other settings ({'; '.join(diff[:6])}"
                              f"{f'; {len(diff) - 6} more' if len(diff) > 6 else ''}); rerun with --overwrite to "
                              f"replace it, or choose another --out")
        if diff:
            stale.add((variant.label, seed))
    return stale


def run_one(variant: Variant, seed: int, common: list[str], out: Path, vary_split: bool = False, rerun: bool = False) -> dict:
    run_dir = out / f"{variant.label}_s{seed}"
    if rerun or not run_finished(run_dir):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [sys.executable, *TRAIN, *train_args(variant, seed, common, out, vary_split)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "logs" / f"{variant.label}_s{seed}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-3:]
            raise SSLKDError(f"run {variant.label} seed {seed} failed (exit {proc.returncode}): {' | '.join(tail)}; "
                             f"see {out / 'logs' / f'{variant.label}_s{seed}.log'}")
    return read_run(run_dir)


def read_run(run_dir: Path) -> dict:
    """A finished run's figures: its summary.json keys, the last evaluation's `final_<key>`, and
    `last`/`median`: the run's own metric (top1, or a text task's official metric such as
    CoLA's matthews), so one sweep compares every task on the number it is judged by."""
    summary = json.loads((run_dir / "summary.json").read_text())
    m = summary.get("task_metric", "top1")
    own = {alias: summary[f"{alias}_{m}"] for alias in ("last", "median") if f"{alias}_{m}" in summary}
    return {**summary, **final_metrics(run_dir), **own}


def final_metrics(run_dir: Path) -> dict[str, float]:
    """The last evaluation's numeric metrics as `final_<key>` (e.g. `final_ema_val_top1`, the
    validation accuracy to choose settings by), so any of them can be a sweep's metric."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    last = json.loads(lines[-1]) if lines else {}
    return {f"final_{k}": v for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def sweep(variants: list[Variant], seeds: list[int], common: list[str], out: Path, jobs: int, metric: str,
          vary_split: bool = False, overwrite: bool = False) -> list[dict]:
    """Run every variant x seed and return one row per variant with the median, min and max of `metric`;
    with `vary_split`, seed k also sets data.split_seed=k; with `overwrite`, finished runs made with
    other settings are run again (else they stop the sweep before anything runs)."""
    if not seeds or not variants:
        raise ConfigError(f"nothing to run ({len(variants)} rows x {len(seeds)} seeds); give --seeds 1 or more and at least one row")
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: give 1 or more runs in parallel")
    if vary_split and (sets_split_seed(common) or any(sets_split_seed(v.args) for v in variants)):
        raise ConfigError("--vary-split sets data.split_seed to each seed; drop the --set data.split_seed=... given with it")
    tasks = [(v, s) for v in variants for s in seeds]
    stale = check_reuse(tasks, common, out, vary_split, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, int], dict] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(tasks), desc="runs") as bar:
        futures = {pool.submit(run_one, v, s, common, out, vary_split, (v.label, s) in stale): (v.label, s) for v, s in tasks}
        for future in futures:
            results[futures[future]] = future.result()
            bar.update(1)
    rows = []
    for v in variants:
        values = [results[(v.label, s)][metric] for s in seeds]
        rows.append({
            "variant": v.label, "args": " ".join(v.args), "seeds": len(seeds),
            "median": statistics.median(values), "min": min(values), "max": max(values),
            "mean": statistics.mean(values), "values": values,
        })
    write_table(rows, out, metric, common)
    return rows


def write_table(rows: list[dict], out: Path, metric: str, common: list[str]) -> None:
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["variant", "args", "seeds", "median", "min", "max", "mean", "values"])
        writer.writeheader()
        writer.writerows(rows)
    named = metric if metric not in ("last", "median") else f"{metric} of each run's metric (top1 or the task's)"
    lines = [f"`{named}` (%) over seeds; common arguments: `{' '.join(common)}`", "",
             "| variant | median | range (min-max) | mean | per seed | arguments |", "|---|---|---|---|---|---|"]
    for r in rows:
        per_seed = ", ".join(f"{v:.1f}" for v in r["values"])
        lines.append(f"| {r['variant']} | {r['median']:.2f} | {r['min']:.2f}-{r['max']:.2f} | {r['mean']:.2f} | {per_seed} | `{r['args']}` |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
