"""Throughput of algorithms on one device, measured alternately in one process.

`python tools/bench.py --algos fixmatch,kdaif --dataset cifar10_4k --data-dir ../shared/data
 --net wrn28_2 --batch-size 8 --uratio 7 --steps 20 --device cpu`

Per algorithm: median seconds per step, images per second ((1 + mu) * B distinct images a step),
the share of the step spent making the views (augmentation), peak memory, and each algorithm's
time relative to the first one. Steps of the algorithms alternate, so machine noise hits all alike,
and each round starts one step further on, so every step (floors included) comes first in its round
equally often (on the loaded CPU the first step of a round ran up to ~14% slower, issue 21).

`--floor` adds the compute floor (`ssl_kd.floor`): a plain PyTorch step of the same network on
random tensors of each algorithm's view shapes, alternating with the real steps; every row gains
`floor_s_per_step` and `ratio_to_floor`. Occasional work inside a step (KD-AIF's influence
refreshes) is timed apart and amortised: s/step = median of the steps without it + the median
refresh cost / the refresh period. `--pil-pipeline` measures instead how many images per second
the usual CPU pipeline (PIL RandAugment + Cutout in DataLoader workers) supplies (`ssl_kd.pil_pipeline`).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ssl_kd.cli import parser as train_parser
from ssl_kd.cli import prepare
from ssl_kd.errors import SSLKDError
from ssl_kd.floor import FloorStep, make_floor
from ssl_kd.pil_pipeline import pipeline_images_per_s
from ssl_kd.timing import OccasionalWork, amortised
from ssl_kd.plugins import load_plugins
from ssl_kd.run import build_data, build_network, pick_device
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


def time_step(trainer: Trainer, occasional: OccasionalWork) -> tuple[float, float, float]:
    """Seconds for one whole training step, for making its views (inside the step), and for occasional work in it.
    The step draws its one batch as a run does, so the trainers and the text floor see batches in step."""
    make_batch, view_s, own = trainer.next_batch, [0.0], "next_batch" in vars(trainer)

    def timed_batch() -> Any:
        start = time.perf_counter()
        batch = make_batch()
        sync(trainer.device)
        view_s[0] += time.perf_counter() - start
        return batch

    trainer.next_batch = timed_batch  # type: ignore[method-assign]
    try:
        sync(trainer.device)
        start = time.perf_counter()
        occasional.take()
        trainer.train_one_step()
        trainer.step += 1
        sync(trainer.device)
        return time.perf_counter() - start, view_s[0], occasional.take()
    finally:
        if own:
            trainer.next_batch = make_batch  # type: ignore[method-assign]
        else:
            del trainer.next_batch  # the class's method again


def floor_of_trainer(trainer: Trainer) -> FloorStep:
    t, algo = trainer.cfg.train, trainer.algorithm
    return make_floor(build_network(t.net, trainer.data), trainer.data, t, len(algo.labelled_views),
                      len(algo.unlabelled_views) if algo.needs_unlabelled else 0, trainer.device, seed=t.seed)


def time_floor(floor: FloorStep, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    floor()
    sync(device)
    return time.perf_counter() - start


def pil_main(args: argparse.Namespace) -> int:
    """--pil-pipeline: images/s of the PIL DataLoader pipeline for this dataset's FixMatch batches."""
    argv = ["--algo", "fixmatch", "--dataset", args.dataset, "--device", "cpu", "--out", tempfile.mkdtemp(), "--no-progress",
            *(["--data-dir", args.data_dir] if args.data_dir else [])]
    try:
        cfg, _, _ = prepare(train_parser().parse_args(argv))
        data = build_data(cfg)
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    images = data.train_x.permute(0, 2, 3, 1).contiguous().numpy()
    policy = data.policy
    load_before = os.getloadavg()
    result = pipeline_images_per_s(images, data.train_y.numpy(), args.batch_size, args.uratio, args.steps,
                                   args.workers, tuple(policy.mean), tuple(policy.std), args.warmup)
    result.update({"load_average": [load_before[0], os.getloadavg()[0]], "cores": os.cpu_count(),
                   "batch_size": args.batch_size, "uratio": args.uratio, "dataset": args.dataset})
    print(f"PIL pipeline (torchvision RandAugment + Cutout, {result['workers_per_loader']} workers per loader, "
          f"{os.cpu_count()} cores, load {load_before[0]:.1f}): {result['images_per_s']:.1f} images/s, "
          f"{result['s_per_batch']:.3f} s per FixMatch batch of B={args.batch_size}, mu={args.uratio}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


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
    p.add_argument("--floor", action="store_true", help="also time the plain PyTorch floor step of each algorithm's shapes")
    p.add_argument("--pil-pipeline", action="store_true", help="measure the PIL DataLoader pipeline instead (see ssl_kd.pil_pipeline)")
    p.add_argument("--workers", type=int, default=0, help="--pil-pipeline: DataLoader workers (0: one per core)")
    args = p.parse_args()
    if args.pil_pipeline:
        return pil_main(args)
    algos = args.algos.split(",")
    try:
        load_plugins(args.plugin)
        load_before = os.getloadavg()
        with tempfile.TemporaryDirectory() as tmp:
            trainers = {a: build(a, args, Path(tmp)) for a in algos}
            device = next(iter(trainers.values())).device
            occasional = {a: OccasionalWork(tr.algorithm) for a, tr in trainers.items()}
            floors: dict[tuple[int, int], FloorStep] = {}
            floor_of: dict[str, tuple[int, int]] = {}
            if args.floor:
                for a, tr in trainers.items():
                    key = (len(tr.algorithm.labelled_views), len(tr.algorithm.unlabelled_views) * tr.algorithm.needs_unlabelled)
                    floor_of[a] = key
                    if key not in floors:
                        floors[key] = floor_of_trainer(tr)
            steps: dict[str, list[float]] = {a: [] for a in algos}
            views: dict[str, list[float]] = {a: [] for a in algos}
            extra: dict[str, list[float]] = {a: [] for a in algos}
            floor_s: dict[tuple[int, int], list[float]] = {k: [] for k in floors}
            jobs = [*((False, a) for a in trainers), *((True, k) for k in floors)]
            for repeat in range(args.warmup + args.steps):
                # each round starts one job further on: every step comes first in its round equally often
                start = repeat % len(jobs)
                for is_floor, name in jobs[start:] + jobs[:start]:
                    if is_floor:
                        seconds = time_floor(floors[name], device)
                        if repeat >= args.warmup:
                            floor_s[name].append(seconds)
                        continue
                    step_s, view_s, extra_s = time_step(trainers[name], occasional[name])
                    if repeat >= args.warmup:
                        steps[name].append(step_s)
                        views[name].append(view_s)
                        extra[name].append(extra_s)
        load_after = os.getloadavg()
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    images = args.batch_size * (1 + args.uratio)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    per_step = {a: amortised(steps[a], extra[a], occasional[a].period) for a in algos}
    base = per_step[algos[0]]
    rows = []
    for a in algos:
        med = per_step[a]
        row = {"algo": a, "s_per_step": med, "images_per_s": images / med, "median_step_s": statistics.median(steps[a]),
               "augment_share": statistics.median(views[a]) / med, "ratio": med / base,
               "refreshes_timed": sum(o > 0 for o in extra[a])}
        if a in floor_of:
            row["floor_s_per_step"] = statistics.median(floor_s[floor_of[a]])
            row["ratio_to_floor"] = med / row["floor_s_per_step"]
        rows.append(row)
    print(f"device={device} torch={torch.__version__} dataset={args.dataset} B={args.batch_size} mu={args.uratio} "
          f"steps={args.steps} compile={args.compile} peak_mem_MiB={peak:.0f} ({'CUDA allocated' if device.type == 'cuda' else 'process RSS'})")
    print(f"load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} cores")
    print("| algo | s/step | images/s | augmentation share | time vs first | floor s/step | ratio to floor |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        floor_cells = (f"{r['floor_s_per_step']:.4f} | {r['ratio_to_floor']:.2f}x" if "floor_s_per_step" in r else "- | -")
        print(f"| {r['algo']} | {r['s_per_step']:.4f} | {r['images_per_s']:.1f} | {100 * r['augment_share']:.1f}% | "
              f"{r['ratio']:.2f}x | {floor_cells} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "peak_mem_MiB": peak, "device": str(device),
                                               "load_average": [load_before[0], load_after[0]], "steps": args.steps,
                                               "batch_size": args.batch_size, "uratio": args.uratio,
                                               "torch": torch.__version__}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
