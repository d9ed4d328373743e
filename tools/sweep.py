"""Compare algorithms over seeds in one table:
`python tools/sweep.py --algos supervised,fixmatch --dataset digits_30 --seeds 5 --out runs/sweep`.
Arguments after `--` go to every run (e.g. `-- --steps 1000 --set train.eval_every=500`)."""
import argparse
import sys
from pathlib import Path

from ssl_kd.errors import SSLKDError
from ssl_kd.sweep import Variant, sweep


def main() -> int:
    argv = sys.argv[1:]
    common = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--algos", required=True, help="comma-separated algorithm names")
    p.add_argument("--dataset", required=True)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one CPU thread each)")
    p.add_argument("--metric", default="last", help="last/median: of the run's metric (top1, or a text task's official "
                   "metric); or a summary.json key, or final_<key> of the last evaluation, to compare")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    variants = [Variant(a, ["--algo", a]) for a in args.algos.split(",")]
    try:
        sweep(variants, list(range(args.seeds)), ["--dataset", args.dataset, *common], Path(args.out), args.jobs, args.metric)
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((Path(args.out) / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
