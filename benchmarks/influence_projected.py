"""Benchmarks of projected multi-layer influence (projected.py) against head-restricted influence,
printed as Markdown tables.

    python -m benchmarks.influence_projected --sections fidelity,auc,timing --runs RUN [RUN ...]

- fidelity: Spearman with full-network influence (GGN, CG) on the BatchNorm CNN of bench.py's
  `full` section (same data, training and damping fraction);
- auc: on trained `kd` digits_30 runs (`--runs`, each trained with data.val_per_class=20), the
  ROC-AUC over the unlabelled pool of -I (i.e. of the weight) and of the teacher's confidence for
  "the teacher's pseudo-label is correct", with the labelled set or the held-out validation split
  as the reference;
- timing: one refresh and scoring one batch, digits_net and wrn28_2, CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Callable

import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from benchmarks.influence_bench import head_influence, median_time
from benchmarks.toy import TinyCNN, as_input, digits, fit
from ssl_kd.influence.full import FullConfig, eval_mode, full_influence
from ssl_kd.influence.projected import ProjectedConfig, ProjectedInfluence
from ssl_kd.influence.weighter import InfluenceConfig, InfluenceWeighter

Scorer = Callable[[nn.Module, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def projected_scores(cfg: ProjectedConfig) -> Scorer:
    """(model, ref_x, ref_y, train_x, train_targets, x, targets) -> scores of x."""
    def run(model: nn.Module, ref_x: Tensor, ref_y: Tensor, train_x: Tensor, train_t: Tensor, x: Tensor, t: Tensor) -> Tensor:
        est = ProjectedInfluence(model, cfg)
        est.refresh(ref_x, ref_y, train_x, train_t, 0)
        return est.scores(x, t)
    return run


def head_scores(model: nn.Module, ref_x: Tensor, ref_y: Tensor, train_x: Tensor, train_t: Tensor, x: Tensor, t: Tensor) -> Tensor:
    with eval_mode(model), torch.no_grad():
        (_, f_ref), (_, f_train), (logits, f) = model(ref_x), model(train_x), model(x)
    return head_influence(model.head, f, logits, t, f_train, f_ref, ref_y, InfluenceConfig().damping_fraction)


def estimators(dims: tuple[int, ...], all_dim: int) -> dict[str, Scorer]:
    rows: dict[str, Scorer] = {"head only (closed form, exact)": head_scores}
    for dim in dims:
        rows[f"last block + head, dim {dim}"] = projected_scores(ProjectedConfig(dim=dim))
    rows[f"all layers, dim {all_dim}"] = projected_scores(ProjectedConfig(dim=all_dim, prefixes=("",)))
    return rows


def fidelity(seeds: int) -> None:
    x, y = digits()
    x = as_input(x)
    print("digits, TinyCNN (width 8, 1.6k parameters; last block + head: 1.4k), 1000 training / 200 validation, "
          f"300 scored; full-network reference: GGN + CG, damping_fraction 0.1; {seeds} seeds. Every estimator "
          "uses damping_fraction 0.1 of its own mean eigenvalue.\n")
    rows = estimators((128, 512, 10**6), 10**6)
    results: dict[str, list[float]] = {name: [] for name in rows}
    times: dict[str, list[float]] = {name: [] for name in rows}
    for seed in range(seeds):
        torch.manual_seed(seed)
        xt, yt, xv, yv = x[:1000], y[:1000], x[1000:1200], y[1000:1200]
        model = fit(TinyCNN(), xt, yt, steps=400, seed=seed)
        reference = full_influence(model, xt, yt, xv, yv, dataclasses.replace(FullConfig(cg_max_iter=1000), seed=seed))[:300]
        for name, scorer in rows.items():
            start = time.perf_counter()
            scores = scorer(model, xv, yv, xt, yt, xt[:300], yt[:300])
            times[name].append(time.perf_counter() - start)
            results[name].append(float(spearmanr(scores.numpy(), reference.numpy())[0]))
    print("| estimator | Spearman with full-network (median; per seed) | seconds |")
    print("|---|---|---|")
    for name in rows:
        per_seed = ", ".join(f"{r:.3f}" for r in results[name])
        print(f"| {name.replace(str(10**6), '>= P (exact)')} | {statistics.median(results[name]):.3f}; {per_seed} "
              f"| {statistics.median(times[name]):.1f} |")


def correctness_auc(runs: list[str], curvature_size: int) -> None:
    from ssl_kd.run import load_run
    from ssl_kd.run import build_network

    rows = estimators((512, 2048), 2048)
    rows["last block + head, dim 2048, damping_fraction 1"] = projected_scores(ProjectedConfig(dim=2048, damping_fraction=1.0))
    table: dict[tuple[str, str], list[tuple[float, float]]] = {}
    pseudo_acc = []
    for path in runs:
        run = load_run(path, "cpu")
        data, student = run.data, run.model
        teacher = build_network(run.cfg.train.net, data)
        teacher.load_state_dict(run.state["algorithm"]["teacher"])
        labelled = torch.isin(data.unlabelled_idx, data.labelled_idx)
        pool = data.unlabelled_idx[~labelled]
        x = as_input(data.train_x[pool], data.policy)
        with eval_mode(teacher), eval_mode(student), torch.no_grad():
            conf, pseudo = torch.softmax(teacher(x)[0], 1).max(1)
            disagreement = 1 - torch.softmax(student(x)[0], 1).gather(1, pseudo[:, None])[:, 0]
        correct = (pseudo == data.train_y[pool]).numpy()
        pseudo_acc.append(float(correct.mean()))
        curv_rows = torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(0))[:curvature_size]
        rho_conf = float(spearmanr(1 - conf.numpy(), disagreement.numpy())[0])
        table.setdefault(("teacher confidence", "-"), []).append((roc_auc_score(correct, conf.numpy()), rho_conf))
        for ref_name, ref_idx in (("labelled (30)", data.labelled_idx), ("held-out val (200)", data.val_idx)):
            ref_x, ref_y = as_input(data.train_x[ref_idx], data.policy), data.train_y[ref_idx]
            for name, scorer in rows.items():
                scores = scorer(student, ref_x, ref_y, x[curv_rows], pseudo[curv_rows], x, pseudo)
                rho = float(spearmanr(scores.abs().numpy(), disagreement.numpy())[0])
                table.setdefault((name, ref_name), []).append((roc_auc_score(correct, (-scores).numpy()), rho))
    print(f"{len(runs)} kd runs on digits_30 (300 steps, data.val_per_class=20); pool: the unlabelled images minus "
          f"the labelled 30 ({pool.numel()}), clean images, eval mode, teacher's hard pseudo-labels "
          f"(accuracy {', '.join(f'{a:.3f}' for a in pseudo_acc)}); curvature from {curvature_size} pool images. "
          "ROC-AUC for 'pseudo-label correct' (0.5: chance); disagreement: Spearman of |I| (of 1 - confidence for "
          "the teacher row) with 1 - the student's probability of the pseudo-label.\n")
    print("| score | reference | ROC-AUC median | per run | disagreement Spearman (median) |")
    print("|---|---|---|---|---|")
    for (name, ref_name), values in table.items():
        aucs, rhos = [v[0] for v in values], [v[1] for v in values]
        print(f"| {name} | {ref_name} | {statistics.median(aucs):.3f} | {', '.join(f'{a:.3f}' for a in aucs)} "
              f"| {statistics.median(rhos):.2f} |")


def timing(repeats: int) -> None:
    from ssl_kd.nets.small import digits_net
    from ssl_kd.nets.wrn import wrn28_2

    print("| network | estimator | parameters (projected dim) | reference / curvature / scored | refresh (s) | score batch (ms) |")
    print("|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for make, shape, sizes, dims in ((digits_net, (1, 8, 8), (30, 128, 128), (512, 2048, 4096)),
                                     (wrn28_2, (3, 32, 32), (64, 64, 448), (2048,))):
        model = make(10)
        model.train()
        with torch.no_grad():
            model(torch.randn(64, *shape, generator=gen))  # non-trivial running statistics
        n_ref, n_train, n_score = sizes
        x = torch.randn(max(sizes), *shape, generator=gen)
        y = torch.randint(0, 10, (max(sizes),), generator=gen)
        ref, train, batch = (x[:n_ref], y[:n_ref]), (x[:n_train], y[:n_train]), (x[:n_score], y[:n_score])
        with eval_mode(model), torch.no_grad():
            (_, f_ref), (_, f_train), (logits, f) = model(ref[0]), model(train[0]), model(batch[0])
        with eval_mode(model), torch.no_grad():
            t_forward = median_time(lambda: model(batch[0]), repeats, torch.device("cpu"))
        print(f"| {make.__name__} | (an eval-mode forward pass of the scored batch, for scale) | - | - / - / {n_score} "
              f"| - | {1e3 * t_forward:.1f} |")
        w = InfluenceWeighter(InfluenceConfig(schedule="online", solver="cholesky"))
        t_refresh = median_time(lambda: w.refresh(model.head, f_ref, ref[1], f_train, 0), repeats, torch.device("cpu"))
        t_score = median_time(lambda: w.scores(f, logits, batch[1]), repeats, torch.device("cpu"))
        print(f"| {make.__name__} | head only (features given) | {model.head.weight.numel() + model.head.bias.numel()} "
              f"| {n_ref} / {n_train} / {n_score} | {t_refresh:.3f} | {1e3 * t_score:.1f} |")
        for dim in dims:
            est = ProjectedInfluence(model, ProjectedConfig(dim=dim))
            t_refresh = median_time(lambda: est.refresh(*ref, *train, 0), repeats, torch.device("cpu"))
            t_score = median_time(lambda: est.scores(*batch), repeats, torch.device("cpu"))
            print(f"| {make.__name__} | last block + head (images given) | {est.num_params} ({est.projection.dim}) "
                  f"| {n_ref} / {n_train} / {n_score} | {t_refresh:.2f} | {1e3 * t_score:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="fidelity,auc,timing")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--runs", nargs="*", default=[], help="kd digits_30 run folders, for the auc section")
    parser.add_argument("--curvature-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s)\n")
    sections: dict[str, Callable[[], None]] = {
        "fidelity": lambda: fidelity(args.seeds), "auc": lambda: correctness_auc(args.runs, args.curvature_size),
        "timing": lambda: timing(args.repeats),
    }
    for name in args.sections.split(","):
        if name not in sections:
            parser.error(f"unknown section {name!r}; choose from {', '.join(sections)}")
        sections[name]()
        print()


if __name__ == "__main__":
    main()
