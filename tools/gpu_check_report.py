"""One table and one JSON from the pieces tools/gpu_check.sh measured (bench JSONs, PIL pipeline, training run).

`python tools/gpu_check_report.py OUT CONFIG... --train-config CONFIG` reads OUT/bench_<CONFIG>.json,
OUT/pil.json and OUT/train/summary.json, prints the table and writes OUT/gpu_check.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

FIXMATCH_STEPS = 2**20  # FixMatch's CIFAR protocol


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("configs", nargs="+")
    p.add_argument("--train-config", required=True)
    args = p.parse_args()
    pil = json.loads((args.out / "pil.json").read_text())
    summary = json.loads((args.out / "train" / "summary.json").read_text())
    rows = []
    for config in args.configs:
        bench = json.loads((args.out / f"bench_{config}.json").read_text())
        for r in bench["rows"]:
            rows.append({"config": config, "algo": r["algo"], "s_per_step": r["s_per_step"], "images_per_s": r["images_per_s"],
                         "ratio_to_floor": r["ratio_to_floor"], "floor_s_per_step": r["floor_s_per_step"],
                         "vs_pil_pipeline": r["images_per_s"] / pil["images_per_s"], "peak_mem_MiB": bench["peak_mem_MiB"],
                         "hours_for_2^20_steps": r["s_per_step"] * FIXMATCH_STEPS / 3600, "device": bench["device"]})
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"\ngpu_check on {device}, torch {torch.__version__}; batch {pil['batch_size']}, mu {pil['uratio']}")
    print("| config | algo | s/step | images/s | ratio to floor | x PIL pipeline | peak MiB | hours for 2^20 steps |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['algo']} | {r['s_per_step']:.4f} | {r['images_per_s']:.0f} | {r['ratio_to_floor']:.2f}x | "
              f"{r['vs_pil_pipeline']:.1f}x | {r['peak_mem_MiB']:.0f} | {r['hours_for_2^20_steps']:.1f} |")
    print(f"| PIL pipeline | ({pil['workers_per_loader']} workers per loader, {pil['cores']} cores) | {pil['s_per_batch']:.4f} | "
          f"{pil['images_per_s']:.0f} | - | 1.0x | - | - |")
    print(f"| training run ({args.train_config}) | fixmatch {pil['dataset']} | {summary['steps']} steps in {summary['wall_s']:.0f} s | "
          f"- | - | - | - | EMA top-1 {summary['last_top1']:.1f} |")
    result = {"device": device, "torch": torch.__version__, "rows": rows, "pil_pipeline": pil,
              "training_run": {"config": args.train_config, **summary}}
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
