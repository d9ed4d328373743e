"""Image folders in torchvision's ImageFolder layout (ImageNet style), decoded once into uint8 tensors.

    <folder>/train/<class>/*.jpg        the training set (one sub-folder per class)
    <folder>/test/<class>/*.jpg         the evaluation set (else <folder>/val/<class>/...)

`--dataset imagefolder_<labels>` reads `<data-dir>/imagefolder`, or `data.folder` (absolute, or
relative to the data dir). Classes are the sorted training sub-folder names (their index is the
label); an evaluation class folder must be one of them. Images are decoded in batches
(ssl_kd.data.decode) to `data.image_size` squares and, with `data.decode_cache` (default), kept in
$SSL_KD_CACHE/images (else ~/.cache/ssl_kd/images) under a key of the file list, sizes, modification
times and image size, so a second run starts at once and any change to the files decodes again;
the cached tensors are memory-mapped (ssl_kd.data.cache).
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

from ssl_kd.data.cache import cache_root, load_or_make
from ssl_kd.data.decode import decode_files
from ssl_kd.data.family import FIXMATCH_PROTOCOL, DatasetFamily, RawData, register_dataset
from ssl_kd.data.types import AugPolicy
from ssl_kd.errors import DataError

SUFFIXES = (".jpg", ".jpeg", ".png")
LAYOUT = "<folder>/train/<class>/*.jpg and <folder>/test/<class>/*.jpg (or val/ for test/)"
FORMAT = 1  # bump when the decoded bytes change (resize, crop): old cache entries are then ignored


def layout_error(problem: str) -> DataError:
    return DataError(f"{problem}; an image folder is laid out as {LAYOUT}. To fix: point --set data.folder=PATH "
                     f"(absolute, or relative to --data-dir) at such a folder.")


def class_folders(split: Path) -> list[Path]:
    if not split.is_dir():
        raise layout_error(f"{split.absolute()} is not a folder")
    folders = sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise layout_error(f"{split.absolute()} holds no class folders")
    return folders


def list_classes(root: Path) -> list[str]:
    """The class names: the training sub-folders, sorted."""
    return [p.name for p in class_folders(root / "train")]


def eval_split(root: Path) -> Path:
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / name
    raise layout_error(f"{root.absolute()} has neither test/ nor val/")


def list_images(split: Path, classes: list[str]) -> tuple[list[Path], torch.Tensor]:
    """Every image file of a split, class by class in sorted order, and their labels."""
    index = {name: i for i, name in enumerate(classes)}
    files, labels = [], []
    for folder in class_folders(split):
        if folder.name not in index:
            raise layout_error(f"{folder.absolute()} is a class that {split.parent / 'train'} does not have")
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
        if not images:
            raise layout_error(f"class folder {folder.absolute()} holds no images ({', '.join(SUFFIXES)})")
        files += images
        labels += [index[folder.name]] * len(images)
    return files, torch.tensor(labels, dtype=torch.int64)


def cache_key(root: Path, splits: list[list[Path]], image_size: int) -> str:
    """Changes with any file's name, size or modification time, the image size, or FORMAT."""
    h = hashlib.sha256(f"{FORMAT}|{image_size}".encode())
    for files in splits:
        for path in files:
            stat = path.stat()
            h.update(f"|{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        h.update(b"\x1d")
    return h.hexdigest()[:24]


def load_image_folder(root: Path, download: bool, image_size: int = 64, decode_cache: bool = True) -> RawData:
    """`download` is unused: an image folder is the user's own."""
    classes = list_classes(root)
    test_dir = eval_split(root)
    train_files, train_y = list_images(root / "train", classes)
    test_files, test_y = list_images(test_dir, classes)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def decode() -> dict[str, torch.Tensor]:
        return {"train_x": decode_files(train_files, image_size, device, f"decoding {root.name}/train"),
                "test_x": decode_files(test_files, image_size, device, f"decoding {root.name}/{test_dir.name}")}

    if decode_cache:
        path = cache_root() / "images" / f"{cache_key(root, [train_files, test_files], image_size)}.pt"
        images, hit = load_or_make(path, decode)
        print(f"image folder {root}: {'decoded images read from' if hit else 'decoded images cached in'} {path} "
              f"(data.decode_cache=false skips the cache)", file=sys.stderr)
    else:
        images = decode()
    return RawData(images["train_x"], train_y, images["test_x"], test_y, classes)


register_dataset(
    DatasetFamily(
        name="imagefolder",
        num_classes=0,  # counted from the training class folders
        policy=AugPolicy(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), flip=True),  # ImageNet's statistics
        load=load_image_folder,
        protocol={**FIXMATCH_PROTOCOL, "eval_every": 0},  # your data: 20 evaluations over any --steps (train.evals)
        classes=list_classes,
        options=("image_size", "decode_cache"),
        description="your images in ImageFolder layout (<folder>/train/<class>/*.jpg, test/ or val/), "
                    "at data.folder or <data-dir>/imagefolder, decoded to data.image_size squares",
    )
)
