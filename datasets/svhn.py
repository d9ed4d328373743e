"""SVHN (cropped digits, format 2) read from the release's `train_32x32.mat` / `test_32x32.mat`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import torch

from ssl_kd.data.family import FIXMATCH_PROTOCOL, DatasetFamily, RawData, register_dataset
from ssl_kd.data.paths import corrupt_file_error, ensure_files
from ssl_kd.data.types import AugPolicy

SPLITS = ("train", "test")


def read_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N,3,32,32) uint8 and labels (N,) int64 in 0..9 (the release writes digit 0 as 10)."""
    try:
        content = scipy.io.loadmat(str(path))
    except Exception as err:  # scipy raises several types for truncated or non-MAT files
        raise corrupt_file_error(path, f"{type(err).__name__}: {err}") from err
    if "X" not in content or "y" not in content:
        raise corrupt_file_error(path, "variables X and y expected")
    images, labels = content["X"], content["y"].astype(np.int64).reshape(-1)
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != len(labels):
        raise corrupt_file_error(path, f"X of shape {images.shape} with {len(labels)} labels; expected (32, 32, 3, N)")
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise corrupt_file_error(path, f"labels in {labels.min()}..{labels.max()}; expected 1..10")
    labels[labels == 10] = 0
    images = np.ascontiguousarray(images.transpose(3, 2, 0, 1), dtype=np.uint8)  # (H,W,C,N) -> (N,C,H,W)
    return torch.from_numpy(images), torch.from_numpy(labels)


def load_svhn(root: Path, download: bool) -> RawData:
    files = {split: root / f"{split}_32x32.mat" for split in SPLITS}
    ensure_files("SVHN", list(files.values()), download, lambda: fetch_svhn(root))
    train_x, train_y = read_mat(files["train"])
    test_x, test_y = read_mat(files["test"])
    return RawData(train_x, train_y, test_x, test_y, [str(digit) for digit in range(10)])


def fetch_svhn(root: Path) -> None:
    """Download the missing .mat files into `root` (torchvision checks their checksums)."""
    import torchvision.datasets

    for split in SPLITS:
        if not (root / f"{split}_32x32.mat").is_file():
            torchvision.datasets.SVHN(root=str(root), split=split, download=True)


register_dataset(
    DatasetFamily(
        name="svhn",
        num_classes=10,
        policy=AugPolicy(mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970), flip=False),
        load=load_svhn,
        protocol=dict(FIXMATCH_PROTOCOL),
        presets=(40, 250, 1000),
        description="SVHN: 73k train / 26k test 32x32 house-number digits, 10 classes (no extra set)",
    )
)
