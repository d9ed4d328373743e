"""The image-folder source (datasets/imagefolder.py, ssl_kd.data.decode) on small generated JPEG/PNG sets."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg, encode_png

import torchvision.io

from ssl_kd.config import DataConfig
from ssl_kd.data import decode
from ssl_kd.datasets import imagefolder
from ssl_kd.data.build import build_dataset
from ssl_kd.errors import DataError
from tests.conftest import quick_args

CLASSES = ("ant", "bee", "cat")
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def write_image(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = encode_png(image) if path.suffix == ".png" else encode_jpeg(image, quality=95)
    path.write_bytes(bytes(encoded.tolist()))


def write_folder(root: Path, train: int = 6, test: int = 2) -> Path:
    """Class c's images are bright in channel c; sizes vary (landscape and portrait)."""
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", train), ("val", test)):
        for c, name in enumerate(CLASSES):
            for i in range(count):
                h, w = (20, 27) if i % 2 else (31, 24)
                image = torch.randint(0, 40, (3, h, w), generator=generator, dtype=torch.uint8)
                image[c] += 200
                write_image(root / split / name / f"{i}.jpg", image)
    return root


def load(root: Path, name: str = "imagefolder", **settings) -> object:
    cfg = DataConfig(folder=str(root), image_size=16, decode_cache=False, **settings)
    return build_dataset(name, cfg, root.parent, download=False)


def test_reads_classes_labels_and_colours(tmp_path: Path) -> None:
    data = load(write_folder(tmp_path / "set"))
    assert data.class_names == list(CLASSES) and data.num_classes == 3
    assert data.train_x.shape == (18, 3, 16, 16) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (6, 3, 16, 16)
    assert data.train_y.tolist() == [0] * 6 + [1] * 6 + [2] * 6 and data.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    brightest = data.train_x.float().mean(dim=(2, 3)).argmax(dim=1)  # each image's label is its folder's
    assert torch.equal(brightest, data.train_y)
    assert data.labelled_idx.numel() == 18 and not data.has_unlabelled


def test_resizes_the_shorter_side_and_crops_the_centre(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "set", train=1, test=1)
    image = torch.zeros(3, 20, 40, dtype=torch.uint8)
    image[:, :, 20:] = 255  # right half white: the centred 16 of 32 resized columns are half black, half white
    write_image(root / "train" / "ant" / "halves.png", image)
    decoded = load(root).train_x[1]  # after ant/0.jpg
    assert decoded[:, :, :7].max() == 0 and decoded[:, :, 9:].min() == 255


def test_label_count_suffix_splits_per_class(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "set")
    data = load(root, "imagefolder_6")
    assert data.labelled_idx.numel() == 6 and data.unlabelled_idx.numel() == 18
    assert data.train_y[data.labelled_idx].bincount().tolist() == [2, 2, 2]
    with pytest.raises(DataError, match="7 labels cannot be split evenly over 3 classes"):
        load(root, "imagefolder_7")


def test_cache_is_reused_and_follows_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_KD_CACHE", str(tmp_path / "cache"))
    root = write_folder(tmp_path / "set")
    cfg = DataConfig(folder=str(root), image_size=16)
    first = build_dataset("imagefolder", cfg, tmp_path, download=False)
    assert len(list((tmp_path / "cache" / "images").glob("*.pt"))) == 1
    monkeypatch.setattr(imagefolder, "decode_files", lambda *a, **k: pytest.fail("decoded despite the cache"))
    assert torch.equal(build_dataset("imagefolder", cfg, tmp_path, download=False).train_x, first.train_x)
    monkeypatch.undo()
    monkeypatch.setenv("SSL_KD_CACHE", str(tmp_path / "cache"))
    write_image(root / "train" / "bee" / "new.jpg", torch.zeros(3, 16, 16, dtype=torch.uint8))
    assert len(build_dataset("imagefolder", cfg, tmp_path, download=False).train_y) == 19
    assert len(list((tmp_path / "cache" / "images").glob("*.pt"))) == 2


