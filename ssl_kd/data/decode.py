"""Image files -> one uint8 tensor (N,3,S,S): decoded in batches, shorter side resized to S, centre-cropped.

With CUDA, JPEGs are decoded in batches on the device (torchvision.io.decode_jpeg, nvJPEG); other
formats, and every file on a CPU-only machine, are decoded by torchvision.io.decode_image in a thread
pool (the decoders release the GIL). Colour modes are converted to RGB (greyscale and CMYK JPEGs
occur in ImageNet). The result is stored on the host; a file that cannot be decoded raises a
DataError naming it.

torchvision 0.29 deprecates its decoders in favour of TorchCodec, which the pinned environment does
not have; the warning, raised on every call, is silenced here until the move.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from ssl_kd.errors import DataError

JPEG_MAGIC = b"\xff\xd8\xff"
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)


def square(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3,H,W) uint8 -> (3,size,size): shorter side resized to `size` (antialiased), then the centre crop."""
    if min(image.shape[-2:]) != size:
        image = TF.resize(image, size, antialias=True)
    return TF.center_crop(image, [size, size])


def undecodable(path: Path, err: Exception) -> DataError:
    return DataError(f"{path.absolute()} cannot be decoded as an image ({str(err).splitlines()[0][:200]}); "
                     f"delete it or replace it with a readable JPEG or PNG.")


def read_bytes(path: Path) -> torch.Tensor:
    """A file's bytes as a uint8 tensor (what torchvision's decoders take)."""
    try:
        content = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path.absolute()} ({err.strerror}); check its permissions.") from err
    if not content:
        raise undecodable(path, ValueError("the file is empty"))
    return torch.frombuffer(bytearray(content), dtype=torch.uint8)


def decode_one(path: Path, data: torch.Tensor, size: int) -> torch.Tensor:
    try:
        image = decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as err:
        raise undecodable(path, err) from err
    return square(image, size)


def decode_on_device(paths: list[Path], data: list[torch.Tensor], size: int, device: torch.device) -> list[torch.Tensor]:
    """One batched device decode of JPEGs; on failure, file by file to name the culprit."""
    try:
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as err:
        for path, one in zip(paths, data):
            try:
                decode_jpeg(one, mode=ImageReadMode.RGB, device=device)
            except RuntimeError as bad:
                raise undecodable(path, bad) from bad
        raise DataError(f"decoding {len(paths)} images from {paths[0].parent} failed as a batch ({err}) but "
                        f"each decodes alone; retry on the CPU with CUDA_VISIBLE_DEVICES=\"\".") from err
    return list(torch.stack([square(image, size) for image in images]).cpu())  # one read-back per batch


def decode_files(paths: list[Path], size: int, device: torch.device, desc: str, batch_size: int = 256) -> torch.Tensor:
    """The images at `paths` as one (N,3,size,size) uint8 host tensor, in order, with a progress bar."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    with ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, 16))) as pool, \
            tqdm(total=len(paths), desc=desc, unit="img", disable=None, leave=False) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            data = list(pool.map(read_bytes, chunk))
            on_device = [device.type == "cuda" and bytes(d[:3].tolist()) == JPEG_MAGIC for d in data]
            images: list[torch.Tensor | None] = [None] * len(chunk)
            if any(on_device):
                picked = [i for i, flag in enumerate(on_device) if flag]
                decoded = decode_on_device([chunk[i] for i in picked], [data[i] for i in picked], size, device)
                for i, image in zip(picked, decoded):
                    images[i] = image
            rest = [i for i, flag in enumerate(on_device) if not flag]
            for i, image in zip(rest, pool.map(lambda i: decode_one(chunk[i], data[i], size), rest)):
                images[i] = image
            out[start:start + len(chunk)] = torch.stack(images)
            bar.update(len(chunk))
    return out
