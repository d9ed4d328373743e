"""Dataset families read their standard release layouts (written small here), and fail helpfully."""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import scipy.io
import torch

from ssl_kd.config import DataConfig, TrainConfig
from ssl_kd.data.build import build_dataset, parse_dataset_name, resolve_family
from ssl_kd.data.paths import resolve_data_dir
from ssl_kd.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIX_HINTS = ("--data-dir", "SSL_KD_DATA", "--download")


def write_pickle(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)


def cifar_rows(labels: list[int]) -> np.ndarray:
    """Channel-major rows whose channel c is filled with 10*(c+1) + label, to check the reshape."""
    rows = np.zeros((len(labels), 3, 1024), dtype=np.uint8)
    for c in range(3):
        rows[:, c] = 10 * (c + 1) + np.array(labels)[:, None]
    return rows.reshape(len(labels), 3072)


def write_cifar10(data_dir: Path, per_class_per_batch: int = 2) -> Path:
    """A tiny CIFAR-10 in the release layout: 5 batches, 10 * per_class_per_batch images each."""
    folder = data_dir / "cifar10" / "cifar-10-batches-py"
    labels = [c for c in range(10) for _ in range(per_class_per_batch)]
    for i in range(1, 6):
        batch = {b"batch_label": b"training batch", b"labels": labels, b"data": cifar_rows(labels)}
        write_pickle(folder / f"data_batch_{i}", batch)
    write_pickle(folder / "test_batch", {b"labels": list(range(10)), b"data": cifar_rows(list(range(10)))})
    write_pickle(folder / "batches.meta", {b"label_names": [f"class{c}".encode() for c in range(10)]})
    return folder


def write_cifar100(data_dir: Path) -> Path:
    folder = data_dir / "cifar100" / "cifar-100-python"
    fine = list(range(100)) * 2
    for split, labels in (("train", fine), ("test", fine[:100])):
        coarse = [y // 5 for y in labels]
        write_pickle(folder / split, {b"fine_labels": labels, b"coarse_labels": coarse, b"data": cifar_rows(labels)})
    write_pickle(folder / "meta", {b"fine_label_names": [f"fine{c}".encode() for c in range(100)]})
    return folder


def write_svhn(data_dir: Path, n: int = 30) -> Path:
    """SVHN .mat files: X (32,32,3,N) with a marker pixel at row 0, column 1; y in 1..10."""
    folder = data_dir / "svhn"
    folder.mkdir(parents=True)
    images = np.zeros((32, 32, 3, n), dtype=np.uint8)
    images[0, 1, 2, :] = 255
    labels = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)
    for split in ("train", "test"):
        scipy.io.savemat(str(folder / f"{split}_32x32.mat"), {"X": images, "y": labels})
    return folder


def load_raw(family: str, data_dir: Path, download: bool = False):
    return resolve_family(family)[0].load(data_dir / family, download)


def test_cifar10_reads_release_pickles(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    raw = load_raw("cifar10", tmp_path)
    assert raw.train_x.shape == (100, 3, 32, 32) and raw.train_x.dtype == torch.uint8
    assert raw.train_y.dtype == torch.int64 and raw.test_x.shape == (10, 3, 32, 32)
    for c in range(3):  # channel-major rows land in the channel axis
        assert torch.equal(raw.train_x[:, c, 5, 7], (10 * (c + 1) + raw.train_y).to(torch.uint8))
    assert raw.class_names[3] == "class3"


def test_cifar100_reads_fine_labels(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    raw = load_raw("cifar100", tmp_path)
    assert raw.train_x.shape == (200, 3, 32, 32) and raw.train_y.max() == 99
    assert torch.equal(raw.train_y[:100], torch.arange(100)) and raw.class_names[99] == "fine99"


def test_svhn_maps_label_10_to_0_and_transposes(tmp_path: Path) -> None:
    write_svhn(tmp_path)
    raw = load_raw("svhn", tmp_path)
    assert raw.train_x.shape == (30, 3, 32, 32) and raw.train_x.dtype == torch.uint8
    assert torch.equal(raw.train_y[:10], torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 0]))
    assert (raw.train_x[:, 2, 0, 1] == 255).all() and raw.train_x.sum() == 255 * 30  # (H,W,C,N) -> (N,C,H,W)


def test_digits_fixed_balanced_test_split() -> None:
    raw = load_raw("digits", Path("unused"))
    assert raw.train_x.shape == (1297, 1, 8, 8) and raw.test_x.shape == (500, 1, 8, 8)
    assert raw.train_x.dtype == torch.uint8 and raw.train_x.max() == 255
    assert torch.equal(raw.test_y.bincount(), torch.full((10,), 50))
    again = load_raw("digits", Path("unused"))
    assert torch.equal(raw.test_x, again.test_x)


