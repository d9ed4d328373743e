"""Shared test helpers: small, fast runs on the embedded digits set, CPU only."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssl_kd import digest
from ssl_kd.algorithm import StepOutput
from ssl_kd.cli import parser, prepare
from ssl_kd.run import build_data
from ssl_kd.trainer.trainer import Trainer

from ssl_kd.cli import main as train_main

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(2)


def quick_args(out: Path, algo: str = "fixmatch", steps: int = 2, *extra: str) -> list[str]:
    """CLI arguments for a tiny CPU run on digits_30."""
    return ["--algo", algo, "--dataset", "digits_30", "--steps", str(steps), "--eval-every", str(max(1, steps)),
            "--batch-size", "8", "--uratio", "2", "--device", "cpu", "--out", str(out), "--no-progress",
            "--set", "train.eval_batch_size=512", *extra]


def rewrite_checkpoint(state: dict, path: Path) -> None:
    """Save an edited checkpoint state with its digest, as a checkpoint written so would be: for tests
    of what a checkpoint holds (a flipped byte without a new digest is refused as corrupt)."""
    torch.save(state, path)
    digest.write_digest(path)


def make_trainer(out: Path, algo: str, steps: int = 6, *extra: str) -> Trainer:
    """A CPU trainer for a tiny digits_30 run whose run folder is `out`."""
    cfg, run_dir, _ = prepare(parser().parse_args(quick_args(out, algo, steps, *extra)))
    return Trainer(cfg, build_data(cfg), torch.device("cpu"), run_dir)


def run_steps(trainer: Trainer, n: int) -> list[StepOutput]:
    """Train `n` steps as the trainer's loop does, returning each step's output."""
    outs = []
    for _ in range(n):
        _, out = trainer.train_one_step()
        trainer.step += 1
        outs.append(out)
    return outs


def step_losses(trainer: Trainer, n: int) -> list[float]:
    return [out.loss.item() for out in run_steps(trainer, n)]


@pytest.fixture
def run_cli():
    """Run tools/train.py in-process; returns (exit code, summary dict or None)."""

    def run(argv: list[str]) -> tuple[int, dict | None]:
        code = train_main(argv)
        flag = "--out" if "--out" in argv else "--resume"
        out = Path(argv[argv.index(flag) + 1]) if flag in argv else None
        summary = out / "summary.json" if out else None
        return code, (json.loads(summary.read_text()) if summary and summary.exists() else None)

    return run
