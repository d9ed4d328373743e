"""The augmentation share of a training step with 1 and with N processes (torchrun, gloo on the CPU).

    python benchmarks/bench_ranks.py --dataset cifar10_4k --data-dir ../shared/data --net wrn28_2 --steps 8
    torchrun --standalone --nproc_per_node 2 benchmarks/bench_ranks.py ...   (same arguments)

Every process times, per step, making its views (`Trainer.next_batch`: gathering and augmenting
the examples it trains on) and the whole training step (`train_one_step`, views included, DDP's
gradient all-reduce too), as tools/bench.py does for one process; rank 0 prints the medians of
every rank as one JSON line. Under torchrun each process augments its own 1/N of the global batch,
so its augmentation time shrinks with N as its share of the model's work does.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.distributed as dist

from ssl_kd.cli import parser as train_parser
from ssl_kd.cli import prepare
from ssl_kd.run import build_data, pick_device
from ssl_kd.trainer import distributed
from ssl_kd.trainer.trainer import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", default="fixmatch")
    p.add_argument("--dataset", default="cifar10_4k")
    p.add_argument("--data-dir", default="")
    p.add_argument("--net", default="wrn28_2")
    p.add_argument("--batch-size", type=int, default=8, help="the global labelled batch")
    p.add_argument("--uratio", type=int, default=7)
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    out = tempfile.mkdtemp()
    argv = ["--algo", args.algo, "--dataset", args.dataset, "--net", args.net, "--batch-size", str(args.batch_size),
            "--uratio", str(args.uratio), "--steps", str(args.warmup + args.steps + 1), "--device", "cpu",
            "--out", out, "--no-progress", *(["--data-dir", args.data_dir] if args.data_dir else [])]
    cfg, run_dir, _ = prepare(train_parser().parse_args(argv))
    info, device = distributed.init_from_env(pick_device("cpu"))
    trainer = Trainer(cfg, build_data(cfg), device, run_dir, info)
    views, steps = [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        trainer.next_batch()
        t1 = time.perf_counter()
        trainer.train_one_step()
        trainer.step += 1
        t2 = time.perf_counter()
        if i >= args.warmup:
            views.append(t1 - t0)
            steps.append(t2 - t1)
    mine = [statistics.median(views), statistics.median(steps)]
    ranks = [mine]
    if info.enabled:
        ranks = [[0.0, 0.0] for _ in range(info.world_size)]
        dist.all_gather_object(ranks, mine)
    if info.is_main:
        print(json.dumps({"processes": info.world_size, "global_batch": args.batch_size * (1 + args.uratio),
                          "threads": torch.get_num_threads(), "net": args.net,
                          "views_s": [round(v, 4) for v, _ in ranks], "step_s": [round(s, 3) for _, s in ranks],
                          "aug_share_pct": [round(100 * v / s, 2) for v, s in ranks]}))
    if info.enabled:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
