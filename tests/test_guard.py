"""Divergence never reaches a checkpoint; best.pt follows last.pt; torn metrics lines; signals and summaries."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ssl_kd.trainer.guard import DivergenceError, floating_tensors
from ssl_kd.trainer.logger import RunLogger
from tests.conftest import REPO, make_trainer, quick_args, rewrite_checkpoint


def all_state_finite(path) -> bool:
    state = torch.load(path, weights_only=False)
    parts = (state["model"], state["ema"], state["optimizer"])
    return all(bool(torch.isfinite(t).all()) for part in parts for t in floating_tensors(part))


def test_divergence_stops_before_a_nonfinite_checkpoint(tmp_path, run_cli, capsys):
    """The issue's case: a huge learning rate turns the weights into NaN/inf between evaluations."""
    out = tmp_path / "run"
    code, _ = run_cli(quick_args(out, "supervised", 12, "--eval-every", "3", "--lr", "1e4"))
    assert code == 2
    err = capsys.readouterr().err
    assert "diverged by step 6" in err and "last good checkpoint" in err and str(out / "checkpoints" / "last.pt") in err
    assert "(step 3)" in err and "Traceback" not in err
    for name in ("last.pt", "best.pt"):
        assert all_state_finite(out / "checkpoints" / name), name
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["step"] == 3


def test_check_is_deferred_to_check_steps(tmp_path):
    """A NaN loss does not stop the step (no host sync there); the next check step names it."""
    trainer = make_trainer(tmp_path, "supervised", 20, "--set", "train.check_finite_every=4", "--eval-every", "20")
    real_step = trainer.algorithm.train_step

    def poisoned(batch):
        out = real_step(batch)
        if trainer.step == 1:  # the second step
            out.loss = out.loss * float("nan")
        return out

    trainer.algorithm.train_step = poisoned
    with pytest.raises(DivergenceError, match=r"diverged by step 4: the loss first became non-finite at step 2"):
        trainer.fit(RunLogger(tmp_path, "ema_top1"))
    assert trainer.step == 4
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


def test_save_refuses_nonfinite_weights(tmp_path):
    trainer = make_trainer(tmp_path, "supervised", 4)
    with torch.no_grad():
        next(trainer.ema_model.parameters()).fill_(float("inf"))
    with pytest.raises(DivergenceError, match="in the EMA model"):
        trainer.save()
    assert not (tmp_path / "checkpoints").exists()


def test_eval_and_resume_refuse_a_nonfinite_checkpoint(tmp_path, run_cli, capsys):
    out = tmp_path / "run"
    assert run_cli(quick_args(out, "supervised", 1))[0] == 0
    ckpt = out / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=False)
    next(iter(state["model"].values())).view(-1)[0] = float("nan")
    rewrite_checkpoint(state, ckpt)
    proc = subprocess.run([sys.executable, "tools/eval.py", "--ckpt", str(ckpt), "--device", "cpu"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "non-finite" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    capsys.readouterr()
    assert run_cli(["--resume", str(out), "--no-progress"])[0] == 2
    assert "non-finite values (1 in the model)" in capsys.readouterr().err


def test_best_is_written_after_last_and_equals_it(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, "supervised", 2, "--eval-every", "1")
    order = []
    import ssl_kd.trainer.trainer as trainer_module

    real_save, real_copy = trainer_module.save_checkpoint, trainer_module.copy_checkpoint
    monkeypatch.setattr(trainer_module, "save_checkpoint", lambda s, p: (order.append(p.name), real_save(s, p)))
    monkeypatch.setattr(trainer_module, "copy_checkpoint", lambda s, p: (order.append(p.name), real_copy(s, p)))
    trainer.fit(RunLogger(tmp_path, "ema_top1"))
    assert order[:2] == ["last.pt", "best.pt"]
    assert all(order[i - 1] == "last.pt" for i, name in enumerate(order) if name == "best.pt")
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_torn_last_metrics_line_is_dropped_on_resume(tmp_path, run_cli, capsys):
    out = tmp_path / "run"
    assert run_cli(quick_args(out, "supervised", 4, "--eval-every", "2"))[0] == 0
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 6, "top1": 1')  # a crash mid-write
    code, summary = run_cli(["--resume", str(out), "--steps", "6", "--extend", "--no-progress"])
    assert code == 0 and summary["steps"] == 6
    assert "torn" in capsys.readouterr().err
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [2, 4, 6]


def test_best_chosen_on_validation_split_with_honest_keys(tmp_path, run_cli):
    out = tmp_path / "run"
    code, summary = run_cli(quick_args(out, "supervised", 6, "--eval-every", "2", "--set", "data.val_per_class=2"))
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["ema_val_top1"])  # the first maximum, as the logger picks it
    assert summary["selected_on"] == "val" and "best_top1" not in summary
    assert summary["best_val_top1"] == pytest.approx(best["ema_val_top1"], abs=1e-3)
    assert summary["test_top1_at_best_val"] == pytest.approx(best["ema_top1"], abs=1e-3)
    assert summary["best_test_top1_oracle"] == pytest.approx(max(r["ema_top1"] for r in rows), abs=1e-3)
    assert torch.load(out / "checkpoints" / "best.pt", weights_only=False)["step"] == best["step"]


def test_summary_json_is_rounded_and_times_are_split(tmp_path, run_cli):
    out = tmp_path / "run"
    code, summary = run_cli(quick_args(out, "supervised", 4, "--eval-every", "2"))
    assert code == 0
    text = (out / "summary.json").read_text()
    for key in ("last_top1", "wall_s", "train_s"):
        assert len(str(summary[key]).split(".")[-1]) <= 4, (key, summary[key])
    assert summary["interrupted"] is False and "97.6000001" not in text
    assert summary["wall_s"] > summary["train_s"] > 0  # wall time includes evaluations and checkpoints


def test_sigint_exits_130_with_an_interrupted_summary(tmp_path, run_cli, monkeypatch):
    """In-process (the SIGTERM test below runs a real process): Ctrl-C after the third step."""
    from ssl_kd.trainer.trainer import Trainer

    real_step = Trainer.train_one_step

    def step_then_ctrl_c(self):
        result = real_step(self)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(Trainer, "train_one_step", step_then_ctrl_c)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        run_cli(quick_args(out, "supervised", 10, "--eval-every", "10"))
    assert stopped.value.code == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["steps"] == 3
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["step"] == 3


def test_sigterm_exits_143_with_an_interrupted_summary(tmp_path):
    sig, code = signal.SIGTERM, 143
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "tools/train.py", *quick_args(out, "supervised", 100000, "--eval-every", "100000"),
                             "--set", "train.save_every=1"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (out / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.1)  # until the loop runs
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["steps"] > 0
    assert (out / "checkpoints" / "last.pt").exists() and not (out / ".lock").exists()


def test_divergence_inside_an_algorithm_is_a_clean_error(tmp_path, run_cli, capsys, monkeypatch):
    from ssl_kd.algorithms.supervised import Supervised

    def diverge(self, batch):
        raise FloatingPointError("the teacher's loss became nan; lower algo.teacher_lr or train.lr")

    monkeypatch.setattr(Supervised, "train_step", diverge)
    code, _ = run_cli(quick_args(tmp_path / "run", "supervised", 2))
    err = capsys.readouterr().err
    assert code == 2 and "error: training diverged: the teacher's loss became nan" in err and "Traceback" not in err
