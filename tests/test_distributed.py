"""torchrun data parallelism on the CPU (gloo): 2 processes with B/2 each train what 1 process with B trains."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssl_kd.algorithm import Batch
from ssl_kd.data.placement import HostTensor
from ssl_kd.data.types import AugPolicy
from ssl_kd.errors import ConfigError
from ssl_kd.trainer import distributed
from ssl_kd.trainer.evaluate import predict
from ssl_kd.trainer.guard import DivergenceError, FiniteGuard
from ssl_kd.cli import parser, prepare
from ssl_kd.run import build_data
from ssl_kd.trainer.trainer import Trainer
from tests.conftest import REPO, quick_args

# BatchNorm statistics are per process without SyncBatchNorm (which has no CPU kernel), so the
# equivalence tests use a network without BatchNorm; everything else is the shipped code path.
# `faulty_net` fails in its third training forward on rank 1 (fault injection for the failure test);
# `kdaif_ranks` is KD-AIF reporting, at each evaluation, how far its teacher and influence state
# differ across processes (a collective: every rank evaluates).
PLUGIN = '''
import torch
import torch.distributed as dist
from torch import nn
from ssl_kd.algorithms.kdaif import KDAIF
from ssl_kd.nets.base import Classifier
from ssl_kd.registry import register_algorithm, register_network
from ssl_kd.trainer.distributed import gather_cat

class NoBatchNorm(Classifier):
    def __init__(self, num_classes: int, in_channels: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self._make_head(32, num_classes)
        # a float buffer, as BatchNorm's: evaluation averages it across ranks (a collective every rank must join)
        self.register_buffer("scale", torch.ones(1))
        # examples this process predicted in eval mode (an integer buffer: never averaged)
        self.register_buffer("eval_rows", torch.zeros((), dtype=torch.long))

    def features(self, x):
        if not self.training:
            self.eval_rows += x.shape[0]
        return self.body(x)

class Faulty(NoBatchNorm):
    def __init__(self, num_classes: int, in_channels: int = 1) -> None:
        super().__init__(num_classes, in_channels)
        self.calls = 0

    def features(self, x):
        if self.training and dist.is_initialized() and dist.get_rank() == 1:
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("injected failure on rank 1")
        return super().features(x)

@register_network("nobn_net")
def nobn_net(num_classes: int, in_channels: int = 1) -> NoBatchNorm:
    return NoBatchNorm(num_classes, in_channels)

@register_network("faulty_net")
def faulty_net(num_classes: int, in_channels: int = 1) -> Faulty:
    return Faulty(num_classes, in_channels)

def rank_spread(t):
    parts = gather_cat(t.detach().reshape(1, -1).float())
    return float((parts - parts[0]).abs().max())

@register_algorithm("kdaif_ranks")
class KDAIFRanks(KDAIF):
    def eval_metrics(self):
        w = self.weights.weighter
        teacher = torch.cat([p.reshape(-1) for p in self.teacher.parameters()])
        return {**super().eval_metrics(), "rank_spread/teacher": rank_spread(teacher),
                "rank_spread/solution": rank_spread(w.solution), "rank_spread/acc_sum": rank_spread(w.acc_sum)}
'''
ENV = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
FLEX = ["--net", "nobn_net", "--set", "train.lr=0.1", "--set", "train.cosine_cycles=0", "--set", "algo.threshold=0"]
# KD-AIF with a teacher trained by its own optimiser: 1 warm-up step, solves at steps 1 and 3
KDAIF = ["--net", "nobn_net", "--set", "algo.teacher_warmup=0.25", "--set", "weights.warmup=0.25",
         "--set", "weights.refresh_every=2", "--set", "algo.uda_threshold=0"]


def _plugin(tmp: Path) -> Path:
    plugin = tmp / "dist_plugin.py"
    plugin.write_text(PLUGIN)
    return plugin


def _command(tmp: Path, args: list[str], processes: int, *torchrun: str) -> list[str]:
    """tools/train.py under one Python process, or under torchrun (--standalone unless `torchrun` says how)."""
    launcher = ([sys.executable] if processes == 1 and not torchrun else
                [sys.executable, "-m", "torch.distributed.run", *(torchrun or ("--standalone",)), "--nproc_per_node", str(processes)])
    return [*launcher, "tools/train.py", *args, "--plugin", str(_plugin(tmp))]


def _train(tmp: Path, name: str, processes: int, algo: str, steps: int, *extra: str) -> dict:
    """Train a tiny run (or `--resume` it when algo is "resume") and return its last checkpoint."""
    out = tmp / name
    args = (["--resume", str(out), "--steps", str(steps), "--extend", "--no-progress"] if algo == "resume"
            else quick_args(out, algo, steps, *extra))
    proc = subprocess.run(_command(tmp, args, processes), cwd=REPO, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_close(a: dict, b: dict, name: str) -> None:
    """Every floating tensor of state dict `a` close to the same one of `b` (integer ones such as
    eval_rows differ by design). Stated tolerance: averaging float32 gradients across processes
    reorders sums; 1e-5 after 3-4 steps."""
    for key, value in a.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, b[key], rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")


def _assert_close_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    _assert_close(a["model"], b["model"], "model")
    _assert_close(a["ema"], b["ema"], "ema")


def _assert_same_metrics(a: dict, b: dict) -> None:
    """Evaluation rows of one and of two processes: the same metrics (sharded evaluation gathers every prediction)."""
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert value == pytest.approx(b[key], rel=1e-4, abs=1e-4), key


@pytest.fixture(scope="module")
def flexmatch_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """(folder, 3-step one-process checkpoint, 2-step two-process checkpoint) of FlexMatch with
    threshold 0 and a constant learning rate (cosine_cycles 0), so a 2-step run resumed to 3 steps
    has a 3-step run's schedule; the two-process run folder is "two"."""
    tmp = tmp_path_factory.mktemp("flexmatch")
    one = _train(tmp, "one", 1, "flexmatch", 3, *FLEX)
    two = _train(tmp, "two", 2, "flexmatch", 2, *FLEX)
    return tmp, one, two


