"""Test accuracy against the share of unseen-class images in the unlabelled pool, as Oliver et al.
(2018) plot it: one line per row label, the mean over seeds with its t 95% interval, and beside it
each row's paired difference to `--ref` with its t 95% interval (no interval below 5 pairs).

    python tools/plot_mismatch.py runs/mm/share_* --ref supervised --out docs/mismatch.png

Give the sweep folders of every share (`tools/sweep.py ... --vary-split -- --set
data.unlabelled_mismatch=S`); runs are read and paired as `tools/paired.py` does."""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from ssl_kd.errors import SSLKDError
from ssl_kd.paired import MIN_PAIRS_FOR_INTERVAL, read_runs, t_interval


def share_of(run_dir: Path) -> float:
    data = yaml.safe_load((run_dir / "config.yaml").read_text()).get("data", {})
    return float(data.get("unlabelled_mismatch") or 0.0)


def interval(values: np.ndarray) -> tuple[float, float] | None:
    return t_interval(values) if len(values) >= MIN_PAIRS_FOR_INTERVAL else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--ref", default="supervised", help="row label the right panel compares against")
    p.add_argument("--metric", default="last_top1")
    p.add_argument("--out", type=Path, default=Path("docs/mismatch.png"))
    args = p.parse_args(argv)
    try:
        runs, _ = read_runs(args.folders, args.metric)
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not runs:
        print(f"error: no finished runs under {', '.join(map(str, args.folders))}", file=sys.stderr)
        return 2
    by = defaultdict(dict)  # (label, share) -> {(seed, split seed): value}
    for r in runs:
        by[(r.label, share_of(r.path))][(r.seed, r.split_seed)] = r.value
    labels = sorted({label for label, _ in by})
    shares = sorted({share for _, share in by})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, dx) = plt.subplots(1, 2, figsize=(11, 4))
    for label in labels:
        xs, means, lows, highs, dxs, dmeans, dlows, dhighs = [], [], [], [], [], [], [], []
        for share in shares:
            values = by.get((label, share), {})
            if not values:
                continue
            v = np.array(list(values.values()))
            xs.append(100 * share)
            means.append(v.mean())
            ci = interval(v)
            lows.append(v.mean() - ci[0] if ci else 0.0)
            highs.append(ci[1] - v.mean() if ci else 0.0)
            ref = by.get((args.ref, share), {})
            common = sorted(set(values) & set(ref))
            if label != args.ref and common:
                d = np.array([values[k] - ref[k] for k in common])
                dci = interval(d)
                dxs.append(100 * share)
                dmeans.append(d.mean())
                dlows.append(d.mean() - dci[0] if dci else 0.0)
                dhighs.append(dci[1] - d.mean() if dci else 0.0)
        ax.errorbar(xs, means, yerr=[lows, highs], marker="o", capsize=3, label=label)
        if dxs:
            dx.errorbar(dxs, dmeans, yerr=[dlows, dhighs], marker="o", capsize=3, label=label)
    ax.set(xlabel="unseen-class share of the unlabelled pool (%)", ylabel=f"test accuracy (%, {args.metric})",
           title="mean over seeds, t 95% interval")
    dx.axhline(0.0, color="grey", lw=0.8)
    dx.set(xlabel="unseen-class share of the unlabelled pool (%)", ylabel=f"paired difference to {args.ref} (points)",
           title="paired over seeds, t 95% interval")
    ax.legend()
    dx.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
