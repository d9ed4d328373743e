"""Predict with a trained run or an export: `python tools/predict.py RUN --input sentences.txt` (or `-`:
stdin; one sentence per line, a tab between the two of a pair), or `--input photos/` for an
image run (every .jpg/.png under the folder). RUN is a run folder, a checkpoint file, or a folder
written by tools/export.py (its files' SHA-256 digests are checked first). Prints one row per input
with the predicted class name and every class's probability (a regression run such as STS-B: the
predicted score), as CSV (default) or JSON Lines, batched, with a progress bar.

`--unlabelled` labels the run's unlabelled pool instead: one row per example with its index (and
text), the predicted class and its probability, plus its influence score and weight for a run
trained with weights.kind=influence. `--min-confidence P` keeps rows whose class has probability
>= P; `--out FILE.csv|.jsonl` writes the rows to a file (its suffix picks the format).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from ssl_kd.errors import ConfigError, SSLKDError
from ssl_kd.exported import Predictions, is_export_folder, predict_export
from ssl_kd.toolargs import add_run_argument, run_argument

FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_argument(p, "run folder (its checkpoints/last.pt), a checkpoint file, or a folder written by tools/export.py")
    p.add_argument("--input", default="-", help="text: a file of sentences, or - for stdin (default); images: a folder of images")
    p.add_argument("--unlabelled", action="store_true", help="label the run's unlabelled pool instead of --input")
    p.add_argument("--min-confidence", type=float, default=0.0, help="keep rows whose predicted class has at least this probability")
    p.add_argument("--out", type=Path, default=None, help="write the rows to FILE.csv or FILE.jsonl instead of stdout")
    p.add_argument("--format", choices=("csv", "json"), default="csv", help="stdout: csv (default) or json (one object a line)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass (default: 64)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto")
    p.add_argument("--data-dir", default="", help="data folder if it moved since training")
    return p.parse_args(argv)


def read_lines(source: str) -> list[str]:
    return sys.stdin.readlines() if source == "-" else Path(source).read_text(encoding="utf-8").splitlines()


def run_predictions(args: argparse.Namespace, path: str) -> Predictions:
    """Predictions of a run's reported model on --input."""
    from ssl_kd.export import chosen_model, image_inputs, predict_outputs, text_inputs
    from ssl_kd.run import load_run

    run = load_run(path, args.device, args.data_dir)
    if run.data.modality == "text":
        names, x = text_inputs(run, read_lines(args.input))
    else:
        names, x = image_inputs(Path(args.input), int(run.data.train_x.shape[-1]), int(run.data.train_x.shape[1]))
    device = next(run.model.parameters()).device
    outputs = predict_outputs(chosen_model(run), x.to(device), run.data.policy, max(1, args.batch_size)).cpu()
    classes = [] if run.data.is_regression else run.data.class_names or [str(i) for i in range(outputs.shape[1])]
    return Predictions(names, outputs, classes, run.data.is_regression)


def prediction_rows(pred: Predictions, min_confidence: float) -> list[dict[str, Any]]:
    """One row per input: its predicted score (regression), or its class and every class's probability."""
    if pred.regression:
        return [{"input": name, "score": round(score, 6)} for name, score in zip(pred.names, pred.outputs[:, 0].tolist())]
    rows = []
    for name, row in zip(pred.names, pred.outputs.softmax(-1).tolist()):
        best = max(range(len(row)), key=row.__getitem__)
        if row[best] >= min_confidence:
            rows.append({"input": name, "prediction": pred.class_names[best],
                         "probabilities": dict(zip(pred.class_names, (round(v, 6) for v in row)))})
    return rows


def write_rows(rows: list[dict[str, Any]], fmt: str, stream: TextIO, header: list[str]) -> None:
    """CSV (a dict-valued column becomes one column per key) or one JSON object a line."""
    if fmt == "json":
        stream.writelines(json.dumps(row) + "\n" for row in rows)
        return
    writer = csv.writer(stream)
    writer.writerow(header)
    for row in rows:
        writer.writerow([v for value in row.values() for v in (value.values() if isinstance(value, dict) else [value])])


def csv_header(pred: Predictions) -> list[str]:
    """The input, then its score (regression) or its class and every class's probability."""
    return ["input", "score"] if pred.regression else ["input", "prediction", *pred.class_names]


def check_args(args: argparse.Namespace) -> str:
    """The output format; bad values end in one line."""
    if not 0.0 <= args.min_confidence <= 1.0:
        raise ConfigError(f"--min-confidence {args.min_confidence}: give a probability in [0, 1], e.g. 0.9")
    if args.out is None:
        return args.format
    if args.out.suffix.lower() not in FORMATS:
        raise ConfigError(f"--out {args.out}: name a .csv or .jsonl file (its suffix picks the format)")
    return FORMATS[args.out.suffix.lower()]


def collect(args: argparse.Namespace, path: str) -> tuple[list[str], list[dict[str, Any]]]:
    """(the CSV header, the rows to write)."""
    if is_export_folder(Path(path)):
        if args.unlabelled:
            raise ConfigError(f"--unlabelled labels a run's unlabelled pool; {path} is an export: give the run folder")
        from ssl_kd.run import pick_device

        pred = predict_export(Path(path), lambda: read_lines(args.input), Path(args.input), max(1, args.batch_size),
                              pick_device(args.device))
    elif args.unlabelled:
        from ssl_kd.pseudolabel import label_pool
        from ssl_kd.run import load_run

        return label_pool(load_run(path, args.device, args.data_dir), max(1, args.batch_size), args.min_confidence)
    else:
        pred = run_predictions(args, path)
    if pred.regression and args.min_confidence > 0:
        raise ConfigError("--min-confidence filters class probabilities; a regression model predicts scores")
    return csv_header(pred), prediction_rows(pred, args.min_confidence)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        fmt = check_args(args)
        header, rows = collect(args, run_argument(args))
        if args.out is None:
            write_rows(rows, fmt, sys.stdout, header)
        else:
            with open(args.out, "w", newline="", encoding="utf-8") as f:
                write_rows(rows, fmt, f, header)
            print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an unreadable --input, an unwritable --out
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
