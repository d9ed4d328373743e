"""Print the test metrics of a checkpoint as one JSON object:
`python tools/eval.py --ckpt runs/<run>/checkpoints/last.pt`."""
import argparse
import json
import sys

from ssl_kd.errors import SSLKDError
from ssl_kd.plugins import load_plugins
from ssl_kd.trainer.checkpoint import load_run
from ssl_kd.trainer.evaluate import evaluate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ckpt", required=True, help="checkpoint file or run folder")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--data-dir", default="", help="data folder if it moved since training")
    p.add_argument("--plugin", action="append", default=[], help="plug-in the run's algorithm came from")
    args = p.parse_args()
    try:
        load_plugins(args.plugin)
        run = load_run(args.ckpt, args.device, args.data_dir)
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    d = run.data
    result = {"ckpt": args.ckpt, "step": run.step, "algo": run.cfg.train.algo, "dataset": run.cfg.train.dataset}
    result["model"] = evaluate(run.model, d.test_x, d.test_y, d.policy, d.num_classes)
    if run.ema_model is not None:
        result["ema"] = evaluate(run.ema_model, d.test_x, d.test_y, d.policy, d.num_classes)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
