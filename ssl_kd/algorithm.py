"""The algorithm contract: an algorithm turns a batch of views into a loss; the trainer does the rest.

An algorithm subclasses `Algorithm`, sets `Config` (a dataclass of its hyper-parameters),
declares the views it needs, implements `train_step`, and registers itself with
`@register_algorithm("name")`. Backward, optimiser, EMA, AMP, compile, evaluation,
checkpointing and logging belong to the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ssl_kd.data.types import SSLData
from ssl_kd.errors import ConfigError
from ssl_kd.weighting.module import NoWeights
from ssl_kd.weighting.spec import WeightRequest, WeightSpec, hard_targets, labelling_logits


@dataclass
class NoConfig:
    """An algorithm without hyper-parameters of its own."""


@dataclass
class Batch:
    """One training step's data, already augmented on the training device.

    `x_l[view]` is (B, ...) and `x_u[view]` is (mu*B, ...) for each declared view. Unlabelled
    ground truth is deliberately absent: the trainer keeps it to monitor pseudo-label accuracy.
    """

    x_l: dict[str, torch.Tensor]
    y_l: torch.Tensor
    idx_l: torch.Tensor
    x_u: dict[str, torch.Tensor] = field(default_factory=dict)
    idx_u: torch.Tensor | None = None


@dataclass
class StepOutput:
    """What `train_step` returns.

    `loss` is backpropagated by the trainer into the model's optimiser. `logs` are scalars for
    the progress bar and TensorBoard (`loss/...`, `train/...`). `pseudo_labels` and `mask`
    (one per unlabelled example) let the trainer log pseudo-label accuracy and the mask ratio;
    `weights` (detached per-unlabelled-example loss weights, e.g. influence weights) add the
    pseudo-label accuracy weighted by them, which rises above the plain one when the weights favour
    correct pseudo-labels. `histograms` are logged as TensorBoard histograms.
    """

    loss: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)
    pseudo_labels: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    histograms: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: torch.Tensor | None = None


@dataclass
class Context:
    """What an algorithm may know about the run besides its own config."""

    num_classes: int
    total_steps: int
    device: torch.device
    data: SSLData
    train_cfg: Any  # ssl_kd.config.TrainConfig
    ema_model: nn.Module | None = None  # the trainer's EMA of `model` (never trained directly)
    make_net: Any = None  # callable(name: str) -> nn.Module, for algorithms with extra networks
    autocast: Any = None  # callable() -> context manager for forward passes (bf16 on CUDA)


class Algorithm:
    """Base class of every algorithm. What a subclass can read, all set before `train_step` runs
    (tests/test_plugin_contract.py checks these names exist; README "Adding an algorithm" lists them too):

    - `self.model`: the network the trainer optimises; `self.model(x)` returns `(logits, features)`.
    - `self.cfg`: the algorithm's `Config` instance (`--set algo.<field>=...`).
    - `self.step`: optimiser steps done before this `train_step` (0 at the first), set by the trainer;
      with `self.ctx.total_steps` (the run's `train.steps`) it gives ramps and schedules their progress.
    - `self.ctx.num_classes`, `self.ctx.device`, `self.ctx.autocast` (callable: the forward passes'
      autocast context), `self.ctx.make_net` (callable(name): a new network, e.g. a teacher).
    - `self.ctx.data`: the dataset (`ssl_kd.data.types.SSLData`: `self.ctx.data.policy`,
      `self.ctx.data.class_names`, `self.ctx.data.modality`, `self.ctx.data.is_regression`,
      `self.ctx.data.labelled_idx`, `self.ctx.data.unlabelled_idx`).
    - `self.ctx.train_cfg`: the run's `ssl_kd.config.TrainConfig` (`self.ctx.train_cfg.batch_size`,
      `self.ctx.train_cfg.uratio`, `self.ctx.train_cfg.lr`, `self.ctx.train_cfg.seed`).
    - `self.ctx.ema_model`: the trainer's EMA of `self.model` (updated after every optimiser step,
      None with `train.ema=0`): read it (e.g. as a teacher), never train it.
    - `self.weights`: the weighting module (`weights.kind`); an algorithm with `takes_weights = True`
      multiplies its per-example terms by `self.weigh(mask, features, logits, targets, idx, confidence)`.
    - `self.thresholder` (FixMatch and its subclasses, made by `self.make_thresholder`): a
      `ssl_kd.components.Thresholder`; `mask(probs)` is the confidence mask, `update(probs, idx)`
      observes a batch (FlexMatch swaps it).

    `train_step(batch)` receives a `Batch` (`batch.x_l`, `batch.y_l`, `batch.idx_l`, `batch.x_u`,
    `batch.idx_u`) and returns a `StepOutput`: `out.loss` (required, a scalar the trainer
    backpropagates); optional `out.logs`, `out.pseudo_labels` and `out.mask` (one per unlabelled
    example, for the pseudo-label accuracy and mask ratio), `out.weights`, `out.histograms`.
    Optional hooks: `self.after_step`, `self.eval_model`, `self.eval_metrics`, `self.state_dict` /
    `self.load_state_dict` (state beyond the model, its EMA and optimiser, kept in checkpoints), and
    the class method `extra_heads` (trainable heads added to the network, e.g. OpenMatch's).
    """

    Config: ClassVar[type] = NoConfig
    labelled_views: ClassVar[tuple[str, ...]] = ("weak",)
    unlabelled_views: ClassVar[tuple[str, ...]] = ()
    modalities: ClassVar[tuple[str, ...]] = ("image", "text")  # data it can train on (e.g. image mixing: image only)
    # task kinds it can train (ssl_kd.data.types.TASK_KINDS); pseudo-labels, thresholds and
    # distillation are defined on class probabilities, so regression is opt-in
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    name: ClassVar[str] = ""
    takes_weights: ClassVar[bool] = False  # its loss has per-example terms that pass through `self.weights`
    default_weights: ClassVar[str] = "none"  # the `weights.kind` it runs with unless told otherwise (kdaif: influence)
    crossfit_ready: ClassVar[bool] = False  # its supervised loss honours weights.reference=crossfit (labelled_keep)

    def __init__(self, model: nn.Module, cfg: Any, ctx: Context) -> None:
        self.model = model
        self.cfg = cfg
        self.ctx = ctx
        self.step = 0  # set by the trainer before each train_step
        self.weights: Any = NoWeights()  # the weighting module (ssl_kd.weighting); the trainer attaches the configured one
        name = getattr(ctx.train_cfg, "algo", "") or type(self).__name__
        check_modality(type(self), ctx.data, name)
        check_task(type(self), ctx.data, name)

    @classmethod
    def extra_heads(cls, num_features: int, data: SSLData) -> dict[str, nn.Module]:
        """Trainable modules the algorithm adds to the network by name (OpenMatch's one-vs-all
        classifiers), reading its features. They are attached before the optimiser, the EMA, DDP and
        checkpoints are made, so they train, average, synchronise and resume with the network;
        `plain_module(self.model).<name>` reaches them in a step."""
        return {}

    @property
    def needs_unlabelled(self) -> bool:
        return bool(self.unlabelled_views)

    def train_step(self, batch: Batch) -> StepOutput:
        raise NotImplementedError

    def supervised_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The labelled loss: cross-entropy on class labels, or MSE of the one output on the float
        gold scores for a regression task (`Batch.y_l` holds those then)."""
        if self.ctx.data.is_regression:
            return F.mse_loss(logits.float()[:, 0], targets.float())
        return F.cross_entropy(logits.float(), targets)

    def after_step(self) -> None:
        """Called by the trainer after the optimiser step (e.g. to update a teacher)."""

    # ----- per-example weights (ssl_kd.weighting) ---------------------------------------------------
    def weight_spec(self) -> WeightSpec:
        """How the weighted terms' targets are made: by default the model's own hard pseudo-labels
        of unlabelled images, made with batch statistics (FixMatch-style self-labelling)."""
        from ssl_kd.teacher import plain_module  # the teacher side imports the trainer, which imports this module

        student = plain_module(self.model)
        return WeightSpec(student=student, pool="unlabelled", targets=hard_targets, labeller=self.labeller(student))

    def labeller(self, net: nn.Module, batch_stats: bool = True) -> Any:
        """idx -> `net`'s logits on the clean images at `idx` (WeightSpec.labeller), a step's
        unlabelled batch at a time."""
        t = self.ctx.train_cfg
        chunk = t.batch_size * max(1, t.uratio)
        return lambda idx: labelling_logits(net, batch_stats, idx, self.ctx.data, chunk, self.ctx.autocast)

    def weigh(self, mask: torch.Tensor, features: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
              idx: torch.Tensor | None, confidence: torch.Tensor | None = None) -> torch.Tensor:
        """The multiplier of per-example terms: `mask` itself without weights, else the mask
        combined with the weighting module's weights of these examples (detached)."""
        if not self.weights.active:
            return mask
        assert idx is not None, "weighted terms need their dataset indices"
        return self.weights.apply(mask, WeightRequest(features, logits, targets, idx, confidence))

    def eval_model(self) -> nn.Module | None:
        """An extra network to evaluate besides the model and its EMA (e.g. a teacher), or None."""
        return None

    def eval_metrics(self) -> dict[str, float]:
        """Extra figures recorded with every evaluation in metrics.jsonl (e.g. how well the
        algorithm's weights find flipped labels); called by the trainer, never during a step."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """All state beyond the model, its EMA and its optimiser (teachers, thresholds, caches)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state but the checkpoint holds {sorted(state)}")


def check_modality(algo: type[Algorithm], data: SSLData, name: str) -> None:
    """At the start of a run: the algorithm must accept the data's modality and find its views there."""
    from ssl_kd.augment.views import VIEWS, base_view

    kind = data.modality
    if kind not in algo.modalities:
        raise ConfigError(f"algorithm {name!r} cannot train on {kind} data ({data.name}); "
                          f"it supports {', '.join(algo.modalities)} data only; pick another algorithm")
    for view in (*algo.labelled_views, *algo.unlabelled_views):
        if (kind, base_view(view)) not in VIEWS:
            known = sorted(name for k, name in VIEWS if k == kind)
            raise ConfigError(f"algorithm {name!r} needs view {view!r}, which {kind} data "
                              f"({data.name}) lacks; {kind} views: {', '.join(known)}")


def check_task(algo: type[Algorithm], data: SSLData, name: str) -> None:
    """At the start of a run: the algorithm must train the data's task kind (classification or regression)."""
    if data.task in algo.tasks:
        return
    from ssl_kd.data.build import class_form_hint
    from ssl_kd.registry import ALGORITHMS

    able = sorted(n for n in ALGORITHMS.names() if data.task in ALGORITHMS.get(n).tasks)
    raise ConfigError(f"algorithm {name!r} is defined on class probabilities and cannot train {data.name}, a {data.task} task; "
                      f"use {' or '.join(able) or 'another algorithm'}{class_form_hint(data.name)}")
