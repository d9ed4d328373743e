"""torchrun data parallelism on the CPU (gloo): 2 processes with B/2 each train what 1 process with B trains."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_kd.algorithm import Batch
from ssl_kd.errors import ConfigError
from ssl_kd.trainer import distributed
from tests.conftest import REPO, quick_args

# BatchNorm statistics are per process without SyncBatchNorm (which has no CPU kernel), so the
# equivalence test uses a network without BatchNorm; everything else is the shipped code path.
PLUGIN = '''
import torch
from torch import nn
from ssl_kd.nets.base import Classifier
from ssl_kd.registry import register_network

class NoBatchNorm(Classifier):
    def __init__(self, num_classes: int, in_channels: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self._make_head(32, num_classes)
        # a float buffer, as BatchNorm's: evaluation averages it across ranks (a collective every rank must join)
        self.register_buffer("scale", torch.ones(1))

    def features(self, x):
        return self.body(x)

@register_network("nobn_net")
def nobn_net(num_classes: int, in_channels: int = 1) -> NoBatchNorm:
    return NoBatchNorm(num_classes, in_channels)
'''


def _train(tmp_path: Path, name: str, processes: int, algo: str, steps: int, resume: bool = False) -> dict:
    plugin = tmp_path / "nobn_plugin.py"
    plugin.write_text(PLUGIN)
    out = tmp_path / name
    # a constant learning rate (cosine_cycles 0), so a 2-step run resumed to 3 steps has a 3-step run's schedule
    args = (["--resume", str(out), "--steps", str(steps), "--extend", "--no-progress"] if resume else
            [*quick_args(out, algo, steps), "--net", "nobn_net", "--set", "train.lr=0.1", "--set", "train.cosine_cycles=0",
             "--set", "algo.threshold=0"])
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    proc = subprocess.run([*launcher, "tools/train.py", *args, "--plugin", str(plugin)], cwd=REPO, capture_output=True,
                          text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


def _assert_same_training(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    # stated tolerance: averaging float32 gradients across processes reorders sums; 1e-5 after 3 steps
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5, msg=key)
        torch.testing.assert_close(a["ema"][key], b["ema"][key], rtol=1e-4, atol=1e-5, msg=key)


def test_two_processes_with_half_batches_match_one_process_and_resume(tmp_path: Path) -> None:
    """FlexMatch with threshold 0: every unlabelled prediction enters its per-example record, which
    must then hold the whole global batch on rank 0, not only rank 0's half."""
    one = _train(tmp_path, "one", 1, "flexmatch", 3)
    _train(tmp_path, "two", 2, "flexmatch", 2)
    # rank 0 alone wrote the run folder: one line for the one evaluation (step 2), not one per process
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = _train(tmp_path, "two", 2, "fixmatch", 3, resume=True)
    assert one["step"] == 3
    _assert_same_training(resumed, one)
    record = one["algorithm"]["thresholder"]["predictions"]
    assert (record >= 0).sum() == 3 * 8 * 2  # 3 steps of mu * B = 16 unlabelled examples, all distinct
    assert torch.equal(resumed["algorithm"]["thresholder"]["predictions"], record)


def test_one_process_helpers_are_no_ops() -> None:
    info = distributed.DistInfo()
    x = torch.arange(6.0)
    assert distributed.DistInfo().shard(x) is x
    distributed.all_reduce_mean_([x], info)
    assert torch.equal(x, torch.arange(6.0))
    batch = Batch(x_l={"weak": x}, y_l=x, idx_l=x)
    assert info.shard_batch(batch) is batch


def test_ranks_take_disjoint_contiguous_shards_of_the_global_batch() -> None:
    x = torch.arange(8)
    shards = [distributed.DistInfo(rank, 2).shard(x) for rank in range(2)]
    assert torch.equal(torch.cat(shards), x)
    batch = Batch(x_l={"weak": torch.arange(4)}, y_l=torch.arange(4), idx_l=torch.arange(4),
                  x_u={"weak": torch.arange(8), "strong": torch.arange(8) + 8}, idx_u=torch.arange(8))
    second = distributed.DistInfo(1, 2).shard_batch(batch)
    assert second.idx_l.tolist() == [2, 3] and second.idx_u.tolist() == [4, 5, 6, 7]
    assert second.x_u["strong"].tolist() == [12, 13, 14, 15]
    with pytest.raises(ConfigError, match="multiple of 2"):
        distributed.check_batch(distributed.DistInfo(0, 2), 7)
