"""Compare algorithms over seeds in one table:
`python tools/sweep.py --algos supervised,fixmatch --dataset digits_30 --seeds 5 --out runs/sweep`.
`--variant 'LABEL=train.py arguments'` (repeatable) adds a row of your own, e.g.
`--variant 'flexmatch_w=--algo flexmatch --set weights.kind=influence'`; `--vary-split` makes seed k
also set data.split_seed=k (each seed its own labelled set, noise flips and mismatch pool).
Arguments after `--` go to every run (e.g. `-- --steps 1000 --set train.eval_every=500`)."""
import argparse
import sys
from pathlib import Path

from ssl_kd.errors import ConfigError, SSLKDError
from ssl_kd.sweep import Variant, parse_variant, sweep


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    common = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", default="", help="comma-separated algorithm names (rows `--algo NAME`)")
    p.add_argument("--variant", action="append", default=[], metavar="'LABEL=ARGS'", help="a row of your own (repeatable)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--vary-split", action="store_true", help="seed k also sets data.split_seed=k")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one CPU thread each)")
    p.add_argument("--metric", default="last", help="last/median: of the run's metric (top1, or a text task's official "
                   "metric); or a summary.json key, or final_<key> of the last evaluation, to compare")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true",
                   help="run again the finished runs in --out whose settings differ from these (else they stop the sweep)")
    args = p.parse_args(argv)
    try:
        variants = [Variant(a, ["--algo", a]) for a in args.algos.split(",") if a] + [parse_variant(v) for v in args.variant]
        if not variants:
            raise ConfigError("no rows: give --algos a,b and/or --variant 'LABEL=train.py arguments'")
        labels = [v.label for v in variants]
        if len(set(labels)) < len(labels):
            raise ConfigError(f"row labels repeat ({', '.join(sorted({x for x in labels if labels.count(x) > 1}))}); "
                              f"give each --algos name or --variant label once")
        sweep(variants, list(range(args.seeds)), ["--dataset", args.dataset, *common], Path(args.out), args.jobs, args.metric,
              args.vary_split, args.overwrite)
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((Path(args.out) / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
