"""Run-folder logging: TensorBoard scalars/histograms, metrics.jsonl and summary.json."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter


class RunLogger:
    """Writes `<run>/tb/`, `<run>/metrics.jsonl` and `<run>/summary.json`.

    `eval_key` is the accuracy the summary is about (`ema_top1` when an EMA is kept, as in
    FixMatch's protocol, else `top1`).
    """

    def __init__(self, run_dir: Path, eval_key: str, resume_step: int | None = None) -> None:
        self.run_dir = run_dir
        self.eval_key = eval_key
        self.metrics_path = run_dir / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        if resume_step is not None and self.metrics_path.exists():
            # Drop evaluations written after the checkpoint we resume from; they will be redone.
            rows = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
            self.history = [r for r in rows if r["step"] <= resume_step]
            self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def scalars(self, values: dict[str, float | torch.Tensor], step: int) -> None:
        for key, value in values.items():
            self.tb.add_scalar(key, float(value), step)

    def histogram(self, key: str, values: torch.Tensor, step: int) -> None:
        self.tb.add_histogram(key, values.detach().float().cpu(), step)

    def evaluation(self, row: dict[str, Any]) -> bool:
        """Record one evaluation; returns True when it is the best so far."""
        best_before = max((r[self.eval_key] for r in self.history), default=float("-inf"))
        self.history.append(row)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "step":
                self.tb.add_scalar(f"eval/{key}", value, row["step"])
        self.tb.flush()
        return row[self.eval_key] > best_before

    def summary(self, steps: int, wall_s: float, median_last: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        accs = [r[self.eval_key] for r in self.history]
        summary: dict[str, Any] = {
            "metric": self.eval_key,
            "best_top1": max(accs, default=None),
            "last_top1": accs[-1] if accs else None,
            "median_top1": statistics.median(accs[-median_last:]) if accs else None,
            "evaluations": len(accs),
            "steps": steps,
            "wall_s": round(wall_s, 2),
            "steps_per_s": round(steps / wall_s, 3) if wall_s > 0 else None,
            **(extra or {}),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def close(self) -> None:
        self.tb.close()
