"""Issue 30.3: crashes and signals at the edges of a run: between the two checkpoint writes, during
the final save, a second SIGTERM, and a run continued in a new folder keeps its whole history."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from ssl_kd.trainer import trainer as trainer_module
from ssl_kd.trainer.trainer import Trainer
from tests.conftest import quick_args


class Killed(BaseException):
    """Stands for a kill -9: nothing after it runs (no handler catches a BaseException of this kind)."""


def best_row_step(run: Path, key: str) -> int:
    """The step of the evaluation best.pt must hold: the first best on `key` in metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return max(rows, key=lambda r: r[key])["step"]


def test_a_kill_between_last_pt_and_best_pt_is_repaired_on_resume(tmp_path, run_cli, monkeypatch):
    out = tmp_path / "run"
    real_copy = trainer_module.copy_checkpoint

    def killed_before_the_copy(source: Path, path: Path) -> None:
        raise Killed

    monkeypatch.setattr(trainer_module, "copy_checkpoint", killed_before_the_copy)
    with pytest.raises(Killed):  # at the final (and best) evaluation: last.pt written, best.pt not yet
        run_cli(quick_args(out, "supervised", 2))
    monkeypatch.setattr(trainer_module, "copy_checkpoint", real_copy)
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["step"] == 2
    assert not (out / "checkpoints" / "best.pt").exists()
    assert run_cli(["--resume", str(out), "--no-progress"])[0] == 0
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=False)
    assert best["step"] == best_row_step(out, "ema_top1") == 2
    assert (out / "checkpoints" / "best.pt").read_bytes() == (out / "checkpoints" / "last.pt").read_bytes()


def test_a_signal_during_the_final_save_leaves_a_complete_run(tmp_path, run_cli, monkeypatch):
    real_save = Trainer.save

    def signalled_while_saving(self, best: bool = False) -> None:
        if self.step == self.cfg.train.steps:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the loop's flag, between bytecodes of this save
        real_save(self, best)

    monkeypatch.setattr(Trainer, "save", signalled_while_saving)
    code, summary = run_cli(quick_args(tmp_path / "run", "supervised", 2))
    assert code == 0 and summary["interrupted"] is False and summary["steps"] == 2


def test_a_second_sigterm_says_so_in_one_line(tmp_path, run_cli, monkeypatch, capsys):
    real_step = Trainer.train_one_step

    def two_sigterms(self):
        result = real_step(self)
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(Trainer, "train_one_step", two_sigterms)
    with pytest.raises(SystemExit) as stopped:
        run_cli(quick_args(tmp_path / "run", "supervised", 10, "--eval-every", "10"))
    assert stopped.value.code == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("interrupted again (SIGTERM) at step") and "nothing to resume" in err[-1]


def test_a_run_continued_in_a_new_folder_reports_the_whole_runs_figures(tmp_path, run_cli, monkeypatch):
    run = lambda out: quick_args(out, "supervised", 8, "--eval-every", "2", "--set", "train.lr=0.3")  # noqa: E731
    code, whole = run_cli(run(tmp_path / "whole"))
    assert code == 0 and whole["evaluations"] == 4
    real_step = Trainer.train_one_step

    def ctrl_c_at_step_4(self):
        result = real_step(self)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(Trainer, "train_one_step", ctrl_c_at_step_4)
    with pytest.raises(SystemExit):
        run_cli(run(tmp_path / "stopped"))  # evaluated at 2 and 4, then stopped with last.pt at step 4
    monkeypatch.setattr(Trainer, "train_one_step", real_step)
    code, fork = run_cli(["--resume", str(tmp_path / "stopped"), "--out", str(tmp_path / "fork"), "--no-progress"])
    assert code == 0 and "partial_history_from_step" not in fork
    for key in ("evaluations", "median_top1", "last_top1", "best_test_top1_oracle"):
        assert fork[key] == whole[key], key
    best = torch.load(tmp_path / "fork" / "checkpoints" / "best.pt", weights_only=False)
    assert best["step"] == best_row_step(tmp_path / "fork", "ema_top1")
    loose = tmp_path / "elsewhere" / "step4.pt"  # a copy out of its run folder: no history to carry
    loose.parent.mkdir()
    loose.write_bytes((tmp_path / "stopped" / "checkpoints" / "last.pt").read_bytes())
    code, partial = run_cli(["--resume", str(loose), "--out", str(tmp_path / "fork2"), "--no-progress"])
    assert code == 0 and partial["partial_history_from_step"] == 4 and partial["evaluations"] == 2