def test_unreadable_cache_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_KD_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(folder=str(write_folder(tmp_path / "set", train=2, test=1)), image_size=16)
    build_dataset("imagefolder", cfg, tmp_path, download=False)
    (cached,) = (tmp_path / "cache" / "images").glob("*.pt")
    cached.write_bytes(cached.read_bytes()[:100])
    with pytest.raises(DataError, match=f"the cache file {cached} is unreadable .*delete it and rerun"):
        build_dataset("imagefolder", cfg, tmp_path, download=False)


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "train").rename(root / "training"), r"set/train is not a folder; an image folder is laid out as"),
    (lambda root: (root / "val").rename(root / "holdout"), r"set has neither test/ nor val/"),
    (lambda root: [p.unlink() for p in (root / "train" / "bee").iterdir()], r"class folder .*train/bee holds no images"),
    (lambda root: (root / "val" / "dog").mkdir(), r"val/dog is a class that .*train does not have"),
    (lambda root: (root / "train" / "cat" / "3.jpg").write_bytes(b"not a jpeg"), r"train/cat/3.jpg cannot be decoded"),
    (lambda root: (root / "val" / "ant" / "1.jpg").write_bytes(b""), r"val/ant/1.jpg cannot be decoded .*empty"),
])
def test_bad_layouts_name_the_folder_or_file(tmp_path: Path, damage, message: str) -> None:
    root = write_folder(tmp_path / "set")
    damage(root)
    with pytest.raises(DataError, match=message):
        load(root)


def test_missing_folder_names_it_and_the_setting(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere/train is not a folder.*data.folder=PATH"):
        load(tmp_path / "nowhere")


def test_trains_from_a_folder_with_host_placement(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_KD_CACHE", str(tmp_path / "cache"))
    root = write_folder(tmp_path / "set")
    argv = quick_args(tmp_path / "run", "fixmatch", 3, "--net", "cnn_small", "--batch-size", "3")
    argv[argv.index("digits_30")] = "imagefolder_6"
    code, summary = run_cli([*argv, "--set", f"data.folder={root}", "--set", "data.image_size=16",
                             "--set", "data.placement=host"])
    assert code == 0 and summary["steps"] == 3 and summary["evaluations"] == 1


def cpu_decode_jpeg(data, mode, device):  # stands in for the CUDA decoder: same call, run on the CPU
    return torchvision.io.decode_jpeg(data, mode=mode)


def test_cuda_route_sends_jpegs_to_the_batched_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_folder(tmp_path / "set", train=2, test=1)
    write_image(root / "train" / "ant" / "2.png", torch.full((3, 20, 20), 90, dtype=torch.uint8))
    files = sorted((root / "train").rglob("*.*"))
    batches: list[int] = []
    monkeypatch.setattr(decode, "decode_jpeg", lambda data, mode, device: batches.append(len(data)) or cpu_decode_jpeg(data, mode, device))
    on_cuda = decode.decode_files(files, 16, torch.device("cuda"), "test", batch_size=4)
    assert batches == [3, 3]  # each chunk of 4 files sends its JPEGs; the PNG (first chunk) is decoded on the CPU
    assert torch.equal(on_cuda, decode.decode_files(files, 16, torch.device("cpu"), "test"))


def test_batched_decode_failure_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_folder(tmp_path / "set", train=3, test=1)
    bad = root / "train" / "bee" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # a JPEG header, then nothing: fails inside the decoder
    monkeypatch.setattr(decode, "decode_jpeg", cpu_decode_jpeg)
    with pytest.raises(DataError, match="train/bee/1.jpg cannot be decoded"):
        decode.decode_files(sorted((root / "train").rglob("*.jpg")), 16, torch.device("cuda"), "test")


def test_teacher_mismatch_message_describes_a_folder_family_without_a_class_count():
    from ssl_kd.teacher import describe_family

    assert describe_family("imagefolder").startswith("the classes of its folder")
    assert describe_family("cifar10").startswith("10 classes")