def test_two_processes_with_half_batches_match_one_process_and_resume(flexmatch_runs: tuple[Path, dict, dict]) -> None:
    """FlexMatch with threshold 0: every unlabelled prediction enters its per-example record, which
    must then hold the whole global batch on rank 0, not only rank 0's half. Evaluation is sharded:
    rank 0 predicted half of the 500 test images, yet reports the one-process metrics."""
    tmp, one, two_at_2 = flexmatch_runs
    # rank 0 alone wrote the run folder: one line for the one evaluation (step 2), not one per process
    assert len(_metrics(tmp / "two")) == 1
    assert int(two_at_2["model"]["eval_rows"]) == 250 and int(one["model"]["eval_rows"]) == 500
    resumed = _train(tmp, "two", 2, "resume", 3)
    assert one["step"] == 3
    _assert_close_state(resumed, one)
    record = one["algorithm"]["thresholder"]["predictions"]
    assert (record >= 0).sum() == 3 * 8 * 2  # 3 steps of mu * B = 16 unlabelled examples, all distinct
    assert torch.equal(resumed["algorithm"]["thresholder"]["predictions"], record)
    _assert_same_metrics(_metrics(tmp / "two")[-1], _metrics(tmp / "one")[-1])
    # the logged training scalars are the whole batch's (both ranks' mean), not rank 0's half
    one_logged, two_logged = _train_scalars(tmp / "one", 3), _train_scalars(tmp / "two", 3)
    assert {"loss/total", "loss/unsup", "train/pseudo_label_acc"} <= one_logged.keys()
    for key in ("loss/total", "loss/sup", "loss/unsup", "train/pseudo_label_acc", "train/mask_ratio"):
        assert two_logged[key] == pytest.approx(one_logged[key], rel=1e-4, abs=1e-5), key


