"""The run argument every tool takes the same way: `tools/<tool>.py RUN` where RUN is a run folder
(its checkpoints/last.pt) or a checkpoint file; the older `--ckpt PATH` still works."""
from __future__ import annotations

import argparse

from ssl_kd.errors import ConfigError

RUN_HELP = "run folder (its checkpoints/last.pt) or a checkpoint file, e.g. runs/<run>/checkpoints/best.pt"


def add_run_argument(parser: argparse.ArgumentParser, help: str = RUN_HELP) -> None:
    parser.add_argument("run", nargs="?", default="", help=help)
    parser.add_argument("--ckpt", default="", help="the same as RUN (the older form)")


def run_argument(args: argparse.Namespace) -> str:
    """RUN or --ckpt (one of them, or both naming the same path)."""
    if args.run and args.ckpt and args.run != args.ckpt:
        raise ConfigError(f"RUN {args.run} and --ckpt {args.ckpt} name two checkpoints; give one of them")
    path = args.run or args.ckpt
    if not path:
        raise ConfigError("no run given: name a run folder or a checkpoint file, e.g. runs/<run>")
    return path
