"""Builds a run from a config: resolves presets, picks the device, makes data, network and algorithm."""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ssl_kd.algorithm import Algorithm
from ssl_kd.config import SECTIONS, Config, DataConfig, TrainConfig, apply_mapping, apply_set, set_field
from ssl_kd.data.build import build_dataset, parse_dataset_name
from ssl_kd.data.paths import resolve_data_dir
from ssl_kd.data.types import SSLData
from ssl_kd.errors import ConfigError
from ssl_kd.nets.hf import hf_network
from ssl_kd.registry import ALGORITHMS, DATASETS, NETWORKS, discover_all
from ssl_kd.text.hub import is_hf_name, parse_hf_name
from ssl_kd.trainer.checkpoint import load_checkpoint, load_module_state, resolve_checkpoint
from ssl_kd.trainer.rundir import belongs
from ssl_kd.trainer.schedule import check_schedule
from ssl_kd.trainer.selection import resolve_select_on
from ssl_kd.weighting.config import MOVED_ALGO_KEYS


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu or --device auto")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def algorithm_class(name: str) -> type[Algorithm]:
    discover_all()
    return ALGORITHMS.get(name)


def resolve_config(yaml_content: dict[str, Any], flags: dict[str, Any], sets: list[str]) -> Config:
    """Defaults < dataset preset protocol < YAML < command-line flags < --set.

    The algorithm and dataset are decided first (they pick the algorithm's config class and the
    preset's defaults), taking the same precedence into account.
    """
    discover_all()
    probe = Config(train=TrainConfig(), data=DataConfig())
    apply_mapping(probe, {k: v for k, v in yaml_content.items() if k != "algo"}, "--config")
    for key, value in flags.items():
        set_field(probe.train, "train", key, value)
    for assignment in sets:
        if not assignment.split("=", 1)[0].startswith("algo."):
            apply_set(probe, assignment)
    algo_cls = algorithm_class(probe.train.algo)
    family, _ = parse_dataset_name(probe.train.dataset)

    cfg = Config(train=TrainConfig(), data=DataConfig(), algo=algo_cls.Config())
    cfg.weights.kind = algo_cls.default_weights  # kdaif: influence; a YAML file, a flag or --set may change it
    for key, value in DATASETS.get(family).protocol.items():
        set_field(cfg.train, "train", key, value)
    apply_mapping(cfg, yaml_content, "--config")
    for key, value in flags.items():
        set_field(cfg.train, "train", key, value)
    for assignment in sets:
        apply_set(cfg, assignment)
    validate(cfg)
    return cfg


MAX_STEPS = 10**9


def validate(cfg: Config) -> None:
    """Refuse values outside their ranges with one line naming the key and the fix (the data
    section is checked where the dataset is built: ssl_kd.data.build.check_data_config)."""
    t = cfg.train
    for key in ("steps", "batch_size", "evals", "eval_batch_size", "log_every"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"train.{key} must be positive, got {getattr(t, key)}")
    if t.steps > MAX_STEPS:  # e.g. 1e30: a typo that would otherwise start a run that never ends
        raise ConfigError(f"train.steps={t.steps} is more than {MAX_STEPS:,}; give the number of steps you mean, e.g. --steps 100000")
    for key in ("uratio", "eval_every", "warmup_steps", "save_every", "check_finite_every", "median_last"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key} must be >= 0, got {getattr(t, key)}")
    for section in SECTIONS:
        check_floats(getattr(cfg, section), section)
    check_seed(t.seed, "train.seed")
    check_seed(cfg.data.split_seed, "data.split_seed")
    cfg.weights.check()
    if not t.lr > 0:
        raise ConfigError(f"train.lr must be a positive learning rate, got {t.lr}; e.g. --lr 0.03")
    if not 0.0 <= t.ema < 1.0:
        raise ConfigError(f"train.ema must be in [0, 1), got {t.ema}; use 0 to disable the EMA")
    in_range(t.momentum, 0.0, 1.0, "train.momentum", "e.g. 0.9")
    in_range(t.weight_decay, 0.0, float("inf"), "train.weight_decay", "e.g. 5e-4")
    check_schedule(t)
    resolve_select_on(t.select_on, has_val=True)  # a valid name (whether there is a split is checked with the data)
    if cfg.algo is not None:
        check_algo_ranges(cfg.algo)
    if t.net:
        network_factory(t.net)


SEED_RANGE = (-(2**63), 2**63 - 2)  # torch's generators take 64-bit seeds; the unlabelled sampler's is seed + 1


def check_seed(value: int, key: str) -> None:
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise ConfigError(f"{key}={value} does not fit in 64 bits; give a seed between -2**63 and 2**63 - 2, e.g. 0")


def in_range(value: float, low: float, high: float, key: str, hint: str) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key} must be in [{low:g}, {high:g}], got {value:g}; give {hint}")


def check_floats(section: Any, name: str) -> None:
    """No NaN or infinite float anywhere in a config section."""
    if section is None:
        return
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}.{f.name} must be a finite number, got {value}")


def check_algo_ranges(algo_cfg: Any) -> None:
    """Algorithm fields by naming convention: thresholds, fractions of the run (`*warmup`,
    `*rampup*`, `*fraction`, `student_wait`), EMA decays and `alpha` lie in [0, 1];
    temperatures are positive; loss weights (`lambda*`) are >= 0."""
    for f in dataclasses.fields(algo_cfg):
        value, key = getattr(algo_cfg, f.name), f"algo.{f.name}"
        if not isinstance(value, float) or isinstance(value, bool):
            continue
        name = f.name
        if (name.endswith(("threshold", "warmup", "fraction", "ema")) or "rampup" in name
                or name in ("alpha", "student_wait")):
            in_range(value, 0.0, 1.0, key, "a value in [0, 1]")
        elif name.endswith("temperature") or name == "tau":
            if value <= 0:
                raise ConfigError(f"{key} must be positive, got {value:g}")
        elif name.startswith("lambda") or name.endswith("_lambda"):
            in_range(value, 0.0, float("inf"), key, "a non-negative loss weight")
        elif name.endswith("_lr"):
            in_range(value, 0.0, float("inf"), key, "a non-negative learning rate (0: train.lr)")


