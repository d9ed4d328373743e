"""CIFAR-10 and CIFAR-100 read from the standard python-pickle release layout.

The pickles are read here rather than through torchvision, whose checksum test rejects
re-encoded but layout-identical copies (such as ../shared/data); torchvision only downloads.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_kd.data.family import FIXMATCH_PROTOCOL, DatasetFamily, RawData, register_dataset
from ssl_kd.data.paths import corrupt_file_error, ensure_files
from ssl_kd.data.types import AugPolicy

def read_pickle(path: Path) -> dict[bytes, Any]:
    """One release pickle with its Python-2 byte-string keys, or a DataError naming the file."""
    try:
        with open(path, "rb") as f:
            content = pickle.load(f, encoding="bytes")
    except Exception as err:  # truncated or garbage pickles fail in many ways
        raise corrupt_file_error(path, f"{type(err).__name__}: {err}") from err
    if not isinstance(content, dict):
        raise corrupt_file_error(path, f"expected a dict, found {type(content).__name__}")
    return content


def read_batch(path: Path, label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N,3,32,32) uint8 and labels (N,) int64 of one batch file."""
    batch = read_pickle(path)
    if b"data" not in batch or label_key not in batch:
        raise corrupt_file_error(path, f"keys b'data' and {label_key!r} expected, found {sorted(batch)}")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        found = f"data of shape {data.shape} with {len(labels)} labels"
        raise corrupt_file_error(path, f"{found}; expected (N, 3072) and N labels")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def read_batches(paths: list[Path], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [read_batch(path, label_key) for path in paths]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def read_names(path: Path, key: bytes) -> list[str]:
    meta = read_pickle(path)
    if key not in meta:
        raise corrupt_file_error(path, f"key {key!r} expected, found {sorted(meta)}")
    return [name.decode() if isinstance(name, bytes) else str(name) for name in meta[key]]


def load_cifar10(root: Path, download: bool) -> RawData:
    folder = root / "cifar-10-batches-py"
    train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
    test_file, meta_file = folder / "test_batch", folder / "batches.meta"
    ensure_files("CIFAR-10", [*train_files, test_file, meta_file], download, lambda: fetch_cifar("CIFAR10", root))
    train_x, train_y = read_batches(train_files, b"labels")
    test_x, test_y = read_batch(test_file, b"labels")
    return RawData(train_x, train_y, test_x, test_y, read_names(meta_file, b"label_names"))


def load_cifar100(root: Path, download: bool) -> RawData:
    folder = root / "cifar-100-python"
    train_file, test_file, meta_file = folder / "train", folder / "test", folder / "meta"
    ensure_files("CIFAR-100", [train_file, test_file, meta_file], download, lambda: fetch_cifar("CIFAR100", root))
    train_x, train_y = read_batch(train_file, b"fine_labels")
    test_x, test_y = read_batch(test_file, b"fine_labels")
    return RawData(train_x, train_y, test_x, test_y, read_names(meta_file, b"fine_label_names"))


def fetch_cifar(torchvision_class: str, root: Path) -> None:
    """Download and extract the official archive into `root` (torchvision checks its checksum)."""
    import torchvision.datasets

    getattr(torchvision.datasets, torchvision_class)(root=str(root), download=True)


register_dataset(
    DatasetFamily(
        name="cifar10",
        num_classes=10,
        policy=AugPolicy(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), flip=True),
        load=load_cifar10,
        protocol=dict(FIXMATCH_PROTOCOL),
        presets=(40, 250, 4000),
        seen_classes=(2, 3, 4, 5, 6, 7),  # the six animals (Oliver et al. 2018); the mismatch comes from the vehicles
        description="CIFAR-10: 50k train / 10k test 32x32 colour images, 10 classes",
    )
)

register_dataset(
    DatasetFamily(
        name="cifar100",
        num_classes=100,
        policy=AugPolicy(mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), flip=True),
        load=load_cifar100,
        protocol={**FIXMATCH_PROTOCOL, "net": "wrn28_8", "weight_decay": 1e-3},
        presets=(400, 2500, 10000),
        description="CIFAR-100: 50k train / 10k test 32x32 colour images, 100 fine classes",
    )
)
