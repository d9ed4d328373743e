"""The compute floor of a training step: plain PyTorch, the same network, random inputs.

`FloorStep` does what any SSL step must do at the least for an algorithm's shapes: one forward
of every view (B per labelled view, mu*B per unlabelled view) in one batch, cross-entropy on the
labelled logits, a confidence-masked hard pseudo-label cross-entropy from the first unlabelled
view onto the others, backward, the run's optimiser and learning-rate schedule (SGD for image
nets, AdamW with linear warm-up and decay for `hf:` nets: `ssl_kd.trainer.optim`), and a foreach
EMA when the run keeps one. No augmentation, sampling, logging or algorithm state.
`tools/bench.py --floor` alternates it with the framework's real steps, so their ratio is the
framework's overhead over the network alone.

Inputs by modality (`floor_inputs`): images are one fixed random float batch of the data's
shape; text is random token ids inside the network's vocabulary, each row as long as a sentence
drawn from the dataset's own length distribution (labelled rows from the labelled split,
unlabelled rows from the unlabelled one, every unlabelled view of a row as long as its first view,
as views of one sentence are; `tools/bench.py` draws the very examples its trainers draw, `TextInputs`)
and the batch right-padded to its longest row, as the real feed hands it to the network.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ssl_kd.config import TrainConfig
from ssl_kd.data.sampler import InfiniteSampler
from ssl_kd.data.types import SSLData, TextPolicy
from ssl_kd.errors import ConfigError
from ssl_kd.trainer.amp import autocast_for
from ssl_kd.trainer.compile import compile_network
from ssl_kd.trainer.optim import build_optimizer


class FloorStep:
    """One plain training step of `net`; `inputs()` gives the concatenated views of one step
    (`n_labelled * labelled_views` rows, then `n_unlabelled` rows per unlabelled view)."""

    def __init__(self, net: nn.Module, inputs: Callable[[], torch.Tensor], num_classes: int, train: TrainConfig,
                 labelled_views: int, unlabelled_views: int, device: torch.device, modality: str = "image") -> None:
        generator = torch.Generator().manual_seed(0)
        self.net = net.to(device)
        cuda = device.type == "cuda"
        if cuda and train.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.forward = compile_network(self.net, modality) if train.compile else self.net  # as the trainer compiles
        self.ema = [p.detach().clone() for p in self.net.parameters()]
        self.ema_buffers = [b.clone() for b in self.net.buffers()]
        self.decay = train.ema
        self.optimizer, self.scheduler = build_optimizer(self.net, train)
        self.n_l = train.batch_size
        self.n_u = train.batch_size * train.uratio if unlabelled_views else 0
        self.unlabelled_views = unlabelled_views
        self.inputs = inputs
        self.y = torch.randint(num_classes, (self.n_l,), generator=generator).to(device)
        self.labelled_views = labelled_views
        self.autocast = lambda: autocast_for(device, train)

    @property
    def x(self) -> torch.Tensor:
        """The next step's input batch (tests)."""
        return self.inputs()

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        labelled = logits[: self.n_l * self.labelled_views]
        loss = F.cross_entropy(labelled, self.y.repeat(self.labelled_views))
        if self.unlabelled_views:
            views = logits[self.n_l * self.labelled_views :].split(self.n_u)
            conf, pseudo = torch.softmax(views[0].detach(), -1).max(-1)
            mask = (conf >= 0.95).float()
            for view in views[1:] or views:
                loss = loss + (F.cross_entropy(view, pseudo, reduction="none") * mask).mean()
        return loss

    def __call__(self) -> None:
        self.net.train()
        x = self.inputs()
        with self.autocast():
            logits, _ = self.forward(x)
        loss = self.loss(logits)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            if self.decay > 0:
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.net.parameters()], 1.0 - self.decay)
                torch._foreach_copy_(self.ema_buffers, list(self.net.buffers()))