def test_digits_test_split_ignores_split_seed() -> None:
    a = build_dataset("digits_30", DataConfig(split_seed=0), Path("unused"), False)
    b = build_dataset("digits_30", DataConfig(split_seed=5), Path("unused"), False)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)


@pytest.mark.skipif(not (SHARED_DATA / "cifar10" / "cifar-10-batches-py").is_dir(), reason="no shared CIFAR-10")
def test_real_cifar10() -> None:
    data = build_dataset("cifar10_4k", DataConfig(), SHARED_DATA, False)
    assert data.train_x.shape == (50000, 3, 32, 32) and data.test_x.shape == (10000, 3, 32, 32)
    assert torch.equal(data.train_y.bincount(), torch.full((10,), 5000))
    assert torch.equal(data.train_y[data.labelled_idx].bincount(), torch.full((10,), 400))
    mean = data.train_x.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(data.policy.mean), atol=2e-3)
    assert data.class_names[0] == "airplane"


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("cifar10", "cifar10/cifar-10-batches-py/data_batch_1"),
        ("cifar100", "cifar100/cifar-100-python/train"),
        ("svhn", "svhn/train_32x32.mat"),
    ],
)
def test_missing_files_name_path_and_fixes(tmp_path: Path, family: str, expected: str) -> None:
    with pytest.raises(DataError) as info:
        build_dataset(family, DataConfig(), tmp_path, False)
    message = str(info.value)
    assert str(tmp_path / expected) in message
    assert all(hint in message for hint in FIX_HINTS)


@pytest.mark.parametrize(
    ("family", "torchvision_class"), [("cifar10", "CIFAR10"), ("cifar100", "CIFAR100"), ("svhn", "SVHN")]
)
def test_failed_download_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, family: str, torchvision_class: str
) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, torchvision_class, offline)
    with pytest.raises(DataError, match="missing .* download failed") as info:
        build_dataset(family, DataConfig(), tmp_path, True)
    assert "--data-dir" in str(info.value) and "SSL_KD_DATA" in str(info.value)


def test_download_then_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def fake_download(root: str, download: bool) -> None:
        assert download and Path(root) == tmp_path / "cifar10"
        write_cifar10(tmp_path)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_download)
    assert build_dataset("cifar10_20", DataConfig(), tmp_path, True).labelled_idx.numel() == 20


def test_truncated_pickle_names_the_file(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    victim = folder / "data_batch_3"
    victim.write_bytes(victim.read_bytes()[:500])
    with pytest.raises(DataError, match="data_batch_3.*corrupt"):
        build_dataset("cifar10", DataConfig(), tmp_path, False)


def test_corrupt_mat_names_the_file(tmp_path: Path) -> None:
    folder = write_svhn(tmp_path)
    (folder / "test_32x32.mat").write_bytes(b"not a MATLAB file at all" * 10)
    with pytest.raises(DataError, match="test_32x32.mat.*corrupt"):
        build_dataset("svhn", DataConfig(), tmp_path, False)


def test_wrong_shapes_are_corrupt(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    write_pickle(folder / "test_batch", {b"labels": [0, 1], b"data": np.zeros((2, 100), dtype=np.uint8)})
    with pytest.raises(DataError, match="test_batch"):
        build_dataset("cifar10", DataConfig(), tmp_path, False)


def test_resolve_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_KD_DATA", "/env/data")
    assert resolve_data_dir("/given") == Path("/given")
    assert resolve_data_dir("") == Path("/env/data")
    monkeypatch.delenv("SSL_KD_DATA")
    assert resolve_data_dir("") == Path("data")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cifar10_4k", ("cifar10", 4000)),
        ("cifar100_10k", ("cifar100", 10000)),
        ("digits_30", ("digits", 30)),
        ("svhn", ("svhn", None)),
        ("svhn_250", ("svhn", 250)),
    ],
)
def test_parse_dataset_name(name: str, expected: tuple[str, int | None]) -> None:
    assert parse_dataset_name(name) == expected


def test_unknown_family_suggests_closest() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'cifar10'.*Known datasets: cifar10, cifar100, cola, digits, hfdataset, imagefolder, mnli, .*, sst2, stsb, stsb6, svhn, textfile, wnli"):
        parse_dataset_name("cifar1_4k")
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'.*imagefolder_<labels> with --set data.folder=PATH"):
        parse_dataset_name("imagenet")


@pytest.mark.parametrize("name", ["cifar10_4kk", "cifar10_0", "cifar10_", "digits_x30"])
def test_bad_label_spec(name: str) -> None:
    with pytest.raises(ConfigError, match="bad label count.*cifar10_4k"):
        parse_dataset_name(name)


@pytest.mark.parametrize("family", ["cifar10", "cifar100", "svhn", "digits"])
def test_family_protocols_use_train_config_fields(family: str) -> None:
    registered = resolve_family(family)[0]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(registered.protocol) <= fields and registered.protocol["net"]
    assert registered.presets and registered.description
    assert registered.policy.flip == family.startswith("cifar")
