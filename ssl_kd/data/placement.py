"""Where a run's data tensors live: on the training device (the default) or in host memory.

A training set larger than the device's memory budget stays in host memory as a `HostTensor`:
indexing it gathers the rows on the host into pinned memory (when CUDA is available) and copies
them to the device asynchronously, so augmentation still runs on the device and every batch holds
the same bytes as with device placement. The whole set is not pinned: the step's gather is a CPU
copy either way, and only the gathered batch needs pinned pages for an asynchronous DMA (pinning a
100 GB set would lock that much RAM for nothing). `ssl_kd.data.feed` prefetches the next step's
batch on a side stream.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ssl_kd.config import DataConfig
from ssl_kd.data.types import SSLData
from ssl_kd.errors import ConfigError

PLACEMENTS = ("auto", "device", "host")


def check_placement(cfg: DataConfig) -> None:
    if cfg.placement not in PLACEMENTS:
        raise ConfigError(
            f"data.placement={cfg.placement!r} is not valid; use auto (on the device when the data fits in "
            f"data.device_budget of its free memory, else in host memory), device or host."
        )
    if not 0.0 < cfg.device_budget <= 1.0:
        raise ConfigError(f"data.device_budget={cfg.device_budget} is not a share of the free device memory; "
                          f"give a value in (0, 1], e.g. 0.5.")


@dataclass(frozen=True)
class Placement:
    where: str  # device | host
    reason: str

    def __str__(self) -> str:
        return f"data placement: {self.where} ({self.reason})"


def choose_placement(cfg: DataConfig, nbytes: int, device: torch.device) -> Placement:
    """Device or host for `nbytes` of data, as `data.placement` and `data.device_budget` say."""
    check_placement(cfg)
    size = f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"
    if cfg.placement != "auto":
        return Placement(cfg.placement, f"data.placement={cfg.placement}; the data is {size}")
    if device.type != "cuda":
        return Placement("device", f"auto: training on the {device.type}, whose memory is the host's; the data is {size}")
    free, _ = torch.cuda.mem_get_info(device)
    budget = f"data.device_budget={cfg.device_budget:g} of the {free / 1e9:.1f} GB free on {device}"
    if nbytes <= cfg.device_budget * free:
        return Placement("device", f"auto: the data ({size}) fits in {budget}")
    return Placement("host", f"auto: the data ({size}) exceeds {budget}; each step's batch is gathered on the host "
                             f"and copied asynchronously (set data.placement=device to force it onto the device)")


class HostTensor:
    """A tensor kept in host memory whose indexing answers on the training device.

    It offers the part of the tensor interface the data consumers use (`x[idx]` with an index
    tensor, slice or int; `shape`, `ndim`, `dim()`, `dtype`, `len()`); `device` is where the rows
    are stored (the CPU). An index tensor on the training device costs one synchronisation to
    bring it to the host: the training steps index with host indices (`ssl_kd.data.feed`), and
    only evaluation and influence refreshes take that path.
    """

    def __init__(self, storage: torch.Tensor | HostTensor, target: torch.device) -> None:
        self.storage = storage.storage if isinstance(storage, HostTensor) else storage.cpu()
        self.target = target
        self.pin = target.type == "cuda"  # pinned pages make the host-to-device copy asynchronous
        self._stream: Any = None

    shape = property(lambda self: self.storage.shape)
    ndim = property(lambda self: self.storage.ndim)
    dtype = property(lambda self: self.storage.dtype)
    device = property(lambda self: self.storage.device)

    def dim(self) -> int:
        return self.storage.dim()

    def __len__(self) -> int:
        return len(self.storage)

    nbytes = property(lambda self: self.storage.nbytes)

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows `idx` (a host index tensor) copied into one (pinned, with CUDA) host tensor."""
        out = torch.empty((len(idx), *self.storage.shape[1:]), dtype=self.storage.dtype, pin_memory=self.pin)
        return torch.index_select(self.storage, 0, idx, out=out)

    def stage(self, rows: torch.Tensor) -> torch.Tensor:
        """A host tensor's asynchronous copy on the training device (on the current stream)."""
        if self.pin and not rows.is_pinned():
            rows = rows.pin_memory()
        return rows.to(self.target, non_blocking=True)

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, torch.Tensor):
            return self.stage(self.gather(key.to("cpu")))
        return self.stage(self.storage[key])

    def fetch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(idx, rows) on the training device, copied on a side stream when CUDA is available, and
        the event that marks the copy done (None on the CPU); safe to call from a worker thread.
        `claim` makes them usable on the consumer's stream."""
        if not self.pin:
            return self.stage(idx), self.stage(self.gather(idx)), None
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.target)
        with torch.cuda.stream(self._stream):
            idx, rows = self.stage(idx), self.stage(self.gather(idx))
            done = torch.cuda.Event()
            done.record(self._stream)
        return idx, rows, done

    def claim(self, fetched: tuple[torch.Tensor, torch.Tensor, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Order the current stream after a `fetch`'s copies, and keep their memory until it has used them."""
        idx, rows, done = fetched
        if done is not None:
            stream = torch.cuda.current_stream(self.target)
            stream.wait_event(done)
            idx.record_stream(stream)
            rows.record_stream(stream)
        return idx, rows


def data_bytes(data: SSLData) -> int:
    return sum(x.nbytes for x in (data.train_x, data.test_x))


def place_data(data: SSLData, device: torch.device, cfg: DataConfig) -> tuple[SSLData, Placement]:
    """`data` for training on `device`: every tensor moved there, except the training and test
    inputs under host placement, which become HostTensors."""
    placement = choose_placement(cfg, data_bytes(data), device)
    if placement.where == "host":
        data = dataclasses.replace(data, train_x=HostTensor(data.train_x, device), test_x=HostTensor(data.test_x, device))
    return data.to(device), placement
