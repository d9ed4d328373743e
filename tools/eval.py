"""Print the test metrics of a checkpoint as one JSON object:
`python tools/eval.py runs/<run>` (its checkpoints/last.pt) or `python tools/eval.py runs/<run>/checkpoints/best.pt`.

Evaluates the raw model, its EMA and, for teacher-student runs (kd, kdaif, mpl), the teacher;
per-class accuracy is keyed by class name; a text task's official metric is computed against its float
gold scores where it has them (STS-B), and a regression run reports MSE and Pearson/Spearman. Plug-ins the run recorded are loaded automatically.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ssl_kd.errors import SSLKDError
from ssl_kd.run import LoadedRun, load_run
from ssl_kd.toolargs import add_run_argument, run_argument
from ssl_kd.trainer.evaluate import evaluate_data
from ssl_kd.trainer.logger import rounded


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_argument(p)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto")
    p.add_argument("--data-dir", default="", help="data folder if it moved since training")
    p.add_argument("--plugin", action="append", default=[],
                   help="plug-in file or module to load instead of those the run recorded (e.g. one that moved)")
    return p.parse_args(argv)


def named(metrics: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """Per-class accuracy as {class name: accuracy} when the dataset names its classes."""
    if class_names and len(class_names) == len(metrics.get("per_class", ())):  # a regression head has none
        metrics = {**metrics, "per_class": dict(zip(class_names, metrics["per_class"]))}
    return metrics


def teacher_model(run: LoadedRun) -> Any:
    """The teacher of a teacher-student run (the algorithm's eval model), restored from the checkpoint."""
    if "teacher" not in (run.state.get("algorithm") or {}):
        return None
    from ssl_kd.trainer.trainer import Trainer

    try:  # the algorithm rebuilds its teacher as in training (a teacher checkpoint may be needed)
        trainer = Trainer(run.cfg, run.data, next(run.model.parameters()).device, run.run_dir or run.ckpt.parent)
    except SSLKDError as err:
        print(f"warning: the teacher is not evaluated: {err}", file=sys.stderr)
        return None
    trainer.algorithm.load_state_dict(run.state["algorithm"])
    return trainer.algorithm.eval_model()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        path = run_argument(args)
        run = load_run(path, args.device, args.data_dir, args.plugin)
        d = run.data
        models = {"model": run.model, "ema": run.ema_model, "teacher": teacher_model(run)}
        result: dict[str, Any] = {"ckpt": path, "step": run.step, "algo": run.cfg.train.algo,
                                  "dataset": run.cfg.train.dataset}
        for key, model in models.items():
            if model is not None:
                result[key] = named(evaluate_data(model, d), d.class_names)
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(rounded(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
