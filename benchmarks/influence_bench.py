"""Benchmarks of the influence module, printed as Markdown tables.

    python -m benchmarks.influence_bench [--sections timing,noise,cifar,full] [--device cpu] [--threads 1]

- timing: scoring a batch of 448 and one refresh solve for a WRN-28-2 head (128x10) and a
  WRN-28-8 head (512x100), on synthetic post-ReLU features (the times do not depend on the values,
  except CG's iteration count);
- noise / cifar: ROC-AUC of low weight at finding flipped labels with 20% symmetric noise, on
  digits / on 5000 CIFAR-10 images (needs --data-dir with cifar10/cifar-10-batches-py);
- full: Spearman agreement of head-restricted with full-network influence on a BatchNorm CNN.

Projected multi-layer influence has its own script: `python -m benchmarks.influence_projected`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
import warnings
from typing import Callable

import torch
from scipy.stats import spearmanr

from benchmarks.toy import DIGITS_POLICY, TinyCNN, TinyMLP, as_input, digits, fit
from ssl_kd.influence.errors import InfluenceError
from ssl_kd.influence.full import FullConfig, full_influence, per_example_losses
from ssl_kd.influence.head import HeadCurvature, mean_grad
from ssl_kd.influence.noise import flip_detection_auc, flip_labels
from ssl_kd.influence.solve import default_damping, solve_head_cg
from ssl_kd.influence.weighter import InfluenceConfig, InfluenceWeighter


def median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def timing(device: torch.device, repeats: int) -> None:
    print("| head | train features in H | solver | refresh solve (ms) | CG iterations | score 448 (ms) | Spearman vs exact |")
    print("|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for d, c in ((128, 10), (512, 100)):
        head = torch.nn.Linear(d, c).to(device)
        with torch.no_grad():
            head.weight.copy_(torch.randn(c, d, generator=gen) * 3 / d**0.5)
        feats = torch.randn(4096 + 512 + 448, d, generator=gen).relu().to(device)
        train, val, batch = feats[:4096], feats[4096:4608], feats[4608:]
        y_val = torch.randint(0, c, (512,), generator=gen).to(device)
        y_batch = torch.randint(0, c, (448,), generator=gen).to(device)
        with torch.no_grad():
            logits = head(batch)
        for n_train in (448, 4096):
            solvers = ("cholesky", "cg", "kfac", "ekfac") if d * c < 20_000 else ("cg", "kfac", "ekfac")
            reference = None
            for solver in solvers:
                w = InfluenceWeighter(InfluenceConfig(schedule="online", solver=solver))
                refresh = lambda: w.refresh(head, val, y_val, train[:n_train], 0)  # noqa: E731
                t_refresh = median_time(refresh, repeats, device)
                t_score = median_time(lambda: w.weights(batch, logits, y_batch, 1), 5 * repeats, device)
                scores = w.scores(batch, logits, y_batch).cpu()
                reference = scores if reference is None else reference
                rho = spearmanr(scores.numpy(), reference.numpy())[0]
                iters = cg_iterations(head, val, y_val, train[:n_train]) if solver == "cg" else "-"
                print(f"| {d}x{c} | {n_train} | {solver} | {1e3 * t_refresh:.1f} | {iters} | {1e3 * t_score:.2f} | {rho:.3f} |")


def cg_iterations(head: torch.nn.Linear, val: torch.Tensor, y_val: torch.Tensor, train: torch.Tensor) -> int:
    with torch.no_grad():
        g = mean_grad(val.double(), head(val).double(), y_val)
        curv = HeadCurvature(train, head(train))
    damping = default_damping(curv.trace() / curv.num_params, InfluenceConfig().damping_fraction, 0.0)
    return solve_head_cg(curv, g, damping).iterations


def noise(seeds: int) -> None:
    x, y = digits()
    x = as_input(x)
    print(f"digits, TinyMLP (64-32-10), 1000 training labels with 20% symmetric noise, 300 clean validation; {seeds} seeds\n")
    noise_table(seeds, x, y, 1000, 300, lambda: TinyMLP(), 300)


def cifar_noise(seeds: int, data_dir: str) -> None:
    """The same probe on 5000 CIFAR-10 training images (read from the standard python layout)."""
    import pickle
    from pathlib import Path

    with open(Path(data_dir) / "cifar10" / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    x = torch.tensor(batch[b"data"]).reshape(-1, 3, 32, 32)
    y = torch.tensor(batch[b"labels"])
    policy = dataclasses.replace(DIGITS_POLICY, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    print(f"CIFAR-10 (data_batch_1), TinyCNN (width 16), 5000 training labels with 20% symmetric noise, "
          f"1000 clean validation, 1500 steps; {seeds} seeds\n")
    noise_table(seeds, as_input(x[:6000], policy), y[:6000], 5000, 1000, lambda: TinyCNN(3, 16), 1500)


def noise_table(seeds: int, x: torch.Tensor, y: torch.Tensor, n_train: int, n_val: int,
                make_model: Callable[[], torch.nn.Module], steps: int) -> None:
    val = slice(n_train, n_train + n_val)
    fractions = (0.01, 0.1, 1.0)
    rows: dict[str, list[float]] = {f"influence, exact, damping_fraction={f}": [] for f in fractions}
    rows.update({"influence, ekfac, damping_fraction=0.1": [], "training loss (baseline)": [], "val accuracy": []})
    for seed in range(seeds):
        y_train, flipped = flip_labels(y[:n_train], 0.2, 10, seed=seed)
        torch.manual_seed(seed)
        model = fit(make_model(), x[:n_train], y_train, steps=steps, seed=seed)
        with torch.no_grad():
            (lt, ft), (lv, fv) = model(x[:n_train]), model(x[val])
        for name, cfg in [(f"influence, exact, damping_fraction={f}", InfluenceConfig(schedule="static", damping_fraction=f))
                          for f in fractions] + [("influence, ekfac, damping_fraction=0.1",
                                                  InfluenceConfig(schedule="static", solver="ekfac"))]:
            w = InfluenceWeighter(cfg)
            scores = w.fit_static(model.head, fv, y[val], ft, y_train, torch.arange(n_train))
            rows[name].append(flip_detection_auc(-scores, flipped))  # the weight decreases with the score
        rows["training loss (baseline)"].append(flip_detection_auc(-per_example_losses(lt, y_train), flipped))
        rows["val accuracy"].append(float((lv.argmax(1) == y[val]).float().mean()))
    print("| detector | ROC-AUC median | per seed |")
    print("|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values):.3f} | {', '.join(f'{v:.3f}' for v in values)} |")


def full(seeds: int) -> None:
    x, y = digits()
    x = as_input(x)
    print("digits, TinyCNN (2 conv+BatchNorm, width 8, 1.6k parameters), 1000 training / 200 validation, "
          f"300 scored; {seeds} seeds. Head-restricted influence uses the same damping_fraction.\n")
    print("| full-network variant | damping_fraction | Spearman with head-restricted (median; per seed) "
          "| Spearman with GGN+CG | seconds | notes |")
    print("|---|---|---|---|---|---|")
    variants = [
        ("GGN, CG", FullConfig(cg_max_iter=1000)),
        ("GGN, CG", FullConfig(damping_fraction=1.0, cg_max_iter=1000)),
        ("Hessian, CG", FullConfig(curvature="hessian", cg_max_iter=1000)),
        ("Hessian, CG", FullConfig(curvature="hessian", damping_fraction=1.0, cg_max_iter=1000)),
        ("GGN, LiSSA (auto scale, minibatch 128, 500 steps)",
         FullConfig(solver="lissa", lissa_batch_size=128, lissa_iterations=500)),
    ]
    rows: list[dict[str, list]] = [{"head": [], "cg": [], "time": [], "notes": []} for _ in variants]
    for seed in range(seeds):
        torch.manual_seed(seed)
        xt, yt, xv, yv = x[:1000], y[:1000], x[1000:1200], y[1000:1200]
        model = fit(TinyCNN(), xt, yt, steps=400, seed=seed)
        with torch.no_grad():
            (lt, ft), (lv, fv) = model(xt), model(xv)
        reference: dict[float, torch.Tensor] = {}
        for row, (name, cfg) in zip(rows, variants):
            head_scores = head_influence(model.head, ft[:300], lt[:300], yt[:300], ft, fv, yv, cfg.damping_fraction)
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    scores = full_influence(model, xt, yt, xv, yv, dataclasses.replace(cfg, seed=seed))[:300]
                except InfluenceError as err:  # e.g. an indefinite Hessian: reported, not fatal
                    scores = None
                    row["notes"].append(f"seed {seed}: {str(err).split(':')[0]}")
            row["time"].append(time.perf_counter() - start)
            row["notes"] += [f"seed {seed}: {str(w.message).split(';')[0]}" for w in caught
                             if "conjugate gradient" in str(w.message)]
            if name == "GGN, CG" and scores is not None:
                reference[cfg.damping_fraction] = scores
            ref = reference.get(cfg.damping_fraction)
            row["head"].append(float("nan") if scores is None else spearmanr(scores, head_scores)[0])
            row["cg"].append(float("nan") if scores is None or ref is None else spearmanr(scores, ref)[0])
    for row, (name, cfg) in zip(rows, variants):
        per_seed = ", ".join(f"{r:.3f}" for r in row["head"])
        print(f"| {name} | {cfg.damping_fraction} | {statistics.median(row['head']):.3f}; {per_seed} | "
              f"{statistics.median(row['cg']):.3f} | {statistics.median(row['time']):.1f} | {'; '.join(row['notes'])} |")


def head_influence(head: torch.nn.Linear, f: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
                   f_train: torch.Tensor, f_val: torch.Tensor, y_val: torch.Tensor, damping_fraction: float) -> torch.Tensor:
    """Head-restricted scores of (f, logits, y), H over all training features (Cholesky)."""
    w = InfluenceWeighter(InfluenceConfig(schedule="online", solver="cholesky", damping_fraction=damping_fraction))
    w.refresh(head, f_val, y_val, f_train, 0)
    return w.scores(f, logits, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="timing,noise,full")
    parser.add_argument("--device", default="cpu", help="for the timing section")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data-dir", default=os.environ.get("SSL_KD_DATA", "data"), help="for the cifar section")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), timing on {args.device}\n")
    sections = args.sections.split(",")
    if "timing" in sections:
        timing(torch.device(args.device), args.repeats)
        print()
    if "noise" in sections:
        noise(args.seeds)
        print()
    if "cifar" in sections:
        cifar_noise(args.seeds, args.data_dir)
        print()
    if "full" in sections:
        full(args.seeds)


if __name__ == "__main__":
    main()