def _train_scalars(run: Path, step: int) -> dict[str, float]:
    """The TensorBoard scalars a run logged at `step`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    return {tag: e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag) if e.step == step}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_with_c10d_rendezvous_train_what_one_launcher_trains(flexmatch_runs: tuple[Path, dict, dict]) -> None:
    """Two torchrun launchers (one per "node", both on this machine) meet at a c10d rendezvous and
    train the single launcher's two-process run exactly."""
    tmp, _, two = flexmatch_runs
    out = tmp / "nodes"
    endpoint = f"127.0.0.1:{_free_port()}"
    args = quick_args(out, "flexmatch", 2, *FLEX)
    procs = [subprocess.Popen(_command(tmp, args, 1, "--nnodes", "2", "--node_rank", str(node), "--rdzv_backend", "c10d",
                                       "--rdzv_endpoint", endpoint, "--rdzv_id", "test"),
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for node in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    nodes = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    for part in ("model", "ema"):
        for key, value in two[part].items():
            assert torch.equal(nodes[part][key], value), f"{part}.{key}"
    assert _metrics(out) == _metrics(tmp / "two")[:1]  # its step-2 evaluation (the other test may resume "two")


@pytest.mark.parametrize("update", ["feedback", "mpl"])
def test_kdaif_with_a_trained_teacher_matches_one_process_and_agrees_across_ranks(tmp_path: Path, update: str) -> None:
    """KD-AIF's influence state (solves, scale, per-example running scores) comes from the global
    batch, the teacher learns from averaged gradients (feedback: with the global batch's baseline;
    mpl: with MPL's feedback from the global gradients): 2 processes end where 1 does, and every
    rank holds the same teacher and solve (spread across ranks exactly 0)."""
    one = _train(tmp_path, "one", 1, "kdaif_ranks", 4, *KDAIF, "--set", f"algo.teacher_update={update}")
    two = _train(tmp_path, "two", 2, "kdaif_ranks", 4, *KDAIF, "--set", f"algo.teacher_update={update}")
    _assert_close_state(two, one)
    algo_one, algo_two = one["algorithm"], two["algorithm"]  # teacher, its optimiser
    assert algo_two["feedback_baseline"].item() == pytest.approx(algo_one["feedback_baseline"].item(), abs=1e-6)
    momentum = [{i: s["momentum_buffer"] for i, s in run["teacher_opt"]["optimizer"]["state"].items()}
                for run in (algo_two, algo_one)]
    _assert_close(*momentum, "teacher momentum")
    _assert_close(algo_two["teacher"], algo_one["teacher"], "teacher")
    weighter = ("solution", "previous", "reference", "acc_sum", "acc_count")
    _assert_close({k: two["weights"]["weighter"][k] for k in weighter}, one["weights"]["weighter"], "weighter")
    row = _metrics(tmp_path / "two")[-1]
    assert row["rank_spread/teacher"] == row["rank_spread/solution"] == row["rank_spread/acc_sum"] == 0.0
    _assert_same_metrics(row, _metrics(tmp_path / "one")[-1])


def test_a_failure_on_one_rank_stops_every_rank_with_its_message(tmp_path: Path) -> None:
    """Rank 1 raises in its third step; rank 0, waiting for it in a collective, stops too (gloo sees
    the peer gone, or the collective timeout fires) and torchrun exits non-zero with the message."""
    args = quick_args(tmp_path / "run", "fixmatch", 6, "--net", "faulty_net", "--set", "train.dist_timeout_s=30")
    start = time.monotonic()
    proc = subprocess.run(_command(tmp_path, args, 2), cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode != 0
    assert "RuntimeError: injected failure on rank 1" in proc.stderr
    assert time.monotonic() - start < 120  # bounded: not hanging until a default 30-minute timeout


def test_one_process_helpers_are_no_ops() -> None:
    info = distributed.DistInfo()
    x = torch.arange(6.0)
    assert distributed.DistInfo().shard(x) is x
    distributed.all_reduce_mean_([x], info)
    assert torch.equal(x, torch.arange(6.0))
    assert distributed.mean_scalars({"a": torch.tensor(2.5), "b": 1}, info, torch.device("cpu")) == {"a": 2.5, "b": 1.0}
    calls: list[slice] = []
    assert distributed.sharded(lambda part: calls.append(part) or x[part], 6) is not None and calls == [slice(0, 6)]
    assert distributed.local_part(x) is x and distributed.all_true(False) is False
    assert distributed.global_mean(x).item() == 2.5


def test_ranks_take_disjoint_contiguous_shards_of_the_global_batch() -> None:
    x = torch.arange(8)
    shards = [distributed.DistInfo(rank, 2).shard(x) for rank in range(2)]
    assert torch.equal(torch.cat(shards), x)
    with pytest.raises(ConfigError, match="multiple of 2"):
        distributed.check_batch(distributed.DistInfo(0, 2), 7)
    assert distributed.part_sizes(5, 2) == [3, 2] and distributed.part_sizes(8, 2) == [4, 4]
    assert distributed.part_sizes(5, 4) == [2, 1, 1, 1]  # never an empty part when there are enough items


def _rank_batches(tmp: Path, monkeypatch: pytest.MonkeyPatch, algo: str, *extra: str) -> tuple[Batch, list[Batch]]:
    """The first batch of a one-process digits run and of each rank of a two-process run of it
    (DDP's wrapper and process group left out: making a batch needs no collective)."""
    monkeypatch.setattr(distributed, "wrap", lambda model, info, device: model)
    cfg, run_dir, _ = prepare(parser().parse_args(quick_args(tmp / algo, algo, 2, *extra)))
    data = build_data(cfg)
    one = Trainer(cfg, data, torch.device("cpu"), run_dir).next_batch()
    ranks = []
    for rank in range(2):
        trainer = Trainer(cfg, data, torch.device("cpu"), run_dir, distributed.DistInfo(rank, 2))
        gathered: list[int] = []
        trainer.labelled.inputs = trainer.unlabelled.inputs = _Rows(trainer.data.train_x, gathered)
        ranks.append(trainer.next_batch())
        assert sum(gathered) == (8 + 8 * 2) // 2, "a rank gathers (and augments) its own half of the global batch only"
    return one, ranks


class _Rows:
    """The training images, counting the rows a step gathers."""

    def __init__(self, x: torch.Tensor, counts: list[int]) -> None:
        self.x, self.counts, self.device = x, counts, x.device

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        self.counts.append(idx.shape[0])
        return self.x[idx]


@pytest.mark.parametrize("algo", ["fixmatch", "meanteacher"])
def test_each_rank_augments_its_own_examples_into_one_process_views(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algo: str) -> None:
    """Rank r gathers and augments only its half of the global batch, and its views (weak, strong,
    Mean Teacher's weak + weak_2) are exactly the one-process views of those examples."""
    one, ranks = _rank_batches(tmp_path, monkeypatch, algo)
    assert torch.equal(torch.cat([b.idx_l for b in ranks]), one.idx_l) and torch.equal(torch.cat([b.idx_u for b in ranks]), one.idx_u)
    for name, view in one.x_u.items():
        assert torch.equal(torch.cat([b.x_u[name] for b in ranks]), view), name
    for name, view in one.x_l.items():
        assert torch.equal(torch.cat([b.x_l[name] for b in ranks]), view), name
    if algo == "meanteacher":
        assert not torch.equal(one.x_u["weak"], one.x_u["weak_2"])  # two draws of one view kind stay independent


def _helpers_worker(rank: int, port: int, out: str) -> None:
    """One of two gloo processes exercising the collective helpers; results saved to out/<rank>.pt."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info, _ = distributed.init_from_env(torch.device("cpu"), timeout_s=3)
    res: dict = {"info": (info.rank, info.world_size)}
    x = torch.arange(15.0).view(5, 3)
    calls: list[slice] = []
    res["gathered"] = distributed.sharded(lambda part: calls.append(part) or (x[part] * 2, x[part, 0].long()), 5)
    res["calls"] = [(c.start, c.stop) for c in calls]
    res["tiny"] = distributed.sharded(lambda part: x[part], 1)  # fewer items than ranks: everything on each
    res["all_true"] = (distributed.all_true(rank == 0), distributed.all_true(True))
    res["mean"] = distributed.global_mean(torch.full((2,), float(rank))).item()
    p, q = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.full((2,), 2.0 * rank)
    distributed.average_grads_([p, q])
    res["grads"] = (p.grad.tolist(), q.grad)
    res["local"] = distributed.local_part(torch.arange(4)).tolist()
    res["scalars"] = distributed.mean_scalars({"loss": torch.tensor(float(rank)), "acc": 50.0 * (rank + 1)}, info, torch.device("cpu"))
    guard = FiniteGuard(1)
    guard.record(1, torch.tensor(float("nan") if rank == 1 else 1.0))
    try:
        guard.check(1, {})
    except DivergenceError as err:
        res["guard"] = str(err)
    if rank == 0:  # rank 1 never joins this collective: the timeout ends the wait
        start = time.monotonic()
        try:
            dist.all_reduce(torch.ones(1))
        except RuntimeError as err:
            res["timeout"] = (time.monotonic() - start, type(err).__name__)
    else:
        time.sleep(6)
    torch.save(res, f"{out}/{rank}.pt")
    # No interpreter teardown: gloo's C++ destructors may abort ("terminate called without an active
    # exception") on a process group that still holds the timed-out collective (seen once in 3 suite runs).
    os._exit(0)


def test_collective_helpers_on_two_gloo_processes(tmp_path: Path) -> None:
    """Uneven sharding and gathering, global flags and means, gradient averaging, the guard's global
    decision and the collective timeout, with the shipped init_from_env."""
    mp.spawn(_helpers_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    res = [torch.load(tmp_path / f"{rank}.pt", weights_only=False) for rank in range(2)]
    x = torch.arange(15.0).view(5, 3)
    assert res[0]["calls"] == [(0, 3)] and res[1]["calls"] == [(3, 5)]  # disjoint parts, uneven sizes
    for r in res:
        assert torch.equal(r["gathered"][0], x * 2) and torch.equal(r["gathered"][1], x[:, 0].long())
        assert torch.equal(r["tiny"], x[:1])
        assert r["all_true"] == (False, True) and r["mean"] == 0.5
        assert r["grads"] == ([1.0, 1.0], None)  # averaged; a parameter without a gradient keeps none
    assert res[0]["local"] == [0, 1] and res[1]["local"] == [2, 3]
    assert res[0]["scalars"] == res[1]["scalars"] == {"acc": 75.0, "loss": 0.5}  # every rank's mean, one collective
    assert "in another process" in res[0]["guard"]  # rank 0's loss was finite, yet it stops at the same step
    assert "the loss first became non-finite at step 1" in res[1]["guard"]
    waited, kind = res[0]["timeout"]
    assert kind in ("RuntimeError", "DistBackendError") and waited < 6


def _group_worker(rank: int, port: int, out: str) -> None:
    """process_group on two gloo processes: the group it creates is gone after the block (a
    collective inside works); one that existed before is left to its owner."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    res: dict = {}
    with distributed.process_group(torch.device("cpu"), timeout_s=30) as (info, _):
        x = torch.full((1,), float(rank))
        dist.all_reduce(x)
        res["inside"] = (info.rank, info.world_size, x.item(), dist.is_initialized())
    res["after"] = dist.is_initialized()
    # the caller's own group, through a file (the first group's port may still be held)
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=2, timeout=timedelta(seconds=30))
    with distributed.process_group(torch.device("cpu"), timeout_s=30) as (info, _):
        pass
    res["theirs_kept"] = dist.is_initialized()
    dist.destroy_process_group()
    torch.save(res, f"{out}/{rank}.pt")


def test_process_group_destroys_what_it_created_and_only_that(tmp_path: Path) -> None:
    """tools/train.py destroys its process group before interpreter teardown, where gloo's threads
    could abort a run that had succeeded (SIGABRT, seen in CI); a caller's own group survives."""
    mp.spawn(_group_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        res = torch.load(tmp_path / f"{rank}.pt", weights_only=False)
        assert res == {"inside": (rank, 2, 1.0, True), "after": False, "theirs_kept": True}


def _worker_pid(launcher: int, rank: int) -> int:
    """The pid of torchrun's worker process of `rank` (a child of the launcher with RANK in its environment)."""
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        if f"RANK={rank}".encode() in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
            return int(child)
    raise AssertionError(f"no rank {rank} worker under {launcher}")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the worker through /proc (Linux)")
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path: Path) -> None:
    """SIGTERM reaches rank 1 alone (a scheduler may signal processes one by one): both ranks agree to
    stop at the next log step, rank 0 saves it there, and the run resumes from it."""
    out = tmp_path / "run"
    args = quick_args(out, "fixmatch", 400, "--net", "nobn_net", "--set", "train.save_every=4", "--set", "train.log_every=4",
                      "--set", "train.dist_timeout_s=30")
    proc = subprocess.Popen(_command(tmp_path, args, 2), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    last = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)  # until the loop runs
    os.kill(_worker_pid(proc.pid, 1), 15)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    step = torch.load(last, map_location="cpu", weights_only=False)["step"]
    assert summary["interrupted"] is True and step == summary["steps"] and step % 4 == 0 and step < 400
    assert f"interrupted at step {step}" in err


def test_predict_reads_its_rows_one_batch_at_a_time() -> None:
    """What sharded evaluation (a slice) and KD-AIF's features (an index tensor) read: the rows of
    x[rows] in order, at most a batch at a time, also from a host-placed HostTensor."""
    sizes: list[int] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            sizes.append(x.shape[0])
            return x.flatten(1)[:, :2], x.flatten(1)

    policy = AugPolicy(mean=(0.5,), std=(0.25,))
    x = torch.randint(0, 256, (7, 1, 2, 2), dtype=torch.uint8)
    whole = predict(Probe(), x, policy, 100)[1]
    sizes.clear()
    assert torch.equal(predict(Probe(), x, policy, 3, rows=slice(2, 7))[1], whole[2:7]) and sizes == [3, 2]
    sizes.clear()
    idx = torch.tensor([6, 0, 3, 4])
    assert torch.equal(predict(Probe(), HostTensor(x, torch.device("cpu")), policy, 3, rows=idx)[1], whole[idx])
    assert sizes == [3, 1]


def test_ranks_draw_their_own_dropout_masks_and_keep_the_shared_stream() -> None:
    """Inside the step each rank draws from its own stream (dropout masks differ across ranks),
    reproducibly (resume), while the shared stream that makes the views goes on untouched."""
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    before = torch.get_rng_state()
    draws = []
    for rank in range(2):
        with distributed.rank_rng(distributed.DistInfo(rank, 2), 0, 5, cpu):
            draws.append(torch.rand(4))
    assert not torch.equal(draws[0], draws[1])
    assert torch.equal(torch.get_rng_state(), before)
    with distributed.rank_rng(distributed.DistInfo(1, 2), 0, 5, cpu):
        assert torch.equal(torch.rand(4), draws[1])
    with distributed.rank_rng(distributed.DistInfo(), 0, 5, cpu):
        one = torch.rand(4)
    torch.set_rng_state(before)
    assert torch.equal(one, torch.rand(4))  # one process: the shared stream itself, as before
