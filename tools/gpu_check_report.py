"""One table and one JSON from the pieces tools/gpu_check.sh measured (bench JSONs, PIL pipeline, training run).

`python tools/gpu_check_report.py OUT CONFIG... --train-config CONFIG [--text NAME=NET ...]` reads
OUT/bench_<CONFIG>.json, OUT/pil.json, OUT/train/summary.json and the text benches OUT/bench_<NAME>.json
(NAME: text<i>_<config>, NET: the student network), prints the tables and writes OUT/gpu_check.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

FIXMATCH_STEPS = 2**20  # FixMatch's CIFAR protocol


def text_table(out: Path, runs: list[str]) -> list[dict]:
    """Rows of the text benches (students against their text floor), printed as a second table."""
    rows = []
    for run in runs:
        name, _, net = run.partition("=")
        bench = json.loads((out / f"bench_{name}.json").read_text())
        config = name.split("_", 1)[1]
        for r in bench["rows"]:
            rows.append({"config": config, "net": net, "algo": r["algo"], "s_per_step": r["s_per_step"],
                         "floor_s_per_step": r["floor_s_per_step"], "ratio_to_floor": r["ratio_to_floor"],
                         "peak_mem_MiB": bench["peak_mem_MiB"], "batch_size": bench["batch_size"], "uratio": bench["uratio"]})
    if rows:
        print(f"\ntext (sst2, batch {rows[0]['batch_size']}, mu {rows[0]['uratio']}): students against their text floor")
        print("| config | network | algo | s/step | floor s/step | ratio to floor | peak MiB |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['config']} | {r['net']} | {r['algo']} | {r['s_per_step']:.4f} | {r['floor_s_per_step']:.4f} | "
                  f"{r['ratio_to_floor']:.2f}x | {r['peak_mem_MiB']:.0f} |")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("configs", nargs="+")
    p.add_argument("--train-config", required=True)
    p.add_argument("--text", nargs="*", default=[], help="text benches as NAME=NET (text rows, issue 21)")
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
    text_rows = text_table(args.out, args.text)
    result = {"device": device, "torch": torch.__version__, "rows": rows, "pil_pipeline": pil,
              "training_run": {"config": args.train_config, **summary}, "text_rows": text_rows}
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
