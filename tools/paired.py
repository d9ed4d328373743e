"""Paired comparisons over seeds, as Markdown:
`python tools/paired.py runs/sweep_a runs/sweep_b --ref kd,flexmatch [--metric last]`.

Give tools/sweep.py output folders and/or run folders; runs are grouped by setting (dataset, steps,
data options but the split seed), paired by (seed, split seed), so `--vary-split` sweeps pair seed by
seed, and compared with each `--ref` algorithm (mean paired difference, bootstrap and t 95%
intervals from 5 pairs on, wins/losses/ties, two-sided exact sign-test p). Rows are the sweep labels
(`<label>_s<seed>` folders) or else each run's algorithm."""
import argparse
import sys
from pathlib import Path

from ssl_kd.errors import SSLKDError
from ssl_kd.paired import read_runs, table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="sweep output folders or run folders")
    p.add_argument("--ref", default="", help="comma-separated reference algorithms (row labels) to compare against")
    p.add_argument("--metric", default="last", help="last/median: of the run's metric (top1, or a text task's official "
                   "metric); or a summary.json key, or final_<key> of the last evaluation")
    p.add_argument("--order", default="", help="comma-separated row order (default: alphabetical)")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--out", type=Path, help="also write the Markdown here")
    args = p.parse_args(argv)
    try:
        runs, unfinished = read_runs(args.folders, args.metric)
        text = table(runs, [r for r in args.ref.split(",") if r], args.metric, args.resamples, args.seed,
                     [o for o in args.order.split(",") if o] or None)
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for folder in unfinished:
        print(f"skipped (unfinished, no summary.json): {folder}", file=sys.stderr)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