def image_inputs(shape: tuple[int, ...], total: int, device: torch.device, channels_last: bool) -> Callable[[], torch.Tensor]:
    """One fixed batch of `total` random float images (every step sees the same shapes)."""
    x = torch.randn(total, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return lambda: x


def vocabulary_size(net: nn.Module) -> int:
    """Rows of the network's input embedding (a Hugging Face model's, else its first nn.Embedding)."""
    hf = getattr(net, "hf", None)
    if hf is not None and hasattr(hf, "get_input_embeddings"):
        return int(hf.get_input_embeddings().num_embeddings)
    embedding = next((m for m in net.modules() if isinstance(m, nn.Embedding)), None)
    if embedding is None:
        raise ConfigError(f"--floor: network {type(net).__name__} takes token ids but has no nn.Embedding to draw ids "
                          "for; bench it without --floor")
    return int(embedding.num_embeddings)


class TextInputs:
    """Each call: a fresh batch of random token ids with sentence lengths drawn from the dataset's
    (drawing them costs well under 1 ms, against tens of ms for the smallest transformer step).

    With `seed` the lengths are those of the training examples the trainer's own samplers draw with
    that seed (the same index streams, so step k of the floor has the width of step k of a run with
    that seed): the same distribution, drawn in step with the real batches, which makes the ratio of
    two short medians a paired comparison (a batch's width varies its step time up to 2x)."""

    def __init__(self, lengths: torch.Tensor, labelled_idx: torch.Tensor, unlabelled_idx: torch.Tensor, n_l: int, n_u: int,
                 labelled_views: int, unlabelled_views: int, vocab: int, policy: TextPolicy, device: torch.device,
                 seed: int | None = None) -> None:
        self.generator = torch.Generator().manual_seed(0)
        words = torch.ones(vocab, dtype=torch.bool)
        words[[i for i in policy.special_ids if 0 <= i < vocab]] = False
        self.word_ids = words.nonzero().squeeze(1)  # never a pad, [SEP] or [CLS] inside a sentence
        self.lengths = lengths  # of every training example, by index
        self.idx = (labelled_idx.cpu(), unlabelled_idx.cpu())
        self.samplers = None
        if seed is not None:  # the trainer's StepFeeds: InfiniteSampler(labelled, B, seed), (unlabelled, mu*B, seed + 1)
            self.samplers = (InfiniteSampler(self.idx[0], n_l, seed), InfiniteSampler(self.idx[1], n_u, seed + 1) if n_u else None)
        self.n_l, self.n_u, self.views = n_l, n_u, (labelled_views, unlabelled_views)
        self.pad_id, self.device = policy.pad_id, device

    def draw(self, part: int, n: int) -> torch.Tensor:
        if not n:
            return self.lengths[:0]
        if self.samplers is not None:
            return self.lengths[next(self.samplers[part])]
        idx = self.idx[part]
        return self.lengths[idx[torch.randint(len(idx), (n,), generator=self.generator)]]

    def __call__(self) -> torch.Tensor:
        labelled, unlabelled = self.draw(0, self.n_l), self.draw(1, self.n_u)
        lengths = torch.cat([labelled.repeat(self.views[0]), unlabelled.repeat(self.views[1])])
        ids = self.word_ids[torch.randint(len(self.word_ids), (len(lengths), int(lengths.max())), generator=self.generator)]
        pad = torch.arange(ids.shape[1]) >= lengths[:, None]
        return ids.masked_fill(pad, self.pad_id).to(self.device, non_blocking=True)


def sentence_lengths(data: SSLData, idx: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens (special tokens included) of each training example in `idx` (default: all), on the host."""
    policy = data.policy
    assert isinstance(policy, TextPolicy)
    rows = data.train_x if idx is None else data.train_x[idx.to(data.train_x.device)]
    return (rows != policy.pad_id).sum(1).clamp(min=1).cpu()


def floor_inputs(net: nn.Module, data: SSLData, train: TrainConfig, labelled_views: int, unlabelled_views: int,
                 device: torch.device, seed: int | None = None) -> Callable[[], torch.Tensor]:
    """The floor's inputs for `data`'s modality, or a one-line ConfigError saying why there are none
    (`seed`: text lengths in step with a run of that seed, `TextInputs`)."""
    n_l = train.batch_size
    n_u = train.batch_size * train.uratio if unlabelled_views else 0
    if data.modality == "image":
        return image_inputs(tuple(data.train_x.shape[1:]), n_l * labelled_views + n_u * unlabelled_views, device,
                            device.type == "cuda" and train.channels_last)
    if data.modality == "text":
        assert isinstance(data.policy, TextPolicy)
        return TextInputs(sentence_lengths(data), data.labelled_idx, data.unlabelled_idx, n_l, n_u, labelled_views,
                          unlabelled_views, vocabulary_size(net), data.policy, device, seed)
    raise ConfigError(f"--floor: no floor inputs for {data.modality!r} data (only image and text); bench it without --floor")


def make_floor(net: nn.Module, data: SSLData, train: TrainConfig, labelled_views: int, unlabelled_views: int,
               device: torch.device, seed: int | None = None) -> FloorStep:
    """The floor step of `net` on `data`'s modality for an algorithm's view counts."""
    inputs = floor_inputs(net, data, train, labelled_views, unlabelled_views, device, seed)
    return FloorStep(net, inputs, data.num_classes, train, labelled_views, unlabelled_views, device, data.modality)
