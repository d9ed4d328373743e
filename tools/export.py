"""Export a run's model to take away: `python tools/export.py runs/<run> --out exported/`.

An `hf:` run becomes a Hugging Face folder (model + tokenizer, class names as labels) for
`AutoModelForSequenceClassification.from_pretrained` and `pipeline("text-classification")`; an
image run becomes `model.pt2` (torch.export; uint8 images in, logits out) and `preprocess.json`.
The EMA model is exported when the run keeps one (it is the one the run reports). Every export
holds a model card (README.md) and a SHA-256 digest beside each file, which tools/predict.py checks.
--out is a new or empty folder, or a previous export (replaced whole); a failed export leaves nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssl_kd.errors import SSLKDError
from ssl_kd.export import export_run
from ssl_kd.run import load_run
from ssl_kd.toolargs import add_run_argument, run_argument


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_argument(p)
    p.add_argument("--out", required=True, type=Path, help="folder to write (new, empty, or a previous export)")
    p.add_argument("--data-dir", default="", help="data folder if it moved since training")
    args = p.parse_args(argv)
    try:
        run = load_run(run_argument(args), "cpu", args.data_dir)
        out = export_run(run, args.out)
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {run.cfg.train.net} ({run.cfg.train.dataset}, step {run.step}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
