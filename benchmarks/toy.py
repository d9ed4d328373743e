"""Small networks and scikit-learn digits as tensors, for the tests and the benchmarks
(seconds on a CPU, no downloads). The networks follow the `Classifier` contract."""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_kd.augment.views import make_view
from ssl_kd.data.types import AugPolicy, SSLData
from ssl_kd.nets.base import Classifier


@lru_cache(maxsize=1)
def digits() -> tuple[Tensor, Tensor]:
    """The 1797 8x8 digits as uint8 images (N, 1, 8, 8) in 0..255 and labels (N,); cached, so
    treat them as read-only."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images * (255 / 16)).round().to(torch.uint8)[:, None]
    return x, torch.tensor(bunch.target)


DIGITS_POLICY = AugPolicy(mean=(0.5,), std=(0.5,), flip=False)


def as_input(x: Tensor, policy: AugPolicy = DIGITS_POLICY) -> Tensor:
    """uint8 images as the network input of evaluation (un-augmented, normalised)."""
    return make_view("none", x, policy)


class TinyMLP(Classifier):
    def __init__(self, in_features: int = 64, hidden: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.Tanh())
        self._make_head(hidden, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)


class TinyCNN(Classifier):
    """Two conv + BatchNorm blocks and global average pooling: exercises BatchNorm handling."""

    def __init__(self, channels: int = 1, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self._make_head(2 * width, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)


def fit(model: nn.Module, x: Tensor, y: Tensor, steps: int = 300, lr: float = 0.01, weight_decay: float = 1e-4,
        batch_size: int = 256, seed: int = 0) -> nn.Module:
    """Train with Adam on minibatches; leaves the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=gen)
        loss = F.cross_entropy(model(x[rows])[0], y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def digits_ssl_data(num_labelled: int = 100, num_val: int = 100, seed: int = 0) -> SSLData:
    """A small SSL split of digits: labelled, validation, the rest unlabelled; the last 297 are test."""
    x, y = digits()
    train_x, train_y, test_x, test_y = x[:1500], y[:1500], x[1500:], y[1500:]
    perm = torch.randperm(1500, generator=torch.Generator().manual_seed(seed))
    val_idx, labelled_idx = perm[:num_val], perm[num_val:num_val + num_labelled]
    return SSLData(
        name="digits_toy", train_x=train_x, train_y=train_y, labelled_idx=labelled_idx,
        unlabelled_idx=perm[num_val:], val_idx=val_idx, test_x=test_x, test_y=test_y, num_classes=10,
        policy=DIGITS_POLICY, class_names=[str(i) for i in range(10)],
    )
