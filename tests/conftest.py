"""Shared test helpers: small, fast runs on the embedded digits set, CPU only."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssl_kd.cli import main as train_main

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(2)


def quick_args(out: Path, algo: str = "fixmatch", steps: int = 2, *extra: str) -> list[str]:
    """CLI arguments for a tiny CPU run on digits_30."""
    return ["--algo", algo, "--dataset", "digits_30", "--steps", str(steps), "--eval-every", str(max(1, steps)),
            "--batch-size", "8", "--uratio", "2", "--device", "cpu", "--out", str(out), "--no-progress",
            "--set", "train.eval_batch_size=512", *extra]


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
