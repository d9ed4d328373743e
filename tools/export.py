"""Export a run's model to take away: `python tools/export.py runs/<run> --out exported/`.

An `hf:` run becomes a Hugging Face folder (model + tokenizer, class names as labels) for
`AutoModelForSequenceClassification.from_pretrained` and `pipeline("text-classification")`; an
image run becomes `model.pt2` (torch.export; uint8 images in, logits out) and `preprocess.json`.
The EMA model is exported when the run keeps one (it is the one the run reports).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssl_kd.errors import SSLKDError
from ssl_kd.export import export_run
from ssl_kd.run import load_run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder (its checkpoints/last.pt) or a checkpoint file, e.g. runs/<run>/checkpoints/best.pt")
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument("--data-dir", default="", help="data folder if it moved since training")
    args = p.parse_args(argv)
    try:
        run = load_run(args.run, "cpu", args.data_dir)
        out = export_run(run, args.out)
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {run.cfg.train.net} ({run.cfg.train.dataset}, step {run.step}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
