"""Explain a run: which training examples helped or hurt its model, by influence.

    python tools/explain.py runs/<run> [--test-index N] [--top 32] [--limit N]

RUN is a run folder (its checkpoints/last.pt) or a checkpoint file (`--ckpt FILE` still works).

Writes into <run>/explain/ a PNG grid of the most helpful and most harmful training images (with
labels, pseudo-labels, scores and weights), a weight histogram and a CSV of every example's
score and weight; the figures also go to the run's TensorBoard log (<run>/tb, tags explain/...).
Prints where they are. Plug-ins the run recorded are loaded automatically.
Influence is measured on the validation split (the labelled split if there is none), or on one
test example with --test-index. Sign: I < 0 helps (see ssl_kd.influence). A run trained with
influence weights is scored with its own weights.* estimator. Progress bars on a terminal (--no-progress: none).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssl_kd.errors import ConfigError, SSLKDError
from ssl_kd.influence import write_report
from ssl_kd.influence.explain import SPLITS
from ssl_kd.toolargs import add_run_argument, run_argument
from ssl_kd.trainer.rundir import os_error_message


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_argument(parser)
    parser.add_argument("--test-index", type=int, default=None, help="explain this test example instead of the validation loss")
    parser.add_argument("--top", type=int, default=32, help="examples shown per side (helpful, harmful)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--data-dir", default="", help="where the run's dataset is (default: as the run was trained)")
    parser.add_argument("--split", choices=SPLITS, default="all", help="which training examples to rank")
    parser.add_argument("--model", choices=("ema", "model"), default="ema", help="the EMA model (if the run has one) or the raw one")
    parser.add_argument("--limit", type=int, default=0, help="rank a seeded random subset of this many examples (0: all)")
    parser.add_argument("--out", default="", help="output folder (default: <run>/explain)")
    parser.add_argument("--no-tensorboard", action="store_true", help="do not write the figures to TensorBoard")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars while ranking (shown on a terminal only)")
    parser.add_argument("--plugin", action="append", default=[],
                        help="plug-in file or module to load instead of those the run recorded (e.g. one that moved)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for flag, value in (("--limit", args.limit), ("--top", args.top)):
        if value < 0:
            print(f"error: {flag} {value}: give 0 or more", file=sys.stderr)
            return 2
    try:
        from ssl_kd.run import load_run

        path = run_argument(args)
        run = load_run(path, args.device, args.data_dir, args.plugin)
        if run.data.is_regression:  # the influence module differentiates cross-entropy on class labels
            from ssl_kd.data.build import class_form_hint

            raise ConfigError(f"explain measures influence on the cross-entropy of class labels and {run.cfg.train.dataset} "
                              f"is a regression task; explain a classification run instead"
                              f"{class_form_hint(run.cfg.train.dataset, ', e.g. of its classification form ')}")
        model = run.ema_model if args.model == "ema" and run.ema_model is not None else run.model
        if run.run_dir is None and not args.out:  # a copy kept elsewhere: never write into whatever folder holds it
            print(f"error: {path} is not inside the run folder it belongs to; give --out FOLDER for the explanation",
                  file=sys.stderr)
            return 2
        run_dir = Path(run.run_dir) if run.run_dir is not None else None
        out = Path(args.out) if args.out else run_dir / "explain"
        from ssl_kd.weighting.influence import run_influence_config

        cfg = run_influence_config(run.cfg)  # a weighted run's own estimator (damping, relative, reference_tau, map)
        writer = None
        if not args.no_tensorboard and run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(run_dir / "tb"))
        try:
            paths = write_report(model, run.data, out, args.test_index, args.top, args.split, writer, cfg=cfg,
                                 limit=args.limit, progress=not args.no_progress)
        finally:
            if writer is not None:
                writer.close()
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. a read-only or misplaced --out
        print(f"error: {os_error_message(err, Path(err.filename or args.out or '.'), 'write the explanation into')}", file=sys.stderr)
        return 2
    for kind, path in paths.items():
        print(f"{kind:>9}: {path}")
    if writer is not None:
        print(f"tensorboard: {run_dir / 'tb'} (tags explain/...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
