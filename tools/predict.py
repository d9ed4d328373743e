"""Predict with a trained run: `python tools/predict.py runs/<run> --input sentences.txt` (or `-`:
stdin; one sentence per line, a tab between the two of a pair), or `--input photos/` for an
image run (every .jpg/.png under the folder). Prints one row per input with the predicted class
name and every class's probability (a regression run such as STS-B: the predicted score), as CSV
(default) or JSON Lines, batched, with a progress bar.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from ssl_kd.errors import SSLKDError
from ssl_kd.export import chosen_model, image_inputs, predict_outputs, text_inputs
from ssl_kd.run import load_run


def print_scores(names: list[str], scores: list[float], fmt: str) -> None:
    """A regression run's rows: the input and its predicted score."""
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["input", "score"])
        writer.writerows([name, f"{score:.6f}"] for name, score in zip(names, scores))
    else:
        for name, score in zip(names, scores):
            print(json.dumps({"input": name, "score": round(score, 6)}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder (its checkpoints/last.pt) or a checkpoint file")
    p.add_argument("--input", default="-", help="text runs: a file of sentences, or - for stdin (default); "
                                                "image runs: a folder of images")
    p.add_argument("--format", choices=("csv", "json"), default="csv", help="csv (default) or json (one object a line)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass (default: 64)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto")
    p.add_argument("--data-dir", default="", help="data folder if it moved since training")
    args = p.parse_args(argv)
    try:
        run = load_run(args.run, args.device, args.data_dir)
        if run.data.modality == "text":
            lines = sys.stdin.readlines() if args.input == "-" else Path(args.input).read_text(encoding="utf-8").splitlines()
            names, x = text_inputs(run, lines)
        else:
            names, x = image_inputs(run, Path(args.input))
        device = next(run.model.parameters()).device
        outputs = predict_outputs(chosen_model(run), x.to(device), run.data.policy, max(1, args.batch_size)).cpu()
    except (SSLKDError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if run.data.is_regression:
        print_scores(names, outputs[:, 0].tolist(), args.format)
        return 0
    probs = outputs.softmax(-1)
    classes = run.data.class_names or [str(i) for i in range(probs.shape[1])]
    if args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["input", "prediction", *classes])
        for name, row in zip(names, probs.tolist()):
            writer.writerow([name, classes[max(range(len(row)), key=row.__getitem__)], *(f"{v:.6f}" for v in row)])
    else:
        for name, row in zip(names, probs.tolist()):
            print(json.dumps({"input": name, "prediction": classes[max(range(len(row)), key=row.__getitem__)],
                              "probabilities": dict(zip(classes, (round(v, 6) for v in row)))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