def validate_for_data(cfg: Config, data: SSLData) -> None:
    """Checks that need the dataset: a labelled batch far larger than the labelled set, best.pt
    chosen on a validation split that is not there."""
    resolve_select_on(cfg.train.select_on, data.val_idx.numel() > 0)
    n = data.labelled_idx.numel()
    if n and cfg.train.batch_size > MAX_BATCH_REPEATS * n:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} is far larger than the {n} labelled examples "
                          f"(each would repeat ~{cfg.train.batch_size // n} times per batch); use --batch-size <= {MAX_BATCH_REPEATS * n}")


MAX_BATCH_REPEATS = 10  # a labelled batch may repeat each labelled example at most this often


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config saved with Config.to_dict() (e.g. from a checkpoint)."""
    algo_cls = algorithm_class(d["train"]["algo"])
    cfg = Config(train=TrainConfig(), data=DataConfig(), algo=algo_cls.Config())
    if "weights" not in d:  # saved before the weights section: kdaif's influence options were algo.* keys
        cfg.weights.kind = algo_cls.default_weights
        d = {**d, "algo": dict(d.get("algo") or {}), "weights": {}}
        for old, new in MOVED_ALGO_KEYS.items():
            if old in d["algo"] and not hasattr(cfg.algo, old):
                d["weights"][new] = d["algo"].pop(old)
        d["algo"].pop("gate", None)
        if isinstance(d["weights"].get("relative"), bool):
            d["weights"]["relative"] = "cosine" if d["weights"]["relative"] else "none"
    apply_mapping(cfg, {k: v for k, v in d.items() if v}, "checkpoint config")
    return cfg


def build_data(cfg: Config) -> SSLData:
    return build_dataset(cfg.train.dataset, cfg.data, resolve_data_dir(cfg.train.data_dir), cfg.train.download, cfg.train.net)


def network_factory(name: str) -> Callable[..., nn.Module]:
    """A registered network's factory; `hf:<name-or-path>[:layers=N]` names a Hugging Face model."""
    discover_all()
    if is_hf_name(name):
        parse_hf_name(name)  # a bad option or a missing offline package fails here, before any data is read
        return functools.partial(hf_network, name)
    return NETWORKS.get(name)


def build_network(name: str, data: SSLData) -> nn.Module:
    """Instantiate a registered network for `data` (its outputs: classes or one score; input channels)."""
    factory = network_factory(name)
    in_channels = data.train_x.shape[1] if data.train_x.ndim == 4 else 0
    return factory(data.num_outputs, in_channels) if in_channels else factory(data.num_outputs)


def build_model(train_cfg: Any, data: SSLData) -> nn.Module:
    """The network a run trains: `train.net` plus the heads its algorithm adds
    (`Algorithm.extra_heads`), attached before the optimiser, the EMA, DDP and checkpoints see it."""
    model = build_network(train_cfg.net, data)
    for name, head in algorithm_class(train_cfg.algo).extra_heads(model.num_features, data).items():
        model.add_module(name, head)
    return model


def config_summary(cfg: Config) -> str:
    t = cfg.train
    return (f"algo={t.algo} dataset={t.dataset} net={t.net} steps={t.steps} batch={t.batch_size} "
            f"mu={t.uratio} lr={t.lr} wd={t.weight_decay} seed={t.seed} "
            f"algo_cfg={dataclasses.asdict(cfg.algo) if cfg.algo is not None else {}}")


@dataclass
class LoadedRun:
    """A finished or interrupted run, rebuilt for evaluation or explanation."""

    cfg: Config
    data: SSLData
    model: nn.Module
    ema_model: nn.Module | None
    run_dir: Path | None  # the run folder the checkpoint belongs to; None for a copy kept elsewhere
    step: int
    state: dict[str, Any]
    ckpt: Path


def load_run(path: str | Path, device: str = "auto", data_dir: str = "", plugins: list[str] | tuple[str, ...] = ()) -> LoadedRun:
    """Rebuild config, data and networks of the run that wrote checkpoint `path` (or run folder),
    loading the plug-ins it recorded (or `plugins` instead, when given)."""
    from ssl_kd.plugins import load_recorded

    ckpt = resolve_checkpoint(path)
    dev = pick_device(device)
    state = load_checkpoint(ckpt, dev)
    load_recorded(state.get("plugins"), list(plugins), f"the run of {ckpt}")
    cfg = config_from_dict(state["config"])
    if data_dir:
        cfg.train.data_dir = data_dir
    data = build_data(cfg).to(dev)
    model = build_model(cfg.train, data).to(dev)
    load_module_state(model, state["model"], "model", ckpt)
    ema_model = None
    if state.get("ema") is not None:
        ema_model = build_model(cfg.train, data).to(dev)
        load_module_state(ema_model, state["ema"], "EMA model", ckpt)
    model.eval()
    run_dir = ckpt.parent.parent if belongs(ckpt, state.get("run_id"), ckpt.parent.parent) else None
    return LoadedRun(cfg, data, model, ema_model, run_dir, int(state["step"]), state, ckpt)
