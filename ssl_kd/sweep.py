"""Multi-seed comparisons: run several algorithms (or config variants) over seeds, one table.

Each run is a `tools/train.py` subprocess with one CPU thread, `jobs` at a time, so a sweep on a
2-core machine uses both cores; finished runs (a summary.json not marked `interrupted`) are reused
when re-run, unfinished ones are started again from scratch (`--overwrite`).
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ssl_kd.errors import SSLKDError

TRAIN = Path(__file__).resolve().parent.parent / "tools" / "train.py"


@dataclass
class Variant:
    """One row of the table: a label and the train.py arguments that define it."""

    label: str
    args: list[str] = field(default_factory=list)


def run_one(variant: Variant, seed: int, common: list[str], out: Path) -> dict:
    run_dir = out / f"{variant.label}_s{seed}"
    summary = run_dir / "summary.json"
    if not summary.exists() or json.loads(summary.read_text()).get("interrupted"):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [sys.executable, str(TRAIN), *common, *variant.args, "--seed", str(seed), "--out", str(run_dir), "--no-progress",
               "--overwrite"]
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


def sweep(variants: list[Variant], seeds: list[int], common: list[str], out: Path, jobs: int, metric: str) -> list[dict]:
    """Run every variant x seed and return one row per variant with the median, min and max of `metric`."""
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(v, s) for v in variants for s in seeds]
    results: dict[tuple[str, int], dict] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(tasks), desc="runs") as bar:
        futures = {pool.submit(run_one, v, s, common, out): (v.label, s) for v, s in tasks}
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
