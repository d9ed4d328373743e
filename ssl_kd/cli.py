"""Command-line entry point of `tools/train.py`: parse flags, resolve the config, train, summarise."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ssl_kd.config import Config
from ssl_kd.errors import ConfigError, SSLKDError
from ssl_kd.plugins import load_plugins
from ssl_kd.registry import ALGORITHMS, DATASETS, NETWORKS, discover_all
from ssl_kd.run import algorithm_class, build_data, config_from_dict, config_summary, pick_device, resolve_config
from ssl_kd.trainer.checkpoint import load_checkpoint, resolve_checkpoint
from ssl_kd.trainer.logger import RunLogger
from ssl_kd.trainer.trainer import Trainer

# Flags that map one-to-one onto TrainConfig fields (argparse dest -> field).
TRAIN_FLAGS = ("algo", "dataset", "net", "data_dir", "download", "out", "seed", "steps", "eval_every",
               "batch_size", "uratio", "lr", "device")
RESUME_OVERRIDABLE = ("steps", "eval_every", "device", "data_dir")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a semi-supervised or distillation algorithm.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--algo", help="algorithm name (see --list)")
    p.add_argument("--dataset", help="dataset preset <family>[_<labels>], e.g. cifar10_4k, digits_100")
    p.add_argument("--net", help="network name (default: the dataset preset's)")
    p.add_argument("--config", help="YAML file with train:/data:/algo: sections")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. --set algo.threshold=0.9 --set data.split_seed=1")
    p.add_argument("--data-dir", help="data folder (default: $SSL_KD_DATA, else ./data)")
    p.add_argument("--download", action="store_const", const=True, help="download missing datasets")
    p.add_argument("--out", help="run folder (default: runs/<algo>_<dataset>_s<seed>_<time>)")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--uratio", type=int, help="mu: unlabelled batch = uratio * batch size")
    p.add_argument("--lr", type=float)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--teacher-ckpt", metavar="RUN_OR_CKPT",
                   help="teacher-student algorithms (kd, kdaif): the trained teacher (same as --set algo.teacher_ckpt=...)")
    p.add_argument("--teacher-net", help="teacher-student algorithms: the teacher's network (same as --set algo.teacher_net=...)")
    p.add_argument("--compare", metavar="ALGO",
                   help="afterwards train ALGO with the same settings and budget, and print both results side by side")
    p.add_argument("--resume", metavar="RUN_OR_CKPT", help="resume a run folder or checkpoint exactly")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                   help="a Python file or importable module registering extra algorithms/datasets/networks")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in log files)")
    p.add_argument("--list", action="store_true", help="list algorithms, datasets and networks, then exit")
    return p


def list_registered() -> str:
    discover_all()
    lines = ["algorithms: " + ", ".join(ALGORITHMS.names()), "datasets:"]
    for name in DATASETS.names():
        fam = DATASETS.get(name)
        presets = ", ".join(f"{name}_{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{name}_{n}" for n in fam.presets)
        lines.append(f"  {name:<10} {fam.description} (presets: {name}{', ' + presets if presets else ''})")
    lines.append("networks (parameters with a 100-class head):")
    for name in NETWORKS.names():
        count = parameter_count(NETWORKS.get(name))
        lines.append(f"  {name:<13} {'?' if count is None else f'{count / 1e6:.2f}M'}")
    return "\n".join(lines)


def parameter_count(factory: Any, num_classes: int = 100) -> int | None:
    """Parameters of a registered network, built on the meta device (no memory, no initialisation
    cost); None for a plugin network that cannot be built there."""
    import torch

    try:
        with torch.device("meta"):
            return sum(p.numel() for p in factory(num_classes).parameters())
    except Exception:  # a plugin's constructor may need real tensors; the listing must still work
        return None


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}


def default_run_dir(cfg: Config) -> Path:
    t = cfg.train
    return Path("runs") / f"{t.algo}_{t.dataset}_s{t.seed}_{time.strftime('%Y%m%d-%H%M%S')}"


def prepare(args: argparse.Namespace) -> tuple[Config, Path, Path | None]:
    """The resolved config, the run folder and the checkpoint to resume from (if any)."""
    flags = given_flags(args)
    if args.resume:
        ckpt = resolve_checkpoint(args.resume)
        extra = sorted(set(flags) - set(RESUME_OVERRIDABLE))
        extra += [k for k in ("teacher_ckpt", "teacher_net") if getattr(args, k)]
        if extra or args.set or args.config:
            raise ConfigError(f"--resume continues a run with its saved config; drop {', '.join('--' + e.replace('_', '-') for e in extra) or '--set/--config'} "
                              f"(only {', '.join('--' + k.replace('_', '-') for k in RESUME_OVERRIDABLE)} may change)")
        cfg = config_from_dict(load_checkpoint(ckpt)["config"])
        for key, value in flags.items():
            setattr(cfg.train, key, value)
        cfg.train.progress = cfg.train.progress and not args.no_progress
        return cfg, ckpt.parent.parent, ckpt
    yaml_content = _load_yaml(args.config) if args.config else {}
    args.set = [*(f"algo.{k}={getattr(args, k)}" for k in ("teacher_ckpt", "teacher_net") if getattr(args, k)), *args.set]
    if args.no_progress:
        args.set = [*args.set, "train.progress=false"]
    cfg = resolve_config(yaml_content, flags, args.set)
    run_dir = Path(cfg.train.out) if cfg.train.out else default_run_dir(cfg)
    cfg.train.out = str(run_dir)
    return cfg, run_dir, None


def _load_yaml(path: str) -> dict[str, Any]:
    from ssl_kd.config import load_yaml

    return load_yaml(path)


def train(cfg: Config, run_dir: Path, ckpt: Path | None = None) -> dict[str, Any]:
    device = pick_device(cfg.train.device)
    data = build_data(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    trainer = Trainer(cfg, data, device, run_dir)
    if ckpt is not None:
        trainer.load(ckpt)
        print(f"resumed {run_dir} at step {trainer.step}", file=sys.stderr)
    print(f"run folder: {run_dir}\n{config_summary(cfg)}\ndevice={device} labelled={data.labelled_idx.numel()} "
          f"unlabelled={data.unlabelled_idx.numel()} val={data.val_idx.numel()} test={data.test_y.numel()}", file=sys.stderr)
    eval_key = "ema_top1" if cfg.train.ema > 0 else "top1"
    logger = RunLogger(run_dir, eval_key, resume_step=trainer.step if ckpt is not None else None)
    try:
        trainer.fit(logger)
    except KeyboardInterrupt:
        logger.close()
        print(f"\ninterrupted at step {trainer.step}; checkpoint saved. Resume with: "
              f"python tools/train.py --resume {run_dir}", file=sys.stderr)
        raise SystemExit(130)
    summary = logger.summary(trainer.step, trainer.wall_s, cfg.train.median_last)
    logger.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        load_plugins(args.plugin)
        if args.list:
            print(list_registered())
            return 0
        if args.compare:
            algorithm_class(args.compare)  # an unknown name fails now, not after the first run
        cfg, run_dir, ckpt = prepare(args)
        summary = train(cfg, run_dir, ckpt)
        print(json.dumps(summary))
        if args.compare:
            compare(cfg, summary, args.compare)
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def compare(cfg: Config, summary: dict[str, Any], algo: str) -> None:
    """Train `algo` with the run's training and data settings (its own algorithm defaults) in a
    sibling folder, and print the two results side by side."""
    other_cfg = Config(train=dataclasses.replace(cfg.train, algo=algo, out=f"{cfg.train.out}_{algo}"), data=cfg.data,
                       algo=algorithm_class(algo).Config())
    other = train(other_cfg, Path(other_cfg.train.out))
    print(json.dumps(other))
    t = cfg.train
    print(f"\n{t.dataset}, {t.steps} steps, seed {t.seed}: test top-1 (%) of the "
          f"{'EMA' if summary['metric'] == 'ema_top1' else 'raw'} model")
    print(f"{'algorithm':<12} {'last':>7} {'best':>7} {'median':>7} {'wall s':>8}  run folder")
    for name, s, folder in ((t.algo, summary, t.out), (algo, other, other_cfg.train.out)):
        print(f"{name:<12} {s['last_top1']:>7.2f} {s['best_top1']:>7.2f} {s['median_top1']:>7.2f} {s['wall_s']:>8.1f}  {folder}")
