"""Throughput of algorithms on one device, measured alternately in one process.

`python tools/bench.py --algos fixmatch,kdaif --dataset cifar10_4k --data-dir ../shared/data
 --net wrn28_2 --batch-size 8 --uratio 7 --steps 20 --device cpu`

Per algorithm: median seconds per step, images per second ((1 + mu) * B distinct images a step),
the share of the step spent making the views (augmentation), peak memory, and each algorithm's
time relative to the first one. Steps of the algorithms alternate, so machine noise hits all alike.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ssl_kd.cli import parser as train_parser
from ssl_kd.cli import prepare
from ssl_kd.errors import SSLKDError
from ssl_kd.plugins import load_plugins
from ssl_kd.run import build_data, pick_device
from ssl_kd.trainer.trainer import Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(algo: str, args: argparse.Namespace, out: Path) -> Trainer:
    argv = ["--algo", algo, "--dataset", args.dataset, "--batch-size", str(args.batch_size), "--uratio", str(args.uratio),
            "--steps", str(args.warmup + args.steps + 1), "--device", args.device, "--out", str(out / algo), "--no-progress",
            "--set", f"train.compile={args.compile}", *(["--net", args.net] if args.net else []),
            *(["--data-dir", args.data_dir] if args.data_dir else []), *[x for s in args.set for x in ("--set", s)]]
    cfg, run_dir, _ = prepare(train_parser().parse_args(argv))
    return Trainer(cfg, build_data(cfg), pick_device(cfg.train.device), run_dir)


def time_step(trainer: Trainer) -> tuple[float, float]:
    """Seconds for one whole training step and for making its views alone."""
    sync(trainer.device)
    t0 = time.perf_counter()
    trainer.next_batch()
    sync(trainer.device)
    t1 = time.perf_counter()
    trainer.train_one_step()
    trainer.step += 1
    sync(trainer.device)
    return time.perf_counter() - t1, t1 - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", default="fixmatch")
    p.add_argument("--dataset", default="cifar10_4k")
    p.add_argument("--net", default="")
    p.add_argument("--data-dir", default="")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--uratio", type=int, default=7)
    p.add_argument("--steps", type=int, default=20, help="timed steps per algorithm")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--set", action="append", default=[], help="config overrides passed to every algorithm")
    p.add_argument("--plugin", action="append", default=[])
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    algos = args.algos.split(",")
    try:
        load_plugins(args.plugin)
        with tempfile.TemporaryDirectory() as tmp:
            trainers = {a: build(a, args, Path(tmp)) for a in algos}
            device = next(iter(trainers.values())).device
            for _ in range(args.warmup):
                for trainer in trainers.values():
                    time_step(trainer)
            steps: dict[str, list[float]] = {a: [] for a in algos}
            views: dict[str, list[float]] = {a: [] for a in algos}
            for _ in range(args.steps):
                for a, trainer in trainers.items():
                    step_s, view_s = time_step(trainer)
                    steps[a].append(step_s)
                    views[a].append(view_s)
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    images = args.batch_size * (1 + args.uratio)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    base = statistics.median(steps[algos[0]])
    rows = []
    for a in algos:
        med = statistics.median(steps[a])
        rows.append({"algo": a, "s_per_step": med, "images_per_s": images / med,
                     "augment_share": statistics.median(views[a]) / med, "ratio": med / base})
    print(f"device={device} torch={torch.__version__} dataset={args.dataset} B={args.batch_size} mu={args.uratio} "
          f"steps={args.steps} compile={args.compile} peak_mem_MiB={peak:.0f} ({'CUDA allocated' if device.type == 'cuda' else 'process RSS'})")
    print("| algo | median s/step | images/s | augmentation share | time vs first |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['algo']} | {r['s_per_step']:.4f} | {r['images_per_s']:.1f} | {100 * r['augment_share']:.1f}% | {r['ratio']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "peak_mem_MiB": peak, "device": str(device)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
