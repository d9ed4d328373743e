"""The usual CPU data pipeline of PIL-based SSL frameworks, for comparison with on-device views.

USB and TorchSSL build each FixMatch batch in DataLoader worker processes: per image a PIL
weak view (flip, reflect-pad crop), and for unlabelled images also a strong view (weak, then
RandAugment, then Cutout), converted to normalised tensors, one loader for the labelled and one
for the unlabelled stream. `pipeline_images_per_s` times that pipeline (torchvision's PIL
RandAugment, 2 ops, plus a gray Cutout square as TorchSSL draws it) on this machine's cores: on a
GPU it is the most images per second such a framework can feed the network, whatever the GPU.
"""
from __future__ import annotations

import os
import time
from itertools import islice

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms


class Cutout:
    """Fill one gray square, side up to `fraction` of the image, at a random centre (TorchSSL)."""

    def __init__(self, fraction: float = 0.5) -> None:
        self.fraction = fraction

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        side = np.random.uniform(0, self.fraction) * min(w, h)
        x0, y0 = np.random.uniform(0, w), np.random.uniform(0, h)
        img = img.copy()
        ImageDraw.Draw(img).rectangle((x0 - side / 2, y0 - side / 2, x0 + side / 2, y0 + side / 2), fill=(127,) * len(img.getbands()))
        return img


def fixmatch_transforms(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[transforms.Compose, transforms.Compose]:
    """USB/TorchSSL's weak and strong transforms for `size` x `size` images."""
    weak = [transforms.RandomHorizontalFlip(), transforms.RandomCrop(size, padding=round(0.125 * size), padding_mode="reflect")]
    tail = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return (transforms.Compose(weak + tail),
            transforms.Compose(weak + [transforms.RandAugment(num_ops=2), Cutout(0.5)] + tail))


class ViewsDataset(Dataset):
    """uint8 images (N,H,W,C) as PIL images, each item the weak view or the (weak, strong) pair."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, weak: transforms.Compose,
                 strong: transforms.Compose | None) -> None:
        self.images, self.labels, self.weak, self.strong = images, labels, weak, strong

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        img = Image.fromarray(self.images[i].squeeze(-1) if self.images.shape[-1] == 1 else self.images[i])
        if self.strong is None:
            return self.weak(img), int(self.labels[i])
        return self.weak(img), self.strong(img)


def pipeline_images_per_s(images: np.ndarray, labels: np.ndarray, batch_size: int, uratio: int, batches: int,
                          workers: int = 0, mean: tuple[float, ...] = (0.5,) * 3, std: tuple[float, ...] = (0.25,) * 3,
                          warmup: int = 2) -> dict[str, float]:
    """Distinct images per second (B labelled + mu*B unlabelled a batch) the two loaders deliver,
    timed over `batches` batches after `warmup` (worker start-up excluded). `workers` 0: one per
    core for each loader, as USB's default of one worker set per loader."""
    workers = workers or os.cpu_count() or 1
    weak, strong = fixmatch_transforms(images.shape[1], mean, std)

    def loader(dataset: Dataset, size: int) -> DataLoader:
        return DataLoader(dataset, batch_size=size, shuffle=True, num_workers=workers, drop_last=True,
                          persistent_workers=workers > 0, prefetch_factor=2 if workers else None)

    labelled = iter(_forever(loader(ViewsDataset(images, labels, weak, None), batch_size)))
    unlabelled = iter(_forever(loader(ViewsDataset(images, labels, weak, strong), batch_size * uratio)))
    for _ in range(warmup):
        next(labelled), next(unlabelled)
    start = time.perf_counter()
    for (x_l, _), (x_w, x_s) in islice(zip(labelled, unlabelled), batches):
        assert x_s.shape == x_w.shape and x_l.shape[0] == batch_size
    seconds = time.perf_counter() - start
    per_batch = batch_size * (1 + uratio)
    return {"images_per_s": per_batch * batches / seconds, "s_per_batch": seconds / batches,
            "workers_per_loader": workers, "batches": batches}


def _forever(loader: DataLoader):  # type: ignore[no-untyped-def]
    while True:
        yield from loader
