"""The weight diagnostics of weighted runs, as Markdown: median (min-max) over seeds of what each run
logged at its last evaluation.

    python tools/weight_diag.py runs/i16/mm50 [more sweep or run folders]

Columns: `applied_*` are the weights the loss applied since the previous evaluation, over the
training batches themselves (the algorithm's mask times the influence weight): ROC-AUC of a high
weight at finding correct pseudo-labels, of a low weight at finding unseen-class images, and the mean
weight of unseen-class images over that of seen-class ones. `(probe)`: the influence weight alone and
the model's own confidence on a fixed probe of unlabelled images. The truth behind them is read for
monitoring only. Rows are the sweep labels; runs are grouped by setting as tools/paired.py does.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml

from ssl_kd.errors import SSLKDError
from ssl_kd.paired import label_of, run_folders, setting_of
from ssl_kd.sweep import final_metrics

KEYS = ("weight/applied_correct_auc", "weight/applied_ood_auc", "weight/applied_ood_ratio",
        "probe/correct_auc_weight", "probe/correct_auc_confidence", "probe/ood_auc_weight", "probe/ood_auc_confidence")


def column(key: str) -> str:
    name = key.split("/", 1)[1]
    return name if key.startswith("weight/") else f"{name} (probe)"


def collect(paths: list[Path]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """setting -> row label -> key -> the finished runs' last logged values (rows that log none are left out)."""
    found: dict[str, dict[str, dict[str, list[float]]]] = {}
    for folder in run_folders(paths):
        if not (folder / "summary.json").is_file():
            continue
        config = yaml.safe_load((folder / "config.yaml").read_text())
        last = final_metrics(folder)
        values = {k: float(last[f"final_{k}"]) for k in KEYS if f"final_{k}" in last}
        if values:
            row = found.setdefault(setting_of(config), {}).setdefault(label_of(folder, config), {})
            for k, v in values.items():
                row.setdefault(k, []).append(v)
    return found


def cell(values: list[float] | None) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})" if values else "-"


def table(found: dict[str, dict[str, dict[str, list[float]]]]) -> str:
    blocks = []
    for setting, rows in sorted(found.items()):
        lines = [f"### {setting}", "", "| row | n | " + " | ".join(column(k) for k in KEYS) + " |",
                 "|---|---|" + "---|" * len(KEYS)]
        for label, by_key in sorted(rows.items()):
            n = max(len(v) for v in by_key.values())
            lines.append(f"| {label} | {n} | " + " | ".join(cell(by_key.get(k)) for k in KEYS) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="sweep output folders or run folders")
    args = p.parse_args(argv)
    try:
        found = collect(args.folders)
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not found:
        print(f"error: no finished run under {', '.join(map(str, args.folders))} logged weight diagnostics "
              f"(only runs with weights.kind=influence do)", file=sys.stderr)
        return 2
    print(table(found), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
