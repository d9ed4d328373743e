"""The end of a run as a person reads it: its figures by name, where its files are, and the
commands that use it next (summary.json holds the same figures for programs)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ssl_kd.config import Config
from ssl_kd.text.hub import is_hf_name
from ssl_kd.trainer.logger import is_figure


def figure_note(key: str, summary: dict[str, Any], median_last: int) -> str:
    """What a summary figure is, in words."""
    m = summary.get("task_metric", "top1")
    notes = {
        f"last_{m}": "the last evaluation",
        f"median_{m}": f"median of the last {plural(min(median_last, summary.get('evaluations') or 0), 'evaluation')}",
        f"best_test_{m}_oracle": "best evaluation chosen on the test split itself: an oracle, not a result",
        f"best_val_{m}": "best evaluation on the validation split",
        f"test_{m}_at_best_val": "test at that evaluation (best.pt)",
    }
    return notes.get(key, "")


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def summary_text(summary: dict[str, Any], run_dir: Path, cfg: Config) -> str:
    t = cfg.train
    model = "the EMA model" if str(summary.get("metric", "")).startswith("ema_") else "the model"
    speed = f", {summary['steps_per_s']:.1f} steps/s in training" if summary.get("steps_per_s") else ""
    lines = [f"finished {t.algo} on {t.dataset}: {summary.get('steps')} steps in {summary.get('wall_s', 0):.1f} s{speed}; "
             f"test {summary.get('task_metric', 'top1')} of {model} at {plural(summary.get('evaluations') or 0, 'evaluation')}:"]
    figures = {k: v for k, v in summary.items() if is_figure(k) and isinstance(v, (int, float))}
    width = max(map(len, figures), default=0)
    lines += [f"  {k:<{width}}  {v:7.2f}  {figure_note(k, summary, t.median_last)}".rstrip() for k, v in figures.items()]
    example = "sentences.txt" if is_hf_name(t.net) else "photos/"
    lines += [
        f"run folder   {run_dir}  (summary.json, metrics.jsonl, config.yaml)",
        f"checkpoints  {run_dir / 'checkpoints' / 'last.pt'}, best.pt (selected on {summary.get('selected_on')})",
        f"TensorBoard  tensorboard --logdir {run_dir / 'tb'}",
        f"next         python tools/eval.py {run_dir}",
        f"             python tools/export.py {run_dir} --out exports/{run_dir.name}",
        f"             python tools/predict.py {run_dir} --input {example}",
        f"             python tools/predict.py {run_dir} --unlabelled --out {run_dir.name}-pseudo-labels.csv",
        f"             python tools/explain.py {run_dir}",
    ]
    return "\n".join(lines)
