"""Trainer behaviour: every algorithm trains, FixMatch's gradients, exact resume, run folder, TensorBoard."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from ssl_kd.registry import ALGORITHMS, discover_all
from tests.conftest import REPO, make_trainer, quick_args, step_losses

discover_all()


# Every registered algorithm trains on digits_30: the teacher-student ones (kd, kdaif, mpl) run in
# SSL mode there, with a teacher trained alongside. Only the KD-mode-only ones (dkd, dkdaif: their
# class says `needs_teacher_ckpt = True`) need a checkpoint; test_dkd.py trains them.
ALL_ALGORITHMS = [n for n in ALGORITHMS.names() if not getattr(ALGORITHMS.get(n), "needs_teacher_ckpt", False)]


def test_only_kd_mode_only_algorithms_are_left_to_their_own_tests():
    assert {n for n in ALGORITHMS.names() if n not in ALL_ALGORITHMS} == {"dkd", "dkdaif"}


def test_the_two_step_check_covers_the_teacher_student_algorithms():
    assert {"kd", "kdaif", "mpl", "fixmatch", "supervised"} <= set(ALL_ALGORITHMS)


@pytest.mark.parametrize("algo", ALL_ALGORITHMS)
def test_every_algorithm_trains_two_steps(tmp_path, algo):
    trainer = make_trainer(tmp_path, algo, 2)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    for _ in range(2):
        logs, out = trainer.train_one_step()
        trainer.step += 1
        assert torch.isfinite(out.loss)
    changed = any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert changed


def test_fixmatch_unsup_loss_has_gradient_and_ema_none(tmp_path):
    trainer = make_trainer(tmp_path, "fixmatch", 2, "--set", "algo.threshold=0.0")
    batch = trainer.next_batch()
    out = trainer.algorithm.train_step(batch)
    unsup = out.logs["loss/unsup"]
    assert unsup > 0
    # Recompute the unsupervised term alone with gradients.
    algo = trainer.algorithm
    lw, _ = trainer.model(batch.x_u["weak"])
    ls, _ = trainer.model(batch.x_u["strong"])
    loss, _, mask = algo.unsup_loss(lw, ls, batch.idx_u)
    assert mask.sum() > 0
    loss.backward()
    grad_norm = sum(p.grad.abs().sum() for p in trainer.model.parameters() if p.grad is not None)
    assert grad_norm > 0
    assert all(p.grad is None for p in trainer.ema_model.parameters())
    assert all(not p.requires_grad for p in trainer.ema_model.parameters())


def test_fixmatch_mask_threshold_one_gives_zero_unsup(tmp_path):  # 1.0: the largest valid threshold
    trainer = make_trainer(tmp_path, "fixmatch", 2, "--set", "algo.threshold=1.0")
    out = trainer.algorithm.train_step(trainer.next_batch())
    assert out.logs["loss/unsup"] == 0 and out.mask.sum() == 0


@pytest.mark.parametrize("algo", ["fixmatch", "supervised"])
def test_resume_reproduces_losses_exactly(tmp_path, algo):
    first = make_trainer(tmp_path, algo, 6)
    step_losses(first, 3)
    first.save()
    expected = step_losses(first, 3)
    resumed = make_trainer(tmp_path, algo, 6)
    torch.manual_seed(1234)  # the checkpoint's RNG state must win over whatever state we start in
    resumed.load(first.run_dir / "checkpoints" / "last.pt")
    assert resumed.step == 3
    assert step_losses(resumed, 3) == expected


def test_cli_run_writes_run_folder_and_tensorboard(tmp_path, run_cli):
    out = tmp_path / "run"
    code, summary = run_cli(quick_args(out, "fixmatch", 20, "--eval-every", "10", "--set", "train.log_every=5"))
    assert code == 0
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (out / name).exists(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20]
    assert {"step", "top1", "ema_top1", "loss", "top5", "balanced_acc", "macro_f1", "per_class"} <= set(rows[0])
    assert summary["steps"] == 20 and summary["last_top1"] == rows[-1]["ema_top1"]
    train = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert (train["optimizer"], train["lr_schedule"]) == ("sgd", "cosine")  # what ran: `auto` resolved
    for key in ("best_test_top1_oracle", "median_top1", "wall_s", "train_s", "steps_per_s"):
        assert summary[key] is not None
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("loss/total", "loss/sup", "loss/unsup", "train/lr", "train/mask_ratio", "train/pseudo_label_acc",
                "time/step_s", "eval/top1", "eval/ema_top1"):
        assert tag in tags, tag
    assert [e.step for e in acc.Scalars("loss/total")] == [5, 10, 15, 20]


def test_cli_resume_continues_to_more_steps(tmp_path, run_cli):
    out = tmp_path / "run"
    assert run_cli(quick_args(out, "supervised", 4, "--eval-every", "2"))[0] == 0
    code, summary = run_cli(["--resume", str(out), "--steps", "6", "--extend", "--no-progress"])
    assert code == 0 and summary["steps"] == 6
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]


def test_eval_cli_prints_json(tmp_path, run_cli, capsys):
    import subprocess
    import sys

    out = tmp_path / "run"
    assert run_cli(quick_args(out, "supervised", 2))[0] == 0
    proc = subprocess.run([sys.executable, "tools/eval.py", "--ckpt", str(out / "checkpoints" / "last.pt"), "--device", "cpu"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["step"] == 2 and 0 <= result["ema"]["top1"] <= 100 and "per_class" in result["model"]


def scalar_series(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]
