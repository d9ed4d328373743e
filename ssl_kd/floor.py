"""The compute floor of a training step: plain PyTorch, the same network, random tensors.

`FloorStep` does what any SSL step must do at the least for an algorithm's shapes: one forward
of every view (B per labelled view, mu*B per unlabelled view) in one batch, cross-entropy on the
labelled logits, a confidence-masked hard pseudo-label cross-entropy from the first unlabelled
view onto the others, backward, SGD with the run's hyper-parameters, and a foreach EMA. No
augmentation, sampling, logging or algorithm state. `tools/bench.py --floor` alternates it with
the framework's real steps, so their ratio is the framework's overhead over the network alone.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ssl_kd.config import TrainConfig


class FloorStep:
    """One plain training step of `net` for `n_labelled` and `n_unlabelled` images per view."""

    def __init__(self, net: nn.Module, image_shape: tuple[int, ...], num_classes: int, train: TrainConfig,
                 labelled_views: int, unlabelled_views: int, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(0)
        self.net = net.to(device)
        cuda = device.type == "cuda"
        if cuda and train.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.net) if train.compile else self.net
        self.ema = [p.detach().clone() for p in self.net.parameters()]
        self.ema_buffers = [b.clone() for b in self.net.buffers()]
        self.decay = train.ema
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=train.lr, momentum=train.momentum,
                                         nesterov=train.nesterov, weight_decay=train.weight_decay)
        self.n_l = train.batch_size
        self.n_u = train.batch_size * train.uratio if unlabelled_views else 0
        self.unlabelled_views = unlabelled_views
        total = self.n_l * labelled_views + self.n_u * unlabelled_views
        self.x = torch.randn(total, *image_shape, generator=generator).to(device)
        if cuda and train.channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(num_classes, (self.n_l,), generator=generator).to(device)
        self.labelled_views = labelled_views
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda and train.amp
                         else contextlib.nullcontext())

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
        with self.autocast:
            logits, _ = self.forward(self.x)
        loss = self.loss(logits)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            if self.decay > 0:
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.net.parameters()], 1.0 - self.decay)
                torch._foreach_copy_(self.ema_buffers, list(self.net.buffers()))
