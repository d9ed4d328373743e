"""What separates a real text step from its floor (BENCHMARKS.md, issue 21), on one CPU thread.

  python scripts/text_floor_probe.py shares   # each piece outside the network, as a share of the FixMatch step
  python scripts/text_floor_probe.py paired   # real FixMatch steps against floor steps of the same lengths
  python scripts/text_floor_probe.py amp      # the FixMatch-shaped floor in fp32 and under CPU bf16 autocast

sst2_1k, `hf:minilm-l6:layers=2`, B 16, mu 1 (the target's setting); `--steps N` timed rounds.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import bench  # noqa: E402 (tools/bench.py builds the trainers the benchmark times)

from ssl_kd.augment.views import make_view  # noqa: E402
from ssl_kd.floor import make_floor  # noqa: E402
from ssl_kd.run import build_network  # noqa: E402
from ssl_kd.trainer.trainer import Trainer  # noqa: E402

WARMUP = 2


def fixmatch_trainer(steps: int) -> Trainer:
    args = argparse.Namespace(dataset="sst2_1k", batch_size=16, uratio=1, warmup=WARMUP, steps=steps, device="cpu",
                              compile=False, net="hf:minilm-l6:layers=2", data_dir="../shared/data", set=[])
    return bench.build("fixmatch", args, Path(tempfile.mkdtemp()))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def shares(trainer: Trainer, steps: int) -> None:
    """Median ms of each piece the real step does beside the network (200 repetitions each)."""
    data, policy, algo = trainer.data, trainer.data.policy, trainer.algorithm
    idx_l, x_l = next(trainer.labelled)
    idx_u, x_u = next(trainer.unlabelled)
    views = [make_view("weak", x_l, policy), make_view("weak", x_u, policy), make_view("strong", x_u, policy)]
    batch = torch.cat(views)
    logits = torch.randn(batch.shape[0], data.num_classes, requires_grad=True)

    def losses_and_logs() -> None:
        lx, luw, lus = logits.split([len(x_l), len(x_u), len(x_u)])
        unsup, pseudo, mask = algo.unsup_loss(luw, lus, idx_u)
        _ = torch.nn.functional.cross_entropy(lx.float(), data.train_y[idx_l]) + unsup
        correct = (pseudo == data.true_labels(idx_u)).float()
        _ = (100 * correct.mean(), mask.float().mean(), 100 * (correct * mask).sum() / mask.sum().clamp(min=1))

    def prelude() -> None:  # what HFClassifier.forward does before the transformer (the floor does it too)
        mask = batch != policy.pad_id
        longest = int(mask.sum(1).max())
        trainer.model.segment_ids(batch[:, :longest], trainer.model.sep_id)

    pieces: dict[str, Callable[[], object]] = {
        "gather the rows (train_x[idx], labelled + unlabelled)": lambda: (data.train_x[idx_l], data.train_x[idx_u]),
        "make the views (weak: identity; strong: mask, delete, span cut)": lambda: [
            make_view(v, x, policy) for v, x in (("weak", x_l), ("weak", x_u), ("strong", x_u))],
        "concatenate the views (torch.cat)": lambda: torch.cat(views),
        "mask, trim to the longest, segment ids (in the network: the floor does it too)": prelude,
        "losses, pseudo-labels, mask and the logged accuracies": losses_and_logs,
    }
    step = []
    for r in range(WARMUP + steps):
        seconds = timed(trainer.train_one_step)
        trainer.step += 1
        if r >= WARMUP:
            step.append(seconds)
    median = statistics.median(step)
    print(f"median FixMatch step {median:.4f} s; rows padded to {data.train_x.shape[1]} tokens by the feed")
    print("| piece | ms per step | share of the step |\n|---|---|---|")
    for name, fn in pieces.items():
        ms = statistics.median(timed(fn) for _ in range(200)) * 1000
        print(f"| {name} | {ms:.3f} | {ms / 10 / median:.3f}% |")


def paired(trainer: Trainer, steps: int) -> None:
    """Each round: one real step, and one floor step on random word ids of exactly that batch's
    sentence lengths; every other round the floor goes first."""
    floor = bench.floor_of_trainer(trainer)
    pad = trainer.data.policy.pad_id
    g = torch.Generator().manual_seed(1)
    draw = floor.inputs
    widths: dict[str, list[int]] = {"real": [], "floor": []}
    for _ in range(200):  # the floor's batch widths against the real feed's (the network trims to the longest)
        b = trainer.next_batch()
        x = torch.cat([b.x_l["weak"], b.x_u["weak"], b.x_u["strong"]])
        widths["real"].append(int((x != pad).sum(1).max()))
        widths["floor"].append(draw().shape[1])
    print("batch width over 200 batches: " + ", ".join(
        f"{k} mean {statistics.mean(v):.1f}, median {statistics.median(v)}" for k, v in widths.items()))
    ratios: dict[str, list[float]] = {"real first": [], "floor first": []}
    real_s, floor_s = [], []
    for r in range(WARMUP + steps):
        state = torch.get_rng_state()
        b = trainer.next_batch()
        torch.set_rng_state(state)  # the step below draws this same batch
        x = torch.cat([b.x_l["weak"], b.x_u["weak"], b.x_u["strong"]])
        content = x != pad
        content = content[:, : int(content.sum(1).max())]
        ids = torch.randint(1000, 30000, content.shape, generator=g).masked_fill(~content, pad)
        floor.inputs = lambda ids=ids: ids
        order = ("real", "floor") if r % 2 else ("floor", "real")
        seconds = {}
        for name in order:
            seconds[name] = timed(trainer.train_one_step if name == "real" else floor)
        trainer.step += 1
        if r >= WARMUP:
            real_s.append(seconds["real"])
            floor_s.append(seconds["floor"])
            ratios[f"{order[0]} first"].append(seconds["real"] / seconds["floor"])
    print(f"median real {statistics.median(real_s):.4f} s, floor of the same lengths {statistics.median(floor_s):.4f} s; "
          + ", ".join(f"median real/floor with the {k} step {statistics.median(v):.3f} ({len(v)} rounds)"
                      for k, v in ratios.items()))


def amp(trainer: Trainer, steps: int) -> None:
    floors = {on: make_floor(build_network(trainer.cfg.train.net, trainer.data), trainer.data,
                             dataclasses.replace(trainer.cfg.train, cpu_amp=on), 1, 2, trainer.device) for on in (False, True)}
    times: dict[bool, list[float]] = {on: [] for on in floors}
    for r in range(WARMUP + steps):
        for on, floor in (floors.items() if r % 2 == 0 else reversed(floors.items())):
            seconds = timed(floor)
            if r >= WARMUP:
                times[on].append(seconds)
    fp32, bf16 = (statistics.median(times[on]) for on in (False, True))
    print(f"FixMatch-shaped text floor, B 16, mu 1: fp32 {fp32:.4f} s/step, bf16 autocast {bf16:.4f} s/step "
          f"({fp32 / bf16:.2f}x faster)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("probe", choices=("shares", "paired", "amp"))
    p.add_argument("--steps", type=int, default=16)
    args = p.parse_args()
    torch.set_num_threads(1)
    {"shares": shares, "paired": paired, "amp": amp}[args.probe](fixmatch_trainer(args.steps), args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
