"""The one training loop every algorithm runs in.

The algorithm computes a loss from a batch of views; the trainer owns sampling, augmentation,
backward, optimiser and scheduler, EMA, AMP, compile, evaluation, checkpoints, TensorBoard and
the progress bar. A run is resumable exactly: checkpoints hold every piece of state, RNGs included.
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ssl_kd import digest
from ssl_kd.algorithm import Algorithm, Batch, Context
from ssl_kd.augment.views import make_view
from ssl_kd.config import Config
from ssl_kd.data.draws import KeyedDraws, example_keys
from ssl_kd.data.feed import StepFeed
from ssl_kd.data.own import no_unlabelled_message
from ssl_kd.data.placement import place_data
from ssl_kd.data.types import SSLData
from ssl_kd.errors import CheckpointError, ConfigError
from ssl_kd.influence.diagnostics import roc_auc
from ssl_kd.run import algorithm_class, build_model, build_network
from ssl_kd.text.hub import is_hf_name
from ssl_kd.text.metrics import run_metric
from ssl_kd.trainer import distributed
from ssl_kd.trainer.amp import autocast_for
from ssl_kd.trainer.checkpoint import RESUME_KEYS, copy_checkpoint, load_checkpoint, load_module_state, save_checkpoint
from ssl_kd.trainer.compile import compile_network
from ssl_kd.trainer.ema import make_ema, update_ema, warmup_decay
from ssl_kd.trainer.evaluate import data_metrics, predict
from ssl_kd.trainer.guard import FiniteGuard
from ssl_kd.trainer.logger import RunLogger, run_hparams
from ssl_kd.trainer.monitor import defined, ood_logs
from ssl_kd.trainer.optim import build_optimizer, record_optimizer
from ssl_kd.trainer.progress import evaluation_line, progress_postfix
from ssl_kd.trainer.selection import resolve_select_on, select_key
from ssl_kd.trainer.tbviews import log_evaluation_pictures, views_grid, views_text
from ssl_kd.weighting.module import build_weights


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class Trainer:
    def __init__(self, cfg: Config, data: SSLData, device: torch.device, run_dir: Path,
                 dist: distributed.DistInfo | None = None) -> None:
        self.cfg = cfg
        self.dist = dist or distributed.DistInfo()
        self.device = device
        self.run_dir = run_dir
        t = cfg.train
        seed_everything(t.seed)
        self.data, self.placement = place_data(data, device, cfg.data)
        self.metric = run_metric(getattr(self.data.policy, "metric", None))  # top1, or a text task's official metric
        self.model = distributed.convert_batchnorm(build_model(t, self.data).to(device), self.dist, device, t.sync_bn)
        if device.type == "cuda" and t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema_model = make_ema(self.model) if t.ema > 0 else None
        self.forward_model = distributed.wrap(self.model, self.dist, device)
        if t.compile:
            self.forward_model = compile_network(self.forward_model, self.data.modality)
        self.cfg = cfg = dataclasses.replace(cfg, train=record_optimizer(self.model, t))  # what runs, for config.yaml
        t = cfg.train
        self.optimizer, self.scheduler = build_optimizer(self.model, t)
        algo_cls = algorithm_class(t.algo)
        ctx = Context(
            num_classes=data.num_classes, total_steps=t.steps, device=device, data=self.data, train_cfg=t,
            ema_model=self.ema_model, make_net=lambda name: build_network(name, self.data).to(device),
            autocast=self.autocast,
        )
        self.algorithm: Algorithm = algo_cls(self.forward_model, cfg.algo, ctx)
        self.algorithm.weights = build_weights(cfg.weights, self.algorithm)
        self.applied: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # weights, correct, unseen-class since the last evaluation
        if self.algorithm.needs_unlabelled and not self.data.has_unlabelled:
            raise ConfigError(no_unlabelled_message(t.algo, t.dataset, self.data.train_ids is not None))
        self.labelled = StepFeed(self.data.labelled_idx, t.batch_size, t.seed, self.data.train_x, self.dist.shard)
        self.unlabelled = (
            StepFeed(self.data.unlabelled_idx, t.batch_size * t.uratio, t.seed + 1, self.data.train_x, self.dist.shard)
            if self.algorithm.needs_unlabelled else None
        )
        self.step = 0
        self.train_s = 0.0  # time spent in training steps, over every session of the run
        self.wall_before = 0.0  # real wall time of the run's earlier sessions (resume)
        self.started = time.perf_counter()
        self.guard = FiniteGuard(t.check_finite_every)
        self.test_logits: dict[str, torch.Tensor] = {}  # the last evaluation's, per model prefix
        self.plugins: list[dict[str, str]] = []  # plug-in records (ssl_kd.plugins), kept in checkpoints
        self.run_id = ""  # the run folder's identity (ssl_kd.trainer.rundir), kept in checkpoints
        self.best_step: int | None = None  # the evaluation best.pt holds, kept in last.pt (repair_best)

    def metric_keys(self) -> tuple[str, str]:
        """(eval_key, select_key): the test figure the summary reports (the EMA's when one is kept,
        as in FixMatch's protocol) and the one best.pt is chosen on (train.select_on, ssl_kd.trainer.selection)."""
        eval_key = f"{'ema_' if self.ema_model is not None else ''}{self.metric}"
        prefix = eval_key[: -len(self.metric)]
        select_on = resolve_select_on(self.cfg.train.select_on, self.data.val_idx.numel() > 0)
        return eval_key, select_key(select_on, eval_key, f"{prefix}val_{self.metric}")

    @property
    def wall_s(self) -> float:
        """The run's real wall time: evaluations, checkpoints and earlier sessions included."""
        return self.wall_before + time.perf_counter() - self.started

    # ----- pieces of one step -------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_for(self.device, self.cfg.train)

    def views(self, x: torch.Tensor, idx: torch.Tensor, names: tuple[str, ...], split: str) -> dict[str, torch.Tensor]:
        """Views of this rank's part of the global batch, each example's from its own keyed stream
        (seed, step, split/view, global position, index): one process and N draw the same views."""
        offset = self.dist.rank * idx.shape[0]  # every rank's part has the same size (check_batch)
        out = {name: make_view(name, x, self.data.policy,
                               KeyedDraws(example_keys(self.cfg.train.seed, self.step, f"{split}/{name}", idx, offset)))
               for name in names}
        if self.device.type == "cuda" and self.cfg.train.channels_last:
            out = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for k, v in out.items()}
        return out

    def next_batch(self) -> Batch:
        """This rank's part of the step's batch: it gathers and augments its own examples only."""
        idx_l, x_l = next(self.labelled)
        batch = Batch(x_l=self.views(x_l, idx_l, self.algorithm.labelled_views, "labelled"), y_l=self.data.targets(idx_l), idx_l=idx_l)
        if self.unlabelled is not None:
            idx_u, x_u = next(self.unlabelled)
            batch.x_u = self.views(x_u, idx_u, self.algorithm.unlabelled_views, "unlabelled")
            batch.idx_u = idx_u
        return batch

    def train_one_step(self) -> tuple[dict[str, Any], Any]:
        batch = self.next_batch()
        self.model.train()
        self.algorithm.step = self.step
        with self.autocast(), distributed.rank_rng(self.dist, self.cfg.train.seed, self.step, self.device):
            out = self.algorithm.train_step(batch)
        out = self.algorithm.weights.step_outputs(out)
        self.guard.record(self.step + 1, out.loss)  # checked with the weights on check steps (no sync here)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema_model is not None:  # t = the steps before this one: `step` in the checkpoint keeps resume exact
            update_ema(self.ema_model, self.model, warmup_decay(self.cfg.train.ema, self.step))
        with distributed.rank_rng(self.dist, self.cfg.train.seed, self.step, self.device, phase=1):
            self.algorithm.after_step()
        logs = {"loss/total": out.loss.detach(), **out.logs}
        if out.pseudo_labels is not None and batch.idx_u is not None and out.mask is not None:
            logs["train/mask_ratio"] = out.mask.float().mean()
        if out.pseudo_labels is not None and batch.idx_u is not None and self.data.pool_truth:  # a user's pool has none
            truth = self.data.true_labels(batch.idx_u)  # -1 (never correct) for unseen classes
            correct = (out.pseudo_labels == truth).float()
            logs["train/pseudo_label_acc"] = 100.0 * correct.mean()
            if out.mask is not None:  # nan (not logged: ssl_kd.trainer.monitor.defined) when the mask admits nothing
                logs["train/masked_pseudo_label_acc"] = 100.0 * (correct * out.mask).sum() / out.mask.sum()
            if out.weights is not None:
                w = out.weights.float()
                logs["train/weighted_pseudo_label_acc"] = 100.0 * (correct * w).sum() / w.sum().clamp(min=1e-12)
                self.applied.append((w.detach(), correct, truth < 0))
        if self.data.ood_idx is not None and batch.idx_u is not None:
            logs.update(ood_logs(self.data.true_labels(batch.idx_u) < 0, out))
        return logs, out

    # ----- evaluation and checkpoints ---------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Test (and validation) metrics of the model, its EMA and the algorithm's extra model; under
        torchrun each rank predicts its part of each set and every rank gets the whole set's metrics."""
        d = self.data
        teacher = self.algorithm.eval_model()
        distributed.average_buffers_([self.model, self.ema_model, teacher], self.dist)
        row: dict[str, Any] = {"step": self.step}
        models = {"": self.model, "ema_": self.ema_model, "algo_": teacher}
        for prefix, model in models.items():
            if model is None:
                continue
            logits = self.predict_all(model, d.test_x)
            self.test_logits[prefix] = logits  # for the confusion matrix
            metrics = data_metrics(logits, d)
            row.update({f"{prefix}{k}": v for k, v in metrics.items()})
            if d.val_idx.numel() > 0:
                with torch.inference_mode():  # nothing made here leaves the block (inference tensors)
                    val_logits = self.predict_all(model, d.train_x[d.val_idx])
                    val = data_metrics(val_logits, d, "val")
                    # top1 beside the run's metric, except for a regression head (no classes)
                    row.update({f"{prefix}val_{k}": val[k] for k in dict.fromkeys(("top1", self.metric)) if k in val})
        row.update(self.algorithm.eval_metrics())
        row.update(self.algorithm.weights.eval_metrics())
        row.update(self.applied_weight_metrics())
        return row

    def applied_weight_metrics(self) -> dict[str, float]:
        """ROC-AUC of the weights the loss applied since the last evaluation, over the training
        batches themselves: at ranking correct pseudo-labels first (`weight/applied_correct_auc`)
        and unseen-class images last (`weight/applied_ood_auc`), and the mean weight of unseen-class
        images over that of seen-class ones (`weight/applied_ood_ratio`). The truth is read for
        monitoring only."""
        if not self.applied:
            return {}
        # torchrun: every rank's batches (each rank kept its part; the AUCs do not depend on the order)
        w, correct, ood = (distributed.gather_cat(torch.cat(parts).float()) for parts in zip(*self.applied))
        ood = ood.bool()
        self.applied = []
        out = {"weight/applied_correct_auc": roc_auc(w, correct.bool())}
        if self.data.ood_idx is not None and ood.any() and not ood.all():
            out["weight/applied_ood_auc"] = roc_auc(-w, ood)
            out["weight/applied_ood_ratio"] = float(w[ood].mean() / w[~ood].mean().clamp_min(1e-12))
        return out

    def predict_all(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits of `model` on `x`; distributed, each rank predicts its contiguous part and the parts are gathered."""
        desc = "evaluating" if self.cfg.train.progress and self.dist.is_main else ""  # text evaluations take a while
        return distributed.sharded(lambda part: predict(model, x, self.data.policy, self.cfg.train.eval_batch_size,
                                                        self.autocast, rows=part, desc=desc)[0], x.shape[0])

    def log_pictures(self, logger: RunLogger) -> None:
        """TensorBoard figures of an evaluation: the reported model's confusion matrix and the
        confidence of the teacher (the algorithm's extra model), else of that model, on unlabelled images."""
        if not self.dist.is_main or self.data.is_regression:
            return  # only rank 0 logs; a regression head has no confusion matrix or confidence
        prefix = logger.eval_key[: -len(self.metric)]
        teacher = self.algorithm.eval_model()
        scorer, name = (teacher, "teacher") if teacher is not None else (self.ema_model or self.model, "model")
        log_evaluation_pictures(logger, self.step, self.data, self.test_logits[prefix], scorer, name,
                                self.cfg.train.eval_batch_size, self.autocast)

    def state(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "step": self.step,
            "wall_s": self.wall_s,
            "train_s": self.train_s,
            "model": self.model.state_dict(),
            "ema": self.ema_model.state_dict() if self.ema_model is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "algorithm": self.algorithm.state_dict(),
            "weights": self.algorithm.weights.state_dict(),
            "samplers": {"labelled": self.labelled.state_dict(),
                         "unlabelled": self.unlabelled.state_dict() if self.unlabelled else None},
            "rng": rng_state(),
            "plugins": self.plugins,
            "run_id": self.run_id,
            "best_step": self.best_step,
        }

    def check_finite(self) -> None:
        """Raise DivergenceError if a loss since the last check, or the model, EMA, optimiser
        state or teacher, is not finite (one host sync; under torchrun the decision is every rank's)."""
        ema = self.ema_model.state_dict() if self.ema_model is not None else None
        teacher = self.algorithm.eval_model()  # a teacher trained by its own optimiser diverges on its own
        self.guard.check(self.step, {"model": self.model.state_dict(), "EMA model": ema,
                                     "optimiser state": self.optimizer.state,
                                     "teacher": teacher.state_dict() if teacher is not None else None})

    def save(self, best: bool = False) -> None:
        """Write `last.pt` (after checking the state is finite), then copy it to `best.pt` if `best`.
        Only rank 0 writes, and nothing here is collective: only rank 0 knows when it saves best.pt."""
        self.check_finite()
        if not self.dist.is_main:
            return
        last = self.run_dir / "checkpoints" / "last.pt"
        if best:
            self.best_step = self.step  # recorded in last.pt before best.pt is copied: repair_best finishes a cut copy
        save_checkpoint(self.state(), last)
        self.guard.last_good = (self.step, last)
        if best:
            copy_checkpoint(last, last.with_name("best.pt"))

    def repair_best(self) -> None:
        """After resuming from `last.pt`: when it records that it is itself the best evaluation but
        best.pt differs (a crash came between writing last.pt and copying it), copy it now, so the
        pair agrees with metrics.jsonl whatever moment a crash hit."""
        last = self.run_dir / "checkpoints" / "last.pt"
        best = last.with_name("best.pt")
        if self.best_step == self.step and (not best.is_file() or digest.recorded(best) != digest.recorded(last)):
            copy_checkpoint(last, best)

    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore every piece of state from a checkpoint of the same configuration; returns the checkpoint's state."""
        state = load_checkpoint(path, self.device, RESUME_KEYS)  # whole and finite, teacher included
        saved = state["config"]["train"]
        for key in ("algo", "dataset", "net"):
            if saved[key] != getattr(self.cfg.train, key):
                raise CheckpointError(f"checkpoint {path} was written by a run with {key}={saved[key]!r}, "
                                      f"not {getattr(self.cfg.train, key)!r}; resume with the run's own config")
        load_module_state(self.model, state["model"], "model", path)
        if self.ema_model is not None and state["ema"] is not None:
            load_module_state(self.ema_model, state["ema"], "EMA model", path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        algo_state = dict(state["algorithm"])
        weights_state = state.get("weights", {"weighter": algo_state.pop("weighter")} if "weighter" in algo_state else {})
        self.algorithm.load_state_dict(algo_state)
        self.algorithm.weights.load_state_dict(weights_state)
        self.labelled.load_state_dict(state["samplers"]["labelled"])
        if self.unlabelled is not None:
            self.unlabelled.load_state_dict(state["samplers"]["unlabelled"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.train_s = float(state.get("train_s", 0.0))
        self.wall_before, self.started = float(state.get("wall_s", 0.0)), time.perf_counter()
        self.guard.last_good = (self.step, Path(path))
        self.best_step = state.get("best_step")
        return state

    # ----- the loop ---------------------------------------------------------------------------
    def fit(self, logger: RunLogger) -> dict[str, Any]:
        """Train up to `train.steps`. Ctrl-C or SIGTERM stops after the current step (under torchrun:
        every process after the same log step, `stop_agreed`) and saves `last.pt` there (a second
        signal stops at once), so an interrupted run resumes exactly;
        it then raises `Interrupted` carrying the signal."""
        t = self.cfg.train
        bar = tqdm(total=t.steps, initial=self.step, disable=not t.progress, dynamic_ncols=True, desc=t.algo)
        last_eval: dict[str, Any] = {}
        if self.step == 0 and (grid := views_grid(self.data)) is not None:
            logger.image("views/none_weak_strong", grid, 0)  # what the augmentation does to a few images
        if self.step == 0 and self.dist.is_main and self.data.modality == "text" and is_hf_name(t.net):
            from ssl_kd.text.tokenise import load_tokenizer

            if (table := views_text(self.data, load_tokenizer(t.net))) is not None:
                logger.text("views/none_weak_strong", table, 0)  # the sentences as the views see them
        logger.hparams(run_hparams(self.cfg, self.data.modality, self.device.type, self.dist.enabled), t.median_last)
        stopping = False
        scalars: dict[str, float] = {}
        self.since_eval = (self.step, self.train_s)  # the evaluation line's time per step covers the steps since the last one
        session = (self.step, time.perf_counter())  # its ETA: this session's pace, evaluations and checkpoints included
        with StopRequest() as stop:
            while self.step < t.steps and not stopping:
                start = time.perf_counter()
                logs, out = self.train_one_step()
                self.step += 1
                if self.step % t.log_every == 0 or self.step == t.steps:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    scalars = defined(distributed.mean_scalars(logs, self.dist, self.device))  # every rank's, not rank 0's half
                    scalars["train/lr"] = self.optimizer.param_groups[0]["lr"]
                    scalars["time/step_s"] = time.perf_counter() - start
                    logger.scalars(scalars, self.step)
                    for key, values in out.histograms.items():
                        logger.histogram(key, values, self.step)
                    bar.set_postfix(progress_postfix(scalars, last_eval, logger.eval_key))
                self.train_s += time.perf_counter() - start
                bar.update(1)
                if self.step % t.eval_interval() == 0 or self.step == t.steps:
                    self.check_finite()  # never evaluate (or save) diverged weights
                    last_eval = self.evaluate()
                    self.save(best=logger.evaluation(last_eval))
                    self.log_pictures(logger)
                    bar.set_postfix(progress_postfix(scalars, last_eval, logger.eval_key))
                    if not t.progress and self.dist.is_main:
                        print(self.evaluation_line(last_eval, logger, session), file=sys.stderr, flush=True)
                elif t.save_every and self.step % t.save_every == 0:
                    self.save()
                elif self.guard.due(self.step):
                    self.check_finite()
                stopping = self.stop_agreed(stop)
        bar.close()
        if stopping and self.step < t.steps:  # every step done (and saved at the last evaluation): complete
            self.save()
            raise Interrupted(stop.signum, self.step)
        return last_eval

    def evaluation_line(self, row: dict[str, Any], logger: RunLogger, session: tuple[int, float]) -> str:
        """`--no-progress`: the evaluation as one plain line (the reported figure, the raw model's,
        the one best.pt is chosen on; lr, training seconds per step since the last line, ETA)."""
        step_before, train_before = self.since_eval
        self.since_eval = (self.step, self.train_s)
        step_s = (self.train_s - train_before) / max(1, self.step - step_before)
        eta_s = (time.perf_counter() - session[1]) / max(1, self.step - session[0]) * (self.cfg.train.steps - self.step)
        return evaluation_line(row, (logger.eval_key, self.metric, logger.select_key), self.cfg.train.steps,
                               self.optimizer.param_groups[0]["lr"], step_s, eta_s)

    def stop_agreed(self, stop: StopRequest) -> bool:
        """Whether a signal stops the run after this step. Under torchrun the processes get a signal
        at different moments (or only one gets it), so they decide together at log steps and at the
        last step (one all-reduce where the step already waits to log): all stop at the same step,
        where rank 0 saves."""
        if not self.dist.enabled:
            return stop.requested
        if self.step % self.cfg.train.log_every and self.step != self.cfg.train.steps:
            return False
        return not distributed.all_true(not stop.requested)


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM after saving `last.pt`; `exit_code` is 128 + signal."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by signal {signum} at step {step}")
        self.signum, self.step = signum, step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StoppedAgain(KeyboardInterrupt):
    """A second SIGINT or SIGTERM: the run stops at once, saving nothing after its last checkpoint."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped again by signal {signum}")
        self.signum = signum


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag checked between steps, and a second one into
    StoppedAgain at once; restores the handlers on exit."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = int(signal.SIGINT)
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == self.signum:  # the same signal again (torchrun may add the other kind)
            raise StoppedAgain(signum)
        self.requested, self.signum = True, self.signum if self.requested else signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
