"""What a run shows while it trains: the progress bar's figures, or (`--no-progress`: log files,
clusters, CI) one plain line per evaluation."""
from __future__ import annotations

import datetime
from typing import Any


def progress_postfix(scalars: dict[str, float], last_eval: dict[str, Any], eval_key: str) -> dict[str, str]:
    """The bar's loss, and the evaluated accuracy under its own name once there is one."""
    postfix = {"loss": f"{scalars['loss/total']:.3f}"} if "loss/total" in scalars else {}
    if eval_key in last_eval:
        postfix[f"test_{eval_key}"] = f"{last_eval[eval_key]:.1f}"
    return postfix


def evaluation_line(row: dict[str, Any], keys: tuple[str, ...], total: int, lr: float, step_s: float, eta_s: float) -> str:
    """One evaluation as a plain line: `step 200/1000  ema_top1 41.20  top1 35.40  lr 0.0287
    0.031 s/step  ETA 0:00:25` (`keys`: the figures to show, in order, where the row has them)."""
    figures = "  ".join(f"{k} {row[k]:.2f}" for k in dict.fromkeys(keys) if isinstance(row.get(k), (int, float)))
    eta = datetime.timedelta(seconds=round(eta_s))
    return f"step {row['step']}/{total}  {figures}  lr {lr:.4g}  {step_s:.3f} s/step  ETA {eta}"
