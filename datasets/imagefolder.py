"""Image folders in torchvision's ImageFolder layout (ImageNet style), decoded once into uint8 tensors.

    <folder>/train/<class>/*.jpg        the labelled examples (one sub-folder per class)
    <folder>/unlabelled/**/*.jpg        optional: the unlabelled pool (any depth, no classes)
    <folder>/test/<class>/*.jpg         the test set
    <folder>/val/<class>/*.jpg          the validation set; without test/, val/ is the test set and
                                        validation is carved from train/ (ssl_kd.data.own)

`--dataset imagefolder` reads `<data-dir>/imagefolder`, or `data.folder` (absolute, or relative to
the data dir), and trains on exactly the images of train/ with those of unlabelled/ as the pool;
`imagefolder_<labels>` draws that many labels from train/ (benchmarking). Classes are the sorted
training sub-folder names (their index is the label); an evaluation class folder must be one of
them. Images are decoded in batches
(ssl_kd.data.decode) to `data.image_size` squares and, with `data.decode_cache` (default), kept in
$SSL_KD_CACHE/images (else ~/.cache/ssl_kd/images) under a key of the file list, sizes, modification
times and image size, so a second run starts at once and any change to the files decodes again;
the cached tensors are memory-mapped (ssl_kd.data.cache). `RawData.train_ids` holds every training
image's path (train/, unlabelled/, then val/ when it is the validation set).
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

from ssl_kd.data.cache import cache_root, load_or_make
from ssl_kd.data.decode import decode_files
from ssl_kd.data.family import FIXMATCH_PROTOCOL, DatasetFamily, RawData, register_dataset
from ssl_kd.data.own import LABELLED, UNLABELLED, VALIDATION
from ssl_kd.data.types import NO_LABEL, AugPolicy
from ssl_kd.errors import DataError

SUFFIXES = (".jpg", ".jpeg", ".png")
LAYOUT = ("<folder>/train/<class>/*.jpg, optionally <folder>/unlabelled/**/*.jpg, and <folder>/test/<class>/*.jpg "
          "and/or val/<class>/*.jpg")
UNLABELLED_DIRS = ("unlabelled", "unlabeled")
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


def held_out(root: Path) -> tuple[Path, Path | None]:
    """(test, validation) folders: test/ and val/; a lone val/ is the test set (validation is then carved)."""
    test, val = root / "test", root / "val"
    if test.is_dir():
        return test, val if val.is_dir() else None
    if val.is_dir():
        return val, None
    raise layout_error(f"{root.absolute()} has neither test/ nor val/")


def unlabelled_images(root: Path) -> list[Path]:
    """Every image under <root>/unlabelled/ (or unlabeled/), at any depth, sorted; none without it."""
    folder = next((root / name for name in UNLABELLED_DIRS if (root / name).is_dir()), None)
    if folder is None:
        return []
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not images:
        raise layout_error(f"{folder.absolute()} holds no images ({', '.join(SUFFIXES)})")
    return images


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
    """`download` is unused: an image folder is the user's own. The training tensor holds train/,
    then unlabelled/, then the validation folder, told apart by `train_part` (ssl_kd.data.own)."""
    classes = list_classes(root)
    test_dir, val_dir = held_out(root)
    train_files, train_y = list_images(root / "train", classes)
    unlabelled_files = unlabelled_images(root)
    val_files, val_y = list_images(val_dir, classes) if val_dir is not None else ([], torch.empty(0, dtype=torch.int64))
    test_files, test_y = list_images(test_dir, classes)
    own_files = train_files + unlabelled_files + val_files
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def decode() -> dict[str, torch.Tensor]:
        return {"train_x": decode_files(own_files, image_size, device, f"decoding {root.name}/train"),
                "test_x": decode_files(test_files, image_size, device, f"decoding {root.name}/{test_dir.name}")}

    if decode_cache:
        path = cache_root() / "images" / f"{cache_key(root, [own_files, test_files], image_size)}.pt"
        images, hit = load_or_make(path, decode)
        print(f"image folder {root}: {'decoded images read from' if hit else 'decoded images cached in'} {path} "
              f"(data.decode_cache=false skips the cache)", file=sys.stderr)
    else:
        images = decode()
    part = torch.tensor([LABELLED] * len(train_files) + [UNLABELLED] * len(unlabelled_files) + [VALIDATION] * len(val_files))
    labels = torch.cat([train_y, torch.full((len(unlabelled_files),), NO_LABEL, dtype=torch.int64), val_y])
    notes = [f"image folder {root}: train/ {len(train_files)}, unlabelled/ {len(unlabelled_files)}, test: {test_dir.name}/ "
             f"{len(test_files)}" + (f", validation: {val_dir.name}/ {len(val_files)}" if val_dir is not None else
                                     (" (the only held-out folder: the test set; validation is carved from train/)"
                                      if test_dir.name == "val" else ""))]
    return RawData(images["train_x"], labels, images["test_x"], test_y, classes, train_part=part,
                   train_ids=[str(p) for p in own_files], notes=notes)


register_dataset(
    DatasetFamily(
        name="imagefolder",
        num_classes=0,  # counted from the training class folders
        policy=AugPolicy(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), flip=True),  # ImageNet's statistics
        load=load_image_folder,
        protocol={**FIXMATCH_PROTOCOL, "eval_every": 0},  # your data: 20 evaluations over any --steps (train.evals)
        classes=list_classes,
        options=("image_size", "decode_cache"),
        description="your images in ImageFolder layout (<folder>/train/<class>/*.jpg, unlabelled/, test/ and/or "
                    "val/), at data.folder or <data-dir>/imagefolder, decoded to data.image_size squares",
    )
)
