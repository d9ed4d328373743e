"""The model card (`README.md`) of an export: what the model does, its labels, how well it did on
the validation and test splits, how it was trained and on how much data, and how to load it."""
from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from ssl_kd.errors import SSLKDError
from ssl_kd.text.metrics import run_metric
from ssl_kd.trainer.logger import read_metrics

USAGE = {
    "text": "```python\nfrom transformers import pipeline\nclassify = pipeline(\"text-classification\", model=\"{dir}\")\n"
            "print(classify(\"a gripping , lovely film\"))\n```",
    "image": "```python\nimport torch\nmodel = torch.export.load(\"{dir}/model.pt2\").module()\n"
             "logits = model(images)  # uint8 (N, C, H, W) as in preprocess.json\n```",
}


def ssl_kd_version() -> str:
    try:
        return metadata.version("ssl_kd")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def recorded_metrics(run: Any) -> dict[str, float]:
    """The exported model's figures at the exported step, as the run recorded them in metrics.jsonl
    ({"test <metric>": value, "validation <metric>": value}); empty where the run folder is unknown."""
    path = run.run_dir / "metrics.jsonl" if run.run_dir is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        rows = [r for r in read_metrics(path) if r.get("step") == run.step]
    except SSLKDError:
        return {}
    if not rows:
        return {}
    prefix = "ema_" if run.ema_model is not None else ""
    names = dict.fromkeys(("top1", run_metric(getattr(run.data.policy, "metric", None))))
    found = {}
    for split, key in (("validation", "val_"), ("test", "")):
        for name in names:
            value = rows[-1].get(f"{prefix}{key}{name}")
            if isinstance(value, (int, float)):
                found[f"{split} {name}"] = float(value)
    return found


def selected_on(run: Any) -> str:
    """How the run chose its best checkpoint (summary.json's `selected_on`), if it says."""
    path = run.run_dir / "summary.json" if run.run_dir is not None else None
    try:
        return str(json.loads(path.read_text()).get("selected_on", "")) if path is not None and path.is_file() else ""
    except (OSError, ValueError):
        return ""


def model_card(run: Any, export_dir: Path) -> str:
    d, t = run.data, run.cfg.train
    task = ("regression: one score" if d.is_regression else f"classification into {d.num_classes} classes")
    inputs = "text" if d.modality == "text" else f"images {tuple(d.train_x.shape[1:])} (uint8)"
    labels = ", ".join(f"{i}: {name}" for i, name in enumerate(d.class_names)) or "unnamed (class indices)"
    which = "the exponential moving average (EMA) of the weights" if run.ema_model is not None else "the trained weights"
    metrics = recorded_metrics(run)
    chosen = selected_on(run)
    metric_lines = ([f"| {k.split(' ')[0]} | {k.split(' ')[1]} | {v:.2f} |" for k, v in metrics.items()]
                    if metrics else ["| - | - | not known (no metrics.jsonl row for this step beside the checkpoint) |"])
    if d.val_idx.numel() == 0:
        metric_lines.insert(0, "| validation | - | none: the run had no validation split |")
    config = yaml.safe_dump(run.cfg.to_dict(), sort_keys=False).rstrip()
    return "\n".join([
        f"# {t.net} on {t.dataset}, trained with ssl_kd ({t.algo})",
        "",
        f"- **Task**: {task}, from {inputs}.",
        f"- **Labels**: {'score' if d.is_regression else labels}.",
        f"- **Model**: {which}, from `{run.ckpt.name}` at step {run.step} of {t.steps}"
        f"{f'; the run selected its best checkpoint on the {chosen} split' if chosen else ''}.",
        f"- **Training**: algorithm `{t.algo}`, network `{t.net}`, seed {t.seed}, weights `{run.cfg.weights.kind}`.",
        f"- **Data**: {d.labelled_idx.numel()} labelled, {d.unlabelled_idx.numel()} unlabelled, "
        f"{d.val_idx.numel()} validation and {d.test_x.shape[0]} test examples.",
        f"- **ssl_kd version**: {ssl_kd_version()}.",
        "",
        "## Metrics (in percent, as the run recorded them at this step)",
        "",
        "| split | metric | value |",
        "|---|---|---|",
        *metric_lines,
        "",
        "## Use",
        "",
        USAGE[d.modality].format(dir=export_dir),
        "",
        f"or `python tools/predict.py {export_dir} --input ...` (it checks the files' SHA-256 digests first).",
        "",
        "## Training config",
        "",
        "```yaml",
        config,
        "```",
        "",
    ])
