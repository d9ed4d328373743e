"""Cost of the reliability machinery: writing a checkpoint, and the finiteness check per step.

    python tools/bench_guard.py [--net wrn28_2] [--dataset digits_100] [--steps 200] [--repeats 5]

Prints one JSON object: the time to write `last.pt` (model + EMA + optimiser + the rest of the
trainer state) of `--net` on CIFAR-10 shapes, the time of one finiteness check of that state, and,
the check's share of a step at the default `train.check_finite_every` N (check time / (N * step
time)) for a supervised WRN step of batch 64 and for `--algo` on `--dataset` with its preset protocol.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ssl_kd.cli import parser as train_parser
from ssl_kd.cli import prepare
from ssl_kd.config import TrainConfig
from ssl_kd.data.types import AugPolicy, SSLData
from ssl_kd.run import build_data
from ssl_kd.trainer.trainer import Trainer


def fake_cifar(n: int = 256) -> SSLData:
    """CIFAR-10 shapes without the files (the checkpoint size does not depend on the pixels)."""
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(n)
    return SSLData("cifar10_fake", torch.randint(0, 255, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                   torch.arange(n) % 10, idx[:40], idx, torch.empty(0, dtype=torch.long),
                   torch.randint(0, 255, (64, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(64) % 10, 10,
                   AugPolicy(mean=(0.5,) * 3, std=(0.25,) * 3))


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def trainer_for(args_list: list[str], out: Path, data: SSLData | None = None) -> Trainer:
    cfg, run_dir, _ = prepare(train_parser().parse_args([*args_list, "--out", str(out), "--device", "cpu", "--no-progress"]))
    return Trainer(cfg, data if data is not None else build_data(cfg), torch.device("cpu"), run_dir)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="wrn28_2")
    p.add_argument("--dataset", default="digits_100")
    p.add_argument("--algo", default="fixmatch")
    p.add_argument("--steps", type=int, default=200, help="timed training steps on --dataset")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    result: dict[str, object] = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        big = trainer_for(["--algo", "supervised", "--dataset", "cifar10_40", "--net", args.net, "--batch-size", "64",
                           "--uratio", "1"], Path(tmp) / "big", fake_cifar())
        big.train_one_step()  # the optimiser's momentum buffers exist from the first step
        big.step = 1
        big.save()
        size = (Path(tmp) / "big" / "checkpoints" / "last.pt").stat().st_size
        result[f"{args.net}_checkpoint_mb"] = round(size / 2**20, 2)
        result[f"{args.net}_save_s"] = round(timed(big.save, args.repeats), 4)
        result[f"{args.net}_check_s"] = round(timed(big.check_finite, args.repeats), 5)

        small = trainer_for(["--algo", args.algo, "--dataset", args.dataset], Path(tmp) / "small")
        every = TrainConfig().check_finite_every
        for _ in range(5):  # warm-up
            small.train_one_step()
            small.step += 1
        start = time.perf_counter()
        for _ in range(args.steps):
            small.train_one_step()
            small.step += 1
        step_s = (time.perf_counter() - start) / args.steps
        check_s = timed(small.check_finite, args.repeats * 4)
        result.update({f"{args.dataset}_{args.algo}_step_s": round(step_s, 5), f"{args.dataset}_check_s": round(check_s, 6),
                       "check_finite_every": every,
                       f"{args.dataset}_check_overhead_pct": round(100 * check_s / (every * step_s), 4)})
        big_step_s = timed(big.train_one_step, 3)  # a labelled batch of 64 (the FixMatch B, no unlabelled batch)
        result[f"{args.net}_supervised_b64_step_s"] = round(big_step_s, 3)
        result[f"{args.net}_check_overhead_pct"] = round(100 * float(result[f"{args.net}_check_s"]) / (every * big_step_s), 4)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
