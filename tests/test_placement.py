"""Host placement (ssl_kd.data.placement, ssl_kd.data.feed): the same batches, bytes and steps as
device placement, prefetching that never feeds a wrong batch, and the auto rule's decisions."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_kd.config import DataConfig
from ssl_kd.data.feed import StepFeed
from ssl_kd.data.placement import HostTensor, choose_placement
from ssl_kd.errors import ConfigError
from ssl_kd.paired import setting_of
from tests.conftest import make_trainer, quick_args, run_steps, step_losses
from tests.sync_counter import count_syncs


def recorded_run(out: Path, placement: str, steps: int = 4) -> tuple[object, list, list[float]]:
    """A digits_30 FixMatch trainer under `placement`, its batches and its losses over `steps` steps."""
    trainer = make_trainer(out, "fixmatch", 6, "--set", f"data.placement={placement}")
    batches, take = [], trainer.next_batch
    trainer.next_batch = lambda: batches.append(take()) or batches[-1]
    return trainer, batches, step_losses(trainer, steps)


def test_host_placement_trains_bit_identically(tmp_path: Path) -> None:
    device, dev_batches, dev_losses = recorded_run(tmp_path / "device", "device")
    host, host_batches, host_losses = recorded_run(tmp_path / "host", "host")
    assert isinstance(host.data.train_x, HostTensor) and isinstance(device.data.train_x, torch.Tensor)
    assert host.labelled.prefetched == 3 and host.unlabelled.prefetched == 3  # all but the first came prefetched
    assert host_losses == dev_losses
    for a, b in zip(dev_batches, host_batches):
        assert torch.equal(a.idx_l, b.idx_l) and torch.equal(a.idx_u, b.idx_u) and torch.equal(a.y_l, b.y_l)
        for views_a, views_b in ((a.x_l, b.x_l), (a.x_u, b.x_u)):
            assert views_a.keys() == views_b.keys()
            assert all(torch.equal(views_a[k], views_b[k]) for k in views_a)
    for p, q in zip(device.model.parameters(), host.model.parameters()):
        assert torch.equal(p, q)


def test_host_placed_step_reads_nothing_back(tmp_path: Path) -> None:
    """The step's indices are drawn on the host, so gathering them needs no device read-back."""
    trainer = make_trainer(tmp_path, "fixmatch", 6, "--set", "data.placement=host")
    run_steps(trainer, 2)
    with count_syncs() as counts:
        run_steps(trainer, 1)
    assert not counts, dict(counts)


def test_feed_resumes_exactly_across_placements_and_drops_a_stale_prefetch() -> None:
    rows = torch.arange(40, dtype=torch.uint8).view(20, 2)
    host = HostTensor(rows, torch.device("cpu"))
    whole = StepFeed(torch.arange(20), 6, 3, host)
    expected = [next(whole) for _ in range(6)]  # crosses epochs (20 indices, 6 per batch)
    first = StepFeed(torch.arange(20), 6, 3, rows)  # checkpointed under device placement, resumed under host
    for _ in range(2):
        next(first)
    resumed = StepFeed(torch.arange(20), 6, 99, host)  # the state, not the seed, decides
    next(resumed)  # leaves a prefetched batch that the loaded state makes stale
    resumed.load_state_dict(first.state_dict())
    for idx, x in expected[2:]:
        got_idx, got_x = next(resumed)
        assert torch.equal(got_idx, idx) and torch.equal(got_x, rows[idx])
    assert resumed.prefetched == 3  # the stale batch was never served


def test_host_tensor_indexes_like_a_tensor() -> None:
    rows = torch.randint(0, 255, (7, 3, 4, 4), dtype=torch.uint8)
    host = HostTensor(rows, torch.device("cpu"))
    assert host.shape == rows.shape and host.ndim == 4 and host.dim() == 4 and len(host) == 7
    assert host.dtype == torch.uint8 and host.nbytes == rows.nbytes
    idx = torch.tensor([5, 0, 5])
    assert torch.equal(host[idx], rows[idx]) and torch.equal(host[2:6], rows[2:6]) and torch.equal(host[3], rows[3])


def test_cli_host_placement_logs_and_matches_device(tmp_path: Path, run_cli, capsys: pytest.CaptureFixture) -> None:
    val = ["--set", "data.val_per_class=2"]  # evaluation also gathers the validation split from the host
    code_d, device = run_cli(quick_args(tmp_path / "d", "fixmatch", 3, *val, "--set", "data.placement=device"))
    code_h, host = run_cli(quick_args(tmp_path / "h", "fixmatch", 3, *val, "--set", "data.placement=host"))
    assert code_d == code_h == 0
    assert "data placement: host (data.placement=host" in capsys.readouterr().err
    for key in ("last_top1", "best_val_top1"):
        assert host[key] == device[key]


def test_auto_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_placement(DataConfig(), 10**12, cpu).where == "device"  # the CPU's memory is the host's
    assert choose_placement(DataConfig(placement="host"), 10, cpu).where == "host"
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 10**9, 16 * 10**9))
    assert choose_placement(DataConfig(), 4 * 10**9, cuda).where == "device"  # 4 GB <= 0.5 x 8 GB free
    over = choose_placement(DataConfig(), 5 * 10**9, cuda)
    assert over.where == "host" and "exceeds data.device_budget=0.5 of the 8.0 GB free" in over.reason
    assert choose_placement(DataConfig(device_budget=0.7), 5 * 10**9, cuda).where == "device"


@pytest.mark.parametrize("setting, message", [
    ({"placement": "gpu"}, "data.placement='gpu' is not valid; use auto"),
    ({"device_budget": 0.0}, "data.device_budget=0.0 is not a share"),
    ({"device_budget": 1.5}, "data.device_budget=1.5 is not a share"),
])
def test_bad_settings_name_the_key(setting: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        choose_placement(DataConfig(**setting), 10, torch.device("cpu"))


def test_placement_does_not_split_paired_settings() -> None:
    config = {"train": {"dataset": "digits_30", "steps": 10}, "data": {}}
    moved = {**config, "data": {"placement": "host", "device_budget": 0.2, "decode_cache": False}}
    assert setting_of(moved) == setting_of(config) == "digits_30, 10 steps"
    assert setting_of({**config, "data": {"image_size": 32}}) == "digits_30, 10 steps, data.image_size=32"
